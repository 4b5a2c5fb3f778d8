"""The scale track's training loop: one accelerate loop from a 2-core CPU smoke run to 7B on GPUs.

Run it through ``scale/train.py`` (a thin entry point)::

    accelerate launch --config_file scale/accelerate/cpu.yaml scale/train.py \\
        --config scale/recipes/tiny-cpu.yaml --output_dir out/scale-demo

The shape is accelerate's ``examples/nlp_example.py``: :func:`set_up` builds the model and data
(the set-up functions live in :mod:`ncakit.scale.prepare` and are re-exported here),
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
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ncakit.logprobs import TokenStats
from ncakit.losses import LossOutput
from ncakit.scale.callbacks import CallbackList, TrainerCallback
from ncakit.scale.checkpoint import (
    StopFlag,
    TrainState,
    follow_launcher,
    push_to_hub,
    read_checkpoint_state,
    resolve_resume,
    save_checkpoint,
    save_final,
    verify_checkpoint,
)
from ncakit.scale.cli import parse_config
from ncakit.scale.config import TrainConfig
from ncakit.scale.forward import batch_logps, fused_batch_loss
from ncakit.scale.launch import make_accelerator
from ncakit.scale.prepare import Run, prepare_model, prepare_training, resolve_tiny_kit, set_up
from ncakit.scale.reference import Reference
from ncakit.scale.runlock import claim_output_dir
from ncakit.scale.stepcheck import check_step
from ncakit.scale.tracking import MetricsWindow, gather_rows, window_metrics
from ncakit.utils import write_atomic

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
