"""K-response datasets for the scale track: canonical format, source adapters, loading,
tokenisation with the authors' truncation, drop accounting, collation and batching.

Canonical format
================
One example is one prompt with its K responses and their scalar rewards::

    {
        "prompt":    str | [{"role": "system" | "user" | "assistant", "content": str}, ...],
        "responses": [str, ...]  or  [[{"role": "assistant", "content": str}, ...], ...],   # K entries
        "rewards":   [float, ...],                                                        # K entries
    }

- ``prompt`` is plain text or a chat message list (everything before the responses). Responses
  are plain text or assistant message lists (usually one message each). Within one dataset every
  row uses the same kind (Arrow columns have one type); a plain-text prompt or response is wrapped
  as a user / assistant message when the rest of the dataset is conversational.
- ``rewards[k]`` belongs to ``responses[k]``: finite numbers, higher is better. K may vary between
  rows (K >= 2 to be usable); the collator pads rows with fewer than K responses and marks them in
  ``mask``. Response order is free for the K-way losses, but:
- pairwise data is K = 2 with the CHOSEN response first (``rewards[0] >= rewards[1]``), which is
  what the pairwise losses in :mod:`ncakit.losses` read (MATH.md, Notation: preference data is
  the K = 2 special case with hard labels); the UltraFeedback adapters sort best-first (stable,
  ties keep source order) as the authors do (MATH.md, Facts about the authors' released setup).
- Extra keys are ignored. Files in this format (JSON list, JSONL, Parquet) load with
  ``load_k_dataset(path)``; write them with :func:`save_k_dataset`.

Sources (``schema=`` of :func:`load_k_dataset`; ``"auto"`` picks from the column names):

==================  ==========================================  ===============================================
schema              source (hub name, usual splits)             mapping
==================  ==========================================  ===============================================
``canonical``       local JSON/JSONL/Parquet files              validated as is
``ultrafeedback``   ``openbmb/UltraFeedback`` (train)           prompt = ``instruction``; responses =
                                                                ``completions[].response``; rewards =
                                                                ``completions[].overall_score`` (GPT-4, 1-10;
                                                                ``score="fine-grained"`` or an aspect name
                                                                such as ``"helpfulness"`` instead); K = 4,
                                                                sorted best-first
``nca_reward``      ``ChenDRAG/ultrafeedback_reward``           the authors' K = 4 data: ``A0..A3`` are
                    (train_prefs, test_prefs)                   ``[user, assistant]`` message lists,
                                                                ``score_A0..score_A3`` their GPT-4 scores;
                                                                prompt = ``A0`` minus its last (assistant)
                                                                message; sorted best-first
``binarized``       ``HuggingFaceH4/ultrafeedback_binarized``   K = 2, chosen first; prompt = the messages that
                    (train_prefs, test_prefs)                   ``chosen`` and ``rejected`` share
``trl``             TRL preference datasets                     K = 2, chosen first; explicit or implicit
                                                                prompt, standard or conversational
==================  ==========================================  ===============================================

Pairwise rewards (``pair_rewards=``): ``"binary"`` (default) gives the hard labels
``[1.0, 0.0]``; ``"scores"`` uses ``[score_chosen, score_rejected]`` where the source has them.
The pairwise losses only read the order; the K-way losses turn ``[1, 0]`` into (near) one-hot
labels for small α, and scores into soft labels ``softmax(r / α)``.

Pipeline and what each step returns::

    from ncakit.data import prepare_k_dataset, KResponseCollator, make_dataloader
    ds, stats = prepare_k_dataset("HuggingFaceH4/ultrafeedback_binarized", tokenizer,
                                  split="train_prefs", max_length=1024, max_prompt_length=512)
    loader = make_dataloader(ds, KResponseCollator(tokenizer.pad_token_id, k=2), batch_size=8)
    batch = next(iter(loader))   # input_ids/attention_mask/labels [B*K, T], rewards/mask [B, K], ...

1. :func:`load_k_dataset` -- ``datasets.load_dataset(...)`` (hub name or local files) and an
   adapter to the canonical format (:func:`canonicalize`). Unusable rows are dropped and COUNTED
   per reason (``on_bad="drop"``) or raise (``on_bad="raise"``); a missing column always raises.
2. :func:`tokenize_k_dataset` -- chat template when the tokenizer has one, the authors'
   truncation, EOS once, prompt masked; columns ``prompt_ids``, ``response_ids``, ``rewards``,
   ``max_seq_len``. :func:`prepare_k_dataset` runs 1 + 2.
3. :class:`KResponseCollator` -- B rows -> B·K right-padded sequences, prompt-major
   (row ``b * K + k`` is response k of prompt b, so ``logps.view(B, K)`` is the loss input).
4. :func:`make_dataloader` -- one dataset row is one prompt with all its K responses, so a plain
   ``DataLoader`` over rows already keeps the K responses together; ``group_by_length=True``
   adds :class:`LengthGroupedSampler` to cut padding.

Every step that drops something returns a :class:`DataStats` (rows in / kept / dropped by
reason, truncation counts), logs it and emits a :class:`DroppedExamplesWarning` when anything
was dropped -- never silently.

This module imports ``datasets`` (scale extras); ``import ncakit`` does not import it.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import logging
import math
import numbers
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader, Sampler

from ncakit.logprobs import IGNORE_INDEX

__all__ = [
    # format and errors
    "Reason",
    "ExampleError",
    "DroppedExamplesWarning",
    "DataStats",
    "Prepared",
    "SCHEMAS",
    # adapters (pure functions: source example -> canonical example)
    "from_canonical",
    "from_ultrafeedback",
    "from_nca_reward",
    "from_pairwise",
    "from_binarized",
    "from_trl_preference",
    "detect_schema",
    # loading
    "canonicalize",
    "load_k_dataset",
    "save_k_dataset",
    "to_pairwise",
    # tokenisation
    "render_example",
    "tokenize_k_example",
    "tokenize_k_dataset",
    "prepare_k_dataset",
    # batching
    "KResponseCollator",
    "LengthGroupedSampler",
    "example_lengths",
    "make_dataloader",
]

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Errors, drop reasons and statistics
# ----------------------------------------------------------------------------------------------


class Reason:
    """Why an example was dropped (the keys of :attr:`DataStats.dropped`)."""

    MISSING_FIELD = "missing_field"  # a column / field is absent or null where text is needed
    BAD_TYPE = "bad_type"  # a field has the wrong type (e.g. a number where text is expected)
    BAD_VALUE = "bad_value"  # well-typed but unusable (no prompt can be split off, wrong role...)
    K_MISMATCH = "k_mismatch"  # len(responses) != len(rewards)
    NON_FINITE_REWARD = "non_finite_reward"  # NaN, inf or null reward
    TOO_FEW_RESPONSES = "too_few_responses"  # fewer than min_responses (2) responses
    TIED_REWARDS = "tied_rewards"  # to_pairwise: every response has the same reward (no pair to form)
    EMPTY_PROMPT = "empty_prompt"  # prompt text empty (or no tokens)
    ALL_RESPONSES_EMPTY = "all_responses_empty"  # every response is empty text / has no tokens

    # counted in DataStats.responses_dropped (the example itself may survive)
    EMPTY_RESPONSE = "empty_response"


class ExampleError(ValueError):
    """One example cannot be used. ``reason`` is a :class:`Reason` value, ``column`` the field at fault.

    A ``ValueError`` whose message starts with the column name, so pure adapter calls fail with a
    clear message, while the dataset-level functions catch it and count ``reason``.
    """

    def __init__(self, reason: str, column: str, message: str):
        super().__init__(f"{column}: {message}")
        self.reason = reason
        self.column = column


class DroppedExamplesWarning(UserWarning):
    """Emitted (once per pipeline call) when examples or responses were dropped; the message has
    the counts per reason. Filter it with ``warnings.simplefilter("ignore", DroppedExamplesWarning)``."""


@dataclasses.dataclass
class DataStats:
    """What a data step did. ``rows_in - rows_kept == sum(dropped.values())``.

    Attributes:
        source: the dataset name / path (or ``"<memory>"``).
        stage: ``"load"``, ``"tokenize"`` or ``"load+tokenize"``.
        rows_in / rows_kept: examples before / after the step.
        dropped: examples dropped, per :class:`Reason`.
        examples: the first error message seen for each reason (to find the bad rows).
        responses_dropped: responses removed from kept examples, per reason.
        prompts_truncated: kept examples whose prompt lost its first tokens.
        responses_truncated: kept responses cut to the response budget.
        k_counts: number of kept examples per K (responses per prompt).
    """

    source: str = "<memory>"
    stage: str = "load"
    rows_in: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    examples: dict[str, str] = dataclasses.field(default_factory=dict)
    responses_dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    prompts_truncated: int = 0
    responses_truncated: int = 0
    k_counts: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())

    def then(self, later: DataStats) -> DataStats:
        """Chain two steps (this one first): rows in from this, rows kept from ``later``."""
        dropped = Counter(self.dropped)
        dropped.update(later.dropped)
        resp = Counter(self.responses_dropped)
        resp.update(later.responses_dropped)
        return DataStats(
            source=self.source,
            stage=f"{self.stage}+{later.stage}",
            rows_in=self.rows_in,
            rows_kept=later.rows_kept,
            dropped=dict(dropped),
            examples={**later.examples, **self.examples},
            responses_dropped=dict(resp),
            prompts_truncated=self.prompts_truncated + later.prompts_truncated,
            responses_truncated=self.responses_truncated + later.responses_truncated,
            k_counts=dict(later.k_counts),
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["rows_dropped"] = self.rows_dropped
        d["k_counts"] = {str(k): v for k, v in sorted(self.k_counts.items())}
        return d

    def summary(self) -> str:
        lines = [
            f"[{self.stage}] {self.source}: {self.rows_in} rows in, {self.rows_kept} kept, "
            f"{self.rows_dropped} dropped"
        ]
        for reason, n in sorted(self.dropped.items(), key=lambda kv: -kv[1]):
            example = self.examples.get(reason, "")
            lines.append(f"  dropped {n:>6} x {reason}" + (f"  (e.g. {example})" if example else ""))
        for reason, n in sorted(self.responses_dropped.items()):
            lines.append(f"  removed {n:>6} responses x {reason}")
        if self.prompts_truncated or self.responses_truncated:
            lines.append(
                f"  truncated: {self.prompts_truncated} prompts (kept their last tokens), "
                f"{self.responses_truncated} responses"
            )
        if self.k_counts:
            ks = ", ".join(f"K={k}: {n}" for k, n in sorted(self.k_counts.items()))
            lines.append(f"  responses per prompt: {ks}")
        return "\n".join(lines)

    def report(self, *, warn: bool = True, stacklevel: int = 3) -> None:
        """Log the summary (INFO) and, if anything was dropped, warn with it."""
        text = self.summary()
        logger.info(text)
        if warn and (self.rows_dropped or self.responses_dropped):
            warnings.warn(text, DroppedExamplesWarning, stacklevel=stacklevel)


class Prepared(NamedTuple):
    """``(dataset, stats)`` as returned by the loading and tokenising functions."""

    dataset: datasets.Dataset
    stats: DataStats


# ----------------------------------------------------------------------------------------------
# Field helpers (every error names its column)
# ----------------------------------------------------------------------------------------------

_MISSING = object()


def _get(example: Mapping, key: str, column: str | None = None):
    if not isinstance(example, Mapping):
        raise ExampleError(
            Reason.BAD_TYPE,
            column or key,
            f"expected a mapping holding {key!r}, got {type(example).__name__}",
        )
    value = example.get(key, _MISSING)
    if value is _MISSING:
        raise ExampleError(Reason.MISSING_FIELD, column or key, "missing")
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
    return value


def _content(x) -> str:
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
    if not _content(prompt).strip():
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
        raise ExampleError(Reason.MISSING_FIELD, f"A{first_gap}", "missing")
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
_SCHEMA_ALIASES = {
    "ultrafeedback_reward": "nca_reward",
    "ultrafeedback_binarized": "binarized",
    "trl_preference": "trl",
    "pairwise": "trl",
    "openbmb/ultrafeedback": "ultrafeedback",
    "chendrag/ultrafeedback_reward": "nca_reward",
    "huggingfaceh4/ultrafeedback_binarized": "binarized",
}


def _resolve_schema(schema: str) -> str:
    key = _SCHEMA_ALIASES.get(schema.lower(), schema)
    if key not in SCHEMAS:
        raise ValueError(f"schema: expected 'auto' or one of {sorted(SCHEMAS)}, got {schema!r}")
    return key


def _required_columns(schema: str, columns: Sequence[str], opts: Mapping) -> list[str]:
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


# ----------------------------------------------------------------------------------------------
# Loading: datasets.load_dataset + adapter, with counted drops
# ----------------------------------------------------------------------------------------------

_MESSAGES_FEATURE = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
_TEXT_FEATURE = datasets.Value("string")


def _kind(x) -> str:
    return "text" if isinstance(x, str) else "chat"


def _conform(ex: dict, prompt_kind: str, response_kind: str) -> dict:
    """Give every row the dataset's types: wrap text as a message when the dataset is conversational."""

    def fit(x, kind, role, column):
        if kind == "chat" and isinstance(x, str):
            return [{"role": role, "content": x}]
        if kind == "text" and not isinstance(x, str):
            raise ExampleError(
                Reason.BAD_TYPE, column, "is a message list but the rest of the dataset is plain text"
            )
        return x

    return {
        "prompt": fit(ex["prompt"], prompt_kind, "user", "prompt"),
        "responses": [
            fit(r, response_kind, "assistant", f"responses[{i}]") for i, r in enumerate(ex["responses"])
        ],
        "rewards": ex["rewards"],
    }


