"""Tokenisation of canonical K-response examples; two renderings (``rendering``).

``"trl"`` (default): TRL 1.16's data conventions (chat template for conversational rows only,
prompt/completion split where the token ids diverge, EOS added to plain-text completions, every
real token attended), with the authors' TRUNCATION only (prompt keeps its last tokens, responses
cut to ``max_length - max_prompt_length``; TRL cuts prompt + response to its first ``max_length``
tokens instead), prompt masked; drops and template mismatches counted. It does NOT render
sequences as the authors do.

``"authors"``: every sequence as the NCA authors' code builds it (an empty system turn before the
prompt, each response scored with its template's trailing text and a second EOS, EOS tokens inside
the text hidden from attention, their truncation): :mod:`ncakit.scale.data.authors`, which cites
their code line by line; the rows gain ``prompt_attention_mask`` / ``response_attention_mask``."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from typing import Any

import datasets
import pyarrow.compute as pc

from ncakit.scale.data.authors import tokenize_authors_example, truncation_cut
from ncakit.scale.data.drops import (
    DataStats,
    ExampleError,
    Prepared,
    Reason,
    column_names,
    k_histogram,
    map_counting_drops,
    rows_or_dataset,
)
from ncakit.scale.data.load import canonicalize, load_k_dataset
from ncakit.scale.data.schemas import drop_empty_responses, from_canonical

logger = logging.getLogger("ncakit.scale.data")

CHAT_TEMPLATE_MODES = ("auto", "true", "false")
RENDERINGS = ("trl", "authors")
TEMPLATE_MISMATCH_MODES = ("warn", "error")
# DataStats.examples key under which tokenize_k_dataset records the rows whose tokenised prompt is
# not a prefix of prompt + response (kept, prompt tail moved as TRL does; see tokenize_k_example).
TEMPLATE_MISMATCH = "template_mismatch"


class TemplateMismatchWarning(UserWarning):
    """Rows whose tokenised prompt is not a prefix of the tokenised prompt + response were kept with
    TRL's fallback (the completion starts where the ids diverge); the message has the count."""


# ----------------------------------------------------------------------------------------------
# TRL's data conventions (trl 1.16: trl/data_utils.py, trl/trainer/dpo_trainer.py)
# ----------------------------------------------------------------------------------------------


def is_conversational(example: Mapping) -> bool:
    """True when the prompt or a response is a chat message list ({"role", "content"} dicts).

    Mirrors ``trl.data_utils.is_conversational`` (trl/data_utils.py:126-163: the first of
    prompt/chosen/rejected/... is a list whose first item is a dict with a ``"role"``), applied to
    the canonical columns ``prompt`` / ``responses[k]``.
    """

    def msgs(x) -> bool:
        return isinstance(x, list | tuple) and bool(x) and isinstance(x[0], Mapping) and "role" in x[0]

    return msgs(example.get("prompt")) or any(msgs(r) for r in example.get("responses") or ())


def resolve_chat_template_mode(apply_chat_template="auto") -> str:
    """``"auto"`` / ``"true"`` / ``"false"`` from the option (bools and their strings accepted)."""
    mode = apply_chat_template
    if isinstance(mode, bool):
        mode = "true" if mode else "false"
    mode = str(mode).lower() if mode is not None else "auto"
    if mode not in CHAT_TEMPLATE_MODES:
        raise ValueError(
            f"apply_chat_template: expected 'auto', 'true' or 'false', got {apply_chat_template!r}"
        )
    return mode


def _check_mismatch_mode(on_template_mismatch: str) -> None:
    if on_template_mismatch not in TEMPLATE_MISMATCH_MODES:
        raise ValueError(f"on_template_mismatch: expected 'warn' or 'error', got {on_template_mismatch!r}")


def _use_template(example: Mapping, tokenizer, mode: str) -> bool:
    """The rule (TRL 1.16 ``DPOTrainer._prepare_dataset``, trl/trainer/dpo_trainer.py:1080-1102):
    a conversational row goes through ``apply_chat_template``, a plain-text row is tokenised as is.
    ``"true"`` also wraps plain text as a user / assistant conversation; ``"false"`` never uses
    the template and refuses conversational rows."""
    conversational = is_conversational(example)
    if mode == "false":
        if conversational:
            raise ValueError(
                "apply_chat_template: 'false', but the data is conversational (message lists); "
                "set apply_chat_template: auto (or true), or convert the data to plain text"
            )
        return False
    chat = conversational or mode == "true"
    if chat and getattr(tokenizer, "chat_template", None) is None:
        why = "'true'" if mode == "true" else "the data is conversational (message lists)"
        raise ValueError(
            f"apply_chat_template: {why}, but the tokenizer has no chat_template "
            "(set tokenizer.chat_template, use apply_chat_template: false with plain-text data)"
        )
    return chat


