"""What a ``scale/train.py`` run logs: TRL-named metrics over a window of batches, to ``metrics.jsonl``.

- :class:`MetricsWindow` -- the per-prompt tensors (loss, implicit rewards, weights, log-probs,
  rewards, mask) and the token count of the micro-batches since the last log, kept on the device
  (no host sync per micro-batch).
- :func:`gather_rows` / :func:`window_metrics` -- every process's rows gathered, then the loss and
  :func:`ncakit.metrics.preference_metrics` (TRL names, plus ``rewards/rank_k`` for K > 2) over all
  of them; eval metrics get the ``eval_`` prefix as the HF Trainer's do.
- :class:`JsonlTracker` -- an accelerate tracker appending ``{"step": s, **values}`` lines to
  ``<output_dir>/metrics.jsonl``, the run's log of record (``scale/plot_dynamics.py`` and the tests
  read it); tensorboard / wandb are added next to it when asked.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from ncakit.losses import LossOutput
from ncakit.metrics import preference_metrics

__all__ = [
    "METRICS_FILE",
    "JsonlTracker",
    "jsonable",
    "MetricsWindow",
    "gather_rows",
    "window_metrics",
    "versions",
]

METRICS_FILE = "metrics.jsonl"


def jsonable(v):
    """A JSON-ready value: one-element tensors as numbers, other tensors as lists, non-finite floats as None."""
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
    """An accelerate tracker that appends ``{"step": s, **values}`` lines to a file (main process)."""

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
        record = {"step": step, **{k: jsonable(v) for k, v in values.items()}}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def finish(self):
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class MetricsWindow:
    """Per-prompt tensors of the batches since the last log: loss [n], r̂ / weights / logps /
    rewards / mask [n, K]; the response + prompt tokens seen (a device scalar) and the start time."""

    KEYS = ("loss", "implicit_rewards", "weights", "policy_logps", "rewards", "mask")

    def __init__(self, device: torch.device | str = "cpu"):
        self.parts: dict[str, list[torch.Tensor]] = {k: [] for k in self.KEYS}
        self.tokens = torch.zeros((), dtype=torch.long, device=device)
        self.started = time.perf_counter()

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

    def add(self, out: LossOutput, policy_logps, batch) -> None:
        """One training micro-batch: its rows and its tokens (``attention_mask`` ones)."""
        self.append(self.rows(out, policy_logps, batch))
        self.tokens += batch["attention_mask"].sum().to(self.tokens.device)

    def extend(self, other: MetricsWindow) -> None:
        """Add ``other``'s rows and tokens (one optimizer step's, once the step is known to be applied)."""
        for k in self.KEYS:
            self.parts[k].extend(other.parts[k])
        self.tokens += other.tokens.to(self.tokens.device)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.cat(v) for k, v in self.parts.items()}


def gather_rows(accelerator, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate every process's rows (padded to the same count; padding rows are dropped)."""
    if accelerator.num_processes == 1:
        return tensors
    valid = torch.ones(tensors["loss"].shape[0], dtype=torch.bool, device=tensors["loss"].device)
    padded = {k: accelerator.pad_across_processes(v, dim=0) for k, v in {**tensors, "_valid": valid}.items()}
    gathered = accelerator.gather(padded)
    keep = gathered.pop("_valid")
    return {k: v[keep] for k, v in gathered.items()}


def window_metrics(t: dict[str, torch.Tensor], prefix: str = "") -> dict[str, float]:
    """Loss + :func:`preference_metrics` over all rows. Ranks follow the data rewards; pairwise
    rows are chosen-first with ``rewards[:, 0] >= rewards[:, 1]`` and the stable sort keeps ties
    in column order, so "chosen" is column 0 there, as in TRL."""
    out = LossOutput(t["loss"], t["implicit_rewards"], t["weights"])
    m = {"loss": t["loss"].mean()} | preference_metrics(out, t["policy_logps"], t["rewards"], t["mask"])
    return {f"{prefix}{k}": float(v) for k, v in m.items()}


def versions() -> dict[str, str]:
    """The versions of torch and the scale libraries, for ``run.json``."""
    out = {"torch": torch.__version__}
    for mod in ("transformers", "accelerate", "peft", "datasets"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:  # pragma: no cover
            pass
    return out
