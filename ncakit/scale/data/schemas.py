"""The source schemas: pure adapters from one source example to one canonical example
(``{"prompt", "responses", "rewards"}``, see :mod:`ncakit.scale.data`), or an :class:`ExampleError`
that names the column at fault. :data:`SCHEMAS` maps a schema name to its adapter."""

from __future__ import annotations

import logging
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence

from ncakit.scale.data.drops import ExampleError, Reason

logger = logging.getLogger("ncakit.scale.data")


# ----------------------------------------------------------------------------------------------
# Field helpers (every error names its column)
# ----------------------------------------------------------------------------------------------

_MISSING = object()
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max


def _get(example: Mapping, key: str, column: str | None = None):
    if not isinstance(example, Mapping):
        raise ExampleError(
            Reason.BAD_TYPE,
            column or key,
            f"expected a mapping holding {key!r}, got {type(example).__name__}",
        )
    value = example.get(key, _MISSING)
    if value is _MISSING:
        raise ExampleError(Reason.MISSING_FIELD, column or key, f"missing (expected a {key!r} field)")
    return value


def _text(value, column: str) -> str:
    if value is None:
        raise ExampleError(Reason.MISSING_FIELD, column, "is null (expected text)")
    if not isinstance(value, str):
        raise ExampleError(Reason.BAD_TYPE, column, f"expected a string, got {type(value).__name__}")
    return value


def _messages(value, column: str) -> list[dict]:
    """A chat message list: a non-empty list of {"role": str, "content": str} (other keys dropped)."""
    if value is None:
        raise ExampleError(Reason.MISSING_FIELD, column, "is null (expected a message list)")
    if not isinstance(value, list | tuple) or not value:
        raise ExampleError(
            Reason.BAD_TYPE,
            column,
            f"expected a non-empty list of {{'role', 'content'}} messages, got {_describe(value)}",
        )
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping):
            raise ExampleError(
                Reason.BAD_TYPE, f"{column}[{i}]", f"expected a message dict, got {type(m).__name__}"
            )
        role = _text(m.get("role"), f"{column}[{i}].role")
        content = _text(m.get("content"), f"{column}[{i}].content")
        out.append({"role": role, "content": content})
    return out


def _describe(value) -> str:
    if isinstance(value, list | tuple):
        return f"an empty {type(value).__name__}" if not value else f"a {type(value).__name__}"
    return type(value).__name__


def _text_or_messages(value, column: str):
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return _messages(value, column)
    if value is None:
        raise ExampleError(Reason.MISSING_FIELD, column, "is null (expected text or a message list)")
    raise ExampleError(
        Reason.BAD_TYPE, column, f"expected a string or a message list, got {type(value).__name__}"
    )


