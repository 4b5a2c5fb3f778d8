"""The scale track's training loop: one accelerate loop from a 2-core CPU smoke run to 7B on GPUs.

Run it through ``scale/train.py`` (a thin entry point)::

    accelerate launch --config_file scale/accelerate/cpu.yaml scale/train.py \\
        --config scale/recipes/tiny-cpu.yaml --output_dir out/scale-demo

The shape is accelerate's ``examples/nlp_example.py``: build the model, data, optimizer and
scheduler; ``accelerator.prepare`` them; loop over batches under ``accelerator.accumulate``. What
is ncakit's own is the step, and it is the design card's sentence::

    policy_logps = batch_logps(model, batch)                                    # [B, K]
    out = get_loss(cfg.loss)(policy_logps, ref_logps, rewards, mask=mask, **{"beta": cfg.beta, **cfg.loss_kwargs})
    accelerator.backward(out.loss.mean())

the same call the toy bandits and the tutorials make (MATH.md, the losses by name).

- Batches (:class:`ncakit.data.KResponseCollator`): B prompts with their K responses, one forward
  over the B·K sequences; ``[B, K]`` rewards and mask.
- Log-probs: the model's LM head is swapped for a :class:`ncakit.refcache.LogprobHead` before
  ``prepare``, so the forward runs through the DDP / FSDP2 / ZeRO-3 wrapper as usual and returns
  per-token log-probs of the response positions instead of ``[N, T, V]`` logits.
- Reference log-probs (``cfg.reference``): ``precompute`` (one pass before ``prepare``, sharded
  over the processes, cached on disk by :func:`ncakit.refcache.precompute_reference_logps`),
  ``adapter`` (the same LoRA model with its adapter disabled, per batch) or ``model`` (a frozen
  copy; single device / DDP).
- Metrics: :func:`ncakit.metrics.preference_metrics` (TRL names, plus ``rewards/rank_k`` for
  K > 2) computed over every prompt of the logging window, gathered across processes; eval
  metrics prefixed ``eval_`` as the HF Trainer does. Always written to
  ``<output_dir>/metrics.jsonl`` (a small accelerate ``GeneralTracker``); tensorboard / wandb too
  when asked.
- Checkpoints: ``accelerator.save_state`` (model, optimizer, RNG, the registered scheduler) +
  ``trainer_state.json`` (step, epoch, batches consumed) every ``save_steps`` and on
  SIGTERM/SIGINT; ``--resume_from`` restores them and skips the consumed batches with
  ``accelerator.skip_first_batches``. The final model (or adapter) goes to ``<output_dir>/final``.

Bad configurations fail before any model is loaded where possible (see
:mod:`ncakit.train_config`); a pairwise loss on K > 2 data fails right after the data is read.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ncakit.data import KResponseCollator, load_k_dataset, make_dataloader, to_pairwise, tokenize_k_dataset
from ncakit.losses import LossOutput
from ncakit.metrics import preference_metrics
from ncakit.refcache import (
    batch_logps,
    install_logprob_head,
    model_fingerprint,
    precompute_reference_logps,
    reference_logps_from_adapter,
)
from ncakit.registry import get_loss, loss_spec
from ncakit.train_config import TrainConfig, parse_config
from ncakit.utils import seed_everything

__all__ = ["main", "train", "TrainResult", "TrainState", "JsonlTracker", "compute_loss"]

logger = logging.getLogger("ncakit.train")

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"


# ----------------------------------------------------------------------------------------------
# Results, state and the jsonl tracker
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Where the loop is. ``batches_in_epoch`` counts this process's micro-batches of the current
    epoch (the number to skip on resume)."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    max_steps: int = 0
    num_tokens: int = 0


@dataclass
class TrainResult:
    """What :func:`train` returns (on every process)."""

    output_dir: Path
    state: TrainState
    history: list[dict] = field(default_factory=list)  # every logged record, train and eval
    summary: dict = field(default_factory=dict)
    interrupted: bool = False
    model: Any = None  # the unwrapped model (in-process use: tests, notebooks)


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


try:
    from accelerate.tracking import GeneralTracker
except ImportError:  # pragma: no cover - accelerate is a scale dependency
    GeneralTracker = object


class JsonlTracker(GeneralTracker):
    """An accelerate tracker that appends ``{"step": s, **values}`` lines to a file (main process).

    The run's log of record: ``scale/plot_dynamics.py`` and the tests read it.
    """

    name = "jsonl"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path = Path(path)
        self._fh = None

    def start(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finish()

    @property
    def tracker(self):
        return self._fh

    def store_init_configuration(self, values: dict):
        pass  # the configuration is written to run.json

    def log(self, values: dict, step: int | None = None, **kwargs):
        if self._fh is None:
            self.start()
        record = {"step": step, **{k: _jsonable(v) for k, v in values.items()}}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def finish(self):
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# ----------------------------------------------------------------------------------------------
# Model and tokenizer
# ----------------------------------------------------------------------------------------------

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def _tiny_kit_dir(cfg: TrainConfig) -> str:
    """Where the offline tiny-LM kit lives for ``model_name_or_path: tinylm``."""
    return cfg.tiny_kit_dir or str(Path(cfg.output_dir) / "tinylm-kit")


def _tiny_kit(cfg: TrainConfig, accelerator):
    from ncakit.tinylm import ensure_tiny_kit

    kit_dir = _tiny_kit_dir(cfg)
    with accelerator.main_process_first():  # built once, by the main process; the others reload it
        return ensure_tiny_kit(
            kit_dir,
            n_train=cfg.tiny_n_train,
            n_test=cfg.tiny_n_test,
            k=cfg.tiny_k,
            hidden=cfg.tiny_hidden,
            layers=cfg.tiny_layers,
            sft_steps=cfg.tiny_sft_steps,
            seed=cfg.tiny_seed,
        )


def load_tokenizer(cfg: TrainConfig, kit=None):
    if kit is not None and cfg.tokenizer_name_or_path is None:
        return kit.tokenizer
    from transformers import AutoTokenizer

    name = cfg.tokenizer_name_or_path or cfg.model_name_or_path
    tok = AutoTokenizer.from_pretrained(
        name, revision=cfg.model_revision, trust_remote_code=cfg.trust_remote_code
    )
    if tok.pad_token_id is None:  # Mistral/Llama: padding is masked everywhere, any id works
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok


def load_model(cfg: TrainConfig, accelerator, kit=None):
    """The causal LM: loaded (4-bit for QLoRA), head swapped, checkpointing on, LoRA attached."""
    if kit is not None:
        model = kit.model
        if cfg.torch_dtype not in ("float32", "auto"):
            model = model.to(_DTYPES[cfg.torch_dtype])
    else:
        from transformers import AutoModelForCausalLM

        kwargs: dict[str, Any] = {
            "revision": cfg.model_revision,
            "trust_remote_code": cfg.trust_remote_code,
            "dtype": _DTYPES[cfg.torch_dtype],
        }
        if cfg.attn_implementation:
            kwargs["attn_implementation"] = cfg.attn_implementation
        if cfg.load_in_4bit:
            if not torch.cuda.is_available():
                raise ValueError("load_in_4bit: QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels)")
            from transformers import BitsAndBytesConfig  # imports bitsandbytes lazily, only here

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=cfg.bnb_4bit_quant_type,
                bnb_4bit_use_double_quant=cfg.bnb_4bit_use_double_quant,
                bnb_4bit_compute_dtype=_DTYPES[cfg.bnb_4bit_compute_dtype],
                bnb_4bit_quant_storage=_DTYPES[cfg.bnb_4bit_compute_dtype],
            )
            kwargs["device_map"] = {"": accelerator.local_process_index}
        model = AutoModelForCausalLM.from_pretrained(cfg.model_name_or_path, **kwargs)
    model.config.use_cache = False
    # Swap the head before peft wraps the model, so the adapter-disabled reference uses it too.
    head = install_logprob_head(model)
    if head is None:
        logger.warning("no LogprobHead for %s: using the chunked logits path", type(model).__name__)
    gc_kwargs = {"use_reentrant": False}
    quantised_peft = cfg.use_peft and cfg.load_in_4bit  # peft's k-bit preparation turns it on itself
    if cfg.gradient_checkpointing and not quantised_peft:
        enable_checkpointing(model, gc_kwargs)
    if cfg.use_peft:
        from peft import LoraConfig, get_peft_model

        if cfg.load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=cfg.gradient_checkpointing,
                gradient_checkpointing_kwargs=gc_kwargs,
            )
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules),
            task_type="CAUSAL_LM",
        )
        with torch.random.fork_rng(devices=[]):  # adapter init from cfg.seed, whatever ran before
            torch.manual_seed(cfg.seed)
            model = get_peft_model(model, lora)
    return model


def enable_checkpointing(model, kwargs: dict | None = None) -> None:
    """Activation (gradient) checkpointing under its transformers 5 name, or the older one."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


