"""Hooks into ``scale/train.py``'s loop, named as transformers' ``TrainerCallback``: subclass
:class:`TrainerCallback`, override what you need, pass instances to ``ncakit.scale.train.train(cfg,
callbacks=[...])``. Every process calls them (as the HF Trainer does); check
``run.accelerator.is_main_process`` before writing files or printing.

Example: log a few sampled completions, or a win rate, every evaluation::

    class ShowEval(TrainerCallback):
        def on_evaluate(self, run, metrics, step):
            if run.accelerator.is_main_process:
                print(step, metrics["eval_loss"], metrics["eval_rewards/chosen"])

    train(cfg, callbacks=[ShowEval()])

A plain function ``f(state)`` is accepted too and called as ``on_step_end`` (the older form).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["TrainerCallback", "CallbackList"]


class TrainerCallback:
    """Override any of these; each gets the :class:`ncakit.scale.train.Run` (model, optimizer,
    accelerator, cfg, state, history) first."""

    def on_step_end(self, run, state) -> None:
        """After every optimizer step (``state.global_step`` already counts it)."""

    def on_log(self, run, logs: dict[str, float], step: int) -> None:
        """After train metrics are logged (``logs``: the values written to metrics.jsonl)."""

    def on_evaluate(self, run, metrics: dict[str, float], step: int) -> None:
        """After an evaluation (``metrics``: ``eval_`` keys, as logged)."""

    def on_save(self, run, path: Path) -> None:
        """After a checkpoint is complete on disk (``path``: its folder)."""


class _FunctionCallback(TrainerCallback):
    def __init__(self, fn: Callable[[Any], None]):
        self.fn = fn

    def on_step_end(self, run, state) -> None:
        self.fn(state)


class CallbackList:
    """The callbacks of one run, called in the order given."""

    def __init__(self, callbacks: Iterable[TrainerCallback | Callable] | None = None):
        self.callbacks: list[TrainerCallback] = []
        for cb in callbacks or ():
            if isinstance(cb, TrainerCallback):
                self.callbacks.append(cb)
            elif callable(cb):
                self.callbacks.append(_FunctionCallback(cb))
            else:
                raise TypeError(
                    f"callbacks: expected TrainerCallback instances or functions of the state, got {type(cb).__name__}"
                )

    def call(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(*args)