def _reward(value, column: str) -> float:
    if value is None:
        raise ExampleError(Reason.NON_FINITE_REWARD, column, "is null (expected a finite number)")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ExampleError(
                    Reason.BAD_TYPE, column, f"expected a number, got the string {value!r}"
                ) from None
        else:
            raise ExampleError(Reason.BAD_TYPE, column, f"expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ExampleError(Reason.NON_FINITE_REWARD, column, f"expected a finite number, got {value}")
    if abs(value) > FLOAT32_MAX:  # the collator holds rewards in float32: inf there
        raise ExampleError(
            Reason.NON_FINITE_REWARD,
            column,
            f"expected a number with |r| <= {FLOAT32_MAX:.4g} (float32, the training dtype), got {value:g}",
        )
    return value


def is_empty_response(response) -> bool:
    """True for a response with no text: empty or whitespace-only (all message contents joined)."""
    return not text_of(response).strip()


def drop_empty_responses(
    example: dict, *, min_responses: int = 2, column: str = "responses"
) -> tuple[dict, int]:
    """``(example without its empty responses, how many were removed)``; the rewards follow their
    responses. :class:`ExampleError` when none is left (``all_responses_empty``) or fewer than
    ``min_responses`` (``too_few_responses``)."""
    keep = [i for i, r in enumerate(example["responses"]) if not is_empty_response(r)]
    removed = len(example["responses"]) - len(keep)
    if not removed:
        return example, 0
    if not keep:
        raise ExampleError(Reason.ALL_RESPONSES_EMPTY, column, "every response is empty text")
    if len(keep) < min_responses:
        raise ExampleError(
            Reason.TOO_FEW_RESPONSES,
            column,
            f"only {len(keep)} non-empty response(s) left after dropping {removed} empty one(s); "
            f"at least {min_responses} are needed to compare",
        )
    out = dict(example)
    out["responses"] = [example["responses"][i] for i in keep]
    out["rewards"] = [example["rewards"][i] for i in keep]
    return out, removed


def text_of(x) -> str:
    """The text of a prompt / response (all message contents joined)."""
    if isinstance(x, str):
        return x
    return "".join(m["content"] for m in x)


def _validated(
    prompt,
    responses: list,
    rewards: list,
    *,
    min_responses: int = 2,
    columns=("prompt", "responses", "rewards"),
) -> dict:
    """Final checks shared by every adapter; returns the canonical dict."""
    pcol, rcol, wcol = columns
    if not text_of(prompt).strip():
        raise ExampleError(Reason.EMPTY_PROMPT, pcol, "is empty")
    if len(responses) != len(rewards):
        raise ExampleError(
            Reason.K_MISMATCH,
            wcol,
            f"has {len(rewards)} entries but {rcol} has {len(responses)} (one reward per response)",
        )
    if len(responses) < min_responses:
        raise ExampleError(
            Reason.TOO_FEW_RESPONSES,
            rcol,
            f"has {len(responses)} response(s); at least {min_responses} are needed to compare",
        )
    return {"prompt": prompt, "responses": list(responses), "rewards": [float(r) for r in rewards]}


def sorted_best_first(responses: list, rewards: list) -> tuple[list, list]:
    """Responses and rewards reordered by reward, best first (stable: ties keep their source order)."""
    order = sorted(range(len(rewards)), key=lambda i: -rewards[i])  # stable: ties keep source order
    return [responses[i] for i in order], [rewards[i] for i in order]


# ----------------------------------------------------------------------------------------------
# Adapters: pure functions, one source example -> one canonical example (or ExampleError)
# ----------------------------------------------------------------------------------------------


def from_canonical(example: Mapping, *, min_responses: int = 2) -> dict:
    """Validate / normalise an example already in the canonical format (see the module docstring)."""
    prompt = _text_or_messages(_get(example, "prompt"), "prompt")
    raw_responses = _get(example, "responses")
    raw_rewards = _get(example, "rewards")
    if not isinstance(raw_responses, list | tuple):
        raise ExampleError(
            Reason.BAD_TYPE,
            "responses",
            f"expected a list of K responses, got {type(raw_responses).__name__}",
        )
    if not isinstance(raw_rewards, list | tuple):
        raise ExampleError(
            Reason.BAD_TYPE, "rewards", f"expected a list of K numbers, got {type(raw_rewards).__name__}"
        )
    responses = [_text_or_messages(r, f"responses[{i}]") for i, r in enumerate(raw_responses)]
    if len(raw_rewards) != len(responses):  # before per-reward checks: a K mismatch is the real error
        raise ExampleError(
            Reason.K_MISMATCH,
            "rewards",
            f"has {len(raw_rewards)} entries but responses has {len(responses)} (one reward per response)",
        )
    rewards = [_reward(r, f"rewards[{i}]") for i, r in enumerate(raw_rewards)]
    return _validated(prompt, responses, rewards, min_responses=min_responses)


_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def from_ultrafeedback(
    example: Mapping, *, score: str = "overall", sort_best_first: bool = True, min_responses: int = 2
) -> dict:
    """``openbmb/UltraFeedback`` (raw) -> canonical, K = number of completions (4).

    prompt = ``instruction`` (text); responses = ``completions[i].response``; rewards =
    ``completions[i].overall_score`` (GPT-4's 1-10 overall score, the authors' choice) with
    ``score="overall"``, ``completions[i]["fine-grained_score"]`` (mean of the four 1-5 aspect
    ratings) with ``score="fine-grained"``, or one aspect's rating
    (``completions[i].annotations.<aspect>.Rating``; ``"N/A"`` counts as non-finite) with
    ``score`` in ``helpfulness``, ``honesty``, ``instruction_following``, ``truthfulness``.
    Sorted best-first (stable) unless ``sort_best_first=False``.
    """
    if score not in ("overall", "fine-grained", *_ASPECTS):
        raise ValueError(f"score: expected 'overall', 'fine-grained' or one of {_ASPECTS}, got {score!r}")
    prompt = _text(_get(example, "instruction"), "instruction")
    completions = _get(example, "completions")
    if completions is None:
        completions = []
    if not isinstance(completions, list | tuple):
        raise ExampleError(
            Reason.BAD_TYPE,
            "completions",
            f"expected a list of completion dicts, got {type(completions).__name__}",
        )
    responses, rewards = [], []
    for i, c in enumerate(completions):
        col = f"completions[{i}]"
        responses.append(_text(_get(c, "response", f"{col}.response"), f"{col}.response"))
        if score == "overall":
            rewards.append(_reward(_get(c, "overall_score", f"{col}.overall_score"), f"{col}.overall_score"))
        elif score == "fine-grained":
            rewards.append(
                _reward(
                    _get(c, "fine-grained_score", f"{col}.fine-grained_score"), f"{col}.fine-grained_score"
                )
            )
        else:
            acol = f"{col}.annotations.{score}.Rating"
            ann = _get(_get(c, "annotations", f"{col}.annotations"), score, f"{col}.annotations.{score}")
            rating = _get(ann, "Rating", acol)
            if rating in ("N/A", "n/a", ""):
                raise ExampleError(Reason.NON_FINITE_REWARD, acol, f"is {rating!r} (no rating)")
            rewards.append(_reward(rating, acol))
    if sort_best_first:
        responses, rewards = sorted_best_first(responses, rewards)
    return _validated(
        prompt,
        responses,
        rewards,
        min_responses=min_responses,
        columns=("instruction", "completions", "completions[].score"),
    )


_A_KEY = re.compile(r"^A(\d+)$")


def from_nca_reward(example: Mapping, *, sort_best_first: bool = True, min_responses: int = 2) -> dict:
    """The authors' ``ChenDRAG/ultrafeedback_reward`` schema -> canonical, K = 4.

    Assumed schema (from the authors' ``data_utils.apply_chat_template(task="reward")`` and
    ``NCADataCollatorWithPadding``, which read exactly these columns): ``A0``..``A3`` are message
    lists ``[user, assistant]`` (plain strings are accepted as the assistant answer), and
    ``score_A0``..``score_A3`` their GPT-4 scores; ``prompt`` is the prompt text. The authors take
    the user turn of ``A0`` as the prompt; here the prompt is ``A0`` without its final assistant
    message (or the ``prompt`` column when ``A0`` holds only the answer). The data is stored
    best-first (A0 highest); ``sort_best_first`` re-sorts stably, which keeps that order.
    """
    keys = sorted(int(m.group(1)) for k in example if (m := _A_KEY.match(str(k))))
    if not keys:
        raise ExampleError(
            Reason.MISSING_FIELD, "A0", "missing (expected columns A0..A3 and score_A0..score_A3)"
        )
    if keys != list(range(len(keys))):
        first_gap = next(i for i in range(len(keys)) if i not in keys)
        raise ExampleError(
            Reason.MISSING_FIELD, f"A{first_gap}", f"missing (expected A0..A{keys[-1]} without a gap)"
        )
    prompt = None
    responses, rewards = [], []
    for i in keys:
        col = f"A{i}"
        value = _get(example, col)
        if isinstance(value, str):
            responses.append(value)
        else:
            msgs = _messages(value, col)
            if msgs[-1]["role"] != "assistant":
                raise ExampleError(
                    Reason.BAD_VALUE,
                    f"{col}[-1].role",
                    f"expected the last message to be 'assistant', got {msgs[-1]['role']!r}",
                )
            if prompt is None and len(msgs) > 1:
                prompt = msgs[:-1]
            responses.append(msgs[-1]["content"])
        rewards.append(_reward(_get(example, f"score_{col}"), f"score_{col}"))
    if prompt is None:
        prompt = _text(_get(example, "prompt"), "prompt")
    if isinstance(prompt, list):
        responses = [[{"role": "assistant", "content": r}] for r in responses]
    if sort_best_first:
        responses, rewards = sorted_best_first(responses, rewards)
    return _validated(
        prompt, responses, rewards, min_responses=min_responses, columns=("prompt", "A0..A3", "score_A0..")
    )


def _split_common_prefix(chosen, rejected):
    """TRL's implicit-prompt rule: the prompt is the longest common prefix of chosen and rejected
    (messages for conversations, characters for text, minus a trailing space for text)."""
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    if isinstance(chosen, str) and n > 0 and chosen[n - 1] == " ":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def from_pairwise(
    example: Mapping,
    *,
    pair_rewards: str = "binary",
    score_columns: tuple[str, str] = ("score_chosen", "score_rejected"),
    min_responses: int = 2,
) -> dict:
    """A chosen/rejected pair -> canonical K = 2, chosen first.

    Handles TRL's four preference layouts and the H4 binarized one:

    - explicit prompt: ``prompt`` + ``chosen`` + ``rejected`` (text, or message lists where
      ``chosen`` / ``rejected`` hold only the assistant turn(s));
    - implicit prompt: ``chosen`` / ``rejected`` are whole texts or whole conversations; the prompt
      is their longest common prefix (TRL's ``extract_prompt`` rule). H4's
      ``ultrafeedback_binarized`` is this case (its ``chosen`` starts with the user turn), its
      ``prompt`` column is then ignored in favour of the shared messages.

    Rewards: ``pair_rewards="binary"`` -> ``[1.0, 0.0]`` (hard labels);
    ``pair_rewards="scores"`` -> the two ``score_columns`` (H4: ``score_chosen``,
    ``score_rejected``).
    """
    if pair_rewards not in ("binary", "scores"):
        raise ValueError(f"pair_rewards: expected 'binary' or 'scores', got {pair_rewards!r}")
    chosen = _text_or_messages(_get(example, "chosen"), "chosen")
    rejected = _text_or_messages(_get(example, "rejected"), "rejected")
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise ExampleError(
            Reason.BAD_TYPE,
            "rejected",
            f"is {'text' if isinstance(rejected, str) else 'a message list'} "
            f"but chosen is {'text' if isinstance(chosen, str) else 'a message list'}",
        )
    conversational = isinstance(chosen, list)
    full_conversation = conversational and any(m["role"] != "assistant" for m in chosen)
    explicit = "prompt" in example and example["prompt"] is not None and not full_conversation
    if explicit:
        prompt = _text_or_messages(example["prompt"], "prompt")
        responses = [chosen, rejected]
    else:
        prompt, c_tail, r_tail = _split_common_prefix(chosen, rejected)
        if not prompt:
            raise ExampleError(
                Reason.MISSING_FIELD, "prompt", "missing, and chosen/rejected share no prefix to take it from"
            )
        if not c_tail or not r_tail:
            raise ExampleError(
                Reason.BAD_VALUE,
                "chosen/rejected",
                "one is a prefix of the other: no separate response is left",
            )
        if conversational:
            for col, tail in (("chosen", c_tail), ("rejected", r_tail)):
                if tail[0]["role"] != "assistant":
                    raise ExampleError(
                        Reason.BAD_VALUE,
                        col,
                        f"the response after the shared prompt starts with role {tail[0]['role']!r}, not 'assistant'",
                    )
        responses = [c_tail, r_tail]
    if pair_rewards == "binary":
        rewards = [1.0, 0.0]
    else:
        rewards = [_reward(_get(example, c), c) for c in score_columns]
    return _validated(
        prompt,
        responses,
        rewards,
        min_responses=min_responses,
        columns=("prompt", "chosen/rejected", "rewards"),
    )


def from_binarized(example: Mapping, *, pair_rewards: str = "binary", min_responses: int = 2) -> dict:
    """``HuggingFaceH4/ultrafeedback_binarized`` -> canonical K = 2 (see :func:`from_pairwise`)."""
    return from_pairwise(example, pair_rewards=pair_rewards, min_responses=min_responses)


def from_trl_preference(example: Mapping, *, pair_rewards: str = "binary", min_responses: int = 2) -> dict:
    """TRL preference rows (explicit/implicit prompt, standard/conversational) -> canonical K = 2."""
    return from_pairwise(example, pair_rewards=pair_rewards, min_responses=min_responses)


SCHEMAS: dict[str, Callable[..., dict]] = {
    "canonical": from_canonical,
    "ultrafeedback": from_ultrafeedback,
    "nca_reward": from_nca_reward,
    "binarized": from_binarized,
    "trl": from_trl_preference,
}
SCHEMA_ALIASES = {
    "ultrafeedback_reward": "nca_reward",
    "ultrafeedback_binarized": "binarized",
    "trl_preference": "trl",
    "pairwise": "trl",
    "openbmb/ultrafeedback": "ultrafeedback",
    "chendrag/ultrafeedback_reward": "nca_reward",
    "huggingfaceh4/ultrafeedback_binarized": "binarized",
}


def resolve_schema(schema: str) -> str:
    key = SCHEMA_ALIASES.get(schema.lower(), schema)
    if key not in SCHEMAS:
        raise ValueError(f"schema: expected 'auto' or one of {sorted(SCHEMAS)}, got {schema!r}")
    return key


def required_columns(schema: str, columns: Sequence[str], opts: Mapping) -> list[str]:
    if schema == "canonical":
        return ["prompt", "responses", "rewards"]
    if schema == "ultrafeedback":
        return ["instruction", "completions"]
    if schema == "nca_reward":
        ks = sorted(int(m.group(1)) for c in columns if (m := _A_KEY.match(c)))
        ks = ks or [0, 1]
        return [f"A{i}" for i in range(max(2, max(ks) + 1))] + [
            f"score_A{i}" for i in range(max(2, max(ks) + 1))
        ]
    need = ["chosen", "rejected"]
    if opts.get("pair_rewards") == "scores":
        need += ["score_chosen", "score_rejected"]
    return need


def detect_schema(columns: Sequence[str]) -> str:
    """The schema name for a set of column names (see the table in the module docstring)."""
    cols = set(columns)
    if {"prompt", "responses", "rewards"} <= cols:
        return "canonical"
    if {"A0", "score_A0"} <= cols:
        return "nca_reward"
    if {"instruction", "completions"} <= cols:
        return "ultrafeedback"
    if {"chosen", "rejected", "score_chosen", "score_rejected"} <= cols:
        return "binarized"
    if {"chosen", "rejected"} <= cols:
        return "trl"
    raise ValueError(
        f"columns: cannot tell the schema from {sorted(cols)}; expected canonical (prompt, responses, "
        "rewards), ultrafeedback (instruction, completions), nca_reward (A0.., score_A0..), binarized "
        "(chosen, rejected, score_chosen, score_rejected) or trl (chosen, rejected[, prompt]); pass schema="
    )
