"""The reference μ of the losses' ``ref_logps`` argument: ``[B, K]`` reference log-probs per batch.

A training run chooses its reference ONCE (:func:`make_reference`, from ``cfg.reference``) as one
of three small objects with the same two methods, ``prepare`` (once, on the model as
``accelerator.prepare`` returned it, before the loaders are built) and ``logps(model, batch)``
(``[B, K]``, no gradient):

- :class:`PrecomputedReference` (``precompute``) -- one pass before training through the PREPARED
  model (DDP, FSDP2 or ZeRO-3: the very forward, sharding and mixed precision the policy trains
  with, so the implicit rewards start at 0), its batches split over the processes, cached on disk
  in one file per dataset (:func:`precompute_reference_logps`); the datasets gain a ``ref_logps``
  column and the collator returns ``batch["ref_logps"]``.
- :class:`AdapterReference` (``adapter``) -- the same LoRA model with its adapter disabled, per
  batch (:func:`reference_logps_from_adapter`; MATH.md, Facts about the authors' released setup:
  the reference is the same base with the LoRA adapter disabled). No second model in memory.
- :class:`ModelReference` (``model``) -- a frozen copy of the initial model, per batch (single
  device / DDP).

Every path goes through :func:`ncakit.scale.forward.batch_logps`, so the numbers agree exactly
on the same weights (a test checks it).

The disk cache (:mod:`ncakit.scale.refcache`): :func:`precompute_reference_logps` adds a
``ref_logps`` column (K floats per row), cached under ``cache_dir`` in ONE verified file per
dataset, keyed (:func:`reference_cache_key`) by the token ids of all its rows
(:func:`data_fingerprint`), the model's identity (``model_id``: the files on disk,
:func:`model_files_fingerprint`, or the Hub commit, :func:`hub_model_identity`; by default the
live weights, :func:`model_fingerprint`), the tokenizer (:func:`tokenizer_fingerprint`) and the
lengths -- not by the number of processes or how the weights are sharded. A second call with the
same inputs loads the file and runs no forward pass; a file that fails verification is named in
one warning line, recomputed and replaced atomically.

Example::

    ds, stats = prepare_k_dataset(path, tokenizer, max_length=1024, max_prompt_length=512)
    collate = KResponseCollator(tokenizer.pad_token_id, k=4)
    ds, info = precompute_reference_logps(model, ds, collate, batch_size=16, cache_dir="cache/ref",
                                          model_id=hub_model_identity("HuggingFaceH4/mistral-7B-SFT-beta"),
                                          key_extra={"max_length": 1024, "max_prompt_length": 512})
    for batch in make_dataloader(ds, collate, 8):
        policy = batch_logps(model, batch)                               # [B, K], with grad
        out = get_loss("nca")(policy, batch["ref_logps"].to(policy.device), batch["rewards"], mask=batch["mask"])
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import pickle
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader

from ncakit.scale.forward import batch_logps, causal_lm, find_peft_model, model_device, unwrap_model
from ncakit.scale.refcache import (
    CACHE_FORMAT,
    CacheProblem,
    cache_file,
    data_fingerprint,
    hub_model_identity,
    model_files_fingerprint,
    model_fingerprint,
    partitioned_parameter,
    read_cache,
    reference_cache_key,
    tokenizer_fingerprint,
    write_cache,
)

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
    "model_identity",
    # the cache's identity, from ncakit.scale.refcache
    "data_fingerprint",
    "model_fingerprint",
    "model_files_fingerprint",
    "hub_model_identity",
    "tokenizer_fingerprint",
    "reference_cache_key",
]

logger = logging.getLogger(__name__)


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
    share_prompt: bool = False,
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
        return batch_logps(
            model, batch, average=average, path=path, chunk_size=chunk_size, share_prompt=share_prompt
        ).detach()


# ----------------------------------------------------------------------------------------------
# Precompute pass with a disk cache
# ----------------------------------------------------------------------------------------------


class ReferenceLogps(NamedTuple):
    """``(dataset, info)`` from :func:`precompute_reference_logps`.

    ``info``: ``cache_hit`` (bool), ``cache_path`` (str or None), ``key`` (hex), ``components``
    (what the key hashes), ``repaired`` (what was wrong with a cache file that was recomputed, or
    None), ``rows``, ``sequences``, ``tokens``, ``seconds``, ``sequences_per_s``, ``tokens_per_s``,
    ``processes`` (of the forward pass that made the numbers; on a cache hit, the stored values of
    the run that wrote the cache).
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