def _rows_or_dataset(data):
    """A ``datasets.Dataset`` as is, or a list of dict rows (kept in Python: rows of mixed kinds,
    e.g. text and chat prompts, cannot become one Arrow table before they are normalised)."""
    if isinstance(data, datasets.Dataset):
        return data
    if isinstance(data, datasets.DatasetDict):
        raise TypeError(f"data: got a DatasetDict with splits {list(data)}; pick one split")
    if isinstance(data, list | tuple):
        if not data:
            raise ValueError("data: expected at least one example, got an empty list")
        return list(data)
    raise TypeError(f"data: expected a datasets.Dataset or a list of dicts, got {type(data).__name__}")


def _column_names(data) -> list[str]:
    if isinstance(data, datasets.Dataset):
        return data.column_names
    names: dict[str, None] = {}
    for row in data:
        if isinstance(row, Mapping):
            names.update(dict.fromkeys(row))
    return list(names)


def _map_rows(data, fn, features: datasets.Features, num_proc: int | None, desc: str) -> datasets.Dataset:
    if isinstance(data, datasets.Dataset):
        return data.map(fn, remove_columns=data.column_names, features=features, num_proc=num_proc, desc=desc)
    return datasets.Dataset.from_list([fn(row) for row in data], features=features)


def _as_dataset(data) -> datasets.Dataset:
    data = _rows_or_dataset(data)
    return data if isinstance(data, datasets.Dataset) else datasets.Dataset.from_list(data)


