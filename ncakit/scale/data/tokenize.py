"""Tokenisation of canonical K-response examples: chat template when the tokenizer has one, the
authors' truncation (prompt keeps its last tokens, responses cut to the rest), EOS once, prompt
masked; drops counted."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import datasets
import pyarrow.compute as pc

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
    4. A response with no text (empty or whitespace-only) or no tokens of its own (before the
       EOS) is removed and counted (:attr:`Reason.EMPTY_RESPONSE`), never trained on as a lone
       EOS; if none is left the example is dropped (``all_responses_empty``), as it is with fewer
       than ``min_responses`` left (``too_few_responses``). The response budget is >= 1 token, so
       truncation never empties a response.

    Returns ``{"prompt_ids", "response_ids", "rewards", "max_seq_len", "prompt_truncated",
    "responses_truncated", "responses_removed"}``; the collator builds labels with the prompt
    masked. Raises :class:`ExampleError` for an unusable example.
    """
    _check_lengths(max_length, max_prompt_length)
    if response_budget not in ("authors", "fill"):
        raise ValueError(f"response_budget: expected 'authors' or 'fill', got {response_budget!r}")
    ex = from_canonical(example, min_responses=min_responses)
    n_in = len(ex["responses"])
    ex, removed = drop_empty_responses(ex, min_responses=min_responses)  # empty / whitespace-only text
    chat = _uses_chat_template(tokenizer, use_chat_template)
    prompt_text, response_texts = render_example(ex, tokenizer, use_chat_template=chat)
    enc = tokenizer([prompt_text, *response_texts], add_special_tokens=False)["input_ids"]
    prompt_ids, response_ids = list(enc[0]), [list(r) for r in enc[1:]]
    bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
    if not chat and add_bos and bos is not None and (not prompt_ids or prompt_ids[0] != bos):
        prompt_ids.insert(0, bos)
    if not prompt_ids:
        raise ExampleError(Reason.EMPTY_PROMPT, "prompt", "has no tokens")
    # a response with no tokens of its own (before EOS) is empty: dropped, never trained as a lone EOS
    tokenless = [i for i, r in enumerate(response_ids) if not r or (eos is not None and r == [eos])]
    if tokenless:
        ex = {**ex, "responses": [r for i, r in enumerate(ex["responses"]) if i not in tokenless]}
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
        ex["rewards"] = kept_rewards
    if add_eos and eos is not None:
        for r in response_ids:
            if r[-1] != eos:
                r.append(eos)

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

    rewards = ex["rewards"]
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
    ds = rows_or_dataset(data)
    columns = column_names(ds)
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

    kept, dropped, examples = map_counting_drops(
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
        k_counts=k_histogram(kept, "rewards"),
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