@dataclass
class Data:
    train: Any
    eval: Any | None
    k: int
    stats: dict


def _load_split(cfg: TrainConfig, name: str, split: str, max_rows: int | None):
    adapter_kwargs = {"pair_rewards": cfg.pair_rewards} if cfg.pair_rewards != "binary" else {}
    try:
        loaded = load_k_dataset(
            name,
            split,
            cfg.dataset_schema,
            max_rows=max_rows,
            num_proc=cfg.dataset_num_proc,
            **adapter_kwargs,
        )
    except TypeError as err:
        if "pair_rewards" in str(err):
            raise ValueError(
                f"pair_rewards: {cfg.pair_rewards!r} applies to pairwise sources (binarized, trl) only; "
                f"{name!r} is not one"
            ) from None
        raise
    stats = loaded.stats
    ds = loaded.dataset
    if cfg.pairwise_from_k:
        paired = to_pairwise(ds, cfg.pairwise_from_k, seed=cfg.seed)
        ds, stats = paired.dataset, stats.then(paired.stats)
    return ds, stats


def _check_k(cfg: TrainConfig, k_counts: dict[int, int], where: str) -> None:
    info = loss_spec(cfg.loss)
    if info.pairwise and set(k_counts) != {2}:
        raise ValueError(
            f"loss: {cfg.loss!r} is pairwise and needs K = 2 data (chosen first), but the {where} data has "
            f"responses per prompt {dict(sorted(k_counts.items()))}; use a K-way loss (nca, infonca, "
            f"plackett_luce) or set pairwise_from_k: best_vs_random"
        )
    if not k_counts:
        raise ValueError(
            f"dataset_name: no usable prompts in the {where} data (all dropped; see the data stats)"
        )