def _row_range(dataset, lo: int, hi: int):
    import datasets

    if isinstance(dataset, datasets.Dataset):  # datasets refuses range(n, n) at the end: no rows
        return dataset.select(range(lo, hi)) if hi > lo else dataset.select([])
    return list(dataset)[lo:hi]


def _my_rows(n_rows: int, batch_size: int, processes: int, index: int) -> tuple[int, int, int]:
    """Process ``index``'s rows ``(lo, hi)``: a contiguous block of WHOLE batches of the one-process pass,
    so the forward sees the same batches (the same padding, the same numbers) for any number of
    processes; and how many forwards it must add so that every process runs as many as the busiest."""
    n_batches = -(-n_rows // batch_size)
    blocks = np.array_split(np.arange(n_batches), processes)
    mine = blocks[index]
    extra = max(len(b) for b in blocks) - len(mine)
    if len(mine) == 0:
        return n_rows, n_rows, extra
    return int(mine[0]) * batch_size, min(n_rows, (int(mine[-1]) + 1) * batch_size), extra


def is_prepared(model) -> bool:
    """True for a model inside its distributed engine (DDP, FSDP2's ``fully_shard``, a DeepSpeed
    engine), whose forward gathers whatever the process does not hold."""
    if type(model).__name__ == "DeepSpeedEngine" or isinstance(
        model, torch.nn.parallel.DistributedDataParallel
    ):
        return True
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch built without distributed
        return False
    return any(isinstance(m, FSDPModule) for m in unwrap_model(model).modules())


def _collective(accelerator, fn: Callable[[], Any], *, main_only: bool) -> Any:
    """``fn()`` on the main process (``main_only``; its result is sent to all) or on every process
    (a list of the results, in process order). An exception raised anywhere is raised on every
    process, so no process waits forever in a later collective for one that stopped."""
    n = accelerator.num_processes if accelerator is not None else 1
    if n <= 1:
        return fn() if main_only else [fn()]
    from accelerate.utils import broadcast_object_list, gather_object

    def attempt():
        try:
            return "ok", fn()
        except Exception as e:  # raised again below, on every process
            try:
                pickle.dumps(e)
            except Exception:
                return "error", RuntimeError(f"{type(e).__name__}: {e}")
            return "error", e

    if main_only:
        box = [attempt() if accelerator.is_main_process else None]
        outcomes = [broadcast_object_list(box, from_process=0)[0]]
    else:
        outcomes = gather_object([attempt()])
    for status, payload in outcomes:
        if status == "error":
            raise payload
    results = [payload for _, payload in outcomes]
    return results[0] if main_only else results


def _forward_rows(
    model,
    rows,
    collate_fn: Callable,
    batch_size: int,
    *,
    average,
    path,
    disable_adapter,
    progress,
    extra_forwards: int = 0,
    filler=None,
    share_prompt: bool = False,
):
    """The reference forward over ``rows`` in order: (each row's K_i log-probs, sequences, tokens, seconds).

    ``extra_forwards``: forwards of the batch ``filler`` (rows) whose results are dropped, so that every
    process of a launch runs the same number of forwards (a DDP, FSDP2 or ZeRO-3 forward is a collective)."""
    loader = DataLoader(_rows_of(rows), batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
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
            logps = batch_logps(model, batch, average=average, path=path, share_prompt=share_prompt).cpu()
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
        if extra_forwards:
            spare = collate_fn(_rows_of(filler))
            for _ in range(extra_forwards):
                batch_logps(model, spare, average=average, path=path, share_prompt=share_prompt)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return values, n_seq, n_tok, time.perf_counter() - t0


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
    accelerator=None,
    share_prompt: bool = False,
) -> ReferenceLogps:
    """Add a ``ref_logps`` column (K floats per row) of reference sequence log-probs, cached on disk.

    Args:
        model: the reference model (a peft model is run with its adapter disabled unless
            ``disable_adapter=False``): a plain model, or the model ``accelerator.prepare``
            returned (DDP, FSDP2, a DeepSpeed ZeRO-3 engine), whose forward gathers the sharded
            weights; every process then runs the same number of forwards (collectives). A model
            whose weights are partitioned but that is not inside its engine is refused.
        dataset: tokenised rows (``ncakit.scale.data.tokenize_k_dataset`` output, or a list of dicts
            with ``prompt_ids``, ``response_ids``, ``rewards``); the whole dataset, on every process.
        collate_fn: the collator (``KResponseCollator``); rows are read in order, unshuffled.
        batch_size: prompts per forward pass (B·K sequences).
        cache_dir: folder for the cache (one file per entry, :func:`ncakit.scale.refcache.cache_file`:
            ``<cache_dir>/ref_logps-<key[:20]>.safetensors`` with a verified manifest); ``None``
            disables caching. A file that fails verification (edited, truncated, another dataset's
            rows or K) is named in one warning line, recomputed and replaced atomically.
        model_id: the model's identity for the key (``model_files_fingerprint(folder)``,
            ``hub_model_identity(name, revision)``, or any string naming the weights exactly); by
            default the live weights are hashed (:func:`model_fingerprint`; refused for
            ZeRO-3 / FSDP-partitioned weights).
        tokenizer / key_extra: also hashed into the key (e.g. ``{"max_length": 1024,
            "max_prompt_length": 512}``); the token ids already are, via
            :func:`data_fingerprint`.
        average / path / share_prompt: as in :func:`batch_logps` (``average`` is part of the key;
            the training script adds ``prompt_sharing`` to ``key_extra``).
        overwrite: recompute even when the cache holds a valid entry, and replace it (atomically).
        model_dtype: the dtype recorded in the key (default: the model's first parameter's).
            Pass the LOADING dtype when the same weights may sit in another dtype in a later run
            (e.g. a ZeRO-3 run reading a cache filled by a plain run: DeepSpeed recasts the weights).
        on_miss: ``"compute"`` (default) runs the forward pass when the cache has no valid entry;
            ``"raise"`` raises instead (``FileNotFoundError`` for no file,
            :class:`ncakit.scale.refcache.CacheProblem` for an untrustworthy one) -- for a caller
            that must not spend a forward pass here.
        accelerator: with several processes, process r runs the forward over its contiguous block
            of whole batches (the batches of a one-process pass), the blocks are gathered, and the
            main process reads, verifies and writes the ONE cache file of the whole dataset (its
            folder need not be shared). The key does not depend on the number of processes: a
            cache filled by 2 processes serves 1 or 8.

    Returns:
        ``ReferenceLogps(dataset_with_ref_logps, info)``.
    """
    if on_miss not in ("compute", "raise"):
        raise ValueError(f"on_miss: expected 'compute' or 'raise', got {on_miss!r}")
    n_proc = accelerator.num_processes if accelerator is not None else 1
    index = accelerator.process_index if n_proc > 1 else 0
    # With the adapter disabled (or none), the reference is the base weights alone; otherwise the
    # LoRA weights are part of the reference and of its identity.
    uses_adapter = find_peft_model(model) is not None and not disable_adapter

    def key_components():
        if model_id is not None:
            model_key = f"{model_id}+adapter" if uses_adapter else str(model_id)
        else:
            model_key = model_fingerprint(model, exclude_adapter=not uses_adapter)
        return {
            "format": CACHE_FORMAT,
            "data": data_fingerprint(dataset),
            "model": model_key,
            "dtype": str(model_dtype) if model_dtype is not None else _model_dtype(model),
            "tokenizer": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
            "extra": dict(key_extra) if key_extra else None,
            "average": bool(average),
        }

    components = _collective(accelerator, key_components, main_only=True)
    key = reference_cache_key(components)
    cache_path = cache_file(cache_dir, key) if cache_dir is not None else None
    n_resp = _num_responses(dataset)

    def lookup():
        """(values, manifest) of a verified entry, or (None, what was wrong with the file or None)."""
        if cache_path is None or overwrite:
            return None, None
        try:
            return read_cache(cache_path, key=key, k_per_row=n_resp)
        except FileNotFoundError:
            return None, None
        except CacheProblem as e:
            if on_miss == "raise":
                raise CacheProblem(
                    cache_path,
                    f"{e.what}; not recomputed (on_miss='raise'): fill the cache again "
                    "(scale/train.py --precompute_reference_only true, any launch)",
                ) from None
            logger.warning("%s; recomputing it", e)
            return None, e.what

    values, found = _collective(accelerator, lookup, main_only=True)
    if values is not None:
        info = {**found.get("run", {}), "cache_hit": True, "cache_path": str(cache_path), "key": key}
        info["components"], info["repaired"] = components, None
        logger.info("reference log-probs: cache hit %s (%d rows)", cache_path, len(values))
        return ReferenceLogps(_attach(dataset, values), info)
    repaired = found

    if on_miss == "raise":
        raise FileNotFoundError(
            f"cache_dir: no reference log-probs cached for this data/model/dtype (expected {cache_path}); "
            "fill the cache first (scale/train.py --precompute_reference_only true, any launch)"
        )

    def check_weights():
        part = None if is_prepared(model) else partitioned_parameter(model)
        if part is not None:
            raise ValueError(
                f"model: parameter {part[0]!r} is {part[1]}: its forward cannot run outside its distributed "
                "engine; pass the prepared model (accelerator.prepare(model, optimizer)), as scale/train.py does"
            )

    _collective(accelerator, check_weights, main_only=False)
    lo, hi, extra = _my_rows(len(n_resp), batch_size, n_proc, index) if n_proc > 1 else (0, len(n_resp), 0)
    rows = dataset if (lo, hi) == (0, len(n_resp)) else _row_range(dataset, lo, hi)
    filler = _row_range(dataset, 0, min(batch_size, len(n_resp))) if extra else None
    show = progress and (accelerator is None or accelerator.is_main_process)

    def forward_block():
        return _forward_rows(
            model,
            rows,
            collate_fn,
            batch_size,
            average=average,
            path=path,
            disable_adapter=disable_adapter,
            progress=show,
            extra_forwards=extra,
            filler=filler,
            share_prompt=share_prompt,
        )

    blocks = _collective(accelerator, forward_block, main_only=False)
    values = [v for block in blocks for v in block[0]]
    n_seq, n_tok = sum(b[1] for b in blocks), sum(b[2] for b in blocks)
    seconds = max(b[3] for b in blocks)  # the processes ran side by side
    if len(values) != len(n_resp) or any(len(v) != n for v, n in zip(values, n_resp)):
        raise ValueError("collate_fn: its output does not line up with the dataset's rows / responses")
    run = {
        "rows": len(values),
        "sequences": n_seq,
        "tokens": n_tok,
        "seconds": seconds,
        "sequences_per_s": n_seq / seconds if seconds > 0 else float("inf"),
        "tokens_per_s": n_tok / seconds if seconds > 0 else float("inf"),
        "device": str(model_device(model)),
        "batch_size": batch_size,
        "processes": n_proc,
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
        manifest = {"key": key, "components": components, "run": run}
        _collective(accelerator, lambda: write_cache(cache_path, values, manifest), main_only=True)
    info = {**run, "cache_hit": False, "cache_path": str(cache_path) if cache_path else None, "key": key}
    info["components"], info["repaired"] = components, repaired
    return ReferenceLogps(_attach(dataset, values), info)


# ----------------------------------------------------------------------------------------------
# A run's reference: one object per mode, chosen once
# ----------------------------------------------------------------------------------------------


class Reference:
    """The reference of a training run. ``prepare`` runs once, before ``accelerator.prepare``, and
    returns the (possibly extended) train / eval datasets and an info dict for ``run.json``;
    ``logps(model, batch)`` gives the batch's ``[B, K]`` reference log-probs, detached."""

    mode: str = ""
    #: the forward shares each prompt across its K responses (set by scale/train.py's set-up)
    share_prompt: bool = False

    def prepare(self, model, train_ds, eval_ds, *, collate, tokenizer) -> tuple[Any, Any, dict]:
        return train_ds, eval_ds, {}

    def logps(self, model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class PrecomputedReference(Reference):
    """``reference: precompute``: a ``ref_logps`` column computed before training, cached on disk.

    One cache file per split for the whole dataset, keyed independently of the launch: the model
    by :func:`model_identity` (the files on disk or the Hub commit, never the live, possibly
    sharded tensors), the data by all its rows. On a miss, process r runs the forward over its
    block of batches through the PREPARED model (under ZeRO-3 and FSDP2 the engine gathers the
    weights; the forward, its sharding and its mixed precision are the policy's own, so policy ==
    reference at step 0); the main process writes the file; every process gets every row. A cache
    filled by any launch serves any other (``--precompute_reference_only true`` fills it and stops)."""

    mode = "precompute"

    def __init__(self, cfg: TrainConfig, accelerator):
        self.cfg, self.accelerator = cfg, accelerator

    def prepare(self, model, train_ds, eval_ds, *, collate, tokenizer):
        # once for both splits, on the main process (it may read every weight file)
        model_id = _collective(self.accelerator, lambda: model_identity(self.cfg, model), main_only=True)
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
        kwargs = dict(
            batch_size=cfg.ref_batch_size or cfg.per_device_eval_batch_size,
            cache_dir=cfg.ref_cache_dir or str(Path(cfg.output_dir) / "ref_cache"),
            model_id=model_id,
            tokenizer=tokenizer,
            # the base's identity beyond its files: the same weights loaded in 4 bit, or run under
            # another autocast, sharding or attention kernel, are another reference
            key_extra={
                "max_length": cfg.max_length,
                "max_prompt_length": cfg.max_prompt_length,
                "torch_dtype": cfg.torch_dtype,
                "load_in_4bit": cfg.load_in_4bit,
                "bnb": [cfg.bnb_4bit_quant_type, cfg.bnb_4bit_use_double_quant, cfg.bnb_4bit_compute_dtype]
                if cfg.load_in_4bit
                else None,
                "autocast": _numerics(accelerator),
                "attn_implementation": cfg.attn_implementation,
                # the shared forward equals the unshared one to round-off, not bit for bit
                "prompt_sharing": self.share_prompt,
            },
            average=cfg.average_logps,
            model_dtype=cfg.torch_dtype,  # the loading dtype: DeepSpeed may recast the weights
            accelerator=accelerator,
            progress=cfg.progress and accelerator.is_main_process,
            share_prompt=self.share_prompt,
        )
        # the prepared model's own forward (accelerate's autocast, FSDP2's MixedPrecisionPolicy,
        # DeepSpeed's bf16), exactly as the training step calls it
        out = precompute_reference_logps(model, ds, collate, **kwargs)
        info = {k: out.info[k] for k in ("cache_path", "key", "cache_hit", "repaired")}
        info["shards"] = accelerator.num_processes  # processes that shared the forward (on a miss)
        info["seconds"] = float(out.info.get("seconds", 0.0))
        return out.dataset, info


class AdapterReference(Reference):
    """``reference: adapter``: the policy itself with its LoRA adapter disabled, per batch."""

    mode = "adapter"

    def __init__(self, average: bool = False):
        self.average = average

    def logps(self, model, batch):
        return reference_logps_from_adapter(
            model, batch, average=self.average, share_prompt=self.share_prompt
        )


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
        return batch_logps(self.model, batch, average=self.average, share_prompt=self.share_prompt)


def make_reference(cfg: TrainConfig, accelerator) -> Reference:
    """The :class:`Reference` for ``cfg.reference`` (fails now for a mode the launch cannot run)."""
    if cfg.reference == "precompute":
        return PrecomputedReference(cfg, accelerator)
    if cfg.reference == "adapter":
        return AdapterReference(cfg.average_logps)
    if cfg.reference == "model":
        return ModelReference(accelerator, cfg.average_logps)
    raise ValueError(f"reference: expected 'precompute', 'adapter' or 'model', got {cfg.reference!r}")


def _numerics(accelerator) -> str:
    """The mixed precision of the reference forward, for the cache key: fp32 gives the same numbers
    however the model is sharded; in bf16/fp16 FSDP2 (parameters cast by its MixedPrecisionPolicy)
    and DeepSpeed (a bf16 engine) compute otherwise than autocast over fp32 weights (one process, DDP)."""
    mp = str(getattr(accelerator, "mixed_precision", "no"))
    engine = accelerator.distributed_type.value if hasattr(accelerator, "distributed_type") else "NO"
    return mp if mp == "no" or engine not in ("FSDP", "DEEPSPEED") else f"{mp} ({engine})"


def model_identity(cfg: TrainConfig, model=None) -> str:
    """The reference cache's identity of the run's model, the same however the weights are later
    sharded (ZeRO-3 / FSDP) and however many processes run: a local folder by its files
    (:func:`model_files_fingerprint`: ``config.json`` + weight files), a Hub model by its resolved
    commit (:func:`hub_model_identity`, never ``main``). Only when neither is available (a folder
    without weight files, an unresolvable Hub revision) the live weights are hashed
    (:func:`model_fingerprint`, which refuses partitioned weights)."""
    name = cfg.model_name_or_path
    if Path(name).is_dir():
        with contextlib.suppress(FileNotFoundError):
            return model_files_fingerprint(name)
    elif not Path(name).exists():
        found = hub_model_identity(name, cfg.model_revision)
        if found is not None:
            return found
        logger.warning(
            "model_name_or_path: could not resolve %s@%s to a commit; the reference cache is keyed by the loaded weights",
            name,
            cfg.model_revision or "main",
        )
    if model is None:
        raise ValueError(f"model_name_or_path: no identity for {name!r} without the loaded model")
    return model_fingerprint(model)