def _messages_of(example: Mapping) -> tuple[list[dict], list[list[dict]]]:
    prompt = example["prompt"]
    prompt_msgs = list(prompt) if isinstance(prompt, list | tuple) else [{"role": "user", "content": prompt}]
    resp = [
        list(r) if isinstance(r, list | tuple) else [{"role": "assistant", "content": r}]
        for r in example["responses"]
    ]
    return prompt_msgs, resp


def _chat_ids(tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> list[int]:
    # = trl.data_utils._tokenize for a message list (trl/data_utils.py:392-397)
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
    )
    return list(out["input_ids"])


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two id lists (= ``trl.data_utils.common_prefix_length``)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def render_example(example: Mapping, tokenizer, *, apply_chat_template="auto") -> tuple[str, list[str]]:
    """Prompt text and the K full texts (prompt + response) that are tokenised, as TRL 1.16 builds them.

    Template rows (see :func:`tokenize_k_example` for the rule): the prompt rendered with
    ``add_generation_prompt=True`` and each ``prompt + response`` conversation rendered without it.
    Plain rows: ``prompt`` and ``prompt + response (+ EOS text unless it already ends with it)``.
    """
    mode = resolve_chat_template_mode(apply_chat_template)
    if _use_template(example, tokenizer, mode):
        prompt_msgs, resp = _messages_of(example)
        prompt_text = tokenizer.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
        return prompt_text, [tokenizer.apply_chat_template(prompt_msgs + r, tokenize=False) for r in resp]
    eos = getattr(tokenizer, "eos_token", None)
    prompt = example["prompt"]
    return prompt, [prompt + _with_eos(r, eos) for r in example["responses"]]


def _with_eos(text: str, eos_token: str | None) -> str:
    # trl/trainer/dpo_trainer.py:1058-1069: plain-text completions get the EOS *text* unless they end with it
    if eos_token and not text.endswith(eos_token):
        return text + eos_token
    return text


