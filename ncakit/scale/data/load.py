"""Loading: ``datasets.load_dataset`` (hub name or local JSON/JSONL/Parquet files) plus a schema
adapter, with counted drops; pairs from K responses (:func:`to_pairwise`); writing the canonical
format (:func:`save_k_dataset`)."""

from __future__ import annotations

import functools
import glob
import json
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets

from ncakit.scale.data.drops import (
    DataStats,
    ExampleError,
    Prepared,
    Reason,
    as_dataset,
    column_names,
    k_histogram,
    map_counting_drops,
    rows_or_dataset,
)
from ncakit.scale.data.schemas import SCHEMA_ALIASES, SCHEMAS, detect_schema, required_columns, resolve_schema

logger = logging.getLogger("ncakit.scale.data")


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
    ds = rows_or_dataset(data)
    columns = column_names(ds)
    schema = detect_schema(columns) if schema == "auto" else resolve_schema(schema)
    needed = required_columns(schema, columns, adapter_kwargs)
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

    kept, dropped, examples = map_counting_drops(
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
        k_counts=k_histogram(kept, "rewards"),
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
        hub_schema = SCHEMA_ALIASES.get(str(name_or_path).lower())
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
    ds = as_dataset(data)
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
        k_counts=k_histogram(kept, "rewards"),
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
        as_dataset(data).to_parquet(str(path))
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