def _k_counts(ds: datasets.Dataset, column: str) -> dict[int, int]:
    if len(ds) == 0:
        return {}
    col = ds.select_columns([column]).with_format("arrow")[:].column(column)  # through any indices
    lengths = pc.list_value_length(col.combine_chunks())
    vals, counts = np.unique(lengths.to_numpy(zero_copy_only=False), return_counts=True)
    return {int(v): int(c) for v, c in zip(vals, counts)}


def _collect_drops(mapped: datasets.Dataset, stage: str) -> tuple[dict[str, int], dict[str, str]]:
    reasons = mapped["_drop_reason"]
    dropped = Counter(r for r in reasons if r)
    examples: dict[str, str] = {}
    if dropped:
        details = mapped["_drop_detail"]
        for i, (r, d) in enumerate(zip(reasons, details)):
            if r and r not in examples:
                examples[r] = f"{stage} input row {i}: {d}"
    return dict(dropped), examples


def _map_counting_drops(
    data, fn, blank: dict, features: datasets.Features, *, on_bad: str, num_proc, desc: str, stage: str
) -> tuple[datasets.Dataset, dict[str, int], dict[str, str]]:
    """Map ``fn`` over the rows. A row whose ``fn`` raises :class:`ExampleError` is dropped, counted by
    reason with its first example (``on_bad="drop"``), or the error propagates (``"raise"``); ``blank``
    fills a dropped row until the filter removes it. Returns ``(kept, dropped, examples)``."""

    def safe(example):
        try:
            out = fn(example)
        except ExampleError as err:
            if on_bad == "raise":
                raise
            return {**blank, "_drop_reason": err.reason, "_drop_detail": str(err)}
        return {**out, "_drop_reason": "", "_drop_detail": ""}

    mapped = _map_rows(data, safe, features, num_proc, desc)
    dropped, examples = _collect_drops(mapped, stage)
    kept = mapped.filter(lambda r: not r, input_columns="_drop_reason", num_proc=num_proc).flatten_indices()
    return kept.remove_columns(["_drop_reason", "_drop_detail"]), dropped, examples


