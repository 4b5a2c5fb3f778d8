"""The reference log-prob cache on disk: what identifies an entry, and one verified file per entry.

An entry is keyed (:func:`reference_cache_key`) by components that do NOT depend on how the run
that computes it is launched -- not the number of processes, not the batch size, not how the
weights are sharded:

- ``data``: :func:`data_fingerprint` of the WHOLE dataset's token ids, in order (and their stored
  attention, ``rendering: authors``);
- ``model``: an identity that survives sharding -- :func:`model_files_fingerprint` (the bytes of a
  local folder's ``config.json`` and weight files), :func:`hub_model_identity` (``name@<commit>``,
  the revision resolved to its 40-hex commit, never ``main``), or, for a model that exists only in
  memory, :func:`model_fingerprint` (its live tensors; refused for ZeRO-3 / FSDP / meta tensors,
  which hold no full weights);
- the dtype, :func:`tokenizer_fingerprint`, the caller's extras (lengths, quantisation, ...),
  ``average`` and :data:`CACHE_FORMAT`.

The file (:func:`cache_file`): ``<cache_dir>/ref_logps-<key[:20]>.safetensors`` with two tensors,
``values`` (float32, every row's K_i log-probs back to back) and ``k`` (int64, K_i per row), and a
JSON manifest in the safetensors header (``format``, ``key``, ``components``, ``rows``,
``responses``, ``dtype``, ``k_sha256``, ``values_sha256``, ``run``). :func:`read_cache` checks the
manifest against the file's bytes and the dataset (rows, K per row) before anything is used and
raises :class:`CacheProblem` -- one line naming the file and what differs -- for a truncated,
edited or mismatched file. :func:`write_cache` writes a temporary file in the same folder, fsyncs
it and ``os.replace`` s it over the old one: a reader sees the old file or the new one, never a
mixture, and a crash mid-write leaves the old file untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ncakit.scale.forward import unwrap_model

__all__ = [
    "CACHE_FORMAT",
    "CacheProblem",
    "cache_file",
    "read_cache",
    "read_manifest",
    "write_cache",
    "data_fingerprint",
    "model_fingerprint",
    "model_files_fingerprint",
    "hub_model_identity",
    "partitioned_parameter",
    "tokenizer_fingerprint",
    "reference_cache_key",
]

CACHE_FORMAT = 2  # bump when the stored numbers or the file layout would change for the same inputs
MANIFEST_KEY = "ncakit_reference_cache"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_CHUNK = 16 << 20  # bytes hashed at a time


# ----------------------------------------------------------------------------------------------
# Identity of the data, the model and the tokenizer
# ----------------------------------------------------------------------------------------------


def _hash_int_lists(h, arr: pa.Array) -> None:
    """Feed a (nested) list<int> Arrow array to the hash: lengths at each level, then values, int64."""
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        lengths = pc.fill_null(pc.list_value_length(arr), -1).to_numpy(zero_copy_only=False)
        h.update(np.ascontiguousarray(lengths, dtype=np.int64).tobytes())
        arr = pc.list_flatten(arr)
    h.update(np.ascontiguousarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64).tobytes())


def data_fingerprint(dataset) -> str:
    """SHA-256 of the token ids (``prompt_ids`` and ``response_ids``) of a tokenised dataset or row
    list, so it covers the source data, the tokenizer and the truncation. Same value for a
    ``datasets.Dataset`` and the equal list of dicts."""
    import datasets  # scale extra

    if isinstance(dataset, datasets.Dataset):
        # as an Arrow table, through any select/shuffle indices: hash the rows as they are seen
        table = dataset.select_columns(["prompt_ids", "response_ids"]).with_format("arrow")[:]
        cols = {c: table.column(c).combine_chunks() for c in ("prompt_ids", "response_ids")}
    else:
        rows = list(dataset)
        cols = {
            "prompt_ids": pa.array([list(r["prompt_ids"]) for r in rows], type=pa.list_(pa.int64())),
            "response_ids": pa.array(
                [[list(x) for x in r["response_ids"]] for r in rows], type=pa.list_(pa.list_(pa.int64()))
            ),
        }
    # rendering: authors stores the attention too (EOS inside the text not attended): part of what
    # the reference sees, so part of the key; absent (rendering: trl) the key is as it always was
    for name in _ATTENTION_COLUMNS:
        if isinstance(dataset, datasets.Dataset):
            if name in dataset.column_names:
                cols[name] = (
                    dataset.select_columns([name]).with_format("arrow")[:].column(name).combine_chunks()
                )
        elif rows and name in rows[0]:
            typ = pa.list_(pa.int64()) if name == "prompt_attention_mask" else pa.list_(pa.list_(pa.int64()))
            cols[name] = pa.array([r[name] for r in rows], type=typ)
    h = hashlib.sha256()
    for name in ("prompt_ids", "response_ids", *_ATTENTION_COLUMNS):
        if name in cols:
            h.update(name.encode())
            _hash_int_lists(h, cols[name])
    return h.hexdigest()


_ATTENTION_COLUMNS = ("prompt_attention_mask", "response_attention_mask")


def _canonical_param_name(name: str) -> str:
    # peft wraps "model.layers.0.q_proj.weight" as "base_model.model.model.layers.0.q_proj.base_layer.weight"
    if name.startswith("base_model.model."):
        name = name[len("base_model.model.") :]
    return name.replace(".base_layer.", ".")


def partitioned_parameter(model) -> tuple[str, str] | None:
    """``(name, how)`` of the first parameter that does not hold its full weights in this process
    (a DeepSpeed ZeRO-3 partition, a DTensor shard of FSDP2 / TP, a meta tensor), or None."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        DTensor = ()  # noqa: N806
    for name, p in unwrap_model(model).named_parameters():
        if hasattr(p, "ds_shape") or hasattr(p, "ds_id"):
            return name, f"a DeepSpeed ZeRO-3 partition (local shape {tuple(p.shape)})"
        if isinstance(p, DTensor):
            return name, "a DTensor shard (FSDP2 / tensor parallel)"
        if p.is_meta:
            return name, "a meta tensor (not loaded in this process)"
    return None


