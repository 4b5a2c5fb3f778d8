"""The scale track's training loop: one accelerate loop from a 2-core CPU smoke run to 7B on GPUs.

Run it through ``scale/train.py`` (a thin entry point)::

    accelerate launch --config_file scale/accelerate/cpu.yaml scale/train.py \\
        --config scale/recipes/tiny-cpu.yaml --output_dir out/scale-demo

The shape is accelerate's ``examples/nlp_example.py``: :func:`set_up` builds the model and data,
:func:`prepare_model` the optimizer, ``accelerator.prepare`` s both and computes the reference on the
prepared model, :func:`prepare_training` the loaders and scheduler; :func:`train` loops over
batches, each micro-batch one :func:`train_step` under ``accelerator.accumulate``, and after each
optimizer step logs (:func:`log_train_metrics`), evaluates (:func:`evaluate`) and saves
(:func:`ncakit.scale.checkpoint.save_checkpoint`). What is ncakit's own is :func:`compute_loss`::

    policy_logps = batch_logps(model, batch)                                    # [B, K]
    out = get_loss(cfg.loss)(policy_logps, ref_logps, rewards, mask=mask, **{"beta": cfg.beta, **cfg.loss_kwargs})
    accelerator.backward(out.loss.mean())

the same call the toy bandits and the tutorials make (MATH.md, the losses by name).

- Model and data: ``model_name_or_path`` / ``dataset_name`` ``tinylm`` are resolved once, in
  :func:`resolve_tiny_kit`, into the offline kit's local folders and files
  (:mod:`ncakit.scale.tinylm`); from there on every run loads a local or hub model and dataset the
  same way. Batches (:class:`ncakit.scale.data.KResponseCollator`): B prompts with their K responses,
  one forward over the B·K sequences; ``[B, K]`` rewards and mask.
- Log-probs (:mod:`ncakit.scale.forward`): the model's LM head is swapped for a ``LogprobHead``
  before ``prepare``, so the forward runs through the DDP / FSDP2 / ZeRO-3 wrapper as usual and
  returns per-token log-probs of the response positions instead of ``[N, T, V]`` logits. With
  ``prompt_sharing`` (resolved once, into ``run.json``) each prompt runs once and its keys/values
  serve its K responses (:mod:`ncakit.scale.prefix`); with ``fused_loss_head`` the head and the loss
  are computed together (:mod:`ncakit.fused`, single process).
- Reference (:mod:`ncakit.scale.reference`): chosen once from ``cfg.reference`` -- precomputed and
  cached, the adapter-disabled policy, or a frozen copy -- and asked for ``[B, K]`` per batch.
- Metrics (:mod:`ncakit.scale.tracking`): TRL names over every prompt of the logging window,
  gathered across processes, to ``<output_dir>/metrics.jsonl`` (and tensorboard / wandb if asked).
- Checkpoints (:mod:`ncakit.scale.checkpoint`): atomic, every ``save_steps`` and on SIGTERM /
  SIGINT / SIGUSR1 (also when sent to the launcher); ``--resume_from`` verifies and restores them
  (nothing is unpickled with code allowed). The final model (or adapter) goes to ``<output_dir>/final``.
- Run safety: one run per output folder (:mod:`ncakit.scale.runlock`: a lock, and a fresh run never
  lands on another run's files); resume checks the run's fingerprint (:mod:`ncakit.scale.fingerprint`);
  a non-finite loss or gradient norm stops (or skips, ``on_nonfinite``) before the optimizer step
  (:mod:`ncakit.scale.stepcheck`), and non-finite weights are never saved.

Host syncs per optimizer step (CPU waits for the device): the first micro-batch of each step calls
the loss with ``validate=True`` (up to five ``bool`` reads, :func:`ncakit.validation.check_loss_inputs`),
the others with ``validate=False``; each forward through the ``LogprobHead`` (the policy's, and the
reference's in the ``adapter`` / ``model`` modes) reads its response positions once (``nonzero``);
before the optimizer step, one reduce of the stop flag and the step's loss and gradient-norm
finiteness, read together (with ``max_grad_norm: 0`` the norm comes from ``clip_grad_norm_(inf)``,
which scales every gradient by exactly 1). Logging steps add the token count and the metrics,
evaluation its own; a checkpoint adds one finiteness reduce of the weights. A shared-prompt forward
reads its split's lengths and checks that the K rows repeat their prompt (a few reads per forward).

Bad configurations fail before any model is loaded where possible (see :mod:`ncakit.scale.config`);
a pairwise loss on K > 2 data fails right after the data is read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ncakit.logprobs import TokenStats
from ncakit.losses import LossOutput
from ncakit.registry import get_loss, loss_spec
from ncakit.scale.callbacks import CallbackList, TrainerCallback
from ncakit.scale.checkpoint import (
    StopFlag,
    TrainState,
    follow_launcher,
    load_checkpoint,
    push_to_hub,
    read_checkpoint_state,
    resolve_resume,
    save_checkpoint,
    save_final,
    verify_checkpoint,
)
from ncakit.scale.cli import parse_config
from ncakit.scale.config import TrainConfig
from ncakit.scale.data import (
    KResponseCollator,
    load_k_dataset,
    make_dataloader,
    to_pairwise,
    tokenize_k_dataset,
)
from ncakit.scale.fingerprint import resume_checked, run_fingerprint
from ncakit.scale.forward import batch_logps, fused_batch_loss
from ncakit.scale.launch import make_accelerator, outside_zero_init
from ncakit.scale.model import build_optimizer, load_model, load_tokenizer
from ncakit.scale.prefix import resolve_prompt_sharing
from ncakit.scale.reference import Reference, make_reference
from ncakit.scale.runlock import claim_output_dir
from ncakit.scale.stepcheck import check_step
from ncakit.scale.tracking import (
    METRICS_FILE,
    MetricsWindow,
    gather_rows,
    jsonable,
    tracker_project_name,
    versions,
    window_metrics,
)
from ncakit.utils import seed_everything, write_atomic

__all__ = [
    "main",
    "train",
    "set_up",
    "prepare_training",
    "resolve_tiny_kit",
    "train_step",
    "evaluate",
    "compute_loss",
    "TrainResult",
    "Run",
]

logger = logging.getLogger("ncakit.scale.train")


@dataclass
class TrainResult:
    """What :func:`train` returns (on every process)."""

    output_dir: Path
    state: TrainState
    history: list[dict] = field(default_factory=list)  # every logged record, train and eval
    summary: dict = field(default_factory=dict)
    interrupted: bool = False
    model: Any = None  # the unwrapped model (in-process use: tests, notebooks)


@dataclass
class Run:
    """Everything :func:`set_up`, :func:`prepare_model` and :func:`prepare_training` build for the loop."""

    cfg: TrainConfig
    accelerator: Any
    model: Any
    tokenizer: Any
    reference: Reference
    loss_fn: Callable
    optimizer: Any = None
    base_optimizer: Any = None  # the torch optimizer inside accelerate's wrapper (the scheduler drives it)
    lr_scheduler: Any = None
    train_loader: Any = None
    eval_loader: Any = None
    state: TrainState = field(default_factory=TrainState)
    num_epochs: int = 0
    info: dict = field(default_factory=dict)  # run.json
    history: list[dict] = field(default_factory=list)
    grad_norm: Any = None  # of the last optimizer step (a device tensor until logged)
    # the configuration as given (tinylm unresolved): the fingerprint's names
    original: TrainConfig | None = None
    fingerprint: dict = field(default_factory=dict)  # recorded in every checkpoint (ncakit.scale.fingerprint)
    changes: list[dict] = field(default_factory=list)  # fingerprint changes accepted on resume, all of them
    stop: StopFlag | None = None
    callbacks: CallbackList = field(default_factory=CallbackList)
    step_lr: float | None = None  # the learning rate of the optimizer step just taken
    nonfinite: Any = None  # this optimizer step's loss was not finite on this process (device bool)
    # this step's (micro-batch, per-prompt loss, rewards), named in the non-finite error
    step_rows: list = field(default_factory=list)
    stop_requested: bool = False  # a signal reached some process: checkpoint after this step and stop
    # prompt_sharing resolved (ncakit.scale.prefix.resolve_prompt_sharing): policy / reference / reason
    sharing: dict = field(default_factory=lambda: {"policy": False, "reference": False})
    start_step: int = 0  # the optimizer step this session started from (a resumed checkpoint's)

    def log(self, values: dict, step: int) -> None:
        self.accelerator.log(values, step=step)
        self.history.append({"step": step, **values})
        evaluation = any(k.startswith("eval_") for k in values)
        self.callbacks.call("on_evaluate" if evaluation else "on_log", self, values, step)


# ----------------------------------------------------------------------------------------------
# Set-up: the tiny kit, tokenizer, model, data, optimizer
# ----------------------------------------------------------------------------------------------


def resolve_tiny_kit(cfg: TrainConfig, accelerator) -> TrainConfig:
    """``cfg`` with ``tinylm`` as model / dataset replaced by the offline kit's local paths (the kit
    is built once under ``tiny_kit_dir``, by the main process first); ``cfg`` itself otherwise."""
    if "tinylm" not in (cfg.model_name_or_path, cfg.dataset_name):
        return cfg
    from ncakit.scale.tinylm import ensure_tiny_kit

    kit_dir = cfg.tiny_kit_dir or str(Path(cfg.output_dir) / "tinylm-kit")
    with accelerator.main_process_first(), outside_zero_init(accelerator):
        kit = ensure_tiny_kit(
            kit_dir,
            n_train=cfg.tiny_n_train,
            n_test=cfg.tiny_n_test,
            k=cfg.tiny_k,
            hidden=cfg.tiny_hidden,
            layers=cfg.tiny_layers,
            sft_steps=cfg.tiny_sft_steps,
            seed=cfg.tiny_seed,
        )
    paths: dict[str, Any] = {"tiny_kit_dir": kit_dir}
    if cfg.model_name_or_path == "tinylm":
        paths["model_name_or_path"] = str(kit.model_path)
        paths["tokenizer_name_or_path"] = cfg.tokenizer_name_or_path or str(kit.tokenizer_path)
    if cfg.dataset_name == "tinylm":
        paths["dataset_name"] = str(kit.train_path)
        if cfg.apply_chat_template == "auto":  # plain-text rows; the kit's model was SFT-ed on its template
            paths["apply_chat_template"] = True
        if cfg.eval_dataset_name is None and cfg.eval_split is not None:
            paths["eval_dataset_name"], paths["eval_split"] = str(kit.test_path), "test"
    return dataclasses.replace(cfg, **paths)


@dataclass
class Data:
    """The tokenised train / eval datasets, K, the data statistics (for ``run.json``), the collator."""

    train: Any
    eval: Any | None
    k: int
    stats: dict
    collate: Callable | None = None


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


def prepare_data(cfg: TrainConfig, tokenizer, accelerator) -> Data:
    """Load, (optionally) pair, tokenise; the K checks. Runs on the main process first (caching)."""
    if cfg.eval_dataset_name is not None:
        eval_name, eval_split = cfg.eval_dataset_name, cfg.eval_split or "test"
    elif cfg.eval_split is None:
        eval_name = eval_split = None
    elif Path(cfg.dataset_name).exists():
        logger.warning(
            "eval: %s is a local file; set eval_dataset_name to evaluate on held-out data", cfg.dataset_name
        )
        eval_name = eval_split = None
    else:
        eval_name, eval_split = cfg.dataset_name, cfg.eval_split
    tok_kwargs = dict(
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_prompt_length,
        num_proc=cfg.dataset_num_proc,
        apply_chat_template=cfg.apply_chat_template,
        on_template_mismatch=cfg.on_template_mismatch,
        rendering=cfg.rendering,  # train, reference and eval rows all rendered the same way
    )
    splits = [("training", cfg.dataset_name, cfg.dataset_split, cfg.max_train_samples)]
    if eval_name is not None:
        splits.append(("eval", eval_name, eval_split, cfg.max_eval_samples))
    datasets, stats = [], {}
    with accelerator.main_process_first():
        for where, name, split, max_rows in splits:
            ds, st = _load_split(cfg, name, split, max_rows)
            _check_k(cfg, st.k_counts, where)
            tok = tokenize_k_dataset(ds, tokenizer, source=name, **tok_kwargs)
            datasets.append(tok.dataset)
            stats["train" if where == "training" else "eval"] = st.then(tok.stats).to_dict()
    ks = [int(k) for s in stats.values() for k in s["k_counts"]]
    k = cfg.k if cfg.k is not None else max(ks)
    if max(ks) > k:
        raise ValueError(f"k: the data has up to {max(ks)} responses per prompt, more than k = {k}")
    return Data(datasets[0], datasets[1] if len(datasets) > 1 else None, k, stats)


def set_up(cfg: TrainConfig, accelerator=None) -> tuple[Run, Data]:
    """Accelerator (made here unless given), seed, the tiny kit, the reference mode, tokenizer, data
    (fails early on a pairwise loss with K > 2) and model; nothing is passed to ``accelerator.prepare``
    yet (:func:`prepare_model` does that)."""
    original = cfg
    accelerator = accelerator if accelerator is not None else make_accelerator(cfg)
    if cfg.fused_loss_head and accelerator.num_processes > 1:
        raise ValueError(
            f"fused_loss_head: true runs in a single process, got {accelerator.num_processes} processes "
            "(the fused head forms the head's gradient outside the model's forward, where DDP / FSDP2 / "
            "ZeRO-3 would not synchronise or gather it); use fused_loss_head: false"
        )
    seed_everything(cfg.seed)
    if accelerator.is_main_process:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    loss_fn = get_loss(cfg.loss)
    cfg = resolve_tiny_kit(cfg, accelerator)
    reference = make_reference(cfg, accelerator)
    tokenizer = load_tokenizer(cfg)
    data = prepare_data(cfg, tokenizer, accelerator)
    model = load_model(cfg, accelerator)
    data.collate = KResponseCollator(tokenizer.pad_token_id, k=data.k)
    run = Run(cfg, accelerator, model, tokenizer, reference, loss_fn, original=original)
    # the response pass's cache indices reach (longest prompt - 1) + (1 + longest response)
    run.sharing = resolve_prompt_sharing(cfg.prompt_sharing, model, k=data.k, max_cache_len=cfg.max_prompt_length + cfg.max_length)  # fmt: skip
    reference.share_prompt = run.sharing["reference"]
    logger.info("prompt sharing: %s", run.sharing) if accelerator.is_main_process else None
    run.info = {"config": cfg.to_dict(), "data": data.stats, "k": data.k, "prompt_sharing": run.sharing}
    return run, data


def prepare_model(run: Run, data: Data) -> None:
    """Optimizer; ``accelerator.prepare(model, optimizer)``; then the reference prepared on the
    PREPARED model (the reference log-probs of ``precompute`` come from the very forward the policy
    trains with: DDP, FSDP2's sharding and mixed-precision policy, a ZeRO-3 engine)."""
    cfg, accelerator = run.cfg, run.accelerator
    run.base_optimizer = build_optimizer(cfg, run.model)
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.is_auto("train_micro_batch_size_per_gpu"):
        # the loaders are prepared later (they need the reference column): say the micro-batch here
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.per_device_train_batch_size
    run.model, run.optimizer = accelerator.prepare(run.model, run.base_optimizer)
    data.train, data.eval, run.info["reference"] = run.reference.prepare(
        run.model, data.train, data.eval, collate=data.collate, tokenizer=run.tokenizer
    )


def warmup_steps(cfg: TrainConfig, max_steps: int) -> int:
    """Warm-up optimizer steps: ``warmup_steps`` when >= 1, a fraction of ``max_steps`` when in (0, 1)
    (transformers 5's rule), else ``warmup_ratio`` of them."""
    if cfg.warmup_steps >= 1:
        return int(cfg.warmup_steps)
    return math.ceil((cfg.warmup_steps or cfg.warmup_ratio) * max_steps)


def prepare_training(run: Run, data: Data, resume_path: Path | None) -> None:
    """Loaders and scheduler (after :func:`prepare_model`); ``accelerator.prepare``; resume; trackers
    and ``run.json``."""
    from transformers import get_scheduler

    cfg, accelerator, collate = run.cfg, run.accelerator, data.collate
    base_optimizer = run.base_optimizer
    run.train_loader = accelerator.prepare(
        make_dataloader(
            data.train,
            collate,
            cfg.per_device_train_batch_size,
            shuffle=True,
            group_by_length=cfg.group_by_length,
            seed=cfg.data_order_seed,
        )
    )
    if data.eval is not None:
        run.eval_loader = accelerator.prepare(
            make_dataloader(data.eval, collate, cfg.per_device_eval_batch_size, shuffle=False)
        )
    steps_per_epoch = math.ceil(len(run.train_loader) / cfg.gradient_accumulation_steps)
    max_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.num_train_epochs * steps_per_epoch
    run.num_epochs = math.ceil(max_steps / steps_per_epoch)
    warmup = warmup_steps(cfg, max_steps)
    # Stepped by hand once per optimizer step (not through accelerator.prepare, which steps a
    # scheduler num_processes times per call); its state is saved as JSON in ncakit_state.json (not
    # registered with accelerate, whose custom states are unpickled with weights_only=False).
    # It drives the plain torch optimizer: FSDP2 and DeepSpeed keep stepping that object's
    # param_groups (sharded / partitioned params swapped in), so the learning rates reach them.
    run.lr_scheduler = get_scheduler(
        cfg.lr_scheduler_type,
        optimizer=base_optimizer,
        num_warmup_steps=warmup,
        num_training_steps=max_steps,
        scheduler_specific_kwargs=dict(cfg.lr_scheduler_kwargs) or None,
    )
    run.state = TrainState(max_steps=max_steps)
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    run.fingerprint = run_fingerprint(
        cfg,
        original=run.original or cfg,
        num_processes=accelerator.num_processes,
        warmup_steps=warmup,
        max_steps=max_steps,
        data_stats=run.info.get("data", {}),
        trainable_params=trainable,
    )
    if resume_path is not None:
        resume_checked(run, resume_path)
        extra = load_checkpoint(accelerator, resume_path, run.state, run.lr_scheduler)
        run.changes = list(extra.get("changes", [])) + run.changes

    output_dir = Path(cfg.output_dir)
    metrics_file = output_dir / METRICS_FILE
    if resume_path is None and accelerator.is_main_process and metrics_file.exists():
        metrics_file.unlink()  # a fresh run starts a fresh log; a resumed one appends to it
    tracked = {k: jsonable(v) if not isinstance(v, list | dict) else str(v) for k, v in cfg.to_dict().items()}
    accelerator.init_trackers(tracker_project_name(cfg), config=tracked)
    run.info |= {
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": accelerator.mixed_precision,
        "device": str(accelerator.device),
        "max_steps": max_steps,
        "steps_per_epoch": steps_per_epoch,
        "global_batch_prompts": cfg.per_device_train_batch_size
        * cfg.gradient_accumulation_steps
        * accelerator.num_processes,
        "trainable_params": trainable,
        "versions": versions(),
        "fingerprint": run.fingerprint,
    }
    if run.changes:
        run.info["resume_changes"] = run.changes
    if accelerator.is_main_process:
        write_atomic(output_dir / "run.json", json.dumps(run.info, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------------------------
# One step, evaluation, logging
# ----------------------------------------------------------------------------------------------


def compute_loss(
    model,
    batch,
    cfg: TrainConfig,
    loss_fn,
    reference: Reference,
    *,
    validate: bool = True,
    share_prompt: bool = False,
) -> tuple[LossOutput, torch.Tensor, torch.Tensor, TokenStats | None]:
    """One batch -> ``(loss output, policy_logps [B, K], ref_logps [B, K], the policy's TokenStats
    [B, K] or None under fused_loss_head)``. ``validate``: the loss's input checks (host syncs);
    ``share_prompt``: the policy's forward shares each prompt across its K responses."""
    ref_logps = reference.logps(model, batch)
    if cfg.fused_loss_head:
        out, policy = fused_batch_loss(
            model,
            batch,
            ref_logps,
            cfg.loss,
            beta=cfg.beta,
            loss_kwargs=cfg.loss_kwargs,
            average=cfg.average_logps,
            validate=validate,
            share_prompt=share_prompt,
        )
        return out, policy, ref_logps.to(policy.device, torch.float32), None
    policy_logps, stats = batch_logps(
        model, batch, average=cfg.average_logps, stats=True, share_prompt=share_prompt
    )  # [B, K], grad
    ref_logps = ref_logps.to(policy_logps.device, torch.float32)
    rewards, mask = batch["rewards"].to(policy_logps.device), batch["mask"].to(policy_logps.device)
    out = loss_fn(
        policy_logps,
        ref_logps,
        rewards,
        mask=mask,
        validate=validate,
        **{"beta": cfg.beta, **cfg.loss_kwargs},
    )
    return out, policy_logps, ref_logps, stats


def train_step(run: Run, batch, *, validate: bool) -> tuple[LossOutput, torch.Tensor, TokenStats, bool]:
    """One micro-batch under ``accelerator.accumulate``: forward, backward; on the last micro-batch
    of an optimizer step (``accelerator.sync_gradients``) also clipping, the step check
    (:func:`check_step`: a stop signal anywhere, a non-finite loss or gradient norm) and, if the step
    is finite, the optimizer step (accelerate's optimizer wrapper skips ``step`` / ``zero_grad`` on
    the other micro-batches). Returns ``(loss output, policy log-probs, token stats, step applied)``."""
    accelerator, model, cfg = run.accelerator, run.model, run.cfg
    if run.nonfinite is None:
        run.nonfinite = torch.zeros((), dtype=torch.bool, device=accelerator.device)
    applied = True
    with accelerator.accumulate(model):
        out, policy, _, stats = compute_loss(
            model,
            batch,
            cfg,
            run.loss_fn,
            run.reference,
            validate=validate,
            share_prompt=run.sharing["policy"],
        )
        loss = out.loss.detach()
        run.nonfinite |= ~torch.isfinite(loss).all()
        run.step_rows.append((run.state.batches_in_epoch, loss, batch["rewards"]))
        accelerator.backward(out.loss.mean())
        if accelerator.sync_gradients:
            norm = None
            if cfg.max_grad_norm > 0:
                run.grad_norm = norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            else:  # the total norm only (an infinite max_norm scales every gradient by exactly 1)
                norm = accelerator.clip_grad_norm_(model.parameters(), float("inf"))
            applied = check_step(run, norm)
        if applied:
            run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    return out, policy, stats, applied


@torch.no_grad()
def evaluate(run: Run) -> dict[str, float]:
    """Loss and preference metrics over the whole held-out set (``eval_`` prefix, HF style); the
    loss inputs of the first batch are validated."""
    model, accelerator = run.model, run.accelerator
    was_training = model.training
    model.eval()
    window = MetricsWindow()
    for i, batch in enumerate(run.eval_loader):
        out, policy, _, stats = compute_loss(
            model,
            batch,
            run.cfg,
            run.loss_fn,
            run.reference,
            validate=i == 0,
            share_prompt=run.sharing["reference"],  # eval mode, no grad: as the reference
        )
        # gather_for_metrics drops the samples added to even out the last batch
        window.append(accelerator.gather_for_metrics(MetricsWindow.rows(out, policy, batch, stats)))
    model.train(was_training)
    return window_metrics(window.tensors(), prefix="eval_")


def log_train_metrics(run: Run, window: MetricsWindow) -> dict:
    """Log the window's metrics at the current step (gathered over the processes) and return them."""
    state, accelerator = run.state, run.accelerator
    tokens = int(accelerator.reduce(window.tokens, "sum"))
    state.num_tokens += tokens
    elapsed = time.perf_counter() - window.started
    # empty only when every step of the window was skipped (on_nonfinite: skip), on every process alike
    values = window_metrics(gather_rows(accelerator, window.tensors())) if window.parts["loss"] else {}
    values.update(
        {
            "learning_rate": run.step_lr,  # the step's own (HF logs it before the scheduler steps)
            "grad_norm": float(run.grad_norm) if run.grad_norm is not None else None,
            "epoch": state.epoch + state.batches_in_epoch / max(1, len(run.train_loader)),
            "num_tokens": state.num_tokens,
            "tokens_per_second": tokens / elapsed if elapsed > 0 else None,
        }
    )
    if run.cfg.on_nonfinite == "skip":
        values["skipped_steps"] = state.skipped_steps
    run.log(values, state.global_step)
    return values


def every(n: int, step: int) -> bool:
    """True at every ``n``-th optimizer step (never for ``n = 0``)."""
    return n > 0 and step % n == 0


def checkpoint_extra(run: Run) -> dict:
    """What ``ncakit_state.json`` holds (JSON): the fingerprint, the accepted changes, the scheduler."""
    return {
        "fingerprint": run.fingerprint,
        "changes": run.changes,
        "lr_scheduler": run.lr_scheduler.state_dict(),
    }


def save(run: Run, reason: str):
    """:func:`ncakit.scale.checkpoint.save_checkpoint` after checking that every weight is finite
    (a run never writes a non-finite checkpoint, so rotation never deletes the last good one)."""
    bad = torch.zeros((), dtype=torch.bool, device=run.accelerator.device)
    for p in run.model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p  # an FSDP2 DTensor: this process's shard
        bad |= ~torch.isfinite(local.detach()).all().to(bad.device)
    if int(run.accelerator.reduce(bad.long(), "max")):
        raise ValueError(
            f"checkpoint: non-finite weights at step {run.state.global_step}; not saved (the previous "
            f"checkpoints are kept)"
        )
    path = save_checkpoint(
        run.accelerator,
        run.cfg,
        run.state,
        reason=reason,
        extra=checkpoint_extra(run),
        model=run.model,
        tokenizer=run.tokenizer,
    )
    run.callbacks.call("on_save", run, path)
    return path


def should_stop(run: Run) -> bool:
    """After an optimizer step: did any process get a stop signal? Then save a checkpoint and
    return True. Several processes agree through the reduce of the step check (:func:`check_step`,
    before the optimizer step: a signal that arrives later is acted on one step later); a single
    process reads its flag here, after the step."""
    one = run.accelerator.num_processes == 1 and run.stop is not None and run.stop.requested
    if not (run.stop_requested or one):
        return False
    name = (run.stop.signal_name if run.stop is not None else None) or "stop signal"
    run.accelerator.print(f"{name}: saving a checkpoint at step {run.state.global_step}")
    save(run, reason=name if name != "stop signal" else "signal")
    return True


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig, *, callbacks: list[TrainerCallback | Callable[[TrainState], None]] | None = None
) -> TrainResult:
    """Run one training job described by ``cfg`` (already validated). ``callbacks``:
    :class:`ncakit.scale.callbacks.TrainerCallback` s (``on_step_end``, ``on_log``, ``on_evaluate``,
    ``on_save``), or functions called with the :class:`TrainState` after every optimizer step. The
    output folder is locked for the run (:func:`claim_output_dir`), released on exit, exceptions included."""

    t_start = time.perf_counter()
    callbacks = CallbackList(callbacks)  # a wrong callback fails here, before anything is loaded
    accelerator = make_accelerator(cfg)
    lock = claim_output_dir(cfg, accelerator)
    try:
        return _train(cfg, accelerator, t_start, callbacks)
    finally:
        lock.release()


def _train(cfg: TrainConfig, accelerator, t_start: float, callbacks) -> TrainResult:
    from tqdm.auto import tqdm

    resume_path = resolve_resume(cfg)
    if resume_path is not None:
        verify_checkpoint(resume_path)
        saved_step = int(read_checkpoint_state(resume_path)[0].get("global_step", 0))
        if 0 < cfg.max_steps < saved_step:
            raise ValueError(
                f"max_steps: {cfg.max_steps} is below the step of the checkpoint being resumed "
                f"({resume_path}, step {saved_step}); use --max_steps >= {saved_step}"
            )
    run, data = set_up(cfg, accelerator)
    run.callbacks = callbacks
    cfg, state = run.cfg, run.state
    prepare_model(run, data)
    if cfg.precompute_reference_only:
        accelerator.print(f"reference log-probs cached: {json.dumps(run.info['reference'])}")
        accelerator.end_training()
        return TrainResult(Path(cfg.output_dir), state, summary={"reference": run.info["reference"]})
    prepare_training(run, data, resume_path)
    state, model, device = run.state, run.model, accelerator.device
    run.start_step = state.global_step
    evaluating = run.eval_loader is not None and cfg.eval_strategy != "no"
    if cfg.eval_on_start and run.eval_loader is not None and state.global_step == 0:
        run.log(evaluate(run), step=0)

    model.train()
    run.optimizer.zero_grad(set_to_none=True)  # a model handed over with gradients starts clean
    progress = tqdm(
        total=state.max_steps,
        initial=state.global_step,
        disable=not (cfg.progress and accelerator.is_local_main_process),
    )
    window, last_eval_step, interrupted, done = MetricsWindow(device), -1, False, False
    step_window, first_micro_batch = MetricsWindow(device), True
    with StopFlag() as stop:
        run.stop = stop
        while not done and state.global_step < state.max_steps and state.epoch < run.num_epochs:
            run.train_loader.set_epoch(state.epoch)
            skip = state.batches_in_epoch
            loader = accelerator.skip_first_batches(run.train_loader, skip) if skip else run.train_loader
            for batch in loader:
                out, policy, stats, applied = train_step(run, batch, validate=first_micro_batch)
                state.batches_in_epoch += 1
                step_window.add(out, policy, batch, stats)
                first_micro_batch = accelerator.sync_gradients
                if not accelerator.sync_gradients:
                    continue
                if applied:  # a skipped step's rows stay out of the metrics
                    window.extend(step_window)
                step_window = MetricsWindow(device)
                run.step_lr = run.lr_scheduler.get_last_lr()[0]  # the rate this step used
                run.lr_scheduler.step()
                state.global_step += 1
                progress.update(1)
                last = state.global_step >= state.max_steps
                if state.global_step % cfg.logging_steps == 0 or last:
                    values = log_train_metrics(run, window)
                    if "loss" in values:
                        progress.set_postfix(
                            loss=f"{values['loss']:.4f}", chosen=f"{values['rewards/chosen']:+.3f}"
                        )
                    window = MetricsWindow(device)
                epoch_end = state.batches_in_epoch == len(run.train_loader)
                if evaluating and (
                    (cfg.eval_strategy == "steps" and every(cfg.eval_steps, state.global_step))
                    or (cfg.eval_strategy == "epoch" and epoch_end and not last)
                ):
                    run.log(evaluate(run), state.global_step)
                    last_eval_step = state.global_step
                if not last and (
                    (cfg.save_strategy == "steps" and every(cfg.save_steps, state.global_step))
                    or (cfg.save_strategy == "epoch" and epoch_end)
                ):
                    save(run, reason="periodic")
                run.callbacks.call("on_step_end", run, state)
                interrupted = should_stop(run)
                if last or interrupted:
                    done = True
                    break
            if not done:
                state.epoch += 1
                state.batches_in_epoch = 0
    progress.close()

    if not interrupted and evaluating and last_eval_step != state.global_step:
        run.log(evaluate(run), state.global_step)
    if not interrupted and cfg.save_final:
        last_eval = next((h for h in reversed(run.history) if "eval_loss" in h), None)
        final_dir = save_final(accelerator, cfg, model, run.tokenizer, metrics=last_eval)
        if cfg.push_to_hub and accelerator.is_main_process:  # the token: HF_TOKEN or `hf auth login`
            push_to_hub(
                final_dir,
                cfg.hub_model_id or Path(cfg.output_dir).name,
                private=cfg.hub_private_repo,
                commit_message=f"ncakit {cfg.loss} run, step {run.state.global_step}",
            )
        accelerator.wait_for_everyone()
    return finish(run, t_start, interrupted)


def finish(run: Run, t_start: float, interrupted: bool) -> TrainResult:
    """Write ``summary.json``, end the trackers, return the :class:`TrainResult`."""
    accelerator, state, history = run.accelerator, run.state, run.history
    train_logs = [h for h in history if "loss" in h]
    eval_logs = [h for h in history if "eval_loss" in h]
    runtime = time.perf_counter() - t_start
    losses = [h["loss"] for h in train_logs if h.get("loss") is not None]
    summary = {
        # the HF Trainer's end-of-run names (train_loss: the mean of the logged windows' losses)
        "train_runtime": runtime,
        "train_loss": sum(losses) / len(losses) if losses else None,
        # this session's steps (after a resume, not the checkpoint's)
        "train_steps_per_second": (state.global_step - run.start_step) / runtime if runtime > 0 else None,
        "resumed_from_step": run.start_step,
        "wall_seconds": runtime,
        "global_step": state.global_step,
        "interrupted": interrupted,
        "loss_first": train_logs[0]["loss"] if train_logs else None,
        "loss_last": train_logs[-1]["loss"] if train_logs else None,
        "eval": eval_logs[-1] if eval_logs else None,
        "num_tokens": state.num_tokens,
    }
    output_dir = Path(run.cfg.output_dir)
    if accelerator.is_main_process:
        write_atomic(output_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    accelerator.end_training()
    return TrainResult(output_dir, state, history, summary, interrupted, accelerator.unwrap_model(run.model))


def main(argv: list[str] | None = None) -> TrainResult:
    """``scale/train.py``: parse ``[--config recipe.yaml] [--key value ...]`` and train."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("datasets", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
    cfg = parse_config(argv)
    follow_launcher()  # launched by accelerate launch / torchrun: its death is a SIGTERM here
    return train(cfg)