def _check_lengths(max_length: int, max_prompt_length: int) -> None:
    for name, v in (("max_length", max_length), ("max_prompt_length", max_prompt_length)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    if max_prompt_length >= max_length:
        raise ValueError(
            f"max_prompt_length: expected < max_length ({max_length}) so responses keep some tokens, "
            f"got {max_prompt_length}"
        )


def _split_ids(ex: Mapping, tokenizer, chat: bool, add_eos: bool, add_bos: bool):
    """``(prompt_ids, full_ids per response)`` tokenised as TRL 1.16 does
    (trl/trainer/dpo_trainer.py:1080-1102)."""
    if chat:
        prompt_msgs, resp = _messages_of(ex)
        prompt_ids = _chat_ids(tokenizer, prompt_msgs, add_generation_prompt=True)
        return prompt_ids, [_chat_ids(tokenizer, prompt_msgs + r) for r in resp]
    eos = getattr(tokenizer, "eos_token", None) if add_eos else None
    texts = [ex["prompt"], *(ex["prompt"] + _with_eos(r, eos) for r in ex["responses"])]
    # TRL: processing_class(text=...) with the tokenizer's own special tokens (BOS when it adds one)
    enc = tokenizer(texts, add_special_tokens=add_bos)["input_ids"]
    return list(enc[0]), [list(e) for e in enc[1:]]


def _mismatch_error(tokenizer, prompt_ids: list[int], prompt_len: int, chat: bool) -> ValueError:
    tail = _decode(tokenizer, prompt_ids[prompt_len:])
    cause = (
        "the chat template renders the prompt with add_generation_prompt=True differently from the "
        "start of prompt + assistant turn"
        if chat
        else "tokens merge across the prompt/response boundary"
    )
    return ValueError(
        f"on_template_mismatch: 'error', and the tokenised prompt is not a prefix of prompt + response "
        f"({cause}; the prompt tail {tail!r} would be left out). Fix: use a chat template whose "
        "generation prompt is a prefix of the assistant turn (or end plain prompts on a token boundary), "
        "or set on_template_mismatch: warn to keep TRL's fallback (the response starts where the ids diverge)"
    )


def _decode(tokenizer, ids: list[int]) -> str:
    try:
        return tokenizer.decode(ids)
    except Exception:  # noqa: BLE001 - a tokenizer view without decode: show the ids
        return str(ids)


def tokenize_k_example(
    example: Mapping,
    tokenizer,
    *,
    max_length: int = 1024,
    max_prompt_length: int = 512,
    apply_chat_template: str = "auto",
    on_template_mismatch: str = "warn",
    add_eos: bool = True,
    add_bos: bool = True,
    response_budget: str = "authors",
    min_responses: int = 2,
) -> dict:
    """Tokenise one canonical example with TRL 1.16's conventions and the authors' truncation
    (``rendering: trl``; ``rendering: authors`` is :func:`ncakit.scale.data.authors.tokenize_authors_example`).

    Steps:

    1. Template or not (``apply_chat_template``; TRL 1.16 ``DPOTrainer._prepare_dataset``,
       trl/trainer/dpo_trainer.py:1058-1102): ``"auto"`` (default, TRL's rule) uses the chat
       template for conversational rows only (:func:`is_conversational`, TRL's
       ``is_conversational``) and tokenises plain text as is; ``"true"`` also wraps plain text as
       a user / assistant conversation (needs a template); ``"false"`` never uses it
       (conversational rows raise a ``ValueError`` naming ``apply_chat_template``).
    2. Tokenise as TRL does. Template rows: ``apply_chat_template(prompt,
       add_generation_prompt=True)`` and ``apply_chat_template(prompt + response_k)`` (token ids;
       no EOS added: the template ends the turn, trailing template text such as ``"\\n"`` is kept).
       Plain rows: ``tokenizer(prompt)`` and ``tokenizer(prompt + response_k + eos_token)``, the EOS
       text appended unless the response already ends with it (dpo_trainer.py:1058-1069; ``add_eos
       =False`` skips it) and the tokenizer's own special tokens added (a BOS only when the
       tokenizer adds one itself; ``add_bos=False`` turns them off).
    3. Split where the ids diverge (dpo_trainer.py:1104-1125): the prompt is the common prefix of
       the prompt ids and every prompt + response ids, response k the rest of its ids. When the
       prompt ids are not a prefix (a template whose generation prompt differs from the start of
       the assistant turn, or a token merge at the boundary) ``on_template_mismatch="warn"``
       (default, TRL) keeps that split -- the prompt tail is left out -- and the row is counted
       (``template_mismatch``); ``"error"`` raises a ``ValueError`` with the fix.
    4. The authors' truncation (``NCADataCollatorWithPadding.tokenize_batch_element``; MATH.md,
       Facts about the authors' released setup): if prompt + longest response > ``max_length``,
       keep the LAST ``max_prompt_length`` prompt tokens; if still too long cut every response to
       ``max_length - max_prompt_length`` tokens (``response_budget="authors"``) or
       ``max_length - len(prompt)`` (``"fill"``). A cut response loses its EOS. (TRL instead
       cuts prompt + response to its first ``max_length`` tokens in the collator; the two agree
       whenever nothing is truncated.)
    5. A response with no text or no tokens of its own (before the EOS) is removed and counted
       (:attr:`Reason.EMPTY_RESPONSE`), never trained on as a lone EOS; an example left with none
       is dropped (``all_responses_empty``), with fewer than ``min_responses``
       (``too_few_responses``).

    Returns ``{"prompt_ids", "response_ids", "rewards", "max_seq_len", "prompt_truncated",
    "responses_truncated", "responses_removed", "template_mismatch"}`` (the last: ``""`` or the
    prompt tail left out); the collator builds labels with the prompt masked. Raises
    :class:`ExampleError` for an unusable example, ``ValueError`` for a setting that cannot apply.
    """
    _check_lengths(max_length, max_prompt_length)
    if response_budget not in ("authors", "fill"):
        raise ValueError(f"response_budget: expected 'authors' or 'fill', got {response_budget!r}")
    _check_mismatch_mode(on_template_mismatch)
    mode = resolve_chat_template_mode(apply_chat_template)
    ex = from_canonical(example, min_responses=min_responses)
    n_in = len(ex["responses"])
    ex, removed = drop_empty_responses(ex, min_responses=min_responses)  # empty / whitespace-only text
    chat = _use_template(ex, tokenizer, mode)
    prompt_full, fulls = _split_ids(ex, tokenizer, chat, add_eos, add_bos)
    prompt_len = min(common_prefix_length(prompt_full, f) for f in fulls)
    mismatch = ""
    if prompt_len < len(prompt_full):
        if on_template_mismatch == "error":
            raise _mismatch_error(tokenizer, prompt_full, prompt_len, chat)
        mismatch = _decode(tokenizer, prompt_full[prompt_len:]) or "?"
    prompt_ids = prompt_full[:prompt_len]
    response_ids = [f[prompt_len:] for f in fulls]
    eos = getattr(tokenizer, "eos_token_id", None)
    if not prompt_ids:
        raise ExampleError(Reason.EMPTY_PROMPT, "prompt", "has no tokens")
    # a response with no tokens of its own (before EOS) is empty: dropped, never trained as a lone EOS
    tokenless = [i for i, r in enumerate(response_ids) if not r or (eos is not None and r == [eos])]
    if tokenless:
        kept_rewards = [w for i, w in enumerate(ex["rewards"]) if i not in tokenless]
        response_ids = [r for i, r in enumerate(response_ids) if i not in tokenless]
        removed += len(tokenless)
        if not response_ids:
            raise ExampleError(Reason.ALL_RESPONSES_EMPTY, "responses", "no response has any token")
        if len(response_ids) < min_responses:
            raise ExampleError(
                Reason.TOO_FEW_RESPONSES,
                "responses",
                f"only {len(response_ids)} of {n_in} response(s) have tokens; at least {min_responses} are needed",
            )
        ex = {**ex, "rewards": kept_rewards}

    longest = max(len(r) for r in response_ids)
    n_prompt = len(prompt_ids)
    kept, budget = truncation_cut(
        n_prompt,
        longest,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        response_budget=response_budget,
    )
    prompt_ids = prompt_ids[n_prompt - kept :]  # keep the end: the question is usually last
    prompt_truncated = kept < n_prompt
    n_cut = 0
    if budget is not None:
        n_cut = sum(len(r) > budget for r in response_ids)
        response_ids = [r[:budget] for r in response_ids]

    return {
        "prompt_ids": prompt_ids,
        "response_ids": response_ids,
        "rewards": ex["rewards"],
        "max_seq_len": len(prompt_ids) + max(len(r) for r in response_ids),
        "prompt_truncated": prompt_truncated,
        "responses_truncated": n_cut,
        "responses_removed": removed,
        "template_mismatch": mismatch,
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
        "template_mismatch": datasets.Value("string"),
        "_drop_reason": datasets.Value("string"),
        "_drop_detail": datasets.Value("string"),
    }
)
# rendering: authors adds the attention of every prompt / response token (EOS inside the text: 0)
_AUTHORS_FEATURES = datasets.Features(
    {
        **_TOKENIZED_FEATURES,
        "prompt_attention_mask": datasets.List(datasets.Value("int8")),
        "response_attention_mask": datasets.List(datasets.List(datasets.Value("int8"))),
    }
)