def model_fingerprint(model, *, exclude_adapter: bool = True) -> str:
    """SHA-256 over the live parameters' names, shapes, dtypes and bytes (LoRA weights excluded by
    default, and peft's name prefixes removed, so a base model and the same base inside a peft model
    with the adapter disabled get the same value). Reads every weight once: seconds per GB.

    For a model that exists only in memory. A model loaded from a folder or the Hub is better keyed
    by :func:`model_files_fingerprint` / :func:`hub_model_identity`, which do not read the live
    tensors and so survive ZeRO-3 / FSDP sharding; partitioned parameters are refused here
    (hashing a shard would give every process another key)."""
    part = partitioned_parameter(model)
    if part is not None:
        raise ValueError(
            f"model: parameter {part[0]!r} is {part[1]}, so the live weights cannot be hashed; identify the "
            "model by its files instead (model_id=model_files_fingerprint(folder) or hub_model_identity(name, revision))"
        )
    h = hashlib.sha256()
    m = unwrap_model(model)
    items = []
    for name, p in m.named_parameters():
        if exclude_adapter and ("lora_" in name or ".modules_to_save." in name):
            continue
        items.append((_canonical_param_name(name), p))
    for name, p in sorted(items, key=lambda kv: kv[0]):
        t = p.detach()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        flat = t.contiguous().reshape(-1)
        step = max(1, (64 << 20) // max(1, flat.element_size()))  # 64 MiB at a time
        for start in range(0, flat.numel(), step):
            chunk = flat[start : start + step].cpu().view(torch.uint8)
            h.update(chunk.numpy().tobytes())
    return h.hexdigest()


# what transformers / peft load from a model folder; other files (optimizer states, training
# arguments, READMEs) do not change the reference
_CONFIG_FILES = ("config.json", "adapter_config.json")
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "adapter_model.bin")


