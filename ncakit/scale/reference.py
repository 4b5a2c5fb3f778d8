"""The reference μ of the losses' ``ref_logps`` argument: ``[B, K]`` reference log-probs per batch.

A training run chooses its reference ONCE (:func:`make_reference`, from ``cfg.reference``) as one
of three small objects with the same two methods, ``prepare`` (before ``accelerator.prepare``) and
``logps(model, batch)`` (``[B, K]``, no gradient):

- :class:`PrecomputedReference` (``precompute``) -- one pass before training, sharded over the
  processes and cached on disk (:func:`precompute_reference_logps`); the datasets gain a
  ``ref_logps`` column and the collator returns ``batch["ref_logps"]``.
- :class:`AdapterReference` (``adapter``) -- the same LoRA model with its adapter disabled, per
  batch (:func:`reference_logps_from_adapter`; MATH.md, Facts about the authors' released setup:
  the reference is the same base with the LoRA adapter disabled). No second model in memory.
- :class:`ModelReference` (``model``) -- a frozen copy of the initial model, per batch (single
  device / DDP).

Every path goes through :func:`ncakit.scale.forward.batch_logps`, so the numbers agree exactly
on the same weights (a test checks it).

The disk cache: :func:`precompute_reference_logps` adds a ``ref_logps`` column (K floats per row),
cached under ``cache_dir`` by a key (:func:`reference_cache_key`) hashing the token ids
(:func:`data_fingerprint`), the model weights (:func:`model_fingerprint`, or a given ``model_id``
such as ``"name@revision"``), the tokenizer (:func:`tokenizer_fingerprint`) and the lengths; a
second call with the same inputs loads the file and runs no forward pass.

Example::

    ds, stats = prepare_k_dataset(path, tokenizer, max_length=1024, max_prompt_length=512)
    collate = KResponseCollator(tokenizer.pad_token_id, k=4)
    ds, info = precompute_reference_logps(model, ds, collate, batch_size=16, cache_dir="cache/ref",
                                          model_id="HuggingFaceH4/mistral-7B-SFT-beta@main",
                                          key_extra={"max_length": 1024, "max_prompt_length": 512})
    for batch in make_dataloader(ds, collate, 8):
        policy = batch_logps(model, batch)                               # [B, K], with grad
        out = get_loss("nca")(policy, batch["ref_logps"].to(policy.device), batch["rewards"], mask=batch["mask"])
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader

from ncakit.scale.forward import batch_logps, causal_lm, find_peft_model, model_device, unwrap_model

if TYPE_CHECKING:
    from ncakit.scale.config import TrainConfig

__all__ = [
    "CACHE_FORMAT",
    "Reference",
    "PrecomputedReference",
    "AdapterReference",
    "ModelReference",
    "make_reference",
    "reference_logps_from_adapter",
    "precompute_reference_logps",
    "ReferenceLogps",
    "data_fingerprint",
    "model_fingerprint",
    "tokenizer_fingerprint",
    "reference_cache_key",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the stored numbers would change for the same inputs


# ----------------------------------------------------------------------------------------------
# The reference forward: no gradient, eval mode, adapter disabled
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _reference_mode(model, *, disable_adapter: bool, eval_mode: bool):
    peft_model = find_peft_model(model) if disable_adapter else None
    was_training = model.training
    ctx = peft_model.disable_adapter() if peft_model is not None else contextlib.nullcontext()
    try:
        with torch.no_grad(), ctx:
            if eval_mode:
                model.eval()
            yield
    finally:
        model.train(was_training)


def reference_logps_from_adapter(
    model,
    batch: Mapping[str, torch.Tensor],
    *,
    average: bool = False,
    path: str = "auto",
    eval_mode: bool = True,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Reference log-probs ``[B, K]`` from the SAME peft model with its LoRA adapter disabled.

    Runs :func:`batch_logps` under ``torch.no_grad()`` and ``peft_model.disable_adapter()``
    (the base weights alone = the reference μ), in eval mode unless ``eval_mode=False`` (the
    model's train/eval state is restored afterwards). ``model`` may be wrapped by accelerate.
    """
    if find_peft_model(model) is None:
        raise TypeError(
            f"model: expected a peft model with disable_adapter() (e.g. get_peft_model(base, LoraConfig(...))), "
            f"got {type(unwrap_model(model)).__name__}; without an adapter, precompute the reference instead"
        )
    with _reference_mode(model, disable_adapter=True, eval_mode=eval_mode):
        return batch_logps(model, batch, average=average, path=path, chunk_size=chunk_size).detach()


