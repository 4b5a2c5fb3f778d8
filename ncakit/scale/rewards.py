"""Rewards and judges for :mod:`ncakit.scale.generate`: what scores the K sampled responses.

Two shapes, one entry point (:func:`load_reward`):

- :class:`RewardFn` -- per response: ``reward(prompts, responses) -> list[float]`` over aligned flat
  lists. From a Python callable ``fn(prompt, response) -> float``, a ``"module:function"`` string
  (``"ncakit.scale.tinylm:reward"``, the offline default) or a sequence-classification reward model
  (:func:`reward_model_fn`: one output, scored in length-sorted batches on the accelerator).
- :class:`Judge` -- per prompt, over lists: ``judge(prompts, completions) -> list[list[float]]``
  (``completions[i]`` holds the K responses of ``prompts[i]``; K scores back per prompt), the shape
  of an LLM judge that compares or ranks a prompt's responses, or batches its API calls.
  ``generate_k_dataset`` calls it ONCE per batch of prompts (every K responses of each), not once
  per pair. Loaded from any object with that ``judge`` method, a function marked with
  :func:`list_judge`, a TRL judge (:func:`from_trl_judge`: ``BaseRankJudge`` ranks -> reward
  ``-rank``; ``BasePairwiseJudge`` for K = 2 -> winner 1, loser 0; trl is never imported here) or a
  per-item API judge made concurrent (:func:`concurrent_judge`: a thread pool, order preserved).

Both have ``score_groups(prompts, groups) -> list[list[float]]``, the one call the generator makes.
This module imports ``transformers`` / ``accelerate`` only inside :func:`reward_model_fn`.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "RewardFn",
    "Judge",
    "list_judge",
    "from_trl_judge",
    "concurrent_judge",
    "reward_model_fn",
    "load_reward",
    "check_reward",
    "chat_messages",
]


def chat_messages(prompt) -> list[dict]:
    """A prompt as chat messages: a message list as is, any other value as one user turn."""
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]


def _finite_floats(name: str, raw, where: str) -> list[float]:
    try:
        scores = [float(s) for s in raw]
    except (TypeError, ValueError):
        bad = next(s for s in raw if not isinstance(s, int | float))
        raise ValueError(
            f"reward {name!r}: expected a number per response, got {type(bad).__name__} {bad!r}{where}"
        ) from None
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise ValueError(f"reward {name!r}: non-finite score {scores[bad[0]]} for response {bad[0]}{where}")
    return scores


@dataclass
class RewardFn:
    """A batched reward: ``scores = reward(prompts, responses)`` (aligned lists) -> ``list[float]``."""

    name: str
    fn: Callable[[Sequence, Sequence[str]], list[float]]

    def __call__(self, prompts: Sequence, responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(
                f"responses: expected {len(prompts)} entries (one per prompt), got {len(responses)}"
            )
        scores = _finite_floats(self.name, list(self.fn(prompts, responses)), "")
        if len(scores) != len(prompts):
            raise ValueError(
                f"reward {self.name!r}: returned {len(scores)} scores for {len(prompts)} responses"
            )
        return scores

    def score_groups(self, prompts: Sequence, groups: Sequence[Sequence[str]]) -> list[list[float]]:
        """K scores per prompt from ONE call over the flattened (prompt, response) pairs."""
        flat_p = [p for p, g in zip(prompts, groups) for _ in g]
        flat = self(flat_p, [r for g in groups for r in g])
        out, i = [], 0
        for g in groups:
            out.append(flat[i : i + len(g)])
            i += len(g)
        return out


@dataclass
class Judge:
    """A list-taking judge: ``judge(prompts, completions) -> list[list[float]]``, K scores per prompt.

    ``completions[i]`` is the list of responses of ``prompts[i]``; the answer must have one list per
    prompt with one finite number per response. ``k`` is the one K the judge can score (2 for a
    pairwise judge), ``None`` for any."""

    name: str
    fn: Callable[[list, list[list[str]]], list[list[float]]]
    k: int | None = None

    def judge(self, prompts: Sequence, completions: Sequence[Sequence[str]]) -> list[list[float]]:
        prompts, completions = list(prompts), [list(c) for c in completions]
        if len(prompts) != len(completions):
            raise ValueError(
                f"completions: expected {len(prompts)} lists (one per prompt), got {len(completions)}"
            )
        raw = self.fn(prompts, completions)
        raw = list(raw) if raw is not None else []
        if len(raw) != len(prompts):
            raise ValueError(
                f"judge {self.name!r}: returned {len(raw)} score lists for {len(prompts)} prompts"
            )
        out = []
        for i, (scores, group) in enumerate(zip(raw, completions)):
            if isinstance(scores, str | bytes) or not isinstance(scores, Sequence):
                raise ValueError(
                    f"judge {self.name!r}: expected a list of {len(group)} scores for prompt {i}, "
                    f"got {type(scores).__name__} {scores!r}"
                )
            scores = _finite_floats(self.name, list(scores), f" (prompt {i})")
            if len(scores) != len(group):
                raise ValueError(
                    f"judge {self.name!r}: returned {len(scores)} scores for the {len(group)} responses "
                    f"of prompt {i}"
                )
            out.append(scores)
        return out

    __call__ = judge
    score_groups = judge


def list_judge(fn: Callable | None = None, *, k: int | None = None):
    """Mark ``fn(prompts, completions) -> list[list[float]]`` as list-taking, so ``--reward
    module:fn`` loads it as a :class:`Judge` (called once per batch), not as a per-pair reward."""

    def mark(f):
        f.__ncakit_list_judge__ = k if k is not None else True
        return f

    return mark(fn) if fn is not None else mark


def _trl_kind(obj) -> str | None:
    """``"rank"`` / ``"pairwise"`` for an instance of a TRL judge class (by its bases' names, so
    trl is never imported; trl >= 1 keeps them under ``trl.experimental.judges``)."""
    names = {c.__name__ for c in (obj if inspect.isclass(obj) else type(obj)).__mro__}
    if "BaseRankJudge" in names:
        return "rank"
    if "BasePairwiseJudge" in names:
        return "pairwise"
    return None


def from_trl_judge(judge, *, shuffle_order: bool = True, name: str | None = None) -> Judge:
    """A TRL judge as a :class:`Judge` (one ``judge.judge`` call per batch of prompts).

    - ``BaseRankJudge.judge(prompts, completions, shuffle_order)`` returns, per prompt, the
      completion indices best first (TRL's docstring: ``[1, 2, 0]``: completion 1 is the best, then
      2, then 0). Completion ``j`` at position ``r`` (its rank, 0 = best) gets reward ``-r``.
    - ``BasePairwiseJudge`` (K = 2): the index of the better completion -> winner 1.0, loser 0.0;
      ``-1`` (TRL's "the judge failed") is an error naming the prompt.

    Prompts are passed as TRL judges take them: strings (a message list becomes its last user turn).
    """
    kind = _trl_kind(judge)
    if kind is None:
        raise TypeError(
            f"reward: expected a TRL BaseRankJudge or BasePairwiseJudge, got {type(judge).__name__}"
        )
    label = name or f"trl:{type(judge).__name__}"

    def text(prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        return users[-1] if users else "\n".join(m["content"] for m in prompt)

    def rank(prompts, completions):
        orders = judge.judge([text(p) for p in prompts], completions, shuffle_order=shuffle_order)
        out = []
        for i, (order, group) in enumerate(zip(orders, completions)):
            order = [int(j) for j in order]
            if sorted(order) != list(range(len(group))):
                raise ValueError(
                    f"judge {label!r}: expected a permutation of 0..{len(group) - 1} for prompt {i} "
                    f"(completion indices best first), got {order}"
                )
            scores = [0.0] * len(group)
            for r, j in enumerate(order):
                scores[j] = -float(r)
            out.append(scores)
        return out

    def pairwise(prompts, completions):
        winners = judge.judge([text(p) for p in prompts], completions, shuffle_order=shuffle_order)
        out = []
        for i, w in enumerate(winners):
            if int(w) not in (0, 1):
                raise ValueError(
                    f"judge {label!r}: expected the winner 0 or 1 for prompt {i}, got {w!r}"
                    + (" (the judge failed on it)" if int(w) == -1 else "")
                )
            out.append([1.0, 0.0] if int(w) == 0 else [0.0, 1.0])
        return out

    if kind == "rank":
        return Judge(label, rank)
    return Judge(label, pairwise, k=2)


def concurrent_judge(fn: Callable, *, max_workers: int = 8, name: str | None = None) -> Judge:
    """A per-item judge ``fn(prompt, response) -> float`` (an API call, say) as a :class:`Judge`
    that scores a batch's items on ``max_workers`` threads (``ThreadPoolExecutor``). Scores come
    back in the order of the items whatever order the calls finish in; a failed call stops the
    batch with one line naming the item (prompt ``i``, response ``j``) and the error."""
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(
            f"max_workers: expected an int >= 1 (threads calling the judge), got {max_workers!r}"
        )
    label = name or getattr(fn, "__name__", "judge")

    def score(prompts, completions):
        items = [(i, j, p, r) for i, (p, g) in enumerate(zip(prompts, completions)) for j, r in enumerate(g)]

        def one(item):
            i, j, p, r = item
            try:
                return fn(p, r)
            except Exception as err:
                raise RuntimeError(
                    f"judge {label!r}: item (prompt {i}, response {j}) failed: {type(err).__name__}: {err}"
                ) from err

        with ThreadPoolExecutor(max_workers=min(max_workers, max(1, len(items)))) as pool:
            flat = list(pool.map(one, items))  # map yields in submission order
        out, n = [], 0
        for g in completions:
            out.append(flat[n : n + len(g)])
            n += len(g)
        return out

    judge = Judge(label, score)
    judge.fn.__wrapped_reward__ = fn
    return judge


def _per_pair(fn: Callable) -> Callable:
    def per_pair(prompts, responses):
        return [fn(p, r) for p, r in zip(prompts, responses)]

    per_pair.__wrapped_reward__ = fn
    return per_pair


def _sort_by_length(lengths: Sequence[int]) -> list[int]:
    """Indices longest first: batches of similar lengths pad less (the caller restores the order)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def reward_model_fn(
    path: str, *, batch_size: int = 8, device=None, dtype=None, max_length: int = 2048
) -> RewardFn:
    """A reward model (``AutoModelForSequenceClassification``, one output) as a :class:`RewardFn`.

    Each (prompt, response) is rendered with the REWARD model's chat template when it has one
    (prompt messages + an assistant turn), else as ``prompt + "\\n" + response``; the score is
    ``logits[:, 0]`` at the last real token (transformers picks it from ``pad_token_id``).

    Scored in batches of ``batch_size`` on ``device`` (default: the accelerator of this process,
    accelerate's ``PartialState().device``), in ``dtype`` (default: bfloat16 on CUDA, float32
    elsewhere). Texts are tokenized once and sorted by length, longest first, so a batch pads to
    a similar length; the scores come back in the order of the inputs. Right padding with the
    attention mask: a response's score does not depend on its batch (up to float rounding).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if device is None:
        from accelerate import PartialState

        device = PartialState().device
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)
    if model.config.num_labels != 1:
        raise ValueError(
            f"reward: {path} has num_labels={model.config.num_labels}; a reward model has 1 output"
        )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    model.to(device).eval()
    chat = bool(getattr(tok, "chat_template", None))

    def text(prompt, response) -> str:
        if chat:
            msgs = chat_messages(prompt) + [{"role": "assistant", "content": response}]
            return tok.apply_chat_template(msgs, tokenize=False)
        p = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        return f"{p}\n{response}"

    @torch.no_grad()
    def score(prompts, responses):
        ids = [
            tok(text(p, r), truncation=True, max_length=max_length, add_special_tokens=not chat)["input_ids"]
            for p, r in zip(prompts, responses)
        ]
        order = _sort_by_length([len(x) for x in ids])
        out: list[float] = [0.0] * len(ids)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tok.pad({"input_ids": [ids[i] for i in idx]}, padding=True, return_tensors="pt")
            logits = model(**{k: v.to(device) for k, v in enc.items()}).logits
            for i, s in zip(idx, logits[:, 0].float().cpu().tolist()):
                out[i] = s
        return out

    score.model, score.tokenizer = model, tok  # for inspection (device, dtype) and reuse
    return RewardFn(f"reward_model:{path}", score)


def _from_object(obj, label: str, workers: int) -> RewardFn | Judge:
    if isinstance(obj, RewardFn | Judge):
        return obj
    if inspect.isclass(obj) and _trl_kind(obj) is not None:
        obj = obj()  # a TRL judge class named by "module:Class": its defaults
    if _trl_kind(obj) is not None:
        return from_trl_judge(obj)
    marked = getattr(obj, "__ncakit_list_judge__", None)
    if marked is not None and callable(obj):
        return Judge(label, obj, k=None if marked is True else marked)
    if not callable(obj) and callable(getattr(obj, "judge", None)):  # the Judge protocol
        return Judge(label, obj.judge, k=getattr(obj, "k", None))
    if callable(obj):
        if workers > 1:
            return concurrent_judge(obj, max_workers=workers, name=label)
        return RewardFn(label, _per_pair(obj))
    raise ValueError(
        f"reward: expected a callable, a Judge or a TRL judge for {label!r}, got {type(obj).__name__}"
    )


def load_reward(
    spec: str | Callable | RewardFn | Judge = "ncakit.scale.tinylm:reward", *, workers: int = 1, **rm_kwargs
) -> RewardFn | Judge:
    """A :class:`RewardFn` or :class:`Judge` from a spec.

    ``spec``: a :class:`RewardFn` / :class:`Judge` (as is); a callable ``fn(prompt, response) ->
    float`` (per pair; with ``workers > 1`` called on that many threads, :func:`concurrent_judge`);
    a function marked :func:`list_judge`, an object with ``judge(prompts, completions)`` or a TRL
    judge (a :class:`Judge`); a ``"module:name"`` string naming any of these; else a reward-model
    path / hub id (:func:`reward_model_fn`, which ``rm_kwargs`` reach)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(
            f"reward_workers: expected an int >= 1 (threads calling the reward), got {workers!r}"
        )
    if isinstance(spec, RewardFn | Judge):
        return spec
    if not isinstance(spec, str):
        if callable(spec) or callable(getattr(spec, "judge", None)):
            return _from_object(spec, getattr(spec, "__name__", type(spec).__name__), workers)
        raise TypeError(
            f"reward: expected a callable, 'module:function' or a reward-model path, got {spec!r}"
        )
    if not spec:
        raise TypeError("reward: expected a callable, 'module:function' or a reward-model path, got ''")
    if ":" in spec and not Path(spec).exists():
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"reward: cannot import module {module_name!r} of {spec!r} ({err})") from None
        obj = getattr(module, attr, None)
        if obj is None or not (callable(obj) or callable(getattr(obj, "judge", None))):
            raise ValueError(f"reward: {module_name!r} has no callable {attr!r}")
        return _from_object(obj, spec, workers)
    return reward_model_fn(spec, **rm_kwargs)