def canonicalize(
    data,
    schema: str = "auto",
    *,
    on_bad: str = "drop",
    source: str = "<memory>",
    num_proc: int | None = None,
    warn: bool = True,
    **adapter_kwargs,
) -> Prepared:
    """Map a loaded dataset (or a list of dicts) to the canonical format with ``SCHEMAS[schema]``.

    Args:
        data: a ``datasets.Dataset`` or a list of dict rows.
        schema: a key of :data:`SCHEMAS` (or an alias such as the hub name), or ``"auto"``.
        on_bad: ``"drop"`` counts unusable rows per :class:`Reason` and drops them; ``"raise"``
            raises the first :class:`ExampleError` (its message names the column). Missing
            COLUMNS always raise.
        adapter_kwargs: passed to the adapter (``score=``, ``sort_best_first=``,
            ``pair_rewards=``, ``min_responses=``).

    Returns:
        ``Prepared(dataset, stats)``; the dataset has exactly the columns ``prompt``,
        ``responses``, ``rewards``.
    """
    if on_bad not in ("drop", "raise"):
        raise ValueError(f"on_bad: expected 'drop' or 'raise', got {on_bad!r}")
    ds = _rows_or_dataset(data)
    columns = _column_names(ds)
    schema = detect_schema(columns) if schema == "auto" else _resolve_schema(schema)
    needed = _required_columns(schema, columns, adapter_kwargs)
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(
            f"{missing[0]}: column missing for schema {schema!r} (dataset columns: {columns}; needed: {needed})"
        )
    adapter = functools.partial(SCHEMAS[schema], **adapter_kwargs)

    # The output types (text vs chat) are fixed per dataset, from the first row that converts.
    prompt_kind = response_kind = None
    for i in range(min(len(ds), 1000)):
        try:
            ex = adapter(ds[i])
        except ExampleError:
            continue
        prompt_kind = _kind(ex["prompt"])
        kinds = {_kind(r) for r in ex["responses"]}
        response_kind = "chat" if "chat" in kinds or prompt_kind == "chat" else "text"
        if prompt_kind == "text" and response_kind == "chat":
            prompt_kind = "chat"
        break
    prompt_kind = prompt_kind or "text"
    response_kind = response_kind or "text"
    features = datasets.Features(
        {
            "prompt": _MESSAGES_FEATURE if prompt_kind == "chat" else _TEXT_FEATURE,
            "responses": datasets.List(_MESSAGES_FEATURE if response_kind == "chat" else _TEXT_FEATURE),
            "rewards": datasets.List(datasets.Value("float64")),
            "_drop_reason": datasets.Value("string"),
            "_drop_detail": datasets.Value("string"),
        }
    )
    empty_prompt = [] if prompt_kind == "chat" else ""

    kept, dropped, examples = _map_counting_drops(
        ds,
        lambda example: _conform(adapter(example), prompt_kind, response_kind),
        {"prompt": empty_prompt, "responses": [], "rewards": []},
        features,
        on_bad=on_bad,
        num_proc=num_proc,
        desc=f"canonical format ({schema})",
        stage="load",
    )
    stats = DataStats(
        source=source,
        stage="load",
        rows_in=len(ds),
        rows_kept=len(kept),
        dropped=dropped,
        examples=examples,
        k_counts=_k_counts(kept, "rewards"),
    )
    stats.report(warn=warn)
    return Prepared(kept, stats)


_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".pq": "parquet"}


def _local_files(name_or_path: str) -> list[str] | None:
    if any(ch in name_or_path for ch in "*?["):
        files = sorted(glob.glob(name_or_path))
        return files or None
    p = Path(name_or_path)
    if p.is_file():
        return [str(p)]
    if p.is_dir():
        files = sorted(str(f) for f in p.iterdir() if f.suffix in _LOCAL_BUILDERS)
        return files or None
    return None


def load_source(name_or_path: str, split: str, *, data_files=None, revision=None, **kwargs):
    """``datasets.load_dataset`` of a hub dataset, or of local .json/.jsonl/.parquet files (a file, a
    glob or a folder) under the split name ``split`` (slices such as ``"train[:100]"`` work)."""
    local = _local_files(str(name_or_path)) if data_files is None else None
    if local is None:
        return datasets.load_dataset(
            name_or_path, split=split, data_files=data_files, revision=revision, **kwargs
        )
    suffixes = {Path(f).suffix for f in local}
    builders = {_LOCAL_BUILDERS.get(s) for s in suffixes}
    if len(builders) != 1 or None in builders:
        raise ValueError(
            f"name_or_path: expected .json/.jsonl/.parquet files of one kind, got suffixes {sorted(suffixes)}"
        )
    split_name = split.split("[")[0]
    return datasets.load_dataset(builders.pop(), data_files={split_name: local}, split=split, **kwargs)


def load_k_dataset(
    name_or_path: str,
    split: str = "train",
    schema: str = "auto",
    *,
    data_files=None,
    revision: str | None = None,
    cache_dir: str | None = None,
    max_rows: int | None = None,
    on_bad: str = "drop",
    num_proc: int | None = None,
    warn: bool = True,
    load_kwargs: Mapping[str, Any] | None = None,
    **adapter_kwargs,
) -> Prepared:
    """Load a K-response dataset with ``datasets.load_dataset`` and map it to the canonical format.

    Args:
        name_or_path: a hub dataset name (``"HuggingFaceH4/ultrafeedback_binarized"``) or a local
            ``.json`` / ``.jsonl`` / ``.parquet`` file, a glob, or a folder of such files.
        split: the split to load (hub: e.g. ``"train_prefs"``; local files: any name, default
            ``"train"``; slicing such as ``"train[:1000]"`` works for hub datasets).
        schema: ``"auto"`` (from the columns) or a key of :data:`SCHEMAS`.
        data_files / revision / cache_dir / load_kwargs: passed to ``datasets.load_dataset``.
        max_rows: keep only the first ``max_rows`` source rows (smoke runs).
        on_bad, num_proc, warn, adapter_kwargs: see :func:`canonicalize`.

    Returns:
        ``Prepared(dataset, stats)``: the canonical dataset (columns ``prompt``, ``responses``,
        ``rewards``) and its :class:`DataStats`.
    """
    kwargs = dict(load_kwargs or {})
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    ds = load_source(name_or_path, split, data_files=data_files, revision=revision, **kwargs)
    if isinstance(ds, datasets.DatasetDict):  # pragma: no cover - split=None passed explicitly
        raise ValueError(f"split: got several splits {list(ds)}; pass one")
    if max_rows is not None:
        ds = ds.select(range(min(int(max_rows), len(ds))))
    if schema == "auto":
        hub_schema = _SCHEMA_ALIASES.get(str(name_or_path).lower())
        schema = hub_schema if hub_schema is not None else "auto"
    return canonicalize(
        ds,
        schema,
        on_bad=on_bad,
        source=f"{name_or_path}:{split}",
        num_proc=num_proc,
        warn=warn,
        **adapter_kwargs,
    )


PAIR_RULES = ("best_vs_random", "best_vs_worst")