def _hash_file(h, path: Path) -> None:
    h.update(f"{path.name}|{path.stat().st_size}|".encode())
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def model_files_fingerprint(folder: str | os.PathLike) -> str:
    """``files:<sha256>`` of a local model folder as it is on disk: ``config.json`` (the
    architecture), ``adapter_config.json`` if any, and every weight file (``*.safetensors``,
    ``pytorch_model*.bin``), names and bytes. Independent of how the loaded weights are later
    sharded, cast or wrapped; any changed weight byte changes it. Reads every file once."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model_name_or_path: {folder} is not a folder")
    weights = sorted({p for g in _WEIGHT_GLOBS for p in folder.glob(g) if p.is_file()})
    if not weights:
        raise FileNotFoundError(
            f"model_name_or_path: no weight files ({', '.join(_WEIGHT_GLOBS)}) in {folder}"
        )
    h = hashlib.sha256()
    for p in [folder / c for c in _CONFIG_FILES if (folder / c).is_file()] + weights:
        _hash_file(h, p)
    return "files:" + h.hexdigest()


def hub_model_identity(
    name: str, revision: str | None = None, *, cache_dir: str | os.PathLike | None = None
) -> str | None:
    """``hub:<name>@<commit>`` for a Hub model: ``revision`` if it is already a 40-hex commit, else
    the commit the local Hugging Face cache maps it to (the snapshot the weights were loaded from),
    else the Hub's answer; None if it cannot be resolved (never ``@main``: a branch moves)."""
    if revision and _COMMIT.match(revision):
        return f"hub:{name}@{revision}"
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    with contextlib.suppress(Exception):
        found = try_to_load_from_cache(name, "config.json", cache_dir=cache_dir, revision=revision)
        if isinstance(found, str):
            commit = Path(found).parent.name  # .../models--org--name/snapshots/<commit>/config.json
            if _COMMIT.match(commit):
                return f"hub:{name}@{commit}"
    with contextlib.suppress(Exception):
        from huggingface_hub import HfApi

        resolved = HfApi().resolve_revision(name, revision=revision, cache_dir=cache_dir)
        commit = str(getattr(resolved, "resolved", "") or "")
        if _COMMIT.match(commit):
            return f"hub:{name}@{commit}"
    return None


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the tokenizer's vocabulary/merges (fast tokenizers), chat template and special tokens."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    specials = {k: str(v) for k, v in (getattr(tokenizer, "special_tokens_map", {}) or {}).items()}
    h.update(json.dumps(specials, sort_keys=True).encode())
    return h.hexdigest()