def check_reward(reward_fn: RewardFn | Judge, prompt, k: int = 2) -> None:
    """Call the reward (or judge) on one prompt with ``k`` test responses before any sampling: a
    wrong signature, a non-number or a judge that cannot score K responses fails now, naming the
    reward, not after the whole dataset was sampled."""
    if isinstance(reward_fn, Judge) and reward_fn.k is not None and reward_fn.k != k:
        raise ValueError(
            f"k: the judge {reward_fn.name!r} scores exactly {reward_fn.k} responses per prompt, got --k {k}"
        )
    what = "fn(prompt, response) -> a finite float"
    if isinstance(reward_fn, Judge) and getattr(reward_fn.fn, "__wrapped_reward__", None) is None:
        what = "judge(prompts, completions) -> K finite floats per prompt"
    try:
        if isinstance(reward_fn, Judge):
            reward_fn.judge([prompt], [[f"a test response {j}" for j in range(k)]])
        else:
            reward_fn([prompt], ["a test response"])
    except (TypeError, ValueError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not isinstance(reward_fn, Judge):
            raise  # a reward model's CUDA / runtime error is not a signature problem
        hint = ""
        target = getattr(reward_fn.fn, "__wrapped_reward__", None)
        if target is not None:
            try:
                hint = f" (its signature: {target.__name__}{inspect.signature(target)})"
            except (TypeError, ValueError, AttributeError):
                pass
        raise ValueError(
            f"reward: expected {what}, but {reward_fn.name!r} failed on one example: {err}{hint}"
        ) from None
