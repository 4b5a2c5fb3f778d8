"""The once-per-step check of a ``scale/train.py`` run, before ``optimizer.step()``: a non-finite
loss or gradient norm never updates the weights, and a stop signal on any process is agreed on.

The loop (:func:`ncakit.scale.train.train_step`) accumulates ``run.nonfinite`` (this process's loss
was not finite in some micro-batch of the step) and ``run.step_rows`` (for the error message), and on
the last micro-batch calls :func:`check_step` with the total gradient norm (accelerate's
``clip_grad_norm_`` returns it, all-reduced: non-finite if any gradient is). One reduce and one host
read per optimizer step carry both the stop flag and the finiteness.
"""

from __future__ import annotations

import logging

import torch

__all__ = ["NonFiniteStep", "check_step"]

logger = logging.getLogger("ncakit.scale.train")


class NonFiniteStep(ValueError):
    """A non-finite loss or gradient norm with ``on_nonfinite: stop`` (raised before the optimizer step)."""


def check_step(run, norm) -> bool:
    """Before the optimizer step of ``run`` (a :class:`ncakit.scale.train.Run`): one reduce, one host
    read of (a stop signal on any process, a non-finite loss on any process or a non-finite gradient
    norm). A stop signal sets
    ``run.stop_requested`` (the loop checkpoints after the step). A non-finite step raises
    :class:`NonFiniteStep` (``on_nonfinite: stop``: nothing was updated, nothing is saved) or is
    skipped (``skip``: returns False, counted in ``state.skipped_steps``)."""
    device = run.nonfinite.device
    bad = run.nonfinite.clone()
    if norm is not None:
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor norm
            norm = norm.full_tensor()
        bad |= ~torch.isfinite(torch.as_tensor(norm, device=device)).all()
    requested = bool(run.stop is not None and run.stop.requested)
    flags = torch.stack([torch.tensor(int(requested), device=device), bad.long()])
    requested, any_bad = run.accelerator.reduce(flags, "max").tolist()
    run.stop_requested = bool(requested)
    rows, run.step_rows = run.step_rows, []
    run.nonfinite.zero_()
    if not any_bad:
        return True
    step = run.state.global_step + 1
    if run.cfg.on_nonfinite == "skip":
        run.state.skipped_steps += 1
        logger.warning(
            "on_nonfinite: skipping optimizer step %d (non-finite loss or gradient norm; %d skipped so far)",
            step,
            run.state.skipped_steps,
        )
        return False
    detail = []
    for micro, loss, rewards in rows:
        for b in (~torch.isfinite(loss)).nonzero().flatten().tolist():
            detail.append(
                f"micro-batch {micro} row {b}: loss {float(loss[b])}, rewards {rewards[b].tolist()}"
            )
    where = "; ".join(detail[:4]) + (f"; +{len(detail) - 4} more" if len(detail) > 4 else "")
    where = where or "every loss finite on this process"
    grad = f"grad_norm {float(norm)}" if norm is not None else "grad_norm not computed"
    raise NonFiniteStep(
        f"loss: not finite at step {step} (epoch {run.state.epoch}; {where}; {grad}); nothing was updated or "
        f"saved (the last checkpoint is intact); try a lower learning_rate or beta, check the data, or set "
        f"on_nonfinite: skip"
    )