def to_pairwise(
    data,
    rule: str = "best_vs_random",
    *,
    seed: int = 0,
    pair_rewards: str = "scores",
    warn: bool = True,
) -> Prepared:
    """Canonical K-response rows -> canonical K = 2 pairs, chosen first (the pairwise twin of K-way data).

    Rules: ``"best_vs_random"`` pairs the highest-reward response with one drawn uniformly from
    those with a strictly LOWER reward (how ``HuggingFaceH4/ultrafeedback_binarized`` was made from
    UltraFeedback); ``"best_vs_worst"`` with the lowest-reward one. Ties for the best keep the
    first. A row whose rewards are all equal has no pair and is dropped and counted
    (:attr:`Reason.TIED_REWARDS`). The draw for row i uses ``random.Random(seed * 1_000_003 + i)``,
    so it does not depend on other rows.

    ``pair_rewards="scores"`` keeps the two rewards (soft labels for K-way losses on the pairs);
    ``"binary"`` writes ``[1.0, 0.0]`` (hard labels, as :func:`from_pairwise` does). The pairwise
    losses read only the order.

    Returns ``Prepared(dataset, stats)`` (columns ``prompt``, ``responses``, ``rewards``).
    """
    import random

    if rule not in PAIR_RULES:
        raise ValueError(f"rule: expected one of {PAIR_RULES}, got {rule!r}")
    if pair_rewards not in ("scores", "binary"):
        raise ValueError(f"pair_rewards: expected 'scores' or 'binary', got {pair_rewards!r}")
    ds = _as_dataset(data)
    for col in ("prompt", "responses", "rewards"):
        if col not in ds.column_names:
            raise ValueError(
                f"{col}: column missing (canonical format needed; got columns {ds.column_names})"
            )

    def pair(example, idx):
        rewards = [float(r) for r in example["rewards"]]
        responses = example["responses"]
        if len(rewards) != len(responses) or len(rewards) < 2:
            return {"responses": [], "rewards": [], "_drop_reason": Reason.TOO_FEW_RESPONSES}
        best = max(range(len(rewards)), key=lambda i: (rewards[i], -i))  # first of the tied best
        lower = [i for i in range(len(rewards)) if rewards[i] < rewards[best]]
        if not lower:
            return {"responses": [], "rewards": [], "_drop_reason": Reason.TIED_REWARDS}
        if rule == "best_vs_worst":
            other = min(lower, key=lambda i: (rewards[i], i))
        else:
            other = random.Random(seed * 1_000_003 + idx).choice(lower)
        r = [rewards[best], rewards[other]] if pair_rewards == "scores" else [1.0, 0.0]
        return {"responses": [responses[best], responses[other]], "rewards": r, "_drop_reason": ""}

    mapped = ds.map(pair, with_indices=True, desc=f"pairs ({rule})")
    reasons = Counter(r for r in mapped["_drop_reason"] if r)
    kept = mapped.filter(lambda r: not r, input_columns="_drop_reason").remove_columns("_drop_reason")
    kept = kept.select_columns(["prompt", "responses", "rewards"]).flatten_indices()
    stats = DataStats(
        source=f"to_pairwise({rule})",
        stage="pairs",
        rows_in=len(ds),
        rows_kept=len(kept),
        dropped=dict(reasons),
        examples={r: f"{n} rows with no strictly lower reward" for r, n in reasons.items()},
        k_counts=_k_counts(kept, "rewards"),
    )
    stats.report(warn=warn)
    return Prepared(kept, stats)


