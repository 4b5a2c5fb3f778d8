"""Loading: ``datasets.load_dataset`` (hub name or local JSON/JSONL/Parquet files) plus a schema
adapter, with counted drops; pairs from K responses (:func:`to_pairwise`); writing the canonical
format (:func:`save_k_dataset`)."""

from __future__ import annotations

import errno
import functools
import glob
import json
import logging
import math
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

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
from ncakit.scale.data.schemas import (
    SCHEMA_ALIASES,
    SCHEMAS,
    detect_schema,
    drop_empty_responses,
    required_columns,
    resolve_schema,
)

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
            "_responses_removed": datasets.Value("int32"),
            "_drop_reason": datasets.Value("string"),
            "_drop_detail": datasets.Value("string"),
        }
    )
    empty_prompt = [] if prompt_kind == "chat" else ""

    min_responses = adapter_kwargs.get("min_responses", 2)

    def convert(example):
        ex, removed = drop_empty_responses(
            _conform(adapter(example), prompt_kind, response_kind), min_responses=min_responses
        )
        return {**ex, "_responses_removed": removed}

    kept, dropped, examples = map_counting_drops(
        ds,
        convert,
        {"prompt": empty_prompt, "responses": [], "rewards": [], "_responses_removed": 0},
        features,
        on_bad=on_bad,
        num_proc=num_proc,
        desc=f"canonical format ({schema})",
        stage="load",
    )
    removed = int(sum(kept["_responses_removed"])) if len(kept) else 0
    kept = kept.remove_columns("_responses_removed")
    stats = DataStats(
        source=source,
        stage="load",
        rows_in=len(ds),
        rows_kept=len(kept),
        dropped=dropped,
        examples=examples,
        responses_dropped={Reason.EMPTY_RESPONSE: removed} if removed else {},
        k_counts=k_histogram(kept, "rewards"),
    )
    stats.report(warn=warn)
    return Prepared(kept, stats)


_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".pq": "parquet"}


def looks_like_local_path(name: str) -> bool:
    """A string meant as a local file or folder, never a hub id: starts with ``./``, ``../``, ``/``
    or ``~``, or ends in a data-file suffix (.json/.jsonl/.parquet/.pq)."""
    name = str(name)
    return name.startswith(("./", "../", "/", "~", ".\\")) or Path(name).suffix.lower() in _LOCAL_BUILDERS


def _local_files(name_or_path: str) -> list[str] | None:
    """The local data files ``name_or_path`` names (a file, a glob or a folder), or None for a hub
    name. A string that looks like a local path but names nothing raises (no hub look-up)."""
    expanded = str(Path(name_or_path).expanduser()) if name_or_path.startswith("~") else name_or_path
    if any(ch in expanded for ch in "*?["):
        files = sorted(glob.glob(expanded))
        if not files:
            raise ValueError(f"name_or_path: expected the glob {name_or_path!r} to match files, got none")
        return files
    p = Path(expanded)
    if p.is_file():
        return [str(p)]
    if p.is_dir():
        files = sorted(str(f) for f in p.iterdir() if f.suffix in _LOCAL_BUILDERS)
        if not files and looks_like_local_path(name_or_path):
            raise ValueError(
                f"name_or_path: expected .json/.jsonl/.parquet files in the folder {name_or_path!r}, got none"
            )
        return files or None
    if looks_like_local_path(name_or_path):
        raise ValueError(
            f"name_or_path: expected an existing local file or folder, got {name_or_path!r} "
            "(no such path; a local path is not looked up on the Hub)"
        )
    return None


def _check_not_empty(files: list[str], name_or_path: str) -> None:
    for f in files:
        try:
            with open(f, "rb") as fh:
                head = fh.read(4096)
        except OSError as err:
            raise ValueError(f"name_or_path: cannot read {f!r} ({err.strerror or err})") from None
        if f.endswith((".json", ".jsonl")) and (not head.strip() or head.strip() == b"[]"):
            if len(head) < 4096:
                raise ValueError(
                    f"name_or_path: expected K-response examples in {f!r}, got an empty file (no rows)"
                )


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
    _check_not_empty(local, name_or_path)
    split_name = split.split("[")[0]
    try:
        return datasets.load_dataset(builders.pop(), data_files={split_name: local}, split=split, **kwargs)
    except StopIteration:  # datasets' JSON builder on a file with no rows
        raise ValueError(
            f"name_or_path: expected K-response examples in {name_or_path!r}, got no rows"
        ) from None
    except (datasets.exceptions.DatasetGenerationError, pa.ArrowException) as err:
        cause = err.__cause__ or err
        raise ValueError(
            f"name_or_path: expected valid {sorted(suffixes)} data in {name_or_path!r}, "
            f"got a file that does not parse ({type(cause).__name__}: {str(cause).splitlines()[0][:200]})"
        ) from err


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
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise ValueError(f"max_rows: expected a positive int or None, got {max_rows!r}")
    kwargs = dict(load_kwargs or {})
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    ds = load_source(name_or_path, split, data_files=data_files, revision=revision, **kwargs)
    if isinstance(ds, datasets.DatasetDict):  # pragma: no cover - split=None passed explicitly
        raise ValueError(f"split: got several splits {list(ds)}; pass one")
    if len(ds) == 0:
        raise ValueError(
            f"name_or_path: expected at least one example in {name_or_path!r} (split {split!r}), got 0 rows"
        )
    if max_rows is not None:
        ds = ds.select(range(min(int(max_rows), len(ds))))
    if schema == "auto":
        hub_schema = SCHEMA_ALIASES.get(str(name_or_path).lower())
        schema = hub_schema if hub_schema is not None else "auto"
    loaded = canonicalize(
        ds,
        schema,
        on_bad=on_bad,
        source=f"{name_or_path}:{split}",
        num_proc=num_proc,
        warn=warn,
        **adapter_kwargs,
    )
    if loaded.stats.rows_kept == 0:  # nothing to train on: say why, naming the file
        st = loaded.stats
        reason, n = max(st.dropped.items(), key=lambda kv: kv[1])
        raise ValueError(
            f"name_or_path: expected usable K-response examples in {name_or_path!r} (split {split!r}), "
            f"got none of its {st.rows_in} rows: dropped {dict(st.dropped)} (e.g. {st.examples.get(reason, reason)})"
        )
    return loaded


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


DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".pq")


def disk_error(err: OSError, path) -> OSError:
    """``err`` as one line naming ``path``; a full disk reads "no space left on device writing <path>"."""
    if err.errno == errno.ENOSPC:
        out = OSError(f"no space left on device writing {path}")
    elif err.errno == errno.EDQUOT:
        out = OSError(f"disk quota exceeded writing {path}")
    else:
        out = OSError(f"cannot write {path}: {err.strerror or err}")
    out.errno = err.errno
    return out


def _open_temp(path: Path):
    """A new temporary file next to ``path`` (same file system, so ``os.replace`` is atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    return os.fdopen(fd, "w", encoding="utf-8"), Path(tmp)


class KDatasetWriter:
    """Canonical rows written incrementally to a temporary file next to ``path`` and moved into place
    by :meth:`commit` (flush, fsync, ``os.replace``): a crash or a full disk leaves the old file (or
    none), never a half-written one. JSONL rows are written as they come; JSON and Parquet at commit.
    Use as a context manager: an exception aborts (the temporary file is removed)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix not in DATA_SUFFIXES:
            raise ValueError(f"path: expected a .jsonl, .json or .parquet file name, got {self.path.name!r}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f, self._tmp = _open_temp(self.path)
        except OSError as err:
            raise disk_error(err, self.path) from err
        self._held: list[dict] = []
        self.rows = 0

    def write(self, rows) -> None:
        rows = rows.to_list() if isinstance(rows, datasets.Dataset) else list(rows)
        for i, row in enumerate(rows):  # JSON has no NaN / inf: name the row, not json's "Out of range"
            bad = [r for r in (row.get("rewards") or []) if isinstance(r, float) and not math.isfinite(r)]
            if bad:
                self.abort()
                raise ValueError(
                    f"rewards: expected finite numbers in every row, got {bad[0]} in row {self.rows + i} "
                    f"(writing {self.path})"
                )
        self.rows += len(rows)
        if self.path.suffix != ".jsonl":
            self._held += rows
            return
        try:
            # json module, not Dataset.to_json: pandas would round the rewards to 10 digits
            for row in rows:
                self._f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
            self._f.flush()
        except OSError as err:
            self.abort()
            raise disk_error(err, self.path) from err

    def commit(self) -> Path:
        try:
            if self.path.suffix == ".json":
                json.dump(self._held, self._f, ensure_ascii=False, allow_nan=False)
                self._f.write("\n")
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            if self.path.suffix in (".parquet", ".pq"):
                as_dataset(self._held).to_parquet(str(self._tmp))
            os.replace(self._tmp, self.path)
        except OSError as err:
            self.abort()
            raise disk_error(err, self.path) from err
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        if not self._f.closed:
            try:
                self._f.close()
            except OSError:  # a full disk fails the close's flush too: the file goes anyway
                pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``path.write_text(text)`` through a temporary file and ``os.replace`` (ENOSPC named)."""
    path = Path(path)
    tmp = None
    try:
        f, tmp = _open_temp(path)
        try:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        finally:
            try:
                f.close()
            except OSError:
                pass
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise disk_error(err, path) from err
    return path


def save_k_dataset(data, path: str | Path) -> Path:
    """Write canonical rows (a list of dicts or a Dataset) as ``.jsonl`` / ``.json`` / ``.parquet``,
    atomically (:class:`KDatasetWriter`: a temporary file, then ``os.replace``).

    JSONL and Parquet round-trip exactly through :func:`load_k_dataset`; a ``.json`` array comes
    back with rewards rounded to 10 significant digits (``datasets`` re-serialises JSON arrays
    through pandas).
    """
    with KDatasetWriter(path) as writer:
        writer.write(data)
        return writer.commit()