def reference_cache_key(components: Mapping[str, Any]) -> str:
    """SHA-256 of the JSON of the key components (sorted keys)."""
    return hashlib.sha256(json.dumps(components, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# The file: one per entry, verified before use, replaced atomically
# ----------------------------------------------------------------------------------------------


class CacheProblem(ValueError):
    """A cache file that must not be used: unreadable, edited, or not this dataset's. The message is
    one line naming the file and what differs."""

    def __init__(self, path: Path, what: str):
        super().__init__(f"reference cache {path}: {what}")
        self.path, self.what = path, what

    def __reduce__(self):  # sent between processes as it was built
        return (type(self), (self.path, self.what))


def cache_file(cache_dir: str | os.PathLike, key: str) -> Path:
    """The entry's file: ``<cache_dir>/ref_logps-<key[:20]>.safetensors``."""
    return Path(cache_dir) / f"ref_logps-{key[:20]}.safetensors"


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _header(data: bytes, path: Path) -> dict:
    if len(data) < 8:
        raise CacheProblem(path, f"unreadable: {len(data)} bytes, not a safetensors file (truncated?)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise CacheProblem(path, f"unreadable: header of {n} bytes but {len(data) - 8} follow (truncated?)")
    try:
        return json.loads(data[8 : 8 + n])
    except ValueError as e:
        raise CacheProblem(path, f"unreadable header ({e})") from None


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest stored in a cache file (for inspection; :func:`read_cache` verifies it)."""
    path = Path(path)
    meta = _header(path.read_bytes(), path).get("__metadata__") or {}
    if MANIFEST_KEY not in meta:
        raise CacheProblem(path, "no manifest in the header (not a reference cache file)")
    try:
        return json.loads(meta[MANIFEST_KEY])
    except ValueError as e:
        raise CacheProblem(path, f"unreadable manifest ({e})") from None


def read_cache(
    path: str | os.PathLike, *, key: str, k_per_row: Iterable[int]
) -> tuple[list[list[float]], dict]:
    """``(values, manifest)`` of a verified cache file: ``values[i]`` holds row i's K_i log-probs.

    Raises ``FileNotFoundError`` if there is no file, :class:`CacheProblem` if it cannot be trusted:
    unreadable or truncated, another format or key, another number of rows or K per row than
    ``k_per_row`` (the dataset's), or values / K whose bytes do not match the manifest's SHA-256."""
    from safetensors.numpy import load

    path = Path(path)
    data = path.read_bytes()  # FileNotFoundError: a plain miss
    meta = _header(data, path).get("__metadata__") or {}
    if MANIFEST_KEY not in meta:
        raise CacheProblem(path, "no manifest in the header (not a reference cache file)")
    try:
        manifest = json.loads(meta[MANIFEST_KEY])
        tensors = load(data)
    except Exception as e:  # safetensors raises its own error type for a bad layout
        raise CacheProblem(path, f"unreadable ({type(e).__name__}: {e})") from None
    if manifest.get("format") != CACHE_FORMAT:
        raise CacheProblem(path, f"format {manifest.get('format')!r}, expected {CACHE_FORMAT}")
    if manifest.get("key") != key:
        raise CacheProblem(path, f"key {str(manifest.get('key'))[:20]}..., expected {key[:20]}...")
    values, k = tensors.get("values"), tensors.get("k")
    if values is None or k is None:
        raise CacheProblem(path, f"tensors {sorted(tensors)}, expected ['k', 'values']")
    if values.dtype != np.float32 or manifest.get("dtype") != "float32":
        raise CacheProblem(
            path, f"dtype {values.dtype} (manifest {manifest.get('dtype')!r}), expected float32"
        )
    want_k = np.asarray(list(k_per_row), dtype=np.int64)
    if k.dtype != np.int64 or k.ndim != 1 or values.ndim != 1:
        raise CacheProblem(path, f"tensor layout k {k.dtype}{list(k.shape)}, values {list(values.shape)}")
    if _sha256(k) != manifest.get("k_sha256"):
        raise CacheProblem(path, "K-per-row checksum differs from the manifest (file changed after writing)")
    if _sha256(values) != manifest.get("values_sha256"):
        raise CacheProblem(path, "values checksum differs from the manifest (file changed after writing)")
    if (
        len(k) != manifest.get("rows")
        or int(k.sum()) != manifest.get("responses")
        or int(k.sum()) != len(values)
    ):
        raise CacheProblem(
            path,
            f"{len(k)} rows / {len(values)} values, manifest says {manifest.get('rows')} / {manifest.get('responses')}",
        )
    if len(k) != len(want_k):
        raise CacheProblem(path, f"{len(k)} rows, the dataset has {len(want_k)}")
    if not np.array_equal(k, want_k):
        i = int(np.flatnonzero(k != want_k)[0])
        raise CacheProblem(path, f"row {i} has {int(k[i])} responses, the dataset's has {int(want_k[i])}")
    ends = np.cumsum(k)
    flat = values.tolist()
    rows = [flat[e - n : e] for e, n in zip(ends.tolist(), k.tolist())]
    return rows, manifest


def _write_bytes(f, data: bytes) -> None:
    """The one place bytes reach the temporary file (a test makes it fail half-way)."""
    f.write(data)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened / synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_cache(path: str | os.PathLike, values: list[list[float]], manifest: Mapping[str, Any]) -> dict:
    """Write ``values`` (row i's K_i floats) with a manifest (``manifest`` must hold ``key`` and
    ``components``; ``run`` is optional) and return the full manifest.

    Atomic: a temporary file in the same folder is written, flushed, fsynced and ``os.replace`` d
    over ``path`` (and the folder fsynced), so ``path`` holds the old file or the new one whatever
    happens; on an error the temporary file is removed and ``path`` is untouched."""
    from safetensors.numpy import save

    path = Path(path)
    k = np.asarray([len(v) for v in values], dtype=np.int64)
    flat = np.asarray([x for v in values for x in v], dtype=np.float32)
    full = {
        "format": CACHE_FORMAT,
        **dict(manifest),
        "rows": len(k),
        "responses": int(k.sum()),
        "dtype": "float32",
        "k_sha256": _sha256(k),
        "values_sha256": _sha256(flat),
    }
    data = save(
        {"values": flat, "k": k}, metadata={MANIFEST_KEY: json.dumps(full, sort_keys=True, default=str)}
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, f"reference cache {path}: cannot write there ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            _write_bytes(f, data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the cache from other users
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            raise OSError(
                e.errno, f"reference cache {path}: not written ({e.strerror}); any old file is untouched"
            ) from e
        raise
    _fsync_dir(path.parent)
    return full