def save_k_dataset(data, path: str | Path) -> Path:
    """Write canonical rows (a list of dicts or a Dataset) as ``.jsonl`` / ``.json`` / ``.parquet``.

    JSONL and Parquet round-trip exactly through :func:`load_k_dataset`; a ``.json`` array comes
    back with rewards rounded to 10 significant digits (``datasets`` re-serialises JSON arrays
    through pandas).
    """
    path = Path(path)
    if path.suffix not in (".jsonl", ".json", ".parquet", ".pq"):
        raise ValueError(f"path: expected a .jsonl, .json or .parquet file name, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".parquet", ".pq"):
        _as_dataset(data).to_parquet(str(path))
        return path
    # json module, not Dataset.to_json: pandas would round the rewards to 10 digits
    rows = data.to_list() if isinstance(data, datasets.Dataset) else list(data)
    with open(path, "w", encoding="utf-8") as f:
        if path.suffix == ".jsonl":
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
        else:
            json.dump(rows, f, ensure_ascii=False, allow_nan=False)
            f.write("\n")
    return path


# ----------------------------------------------------------------------------------------------
# Tokenisation: chat template, the authors' truncation, EOS once, drops counted
# ----------------------------------------------------------------------------------------------


def _uses_chat_template(tokenizer, use_chat_template: bool | None) -> bool:
    has = getattr(tokenizer, "chat_template", None) is not None
    if use_chat_template is None:
        return has
    if use_chat_template and not has:
        raise ValueError("use_chat_template: True, but the tokenizer has no chat_template")
    return bool(use_chat_template)


def _cut_after_last_eos(text: str, eos_token: str | None) -> str:
    """Drop template whitespace after a final EOS ("...<|im_end|>\\n" -> "...<|im_end|>") so that
    the EOS check sees it and does not append a second one."""
    if eos_token and eos_token in text:
        head, _, tail = text.rpartition(eos_token)
        if not tail.strip():
            return head + eos_token
    return text


def render_example(
    example: Mapping, tokenizer, *, use_chat_template: bool | None = None
) -> tuple[str, list[str]]:
    """Prompt text and the K response continuation texts of a canonical example.

    With a chat template: ``prompt_text = apply_chat_template(prompt, add_generation_prompt=True)``
    and each response is what ``apply_chat_template(prompt + response)`` adds after it (so it
    carries the template's end-of-turn tokens). A text prompt / response is wrapped as a user /
    assistant message. Without a template (or ``use_chat_template=False``): the texts as they are
    (plain concatenation); conversational data then raises, since it has no rendering.
    """
    chat = _uses_chat_template(tokenizer, use_chat_template)
    prompt, responses = example["prompt"], example["responses"]
    if not chat:
        if not isinstance(prompt, str) or any(not isinstance(r, str) for r in responses):
            raise ValueError(
                "prompt/responses: conversational data needs a tokenizer with a chat_template "
                "(set tokenizer.chat_template, or convert the data to plain text)"
            )
        return prompt, list(responses)
    prompt_msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    prompt_text = tokenizer.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
    texts = []
    for i, r in enumerate(responses):
        msgs = r if isinstance(r, list) else [{"role": "assistant", "content": r}]
        full = tokenizer.apply_chat_template(prompt_msgs + msgs, tokenize=False)
        if not full.startswith(prompt_text):
            raise ValueError(
                f"responses[{i}]: the chat template does not render prompt + response as a continuation "
                "of the prompt rendered with add_generation_prompt=True; cannot split prompt from response"
            )
        texts.append(_cut_after_last_eos(full[len(prompt_text) :], getattr(tokenizer, "eos_token", None)))
    return prompt_text, texts


def _check_lengths(max_length: int, max_prompt_length: int) -> None:
    for name, v in (("max_length", max_length), ("max_prompt_length", max_prompt_length)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    if max_prompt_length >= max_length:
        raise ValueError(
            f"max_prompt_length: expected < max_length ({max_length}) so responses keep some tokens, "
            f"got {max_prompt_length}"
        )


def tokenize_k_example(
    example: Mapping,
    tokenizer,
    *,
    max_length: int = 1024,
    max_prompt_length: int = 512,
    use_chat_template: bool | None = None,
    add_eos: bool = True,
    add_bos: bool = True,
    response_budget: str = "authors",
    min_responses: int = 2,
) -> dict:
    """Tokenise one canonical example with the authors' truncation.

    Steps (the authors' ``NCADataCollatorWithPadding.tokenize_batch_element``; MATH.md, Facts about
    the authors' released setup: max length 1024, max prompt length 512, keep the LAST prompt
    tokens):

    1. Render (:func:`render_example`) and tokenise prompt and responses separately
       (``add_special_tokens=False``; without a chat template the BOS token is prepended to the
       prompt when the tokenizer has one and ``add_bos``).
    2. Append EOS to each response unless it already ends with EOS (never twice).
    3. If prompt + longest response > ``max_length``: keep the LAST ``max_prompt_length`` prompt
       tokens. If still too long: cut every response to ``max_length - max_prompt_length``
       tokens (``response_budget="authors"``) or to ``max_length - len(prompt)``
       (``"fill"``, uses the room a short prompt leaves). A cut response loses its EOS.
    4. A response left with no tokens is removed (:attr:`Reason.EMPTY_RESPONSE`); if every
       response's text is empty the example is dropped (``all_responses_empty``), as it is with
       fewer than ``min_responses`` left.

    Returns ``{"prompt_ids", "response_ids", "rewards", "max_seq_len", "prompt_truncated",
    "responses_truncated", "responses_removed"}``; the collator builds labels with the prompt
    masked. Raises :class:`ExampleError` for an unusable example.
    """
    _check_lengths(max_length, max_prompt_length)
    if response_budget not in ("authors", "fill"):
        raise ValueError(f"response_budget: expected 'authors' or 'fill', got {response_budget!r}")
    ex = from_canonical(example, min_responses=min_responses)
    if all(not _content(r).strip() for r in ex["responses"]):
        raise ExampleError(Reason.ALL_RESPONSES_EMPTY, "responses", "every response is empty text")
    chat = _uses_chat_template(tokenizer, use_chat_template)
    prompt_text, response_texts = render_example(ex, tokenizer, use_chat_template=chat)
    enc = tokenizer([prompt_text, *response_texts], add_special_tokens=False)["input_ids"]
    prompt_ids, response_ids = list(enc[0]), [list(r) for r in enc[1:]]
    bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
    if not chat and add_bos and bos is not None and (not prompt_ids or prompt_ids[0] != bos):
        prompt_ids.insert(0, bos)
    if add_eos and eos is not None:
        for r in response_ids:
            if not r or r[-1] != eos:
                r.append(eos)
    if not prompt_ids:
        raise ExampleError(Reason.EMPTY_PROMPT, "prompt", "has no tokens")

    longest = max(len(r) for r in response_ids)
    prompt_truncated = False
    if len(prompt_ids) + longest > max_length and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[-max_prompt_length:]  # keep the end: the question is usually last
        prompt_truncated = True
    n_cut = 0
    if len(prompt_ids) + longest > max_length:
        budget = (
            max_length - max_prompt_length if response_budget == "authors" else max_length - len(prompt_ids)
        )
        n_cut = sum(len(r) > budget for r in response_ids)
        response_ids = [r[:budget] for r in response_ids]

    keep = [i for i, r in enumerate(response_ids) if r]
    removed = len(response_ids) - len(keep)
    if not keep:
        raise ExampleError(Reason.ALL_RESPONSES_EMPTY, "responses", "no response has any token left")
    if len(keep) < min_responses:
        raise ExampleError(
            Reason.TOO_FEW_RESPONSES, "responses", f"only {len(keep)} response(s) left with tokens"
        )
    response_ids = [response_ids[i] for i in keep]
    rewards = [ex["rewards"][i] for i in keep]
    return {
        "prompt_ids": prompt_ids,
        "response_ids": response_ids,
        "rewards": rewards,
        "max_seq_len": len(prompt_ids) + max(len(r) for r in response_ids),
        "prompt_truncated": prompt_truncated,
        "responses_truncated": n_cut,
        "responses_removed": removed,
    }


_TOKENIZED_FEATURES = datasets.Features(
    {
        "prompt_ids": datasets.List(datasets.Value("int32")),
        "response_ids": datasets.List(datasets.List(datasets.Value("int32"))),
        "rewards": datasets.List(datasets.Value("float64")),
        "max_seq_len": datasets.Value("int32"),
        "prompt_truncated": datasets.Value("bool"),
        "responses_truncated": datasets.Value("int32"),
        "responses_removed": datasets.Value("int32"),
        "_drop_reason": datasets.Value("string"),
        "_drop_detail": datasets.Value("string"),
    }
)


def tokenize_k_dataset(
    data,
    tokenizer,
    *,
    max_length: int = 1024,
    max_prompt_length: int = 512,
    use_chat_template: bool | None = None,
    add_eos: bool = True,
    add_bos: bool = True,
    response_budget: str = "authors",
    min_responses: int = 2,
    on_bad: str = "drop",
    num_proc: int | None = None,
    source: str = "<memory>",
    warn: bool = True,
) -> Prepared:
    """:func:`tokenize_k_example` over a canonical dataset (or list of rows), drops counted.

    Returns ``Prepared(dataset, stats)``; the dataset has the columns ``prompt_ids`` (list[int]),
    ``response_ids`` (K_i lists of int), ``rewards`` (K_i floats) and ``max_seq_len`` (int, the
    longest prompt + response; used for length grouping). ``on_bad="raise"`` raises the first
    unusable example instead of dropping it.
    """
    _check_lengths(max_length, max_prompt_length)
    if on_bad not in ("drop", "raise"):
        raise ValueError(f"on_bad: expected 'drop' or 'raise', got {on_bad!r}")
    ds = _rows_or_dataset(data)
    columns = _column_names(ds)
    for col in ("prompt", "responses", "rewards"):
        if col not in columns:
            raise ValueError(f"{col}: column missing (canonical format needed; got columns {columns})")
    kwargs = dict(
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        use_chat_template=use_chat_template,
        add_eos=add_eos,
        add_bos=add_bos,
        response_budget=response_budget,
        min_responses=min_responses,
    )
    blank = {
        "prompt_ids": [],
        "response_ids": [],
        "rewards": [],
        "max_seq_len": 0,
        "prompt_truncated": False,
        "responses_truncated": 0,
        "responses_removed": 0,
    }

    kept, dropped, examples = _map_counting_drops(
        ds,
        lambda example: tokenize_k_example(example, tokenizer, **kwargs),
        blank,
        _TOKENIZED_FEATURES,
        on_bad=on_bad,
        num_proc=num_proc,
        desc="tokenize (K responses)",
        stage="tokenize",
    )
    tab = kept.data
    prompts_truncated = int(pc.sum(tab.column("prompt_truncated")).as_py() or 0) if len(kept) else 0
    responses_truncated = int(pc.sum(tab.column("responses_truncated")).as_py() or 0) if len(kept) else 0
    removed = int(pc.sum(tab.column("responses_removed")).as_py() or 0) if len(kept) else 0
    kept = kept.remove_columns(["prompt_truncated", "responses_truncated", "responses_removed"])
    stats = DataStats(
        source=source,
        stage="tokenize",
        rows_in=len(ds),
        rows_kept=len(kept),
        dropped=dropped,
        examples=examples,
        responses_dropped={Reason.EMPTY_RESPONSE: removed} if removed else {},
        prompts_truncated=prompts_truncated,
        responses_truncated=responses_truncated,
        k_counts=_k_counts(kept, "rewards"),
    )
    stats.report(warn=warn)
    return Prepared(kept, stats)


def prepare_k_dataset(
    name_or_path,
    tokenizer,
    *,
    split: str = "train",
    schema: str = "auto",
    max_length: int = 1024,
    max_prompt_length: int = 512,
    use_chat_template: bool | None = None,
    response_budget: str = "authors",
    max_rows: int | None = None,
    on_bad: str = "drop",
    num_proc: int | None = None,
    load_kwargs: Mapping[str, Any] | None = None,
    cache_dir: str | None = None,
    **adapter_kwargs,
) -> Prepared:
    """Load (:func:`load_k_dataset`) + tokenise (:func:`tokenize_k_dataset`) in one call.

    ``name_or_path`` may also be a ``datasets.Dataset`` or a list of rows (then only
    :func:`canonicalize` runs before tokenising). Returns ``Prepared(dataset, stats)`` with the
    two steps' stats chained; one :class:`DroppedExamplesWarning` if anything was dropped.
    """
    if isinstance(name_or_path, str | os.PathLike):
        loaded = load_k_dataset(
            str(name_or_path),
            split,
            schema,
            max_rows=max_rows,
            on_bad=on_bad,
            num_proc=num_proc,
            warn=False,
            load_kwargs=load_kwargs,
            cache_dir=cache_dir,
            **adapter_kwargs,
        )
        source = f"{name_or_path}:{split}"
    else:
        loaded = canonicalize(
            name_or_path, schema, on_bad=on_bad, num_proc=num_proc, warn=False, **adapter_kwargs
        )
        source = "<memory>"
    tokenized = tokenize_k_dataset(
        loaded.dataset,
        tokenizer,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        use_chat_template=use_chat_template,
        response_budget=response_budget,
        min_responses=adapter_kwargs.get("min_responses", 2),
        on_bad=on_bad,
        num_proc=num_proc,
        source=source,
        warn=False,
    )
    stats = loaded.stats.then(tokenized.stats)
    stats.source = source
    stats.report(warn=True)
    return Prepared(tokenized.dataset, stats)


# ----------------------------------------------------------------------------------------------
# Collation and batching
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class KResponseCollator:
    """B tokenised rows -> one padded batch of B·K sequences (prompt-major), for ``DataLoader``.

    Args:
        pad_token_id: the id written at padding positions (``tokenizer.pad_token_id``; use the EOS
            id for tokenizers without a pad token -- padding is masked everywhere).
        k: responses per prompt in every batch; rows with fewer are padded and masked, rows with
            more raise. ``None``: the largest K in each batch.
        pad_to_multiple_of: round T up (e.g. 8 for tensor cores).
        label_pad_token_id: the ignore index of the labels (-100).

    Returns a dict of tensors, N = B·K sequences, row ``b * K + k`` = response k of prompt b:

    ========================  =============  ==================================================
    ``input_ids``             [N, T] int64   prompt + response tokens, right-padded
    ``attention_mask``        [N, T] int64   1 on real tokens
    ``labels``                [N, T] int64   = input_ids on response tokens, -100 on prompt/pad
    ``rewards``               [B, K] fp32    0 where ``mask`` is False
    ``mask``                  [B, K] bool    False for the padding responses of short rows
    ``response_lengths``      [B, K] int64   scored tokens per response (0 where masked)
    ``prompt_lengths``        [B]    int64   prompt tokens (same for the K rows of a prompt)
    ``ref_logps``             [B, K] fp32    only when every row has a ``ref_logps`` entry
    ========================  =============  ==================================================

    A padding response is a 1-token dummy sequence ``[pad]`` with attention 1 (an all-masked
    row would give NaNs in some attention kernels) and label -100, so its log-prob is exactly 0.
    ``sequence_logps(logits, batch["labels"]).view(B, K)`` is then the loss input. Prompt
    sharing (computing the prompt's tokens once per K responses) can be built from
    ``prompt_lengths``: the first ``prompt_lengths[b]`` tokens of rows ``b*K .. b*K+K-1`` are
    identical.
    """

    pad_token_id: int
    k: int | None = None
    pad_to_multiple_of: int | None = None
    label_pad_token_id: int = IGNORE_INDEX

    def __post_init__(self):
        if isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, int):
            raise ValueError(
                f"pad_token_id: expected an int token id (tokenizer.pad_token_id or eos_token_id), got {self.pad_token_id!r}"
            )
        if self.k is not None and (not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"k: expected a positive int or None, got {self.k!r}")

    def __call__(self, rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("rows: expected at least one example")
        for i, r in enumerate(rows):
            for key in ("prompt_ids", "response_ids", "rewards"):
                if key not in r:
                    raise ValueError(f"{key}: missing from row {i} (tokenise with tokenize_k_dataset first)")
            if len(r["response_ids"]) != len(r["rewards"]):
                raise ValueError(
                    f"rewards: row {i} has {len(r['rewards'])} rewards for {len(r['response_ids'])} responses"
                )
        B = len(rows)
        K = self.k if self.k is not None else max(len(r["response_ids"]) for r in rows)
        too_many = [i for i, r in enumerate(rows) if len(r["response_ids"]) > K]
        if too_many:
            raise ValueError(
                f"response_ids: row {too_many[0]} has {len(rows[too_many[0]]['response_ids'])} responses, "
                f"more than the collator's k={K}"
            )
        seq_lens = [
            [
                len(r["prompt_ids"]) + len(r["response_ids"][k]) if k < len(r["response_ids"]) else 1
                for k in range(K)
            ]
            for r in rows
        ]
        T = max(max(s) for s in seq_lens)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            T = (T + m - 1) // m * m
        N = B * K
        input_ids = torch.full((N, T), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((N, T), dtype=torch.long)
        labels = torch.full((N, T), self.label_pad_token_id, dtype=torch.long)
        rewards = torch.zeros((B, K), dtype=torch.float32)
        mask = torch.zeros((B, K), dtype=torch.bool)
        response_lengths = torch.zeros((B, K), dtype=torch.long)
        prompt_lengths = torch.zeros(B, dtype=torch.long)
        has_ref = all(r.get("ref_logps") is not None for r in rows)
        ref = torch.zeros((B, K), dtype=torch.float32) if has_ref else None
        for b, r in enumerate(rows):
            p = torch.as_tensor(r["prompt_ids"], dtype=torch.long)
            lp = len(p)
            prompt_lengths[b] = lp
            if has_ref and len(r["ref_logps"]) != len(r["response_ids"]):
                raise ValueError(
                    f"ref_logps: row {b} has {len(r['ref_logps'])} values for {len(r['response_ids'])} responses"
                )
            for k in range(K):
                n = b * K + k
                if k >= len(r["response_ids"]):
                    attention_mask[n, 0] = 1  # dummy 1-token sequence: [pad], label -100
                    continue
                resp = torch.as_tensor(r["response_ids"][k], dtype=torch.long)
                lr = len(resp)
                input_ids[n, :lp] = p
                input_ids[n, lp : lp + lr] = resp
                attention_mask[n, : lp + lr] = 1
                labels[n, lp : lp + lr] = resp
                rewards[b, k] = float(r["rewards"][k])
                mask[b, k] = True
                response_lengths[b, k] = lr
                if has_ref:
                    ref[b, k] = float(r["ref_logps"][k])
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "rewards": rewards,
            "mask": mask,
            "response_lengths": response_lengths,
            "prompt_lengths": prompt_lengths,
        }
        if has_ref:
            batch["ref_logps"] = ref
        return batch


def example_lengths(dataset) -> np.ndarray:
    """Per-row padded-cost proxy ``[num_rows]``: the longest prompt + response (``max_seq_len``)."""
    if isinstance(dataset, datasets.Dataset) and "max_seq_len" in dataset.column_names:
        return np.asarray(dataset.data.column("max_seq_len").to_numpy(), dtype=np.int64)
    return np.asarray(
        [len(r["prompt_ids"]) + max(len(x) for x in r["response_ids"]) for r in dataset], dtype=np.int64
    )


class LengthGroupedSampler(Sampler[int]):
    """Indices in batches of similar length (less padding), still random from epoch to epoch.

    The HF Trainer's recipe: shuffle, cut into mega-batches of ``batch_size * mega_batch_mult``
    rows, sort each by length (longest first), cut into batches, shuffle the batch order and put
    the batch holding the longest row first (an out-of-memory error shows up at step 0). Yields
    row indices; use it with ``DataLoader(..., batch_size=batch_size, sampler=...)`` so the
    batches come out as formed. Every row is one prompt with all its K responses.
    """

    def __init__(self, lengths, batch_size: int, *, mega_batch_mult: int = 50, seed: int = 0):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.mega = max(1, int(mega_batch_mult)) * self.batch_size
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).numpy()
        batches = []
        for start in range(0, len(perm), self.mega):
            mb = perm[start : start + self.mega]
            mb = mb[np.argsort(-self.lengths[mb], kind="stable")]
            batches.extend(mb[i : i + self.batch_size] for i in range(0, len(mb), self.batch_size))
        if not batches:
            return iter(())
        order = torch.randperm(len(batches), generator=g).tolist()
        longest = max(range(len(batches)), key=lambda i: self.lengths[batches[i]].max())
        order.remove(longest)
        order.insert(0, longest)
        # Full batches first so a short batch, if any, stays at the end (DataLoader cuts by count).
        full = [i for i in order if len(batches[i]) == self.batch_size]
        short = [i for i in order if len(batches[i]) != self.batch_size]
        return iter([int(x) for i in full + short for x in batches[i]])


def make_dataloader(
    dataset,
    collator: Callable,
    batch_size: int,
    *,
    shuffle: bool = True,
    group_by_length: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
    mega_batch_mult: int = 50,
) -> DataLoader:
    """A ``DataLoader`` over prompts (each row = one prompt + its K responses, so the K responses
    always share a batch; no special sampler is needed for that).

    ``shuffle`` uses a seeded generator; ``group_by_length`` uses :class:`LengthGroupedSampler`
    (random too, less padding). Pass the result to ``accelerator.prepare``.
    """
    if group_by_length:
        sampler = LengthGroupedSampler(
            example_lengths(dataset), batch_size, mega_batch_mult=mega_batch_mult, seed=seed
        )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collator,
            drop_last=drop_last,
            num_workers=num_workers,
        )
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=collator,
        drop_last=drop_last,
        num_workers=num_workers,
    )