def tokenize_k_dataset(
    data,
    tokenizer,
    *,
    max_length: int = 1024,
    max_prompt_length: int = 512,
    apply_chat_template: str = "auto",
    on_template_mismatch: str = "warn",
    add_eos: bool = True,
    add_bos: bool = True,
    response_budget: str = "authors",
    min_responses: int = 2,
    on_bad: str = "drop",
    num_proc: int | None = None,
    source: str = "<memory>",
    warn: bool = True,
    rendering: str = "trl",
) -> Prepared:
    """:func:`tokenize_k_example` over a canonical dataset (or list of rows), drops counted.

    Returns ``Prepared(dataset, stats)``; the dataset has the columns ``prompt_ids`` (list[int]),
    ``response_ids`` (K_i lists of int), ``rewards`` (K_i floats) and ``max_seq_len`` (int, the
    longest prompt + response; used for length grouping). ``on_bad="raise"`` raises the first
    unusable example instead of dropping it. ``apply_chat_template`` (``"auto"``: TRL's rule,
    ``"true"``, ``"false"``) and ``on_template_mismatch`` (``"warn"``: TRL's fallback, ``"error"``)
    are those of :func:`tokenize_k_example`; rows kept with TRL's fallback are counted in
    ``stats.examples["template_mismatch"]`` and reported by one :class:`TemplateMismatchWarning`.

    ``rendering="authors"`` tokenises with :func:`ncakit.scale.data.authors.tokenize_authors_example`
    instead (the authors always use the chat template, so ``apply_chat_template``,
    ``on_template_mismatch``, ``add_eos``, ``add_bos`` and ``response_budget`` do not apply); the
    dataset then also has ``prompt_attention_mask`` and ``response_attention_mask``.
    """
    _check_lengths(max_length, max_prompt_length)
    if rendering not in RENDERINGS:
        raise ValueError(f"rendering: expected 'trl' or 'authors', got {rendering!r}")
    _check_mismatch_mode(on_template_mismatch)
    mode = resolve_chat_template_mode(apply_chat_template)
    if on_bad not in ("drop", "raise"):
        raise ValueError(f"on_bad: expected 'drop' or 'raise', got {on_bad!r}")
    ds = rows_or_dataset(data)
    columns = column_names(ds)
    for col in ("prompt", "responses", "rewards"):
        if col not in columns:
            raise ValueError(f"{col}: column missing (canonical format needed; got columns {columns})")
    kwargs = dict(
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        apply_chat_template=mode,
        on_template_mismatch=on_template_mismatch,
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
        "template_mismatch": "",
    }

    if rendering == "authors":
        a_kwargs = dict(
            max_length=max_length, max_prompt_length=max_prompt_length, min_responses=min_responses
        )
        blank |= {"prompt_attention_mask": [], "response_attention_mask": []}

        def fn(example):
            return tokenize_authors_example(example, tokenizer, **a_kwargs)

        features = _AUTHORS_FEATURES
    else:

        def fn(example):
            return tokenize_k_example(example, tokenizer, **kwargs)

        features = _TOKENIZED_FEATURES
    kept, dropped, examples = map_counting_drops(
        ds,
        fn,
        blank,
        features,
        on_bad=on_bad,
        num_proc=num_proc,
        desc="tokenize (K responses)",
        stage="tokenize",
    )
    tab = kept.data
    prompts_truncated = int(pc.sum(tab.column("prompt_truncated")).as_py() or 0) if len(kept) else 0
    responses_truncated = int(pc.sum(tab.column("responses_truncated")).as_py() or 0) if len(kept) else 0
    removed = int(pc.sum(tab.column("responses_removed")).as_py() or 0) if len(kept) else 0
    tails = [t for t in kept["template_mismatch"] if t] if len(kept) else []
    kept = kept.remove_columns(
        ["prompt_truncated", "responses_truncated", "responses_removed", "template_mismatch"]
    )
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
        k_counts=k_histogram(kept, "rewards"),
    )
    if tails:
        stats.examples[TEMPLATE_MISMATCH] = _report_mismatch(len(tails), len(kept), tails[0], source)
    stats.report(warn=warn)
    return Prepared(kept, stats)


