"""K-response datasets for the scale track: canonical format, source adapters, loading,
tokenisation with the authors' truncation, drop accounting, collation and batching.

One module per step (this package re-exports their public names):

==============  ============================================================================
``schemas``     the source schemas: adapters from one source example to one canonical example
``drops``       drop accounting: :class:`Reason`, :class:`ExampleError`, :class:`DataStats`
``load``        ``datasets.load_dataset`` + adapter, :func:`to_pairwise`, :func:`save_k_dataset`
``tokenize``    TRL's chat-template rule, the authors' truncation, EOS once, prompt masked
``collate``     :class:`KResponseCollator`, :class:`LengthGroupedSampler`, :func:`make_dataloader`
==============  ============================================================================

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

    from ncakit.scale.data import prepare_k_dataset, KResponseCollator, make_dataloader
    ds, stats = prepare_k_dataset("HuggingFaceH4/ultrafeedback_binarized", tokenizer,
                                  split="train_prefs", max_length=1024, max_prompt_length=512)
    loader = make_dataloader(ds, KResponseCollator(tokenizer.pad_token_id, k=2), batch_size=8)
    batch = next(iter(loader))   # input_ids/attention_mask/labels [B*K, T], rewards/mask [B, K], ...

1. :func:`load_k_dataset` -- ``datasets.load_dataset(...)`` (hub name or local files) and an
   adapter to the canonical format (:func:`canonicalize`). Unusable rows are dropped and COUNTED
   per reason (``on_bad="drop"``) or raise (``on_bad="raise"``); a missing column always raises.
2. :func:`tokenize_k_dataset` -- TRL 1.16's data conventions (``apply_chat_template="auto"``:
   the chat template for conversational rows only, plain text tokenised as is with EOS appended;
   ``"true"`` wraps plain text as a conversation; ``"false"`` never templates; the prompt/response
   split where the ids diverge, a non-prefix template warned and counted or, with
   ``on_template_mismatch="error"``, refused), the authors' truncation, prompt masked; columns
   ``prompt_ids``, ``response_ids``, ``rewards``, ``max_seq_len``. :func:`prepare_k_dataset` runs
   1 + 2. Same ids and DPO eval loss as TRL's DPOTrainer on the same file (tests/test_trl_data.py).
3. :class:`KResponseCollator` -- B rows -> B·K right-padded sequences, prompt-major
   (row ``b * K + k`` is response k of prompt b, so ``logps.view(B, K)`` is the loss input).
4. :func:`make_dataloader` -- one dataset row is one prompt with all its K responses, so a plain
   ``DataLoader`` over rows already keeps the K responses together; ``group_by_length=True``
   adds :class:`LengthGroupedSampler` to cut padding.

Every step that drops something returns a :class:`DataStats` (rows in / kept / dropped by
reason, truncation counts), logs it and emits a :class:`DroppedExamplesWarning` when anything
was dropped -- never silently. In particular:

- an EMPTY response (empty or whitespace-only text, at load; or no tokens of its own before the
  EOS, at tokenisation) is removed with its reward and counted in
  ``DataStats.responses_dropped["empty_response"]``; the example survives with its other
  responses when at least ``min_responses`` (2) are left, else it is dropped
  (``all_responses_empty`` / ``too_few_responses``). A response is never trained on as a lone EOS.
- a reward that is not a finite number, or that overflows float32 (``|r| > 3.4e38``, the dtype
  the collator holds rewards in), drops its example at load (``non_finite_reward``).
- a local path that does not exist, an empty file, a file that does not parse, ``max_rows < 1``,
  or a file none of whose rows is usable raises one ``ValueError`` naming the input
  (``"name_or_path: expected ..., got ..."``); a local-looking path is never looked up on the Hub.
- :func:`save_k_dataset` / :class:`KDatasetWriter` write through a temporary file and
  ``os.replace`` (a crash leaves the old file or none); a full disk reads "no space left on
  device writing <path>".

This package imports ``datasets`` (scale extras); ``import ncakit`` does not import it.
"""

from ncakit.scale.data.authors import authors_texts, tokenize_authors_example
from ncakit.scale.data.collate import (
    KResponseCollator,
    LengthGroupedSampler,
    example_lengths,
    make_dataloader,
)
from ncakit.scale.data.drops import DataStats, DroppedExamplesWarning, ExampleError, Prepared, Reason
from ncakit.scale.data.load import (
    KDatasetWriter,
    canonicalize,
    load_k_dataset,
    load_source,
    looks_like_local_path,
    save_k_dataset,
    to_pairwise,
)
from ncakit.scale.data.schemas import (
    SCHEMAS,
    detect_schema,
    from_binarized,
    from_canonical,
    from_nca_reward,
    from_pairwise,
    from_trl_preference,
    from_ultrafeedback,
    sorted_best_first,
)
from ncakit.scale.data.tokenize import (
    CHAT_TEMPLATE_MODES,
    RENDERINGS,
    TEMPLATE_MISMATCH_MODES,
    TemplateMismatchWarning,
    is_conversational,
    prepare_k_dataset,
    render_example,
    resolve_chat_template_mode,
    tokenize_k_dataset,
    tokenize_k_example,
)

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
    "sorted_best_first",
    # loading
    "canonicalize",
    "load_source",
    "load_k_dataset",
    "save_k_dataset",
    "KDatasetWriter",
    "looks_like_local_path",
    "to_pairwise",
    # tokenisation
    "CHAT_TEMPLATE_MODES",
    "TEMPLATE_MISMATCH_MODES",
    "TemplateMismatchWarning",
    "is_conversational",
    "resolve_chat_template_mode",
    "render_example",
    "tokenize_k_example",
    "tokenize_k_dataset",
    "prepare_k_dataset",
    "RENDERINGS",
    "authors_texts",
    "tokenize_authors_example",
    # batching
    "KResponseCollator",
    "LengthGroupedSampler",
    "example_lengths",
    "make_dataloader",
]