def prepare_data(cfg: TrainConfig, tokenizer, accelerator, kit=None) -> Data:
    """Load, (optionally) pair, tokenise; the K checks. Runs on the main process first (caching)."""
    train_name = (
        str(kit.train_path) if (kit is not None and cfg.dataset_name == "tinylm") else cfg.dataset_name
    )
    if cfg.eval_dataset_name is not None:
        eval_name, eval_split = cfg.eval_dataset_name, cfg.eval_split or "test"
    elif cfg.eval_split is None:
        eval_name = eval_split = None
    elif cfg.dataset_name == "tinylm":
        eval_name, eval_split = str(kit.test_path), "test"
    elif Path(cfg.dataset_name).exists():
        logger.warning(
            "eval: %s is a local file; set eval_dataset_name to evaluate on held-out data", train_name
        )
        eval_name = eval_split = None
    else:
        eval_name, eval_split = cfg.dataset_name, cfg.eval_split
    tok_kwargs = dict(
        max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, num_proc=cfg.dataset_num_proc
    )
    stats = {}
    with accelerator.main_process_first():
        ds, st = _load_split(cfg, train_name, cfg.dataset_split, cfg.max_train_samples)
        _check_k(cfg, st.k_counts, "training")
        tok = tokenize_k_dataset(ds, tokenizer, source=train_name, **tok_kwargs)
        train_ds, stats["train"] = tok.dataset, st.then(tok.stats).to_dict()
        eval_ds = None
        if eval_name is not None:
            eds, est = _load_split(cfg, eval_name, eval_split, cfg.max_eval_samples)
            _check_k(cfg, est.k_counts, "eval")
            etok = tokenize_k_dataset(eds, tokenizer, source=eval_name, **tok_kwargs)
            eval_ds, stats["eval"] = etok.dataset, est.then(etok.stats).to_dict()
    ks = [int(k) for k in stats["train"]["k_counts"]] + (
        [int(k) for k in stats["eval"]["k_counts"]] if eval_ds is not None else []
    )
    k = cfg.k if cfg.k is not None else max(ks)
    if max(ks) > k:
        raise ValueError(f"k: the data has up to {max(ks)} responses per prompt, more than k = {k}")
    return Data(train_ds, eval_ds, k, stats)


# ----------------------------------------------------------------------------------------------
# Reference log-probs
# ----------------------------------------------------------------------------------------------


def _is_zero3(accelerator) -> bool:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and getattr(plugin, "zero_stage", None) == 3