def _report_mismatch(n: int, n_kept: int, tail: str, source: str) -> str:
    """Count + one warning for rows kept with TRL's fallback (never silent)."""
    text = (
        f"{n} of {n_kept} kept rows: the tokenised prompt is not a prefix of prompt + response; the "
        f"response starts where the ids diverge and the prompt tail is left out, as TRL does "
        f"(e.g. {tail!r}). Use a chat template whose generation prompt is a prefix of the assistant "
        "turn, or on_template_mismatch: error to stop instead"
    )
    logger.warning("[tokenize] %s: %s", source, text)
    warnings.warn(f"[tokenize] {source}: {text}", TemplateMismatchWarning, stacklevel=3)
    return text


def prepare_k_dataset(
    name_or_path,
    tokenizer,
    *,
    split: str = "train",
    schema: str = "auto",
    max_length: int = 1024,
    max_prompt_length: int = 512,
    apply_chat_template: str = "auto",
    on_template_mismatch: str = "warn",
    response_budget: str = "authors",
    max_rows: int | None = None,
    on_bad: str = "drop",
    num_proc: int | None = None,
    load_kwargs: Mapping[str, Any] | None = None,
    cache_dir: str | None = None,
    rendering: str = "trl",
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
        apply_chat_template=resolve_chat_template_mode(apply_chat_template),
        on_template_mismatch=on_template_mismatch,
        response_budget=response_budget,
        min_responses=adapter_kwargs.get("min_responses", 2),
        on_bad=on_bad,
        num_proc=num_proc,
        source=source,
        warn=False,
        rendering=rendering,
    )
    stats = loaded.stats.then(tokenized.stats)
    stats.source = source
    stats.report(warn=True)
    return Prepared(tokenized.dataset, stats)
