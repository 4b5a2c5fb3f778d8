"""The set-up before the training loop (:func:`ncakit.scale.train.train`): the tiny kit, tokenizer,
data, model, reference mode and prompt sharing (:func:`set_up`); the optimizer and
``accelerator.prepare`` with the reference prepared on the prepared model (:func:`prepare_model`);
loaders, scheduler, resume, trackers and ``run.json`` (:func:`prepare_training`). :class:`Run` holds
everything the loop needs.

Split from ``train.py`` (the loop, one step, evaluation, saving) so that each stays one screenful of
concerns; ``ncakit.scale.train`` re-exports these names.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ncakit.registry import get_loss, loss_spec
from ncakit.scale.callbacks import CallbackList
from ncakit.scale.checkpoint import StopFlag, TrainState, load_checkpoint
from ncakit.scale.config import TrainConfig
from ncakit.scale.data import (
    KResponseCollator,
    load_k_dataset,
    make_dataloader,
    to_pairwise,
    tokenize_k_dataset,
)
from ncakit.scale.fingerprint import resume_checked, run_fingerprint
from ncakit.scale.launch import make_accelerator, outside_zero_init
from ncakit.scale.model import build_optimizer, load_model, load_tokenizer
from ncakit.scale.prefix import resolve_prompt_sharing
from ncakit.scale.reference import Reference, make_reference
from ncakit.scale.tracking import METRICS_FILE, jsonable, tracker_project_name, versions
from ncakit.utils import seed_everything, write_atomic

__all__ = [
    "Run",
    "Data",
    "set_up",
    "resolve_tiny_kit",
    "prepare_data",
    "prepare_model",
    "prepare_training",
    "warmup_steps",
]

logger = logging.getLogger("ncakit.scale.train")  # the training run's one logger, set-up included


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
    if accelerator.is_main_process:
        logger.info("prompt sharing: %s", run.sharing)
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