def _model_id(cfg: TrainConfig) -> str | None:
    """A cheap identity for the cache key of hub models; None (hash the weights) for local folders."""
    if cfg.model_name_or_path == "tinylm" or Path(cfg.model_name_or_path).exists():
        return None
    return f"{cfg.model_name_or_path}@{cfg.model_revision or 'main'}"


def precompute_reference(
    cfg: TrainConfig, model, ds, collate, tokenizer, accelerator, model_id: str | None = None
):
    """Add ``ref_logps`` to ``ds`` before ``prepare``: process r computes shard r (cached on disk),
    then every process loads every other shard from the cache. Needs a cache folder all processes
    see. ``model_id``: the model's cache identity, if the caller already has it (train and eval)."""
    cache_dir = cfg.ref_cache_dir or str(Path(cfg.output_dir) / "ref_cache")
    n = accelerator.num_processes
    shards = [ds.shard(num_shards=n, index=i, contiguous=True) for i in range(n)] if n > 1 else [ds]
    # One identity for every shard: hashing a local model's weights (seconds per GB) happens once.
    model_id = model_id or _model_id(cfg) or model_fingerprint(model)
    kwargs = dict(
        batch_size=cfg.ref_batch_size or cfg.per_device_eval_batch_size,
        cache_dir=cache_dir,
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
    )
    # Under ZeRO-3 the weights are already partitioned (zero.Init): no forward before prepare, so
    # the cache must have been filled by a `--precompute_reference_only true` run beforehand.
    on_miss = "raise" if _is_zero3(accelerator) else "compute"
    if (
        not cfg.load_in_4bit
        and not _is_zero3(accelerator)
        and next(model.parameters()).device != accelerator.device
    ):
        model.to(accelerator.device)  # prepare() would move it there anyway
    # my shard first (a cache miss computes it), then everybody reads all shards from the cache
    mine = accelerator.process_index if n > 1 else 0
    show = cfg.progress and accelerator.is_main_process
    # the reference forward runs under the same autocast as the training forward (bf16 on GPU
    # configs), so policy == reference at step 0 up to kernel noise, not up to a precision change
    with accelerator.autocast():
        own = precompute_reference_logps(
            model, shards[mine], collate, on_miss=on_miss, progress=show, **kwargs
        )
    accelerator.wait_for_everyone()
    parts, infos = [], []
    for i, shard in enumerate(shards):
        out = (
            own if i == mine else precompute_reference_logps(model, shard, collate, on_miss=on_miss, **kwargs)
        )
        parts.append(out.dataset)
        infos.append(out.info)
    import datasets

    full = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    info = {k: infos[0][k] for k in ("cache_path", "key") if k in infos[0]}
    info["shards"] = len(parts)
    info["seconds"] = sum(float(i.get("seconds", 0.0)) for i in infos)
    return full, info


def compute_loss(
    model, batch, cfg: TrainConfig, loss_fn, ref_model=None
) -> tuple[LossOutput, torch.Tensor, torch.Tensor]:
    """One batch -> ``(loss output, policy_logps [B, K], ref_logps [B, K])``: the design card's call."""
    if "ref_logps" in batch:
        ref_logps = batch["ref_logps"]
    elif cfg.reference == "adapter":
        ref_logps = reference_logps_from_adapter(model, batch, average=cfg.average_logps)
    elif ref_model is not None:
        with torch.no_grad():
            ref_logps = batch_logps(ref_model, batch, average=cfg.average_logps)
    else:
        raise ValueError("reference: the batch has no ref_logps and no reference model/adapter is set")
    policy_logps = batch_logps(model, batch, average=cfg.average_logps)  # [B, K], grad
    ref_logps = ref_logps.to(policy_logps.device, torch.float32)
    rewards, mask = batch["rewards"].to(policy_logps.device), batch["mask"].to(policy_logps.device)
    out = loss_fn(policy_logps, ref_logps, rewards, mask=mask, **{"beta": cfg.beta, **cfg.loss_kwargs})
    return out, policy_logps, ref_logps


# ----------------------------------------------------------------------------------------------
# Metrics over a window of batches, gathered across processes
# ----------------------------------------------------------------------------------------------