# ----------------------------------------------------------------------------------------------
# Fingerprints and cache key
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
    h = hashlib.sha256()
    for name in ("prompt_ids", "response_ids"):
        h.update(name.encode())
        _hash_int_lists(h, cols[name])
    return h.hexdigest()


def _canonical_param_name(name: str) -> str:
    # peft wraps "model.layers.0.q_proj.weight" as "base_model.model.model.layers.0.q_proj.base_layer.weight"
    if name.startswith("base_model.model."):
        name = name[len("base_model.model.") :]
    return name.replace(".base_layer.", ".")


def model_fingerprint(model, *, exclude_adapter: bool = True) -> str:
    """SHA-256 over parameter names, shapes, dtypes and bytes (LoRA weights excluded by default,
    and peft's name prefixes removed, so a base model and the same base inside a peft model with
    the adapter disabled get the same value). Reads every weight once: seconds per GB; pass
    ``model_id`` to :func:`precompute_reference_logps` to skip it for hub models."""
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
# Precompute pass with a disk cache
# ----------------------------------------------------------------------------------------------


class ReferenceLogps(NamedTuple):
    """``(dataset, info)`` from :func:`precompute_reference_logps`.

    ``info``: ``cache_hit`` (bool), ``cache_path`` (str or None), ``key`` (hex), ``components``
    (what the key hashes), ``rows``, ``sequences``, ``tokens``, ``seconds``, ``sequences_per_s``,
    ``tokens_per_s`` (of the forward pass that made the numbers; on a cache hit, the stored
    values of the run that wrote the cache).
    """

    dataset: Any
    info: dict


def _model_dtype(model) -> str:
    try:
        return str(next(causal_lm(model).parameters()).dtype)
    except StopIteration:  # pragma: no cover
        return "unknown"


def _rows_of(dataset):
    import datasets

    if isinstance(dataset, datasets.Dataset):
        return dataset.select_columns(["prompt_ids", "response_ids", "rewards"])
    return [{k: r[k] for k in ("prompt_ids", "response_ids", "rewards")} for r in dataset]


def _num_responses(dataset) -> np.ndarray:
    import datasets

    if isinstance(dataset, datasets.Dataset):
        col = dataset.select_columns(["response_ids"]).with_format("arrow")[:].column("response_ids")
        return pc.list_value_length(col.combine_chunks()).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.asarray([len(r["response_ids"]) for r in dataset], dtype=np.int64)


def _attach(dataset, values: list[list[float]]):
    import datasets

    if isinstance(dataset, datasets.Dataset):
        if "ref_logps" in dataset.column_names:
            dataset = dataset.remove_columns("ref_logps")
        feature = datasets.List(datasets.Value("float32"))
        return dataset.add_column("ref_logps", values, feature=feature)
    return [{**dict(r), "ref_logps": v} for r, v in zip(dataset, values)]


def _load_cache(path: Path, n_resp: np.ndarray) -> list[list[float]] | None:
    arr_file, meta_file = path / "ref_logps.npy", path / "meta.json"
    if not (arr_file.is_file() and meta_file.is_file()):
        return None
    arr = np.load(arr_file)
    if arr.shape[0] != len(n_resp) or (len(n_resp) and arr.shape[1] < n_resp.max()):
        logger.warning("reference cache %s does not match the dataset's shape; recomputing", path)
        return None
    return [arr[i, : n_resp[i]].tolist() for i in range(len(n_resp))]