class _Window:
    """Per-prompt tensors of the batches since the last log: loss [n], r̂ / weights / logps /
    rewards / mask [n, K]."""

    KEYS = ("loss", "implicit_rewards", "weights", "policy_logps", "rewards", "mask")

    def __init__(self):
        self.parts: dict[str, list[torch.Tensor]] = {k: [] for k in self.KEYS}

    @staticmethod
    def rows(out: LossOutput, policy_logps, batch) -> dict[str, torch.Tensor]:
        """One batch's rows: detached, float32 (the mask stays bool), on the policy's device."""
        return {
            "loss": out.loss.detach().float(),
            "implicit_rewards": out.implicit_rewards.float(),
            "weights": out.weights.float(),
            "policy_logps": policy_logps.detach().float(),
            "rewards": batch["rewards"].to(policy_logps.device).float(),
            "mask": batch["mask"].to(policy_logps.device),
        }

    def append(self, rows: dict[str, torch.Tensor]) -> None:
        for k in self.KEYS:
            self.parts[k].append(rows[k])

    def add(self, out: LossOutput, policy_logps, batch):
        self.append(self.rows(out, policy_logps, batch))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.cat(v) for k, v in self.parts.items()}


def _gather_rows(accelerator, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate every process's rows (padded to the same count; padding rows are dropped)."""
    if accelerator.num_processes == 1:
        return tensors
    valid = torch.ones(tensors["loss"].shape[0], dtype=torch.bool, device=tensors["loss"].device)
    padded = {k: accelerator.pad_across_processes(v, dim=0) for k, v in {**tensors, "_valid": valid}.items()}
    gathered = accelerator.gather(padded)
    keep = gathered.pop("_valid")
    return {k: v[keep] for k, v in gathered.items()}


def _metrics(t: dict[str, torch.Tensor], prefix: str = "") -> dict[str, float]:
    """Loss + :func:`preference_metrics` over all rows. Ranks follow the data rewards; pairwise
    rows are chosen-first with ``rewards[:, 0] >= rewards[:, 1]`` and the stable sort keeps ties
    in column order, so "chosen" is column 0 there, as in TRL."""
    out = LossOutput(t["loss"], t["implicit_rewards"], t["weights"])
    m = {"loss": t["loss"].mean()} | preference_metrics(out, t["policy_logps"], t["rewards"], t["mask"])
    return {f"{prefix}{k}": float(v) for k, v in m.items()}


@torch.no_grad()
def evaluate(model, loader, cfg: TrainConfig, loss_fn, accelerator, ref_model=None) -> dict[str, float]:
    """Loss and preference metrics over the whole held-out set (``eval_`` prefix, HF style)."""
    was_training = model.training
    model.eval()
    window = _Window()
    for batch in loader:
        out, policy, _ = compute_loss(model, batch, cfg, loss_fn, ref_model)
        # gather_for_metrics drops the samples added to even out the last batch
        window.append(accelerator.gather_for_metrics(_Window.rows(out, policy, batch)))
    model.train(was_training)
    return _metrics(window.tensors(), prefix="eval_")


# ----------------------------------------------------------------------------------------------
# Optimizer, schedule, checkpoints
# ----------------------------------------------------------------------------------------------


def build_optimizer(cfg: TrainConfig, model):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or "norm" in name.lower() else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)
    if cfg.optim == "adamw_torch":
        return torch.optim.AdamW(groups, **kwargs)
    import bitsandbytes as bnb  # only when a paged optimizer is asked for

    cls = bnb.optim.PagedAdamW32bit if cfg.optim == "paged_adamw_32bit" else bnb.optim.PagedAdamW8bit
    return cls(groups, **kwargs)


def _checkpoints(output_dir: Path) -> list[Path]:
    root = output_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(r"step_\d+", p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def resolve_resume(cfg: TrainConfig) -> Path | None:
    if cfg.resume_from is None:
        return None
    if cfg.resume_from == "latest":
        found = _checkpoints(Path(cfg.output_dir))
        if not found:
            raise ValueError(
                f"resume_from: 'latest' but no checkpoint under {Path(cfg.output_dir) / CHECKPOINT_DIR}"
            )
        return found[-1]
    path = Path(cfg.resume_from)
    if not (path / STATE_FILE).is_file():
        raise ValueError(f"resume_from: {path} is not a checkpoint folder (no {STATE_FILE})")
    return path


def save_checkpoint(accelerator, cfg: TrainConfig, state: TrainState, *, reason: str) -> Path:
    path = Path(cfg.output_dir) / CHECKPOINT_DIR / f"step_{state.global_step:06d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        payload = {**state.__dict__, "reason": reason, "time": time.time()}
        (path / STATE_FILE).write_text(json.dumps(payload, indent=2) + "\n")
        if cfg.save_total_limit is not None and reason == "periodic":
            old = [p for p in _checkpoints(Path(cfg.output_dir)) if p != path]
            for p in old[: max(0, len(old) - (cfg.save_total_limit - 1))]:
                shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def save_final(accelerator, cfg: TrainConfig, model, tokenizer) -> Path:
    """``save_pretrained`` the model (full) or the adapter (LoRA) + tokenizer to ``<output_dir>/final``;
    with ``merge_lora``, also the adapter merged into a fresh copy of the base weights (``final/merged``)."""
    final = Path(cfg.output_dir) / "final"
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)
    unwrapped.save_pretrained(
        final,
        is_main_process=accelerator.is_main_process,
        save_function=accelerator.save,
        state_dict=state_dict,
    )
    if accelerator.is_main_process:
        tokenizer.save_pretrained(final)
        if cfg.use_peft and cfg.merge_lora:
            _merge_adapter(cfg, final)
    accelerator.wait_for_everyone()
    return final


def _merge_adapter(cfg: TrainConfig, adapter_dir: Path) -> None:
    """Reload the base (non-quantised, on CPU), load the saved adapter, merge, save to ``merged/``.
    Works the same after single-GPU, FSDP2 or ZeRO-3 runs, and for QLoRA (merged into bf16 weights)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = cfg.model_name_or_path
    if base_path == "tinylm":
        base_path = str(Path(_tiny_kit_dir(cfg)) / "model")  # TinyKit.model_path
    dtype = torch.bfloat16 if cfg.load_in_4bit else _DTYPES[cfg.torch_dtype]
    base = AutoModelForCausalLM.from_pretrained(base_path, revision=cfg.model_revision, dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(adapter_dir / "merged")


# ----------------------------------------------------------------------------------------------
# SIGTERM / SIGINT: finish the step, save, stop
# ----------------------------------------------------------------------------------------------


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it after each optimizer step (all processes agree
    through a max-reduce), saves a checkpoint and stops. A second SIGINT interrupts at once."""

    def __init__(self):
        self.requested = False
        self.signal_name = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts for real
            signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()
        return False


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def _set_threads(cfg: TrainConfig, accelerator) -> None:
    if accelerator.device.type == "cpu":
        # 2 threads on tiny tensors are ~100x slower than 1 on a shared 2-core machine
        torch.set_num_threads(cfg.cpu_threads or 1)
    elif cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)


def _make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    log_with: list[Any] = [JsonlTracker(Path(cfg.output_dir) / METRICS_FILE)]
    for name in cfg.report_to:
        from accelerate.utils import is_tensorboard_available, is_wandb_available

        ok = is_tensorboard_available() if name == "tensorboard" else is_wandb_available()
        if not ok:
            raise ValueError(f"report_to: {name!r} is not installed in this environment (pip install {name})")
        log_with.append(name)
    kwargs = {}
    if cfg.mixed_precision is not None:
        kwargs["mixed_precision"] = cfg.mixed_precision
    return Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=log_with,
        project_config=ProjectConfiguration(
            project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / "logs")
        ),
        # the shuffling order depends on (seed, epoch) alone: identical on every process and on resume
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
        **kwargs,
    )