def _save_cache(path: Path, values: list[list[float]], meta: dict) -> None:
    kmax = max((len(v) for v in values), default=0)
    arr = np.full((len(values), kmax), np.nan, dtype=np.float32)
    for i, v in enumerate(values):
        arr[i, : len(v)] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    try:
        np.save(tmp / "ref_logps.npy", arr)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
        try:
            os.replace(tmp, path)  # atomic; another process may have won the race
        except OSError:
            if not (path / "ref_logps.npy").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def precompute_reference_logps(
    model,
    dataset,
    collate_fn: Callable,
    batch_size: int = 8,
    cache_dir: str | os.PathLike | None = None,
    *,
    model_id: str | None = None,
    tokenizer=None,
    key_extra: Mapping[str, Any] | None = None,
    average: bool = False,
    path: str = "auto",
    disable_adapter: bool = True,
    overwrite: bool = False,
    progress: bool = False,
    on_miss: str = "compute",
    model_dtype: str | None = None,
) -> ReferenceLogps:
    """Add a ``ref_logps`` column (K floats per row) of reference sequence log-probs, cached on disk.

    Args:
        model: the reference model (a peft model is run with its adapter disabled unless
            ``disable_adapter=False``). Run this BEFORE wrapping the model for distributed
            training (every process computes the same numbers, or load the cache on all).
        dataset: tokenised rows (``ncakit.scale.data.tokenize_k_dataset`` output, or a list of dicts
            with ``prompt_ids``, ``response_ids``, ``rewards``).
        collate_fn: the collator (``KResponseCollator``); rows are read in order, unshuffled.
        batch_size: prompts per forward pass (B·K sequences).
        cache_dir: folder for the cache (``<cache_dir>/ref_logps-<key[:20]>/``: ``ref_logps.npy``
            ``[rows, K]`` float32 NaN-padded and ``meta.json``); ``None`` disables caching.
        model_id: the model's identity for the key (e.g. ``"org/name@revision"``); by default
            the weights are hashed (:func:`model_fingerprint`).
        tokenizer / key_extra: also hashed into the key (e.g. ``{"max_length": 1024,
            "max_prompt_length": 512}``); the token ids already are, via
            :func:`data_fingerprint`.
        average / path: as in :func:`batch_logps` (``average`` is part of the key).
        overwrite: recompute even when the cache exists.
        model_dtype: the dtype recorded in the key (default: the model's first parameter's).
            Pass the LOADING dtype when the same weights may sit in another dtype in a later run
            (e.g. a ZeRO-3 run reading a cache filled by a plain run: DeepSpeed recasts the weights).
        on_miss: ``"compute"`` (default) runs the forward pass when the cache has no entry;
            ``"raise"`` raises ``FileNotFoundError`` instead (for models that cannot run a forward
            outside their distributed engine, e.g. ZeRO-3-partitioned weights).

    Returns:
        ``ReferenceLogps(dataset_with_ref_logps, info)``.
    """
    if on_miss not in ("compute", "raise"):
        raise ValueError(f"on_miss: expected 'compute' or 'raise', got {on_miss!r}")
    # With the adapter disabled (or none), the reference is the base weights alone; otherwise the
    # LoRA weights are part of the reference and of its identity.
    uses_adapter = find_peft_model(model) is not None and not disable_adapter
    if model_id is not None:
        model_key = f"{model_id}+adapter" if uses_adapter else str(model_id)
    else:
        model_key = model_fingerprint(model, exclude_adapter=not uses_adapter)
    components = {
        "format": CACHE_FORMAT,
        "data": data_fingerprint(dataset),
        "model": model_key,
        "dtype": str(model_dtype) if model_dtype is not None else _model_dtype(model),
        "tokenizer": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
        "extra": dict(key_extra) if key_extra else None,
        "average": bool(average),
    }
    key = reference_cache_key(components)
    cache_path = Path(cache_dir) / f"ref_logps-{key[:20]}" if cache_dir is not None else None
    n_resp = _num_responses(dataset)
    if cache_path is not None and not overwrite:
        values = _load_cache(cache_path, n_resp)
        if values is not None:
            meta = json.loads((cache_path / "meta.json").read_text())
            info = {**meta.get("run", {}), "cache_hit": True, "cache_path": str(cache_path), "key": key}
            info["components"] = components
            logger.info("reference log-probs: cache hit %s (%d rows)", cache_path, len(values))
            return ReferenceLogps(_attach(dataset, values), info)

    if on_miss == "raise":
        raise FileNotFoundError(
            f"cache_dir: no reference log-probs cached for this data/model/dtype (expected {cache_path}); "
            "fill the cache first (scale/train.py --precompute_reference_only true, on a single-GPU or DDP config)"
        )
    loader = DataLoader(_rows_of(dataset), batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    values: list[list[float]] = []
    n_seq = n_tok = 0
    device = model_device(model)
    iterator = loader
    if progress:
        try:
            from tqdm.auto import tqdm

            iterator = tqdm(loader, desc="reference log-probs")
        except ImportError:  # pragma: no cover
            pass
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with _reference_mode(model, disable_adapter=disable_adapter, eval_mode=True):
        for batch in iterator:
            logps = batch_logps(model, batch, average=average, path=path).cpu()
            mask = batch["mask"]
            seq_tokens = batch["attention_mask"].sum(-1).view(mask.shape)
            n_seq += int(mask.sum())
            n_tok += int((seq_tokens * mask).sum())
            for b in range(mask.shape[0]):
                k_b = int(mask[b].sum())
                if not bool(mask[b, :k_b].all()):
                    raise ValueError(
                        "collate_fn: expected each row's responses in the first K_b columns of mask"
                    )
                values.append(logps[b, :k_b].tolist())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if len(values) != len(n_resp) or any(len(v) != n for v, n in zip(values, n_resp)):
        raise ValueError("collate_fn: its output does not line up with the dataset's rows / responses")
    run = {
        "rows": len(values),
        "sequences": n_seq,
        "tokens": n_tok,
        "seconds": seconds,
        "sequences_per_s": n_seq / seconds if seconds > 0 else float("inf"),
        "tokens_per_s": n_tok / seconds if seconds > 0 else float("inf"),
        "device": str(device),
        "batch_size": batch_size,
    }
    logger.info(
        "reference log-probs: %d sequences, %d tokens in %.2fs (%.1f seq/s, %.0f tok/s)",
        n_seq,
        n_tok,
        seconds,
        run["sequences_per_s"],
        run["tokens_per_s"],
    )
    if cache_path is not None:
        _save_cache(cache_path, values, {"key": key, "components": components, "run": run})
    info = {**run, "cache_hit": False, "cache_path": str(cache_path) if cache_path else None, "key": key}
    info["components"] = components
    return ReferenceLogps(_attach(dataset, values), info)


# ----------------------------------------------------------------------------------------------
# A run's reference: one object per mode, chosen once
# ----------------------------------------------------------------------------------------------


class Reference:
    """The reference of a training run. ``prepare`` runs once, before ``accelerator.prepare``, and
    returns the (possibly extended) train / eval datasets and an info dict for ``run.json``;
    ``logps(model, batch)`` gives the batch's ``[B, K]`` reference log-probs, detached."""

    mode: str = ""

    def prepare(self, model, train_ds, eval_ds, *, collate, tokenizer) -> tuple[Any, Any, dict]:
        return train_ds, eval_ds, {}

    def logps(self, model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class PrecomputedReference(Reference):
    """``reference: precompute``: a ``ref_logps`` column computed before training, cached on disk.

    Process r computes shard r (a cache miss runs the forward), then every process reads every
    shard from the cache, so the cache folder (``ref_cache_dir``) must be visible to all. Under
    ZeRO-3 the weights are partitioned before any forward could run here: the cache must have been
    filled by a ``--precompute_reference_only true`` run first (a miss raises)."""

    mode = "precompute"

    def __init__(self, cfg: TrainConfig, accelerator):
        self.cfg, self.accelerator = cfg, accelerator

    def prepare(self, model, train_ds, eval_ds, *, collate, tokenizer):
        model_id = hub_model_id(self.cfg) or model_fingerprint(model)  # hashed once for both splits
        info = {}
        train_ds, info["train"] = self._precompute(model, train_ds, collate, tokenizer, model_id)
        if eval_ds is not None:
            eval_ds, info["eval"] = self._precompute(model, eval_ds, collate, tokenizer, model_id)
        return train_ds, eval_ds, info

    def logps(self, model, batch):
        if "ref_logps" not in batch:
            raise ValueError("reference: 'precompute' but the batch has no ref_logps (was prepare() run?)")
        return batch["ref_logps"]

    def _precompute(self, model, ds, collate, tokenizer, model_id: str):
        cfg, accelerator = self.cfg, self.accelerator
        n = accelerator.num_processes
        shards = [ds.shard(num_shards=n, index=i, contiguous=True) for i in range(n)] if n > 1 else [ds]
        zero3 = is_zero3(accelerator)
        kwargs = dict(
            batch_size=cfg.ref_batch_size or cfg.per_device_eval_batch_size,
            cache_dir=cfg.ref_cache_dir or str(Path(cfg.output_dir) / "ref_cache"),
            model_id=model_id,
            tokenizer=tokenizer,
            # the base's identity beyond its name: the same hub id loaded in 4 bit is another reference
            key_extra={
                "max_length": cfg.max_length,
                "max_prompt_length": cfg.max_prompt_length,
                "torch_dtype": cfg.torch_dtype,
                "load_in_4bit": cfg.load_in_4bit,
                "bnb": [cfg.bnb_4bit_quant_type, cfg.bnb_4bit_use_double_quant, cfg.bnb_4bit_compute_dtype]
                if cfg.load_in_4bit
                else None,
            },
            average=cfg.average_logps,
            model_dtype=cfg.torch_dtype,  # the loading dtype: DeepSpeed may recast the weights in a later run
            on_miss="raise" if zero3 else "compute",
        )
        if not cfg.load_in_4bit and not zero3 and next(model.parameters()).device != accelerator.device:
            model.to(accelerator.device)  # prepare() would move it there anyway
        mine = accelerator.process_index if n > 1 else 0
        show = cfg.progress and accelerator.is_main_process
        # the same autocast as the training forward (bf16 on GPU configs): policy == reference at
        # step 0 up to kernel noise, not up to a precision change
        with accelerator.autocast():
            own = precompute_reference_logps(model, shards[mine], collate, progress=show, **kwargs)
        accelerator.wait_for_everyone()
        outs = [
            own if i == mine else precompute_reference_logps(model, s, collate, **kwargs)
            for i, s in enumerate(shards)
        ]
        import datasets

        full = datasets.concatenate_datasets([o.dataset for o in outs]) if n > 1 else own.dataset
        info = {k: outs[0].info[k] for k in ("cache_path", "key") if k in outs[0].info}
        info["shards"] = len(outs)
        info["seconds"] = sum(float(o.info.get("seconds", 0.0)) for o in outs)
        return full, info


class AdapterReference(Reference):
    """``reference: adapter``: the policy itself with its LoRA adapter disabled, per batch."""

    mode = "adapter"

    def __init__(self, average: bool = False):
        self.average = average

    def logps(self, model, batch):
        return reference_logps_from_adapter(model, batch, average=self.average)


class ModelReference(Reference):
    """``reference: model``: a frozen copy of the initial model on the accelerator's device, per
    batch. Single device / DDP only: under FSDP / DeepSpeed the copy would not be sharded."""

    mode = "model"

    def __init__(self, accelerator, average: bool = False):
        if accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
            raise ValueError(
                "reference: 'model' (a frozen copy) is for single-device/DDP runs; use 'precompute'"
            )
        self.accelerator, self.average, self.model = accelerator, average, None

    def prepare(self, model, train_ds, eval_ds, *, collate, tokenizer):
        self.model = copy.deepcopy(self.accelerator.unwrap_model(model)).requires_grad_(False).eval()
        self.model.to(self.accelerator.device)
        return train_ds, eval_ds, {}

    @torch.no_grad()
    def logps(self, model, batch):
        return batch_logps(self.model, batch, average=self.average)


def make_reference(cfg: TrainConfig, accelerator) -> Reference:
    """The :class:`Reference` for ``cfg.reference`` (fails now for a mode the launch cannot run)."""
    if cfg.reference == "precompute":
        return PrecomputedReference(cfg, accelerator)
    if cfg.reference == "adapter":
        return AdapterReference(cfg.average_logps)
    if cfg.reference == "model":
        return ModelReference(accelerator, cfg.average_logps)
    raise ValueError(f"reference: expected 'precompute', 'adapter' or 'model', got {cfg.reference!r}")


def is_zero3(accelerator) -> bool:
    """True under DeepSpeed ZeRO stage 3 (partitioned weights: no plain forward before ``prepare``)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and getattr(plugin, "zero_stage", None) == 3


def hub_model_id(cfg: TrainConfig) -> str | None:
    """A cheap cache identity for hub models (``name@revision``); None for local folders, whose
    weights are hashed instead (:func:`model_fingerprint`)."""
    if Path(cfg.model_name_or_path).exists():
        return None
    return f"{cfg.model_name_or_path}@{cfg.model_revision or 'main'}"