def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__}
    for mod in ("transformers", "accelerate", "peft", "datasets"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:  # pragma: no cover
            pass
    return out


def train(cfg: TrainConfig, *, callbacks: list[Callable[[TrainState], None]] | None = None) -> TrainResult:
    """Run one training job described by ``cfg`` (already validated). ``callbacks`` are called with
    the :class:`TrainState` after every optimizer step (tests use them to send signals)."""
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    t_start = time.perf_counter()
    output_dir = Path(cfg.output_dir)
    accelerator = _make_accelerator(cfg)
    _set_threads(cfg, accelerator)
    seed_everything(cfg.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    loss_fn = get_loss(cfg.loss)
    resume_path = resolve_resume(cfg)
    if cfg.reference == "model" and accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
        raise ValueError("reference: 'model' (a frozen copy) is for single-device/DDP runs; use 'precompute'")

    # ---- tokenizer, data (fails early on a pairwise loss with K > 2), model -------------------------
    kit = _tiny_kit(cfg, accelerator) if "tinylm" in (cfg.model_name_or_path, cfg.dataset_name) else None
    model_kit = kit if cfg.model_name_or_path == "tinylm" else None
    tokenizer = load_tokenizer(cfg, model_kit)
    data = prepare_data(cfg, tokenizer, accelerator, kit)
    model = load_model(cfg, accelerator, model_kit)
    collate = KResponseCollator(tokenizer.pad_token_id, k=data.k)

    # ---- reference -----------------------------------------------------------------------------
    ref_model, ref_info = None, {}
    train_ds, eval_ds = data.train, data.eval
    if cfg.reference == "precompute":
        model_id = _model_id(cfg) or model_fingerprint(model)  # hashed once for both splits
        train_ds, ref_info["train"] = precompute_reference(
            cfg, model, train_ds, collate, tokenizer, accelerator, model_id
        )
        if eval_ds is not None:
            eval_ds, ref_info["eval"] = precompute_reference(
                cfg, model, eval_ds, collate, tokenizer, accelerator, model_id
            )
    elif cfg.reference == "model":
        ref_model = copy.deepcopy(accelerator.unwrap_model(model)).requires_grad_(False).eval()
        ref_model.to(accelerator.device)
    if cfg.precompute_reference_only:
        accelerator.print(f"reference log-probs cached: {json.dumps(ref_info)}")
        accelerator.end_training()
        return TrainResult(output_dir, TrainState(), summary={"reference": ref_info})

    # ---- loaders, optimizer, prepare, schedule ----------------------------------------------------
    train_loader = make_dataloader(
        train_ds,
        collate,
        cfg.per_device_train_batch_size,
        shuffle=True,
        group_by_length=cfg.group_by_length,
        seed=cfg.seed,
    )
    eval_loader = (
        make_dataloader(eval_ds, collate, cfg.per_device_eval_batch_size, shuffle=False)
        if eval_ds is not None
        else None
    )
    optimizer = base_optimizer = build_optimizer(cfg, model)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.gradient_accumulation_steps)
    max_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else math.ceil(cfg.warmup_ratio * max_steps)
    # Stepped by hand once per optimizer step (not through accelerator.prepare, which steps a
    # scheduler num_processes times per call); saved with the state via register_for_checkpointing.
    # It drives the plain torch optimizer: FSDP2 and DeepSpeed keep stepping that object's
    # param_groups (sharded / partitioned params swapped in), so the learning rates reach them.
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler_type,
        optimizer=base_optimizer,
        num_warmup_steps=warmup,
        num_training_steps=max_steps,
    )
    accelerator.register_for_checkpointing(lr_scheduler)

    state = TrainState(max_steps=max_steps)
    if resume_path is not None:
        accelerator.load_state(str(resume_path))
        saved = json.loads((resume_path / STATE_FILE).read_text())
        for key in ("global_step", "epoch", "batches_in_epoch", "num_tokens"):
            setattr(state, key, int(saved.get(key, 0)))
        accelerator.print(f"resumed from {resume_path} at step {state.global_step}")

    metrics_file = output_dir / METRICS_FILE
    if resume_path is None and accelerator.is_main_process and metrics_file.exists():
        metrics_file.unlink()  # a fresh run starts a fresh log; a resumed one appends to it
    run_name = cfg.run_name or output_dir.name
    accelerator.init_trackers(
        run_name,
        config={
            k: _jsonable(v) if not isinstance(v, list | dict) else str(v) for k, v in cfg.to_dict().items()
        },
    )
    run_info = {
        "config": cfg.to_dict(),
        "data": data.stats,
        "k": data.k,
        "reference": ref_info,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": accelerator.mixed_precision,
        "device": str(accelerator.device),
        "max_steps": max_steps,
        "steps_per_epoch": steps_per_epoch,
        "global_batch_prompts": cfg.per_device_train_batch_size
        * cfg.gradient_accumulation_steps
        * accelerator.num_processes,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "versions": _versions(),
    }
    if accelerator.is_main_process:
        (output_dir / "run.json").write_text(json.dumps(run_info, indent=2, default=str) + "\n")

    history: list[dict] = []

    def log(values: dict, step: int):
        accelerator.log(values, step=step)
        history.append({"step": step, **values})

    if cfg.eval_on_start and eval_loader is not None and state.global_step == 0:
        log(evaluate(model, eval_loader, cfg, loss_fn, accelerator, ref_model), step=0)

    # ---- the loop ----------------------------------------------------------------------------------
    model.train()
    optimizer.zero_grad(set_to_none=True)  # a model handed over with gradients (e.g. after SFT) starts clean
    progress = tqdm(
        total=max_steps,
        initial=state.global_step,
        disable=not (cfg.progress and accelerator.is_local_main_process),
    )
    window = _Window()
    grad_norm = None
    interrupted = False
    # tokens stay a device tensor between logging steps: no host sync per micro-batch
    t_window, tokens_window = (
        time.perf_counter(),
        torch.zeros((), dtype=torch.long, device=accelerator.device),
    )
    last_eval_step = -1
    with _StopFlag() as stop:
        while state.global_step < max_steps and state.epoch < num_epochs:
            train_loader.set_epoch(state.epoch)
            loader = (
                accelerator.skip_first_batches(train_loader, state.batches_in_epoch)
                if state.batches_in_epoch
                else train_loader
            )
            finished_epoch = True
            for batch in loader:
                with accelerator.accumulate(model):
                    out, policy, _ = compute_loss(model, batch, cfg, loss_fn, ref_model)
                    accelerator.backward(out.loss.mean())
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                state.batches_in_epoch += 1
                window.add(out, policy, batch)
                tokens_window += batch["attention_mask"].sum().to(tokens_window.device)
                if not accelerator.sync_gradients:
                    continue
                lr_scheduler.step()
                state.global_step += 1
                progress.update(1)
                last = state.global_step >= max_steps
                if state.global_step % cfg.logging_steps == 0 or last:
                    tokens = int(accelerator.reduce(tokens_window, "sum"))
                    state.num_tokens += tokens
                    elapsed = time.perf_counter() - t_window
                    values = _metrics(_gather_rows(accelerator, window.tensors()))
                    values.update(
                        {
                            "learning_rate": lr_scheduler.get_last_lr()[0],
                            "grad_norm": float(grad_norm) if grad_norm is not None else None,
                            "epoch": state.epoch + state.batches_in_epoch / max(1, len(train_loader)),
                            "num_tokens": state.num_tokens,
                            "tokens_per_second": tokens / elapsed if elapsed > 0 else None,
                        }
                    )
                    log(values, state.global_step)
                    progress.set_postfix(
                        loss=f"{values['loss']:.4f}", chosen=f"{values['rewards/chosen']:+.3f}"
                    )
                    window = _Window()
                    t_window, tokens_window = time.perf_counter(), torch.zeros_like(tokens_window)
                if eval_loader is not None and cfg.eval_steps > 0 and state.global_step % cfg.eval_steps == 0:
                    log(evaluate(model, eval_loader, cfg, loss_fn, accelerator, ref_model), state.global_step)
                    last_eval_step = state.global_step
                if cfg.save_steps > 0 and state.global_step % cfg.save_steps == 0 and not last:
                    save_checkpoint(accelerator, cfg, state, reason="periodic")
                for cb in callbacks or ():
                    cb(state)
                flag = torch.tensor(int(stop.requested), device=accelerator.device)
                if int(accelerator.reduce(flag, "max")):
                    accelerator.print(
                        f"{stop.signal_name or 'stop signal'}: saving a checkpoint at step {state.global_step}"
                    )
                    save_checkpoint(accelerator, cfg, state, reason=stop.signal_name or "signal")
                    interrupted = True
                if last or interrupted:
                    finished_epoch = False
                    break
            if interrupted or not finished_epoch:
                break
            state.epoch += 1
            state.batches_in_epoch = 0
    progress.close()

    if not interrupted and eval_loader is not None and last_eval_step != state.global_step:
        log(evaluate(model, eval_loader, cfg, loss_fn, accelerator, ref_model), state.global_step)
    if not interrupted and cfg.save_final:
        save_final(accelerator, cfg, model, tokenizer)

    train_logs = [h for h in history if "loss" in h]
    eval_logs = [h for h in history if "eval_loss" in h]
    summary = {
        "wall_seconds": time.perf_counter() - t_start,
        "global_step": state.global_step,
        "interrupted": interrupted,
        "loss_first": train_logs[0]["loss"] if train_logs else None,
        "loss_last": train_logs[-1]["loss"] if train_logs else None,
        "eval": eval_logs[-1] if eval_logs else None,
        "num_tokens": state.num_tokens,
    }
    if accelerator.is_main_process:
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    accelerator.end_training()
    return TrainResult(output_dir, state, history, summary, interrupted, accelerator.unwrap_model(model))


def main(argv: list[str] | None = None) -> TrainResult:
    """``scale/train.py``: parse ``[--config recipe.yaml] [--key value ...]`` and train."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("datasets", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
    cfg = parse_config(argv)
    return train(cfg)
