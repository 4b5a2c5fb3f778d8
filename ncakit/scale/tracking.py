"""What a ``scale/train.py`` run logs: TRL-named metrics over a window of batches, to ``metrics.jsonl``.

- :class:`MetricsWindow` -- the per-prompt tensors (loss, implicit rewards, weights, log-probs,
  rewards, mask, and the policy's token statistics: per-response sums of entropy, mean logit and
  argmax hits with the token count, :class:`ncakit.logprobs.TokenStats`) and the token count of
  the micro-batches since the last log, kept on the device (no host sync per micro-batch).
- :func:`gather_rows` / :func:`window_metrics` -- every process's rows gathered, then the loss,
  :func:`ncakit.metrics.preference_metrics` (TRL names, plus ``rewards/rank_k`` for K > 2) and
  :func:`ncakit.metrics.token_metrics` (TRL's ``entropy``, ``logits/chosen``, ``logits/rejected``,
  ``mean_token_accuracy``: ratios of the gathered token sums, so every token of every process
  weighs the same) over all of them; eval metrics get the ``eval_`` prefix as the HF Trainer's do.
- :class:`JsonlTracker` -- an accelerate tracker appending ``{"step": s, **values}`` lines to
  ``<output_dir>/metrics.jsonl``, the run's log of record (``scale/plot_dynamics.py`` and the tests
  read it), with the names above (``loss``, ``eval_loss``, ``rewards/chosen``, ...).
- :func:`make_trackers` -- the run's trackers: the JsonlTracker, then every accelerate tracker that
  ``report_to`` names (:func:`resolve_report_to`: ``all`` / ``none`` / names, as transformers'
  ``report_to``), each logging HF Trainer tags (:func:`hf_tags`: ``train/loss``, ``eval/loss``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from ncakit.logprobs import TokenStats
from ncakit.losses import LossOutput
from ncakit.metrics import preference_metrics, token_metrics

__all__ = [
    "METRICS_FILE",
    "LOGGING_DIR",
    "JsonlTracker",
    "hf_tags",
    "HFTags",
    "with_hf_tags",
    "tracker_names",
    "resolve_report_to",
    "tracker_project_name",
    "make_trackers",
    "jsonable",
    "MetricsWindow",
    "gather_rows",
    "window_metrics",
    "versions",
]

METRICS_FILE = "metrics.jsonl"
#: the accelerate ``logging_dir`` under ``output_dir``: tensorboard writes ``<it>/<project name>/events.*``
LOGGING_DIR = "logs"


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


# ----------------------------------------------------------------------------------------------
# report_to: every accelerate tracker, with the HF Trainer's tags
# ----------------------------------------------------------------------------------------------


def hf_tags(values: dict) -> dict:
    """The tags the HF Trainer gives its trackers (transformers' ``integrations.rewrite_logs``):
    ``eval_<rest>`` -> ``eval/<rest>``, ``test_<rest>`` -> ``test/<rest>``, any other key ->
    ``train/<key>`` (``loss`` -> ``train/loss``, ``rewards/chosen`` -> ``train/rewards/chosen``,
    ``eval_rewards/chosen`` -> ``eval/rewards/chosen``). Written out here, not imported: importing
    ``transformers.integrations`` pulls the Trainer's callbacks, peft and sympy (seconds);
    ``tests/test_tracking.py`` checks it against transformers' own."""
    out = {}
    for k, v in values.items():
        if k.startswith("eval_"):
            out["eval/" + k[len("eval_") :]] = v
        elif k.startswith("test_"):
            out["test/" + k[len("test_") :]] = v
        else:
            out["train/" + k] = v
    return out


class HFTags:
    """Mixin for an accelerate tracker: its ``log`` receives :func:`hf_tags` of the values (the run
    logs metrics.jsonl's names, ``loss`` / ``eval_loss``; this tracker shows ``train/loss`` /
    ``eval/loss``). Everything else (``name``, ``tracker``, ``start``, ``finish``) is the tracker's."""

    def log(self, values: dict, step: int | None = None, **kwargs):
        return super().log(hf_tags(values), step=step, **kwargs)


@functools.cache
def with_hf_tags(cls: type) -> type:
    """``cls`` (an accelerate ``GeneralTracker`` subclass) with :class:`HFTags` in front: same name,
    same ``name`` attribute, so ``accelerator.get_tracker("tensorboard")`` still finds it."""
    return type(cls.__name__, (HFTags, cls), {"__module__": cls.__module__, "__doc__": cls.__doc__})


def tracker_names() -> list[str]:
    """Every tracker accelerate knows by name (``LoggerType`` and ``register_tracker_class``'s), sorted."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return sorted(LOGGER_TYPE_TO_CLASS)


def _installed(name: str) -> bool:
    """accelerate's own check (``accelerate.utils.is_<name>_available``); a tracker registered with
    ``register_tracker_class`` (no such check) counts as installed."""
    import accelerate.utils

    check = getattr(accelerate.utils, f"is_{name}_available", None)
    return True if check is None else bool(check())


def resolve_report_to(report_to: list[str] | str | None, *, require_installed: bool = True) -> list[str]:
    """``report_to`` as transformers reads it -> the accelerate tracker names to start, in order.

    ``"all"`` -> every tracker of accelerate's ``LoggerType`` installed here; ``"none"``, ``[]`` or None
    -> none (metrics.jsonl alone); names -> those (repeats dropped). An unknown name, or ``all`` /
    ``none`` next to other names -> ValueError naming the valid ones; a known tracker that is not
    installed -> ValueError with its ``pip install`` (``require_installed=False``: the names alone, as
    a config check may want). Needs accelerate (imported here, not at import)."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    names = [str(n).strip() for n in names if str(n).strip()]
    valid = tracker_names()
    if len(names) > 1 and ("all" in names or "none" in names):
        raise ValueError(f"report_to: 'all' and 'none' stand alone, got {names}")
    if names in (["none"], []):
        return []
    if names == ["all"]:  # accelerate's own trackers (LoggerType), as accelerate's "all"
        from accelerate.utils import LoggerType

        return [n for n in valid if n in LoggerType.list() and _installed(n)]
    out: list[str] = []
    for name in names:
        if name not in valid:
            raise ValueError(
                f"report_to: unknown tracker {name!r}; allowed values: {['all', 'none', *valid]}"
            )
        if require_installed and not _installed(name):
            raise ValueError(f"report_to: {name!r} is not installed in this environment (pip install {name})")
        if name not in out:
            out.append(name)
    return out


def tracker_project_name(cfg) -> str:
    """The project / run name every tracker gets: ``cfg.run_name``, else the output folder's name."""
    return cfg.run_name or Path(cfg.output_dir).name


def make_trackers(cfg) -> list[Any]:
    """The run's trackers, for ``Accelerator(log_with=...)``: :class:`JsonlTracker` on
    ``<output_dir>/metrics.jsonl`` first (today's names), then one accelerate tracker per
    :func:`resolve_report_to` name, built here (``with_hf_tags(cls)(project, logging_dir)``, as
    ``accelerator.init_trackers`` would build it, project :func:`tracker_project_name`, logging dir
    ``<output_dir>/logs``) so that it logs the HF Trainer's tags (:func:`hf_tags`). Built objects
    are not started: ``accelerator.init_trackers`` starts them (on the main process)."""
    trackers: list[Any] = [JsonlTracker(Path(cfg.output_dir) / METRICS_FILE)]
    names = resolve_report_to(cfg.report_to)
    if not names:
        return trackers
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    project, logging_dir = tracker_project_name(cfg), str(Path(cfg.output_dir) / LOGGING_DIR)
    for name in names:
        cls = with_hf_tags(LOGGER_TYPE_TO_CLASS[name])
        trackers.append(cls(project, logging_dir) if cls.requires_logging_directory else cls(project))
    return trackers


class MetricsWindow:
    """Per-prompt tensors of the batches since the last log: loss [n], r̂ / weights / logps /
    rewards / mask [n, K], the policy's token statistics [n, K] (``stats_<field>`` of
    :class:`ncakit.logprobs.TokenStats`, when the rows carry them); the response + prompt tokens
    seen (a device scalar) and the start time."""

    KEYS = ("loss", "implicit_rewards", "weights", "policy_logps", "rewards", "mask")
    STATS_KEYS = tuple(f"stats_{k}" for k in ("entropy_sum", "logit_sum", "top1", "tokens"))

    def __init__(self, device: torch.device | str = "cpu"):
        self.parts: dict[str, list[torch.Tensor]] = {k: [] for k in self.KEYS + self.STATS_KEYS}
        self.tokens = torch.zeros((), dtype=torch.long, device=device)
        self.started = time.perf_counter()

    @staticmethod
    def rows(
        out: LossOutput, policy_logps, batch, stats: TokenStats | None = None
    ) -> dict[str, torch.Tensor]:
        """One batch's rows: detached, float32 (the mask and the token counts stay bool / int64),
        on the policy's device; ``stats`` (the policy's ``[B, K]`` TokenStats) zeroed where masked."""
        dev = policy_logps.device
        mask = batch["mask"].to(dev)
        rows = {
            "loss": out.loss.detach().float(),
            "implicit_rewards": out.implicit_rewards.float(),
            "weights": out.weights.float(),
            "policy_logps": policy_logps.detach().float(),
            "rewards": batch["rewards"].to(dev).float(),
            "mask": mask,
        }
        if stats is not None:
            rows.update({f"stats_{k}": v.detach().to(dev) for k, v in stats.masked(mask).items().items()})
        return rows

    def append(self, rows: dict[str, torch.Tensor]) -> None:
        for k in self.KEYS + self.STATS_KEYS:
            if k in rows:
                self.parts[k].append(rows[k])

    def add(self, out: LossOutput, policy_logps, batch, stats: TokenStats | None = None) -> None:
        """One training micro-batch: its rows and its tokens (``attention_mask`` ones)."""
        self.append(self.rows(out, policy_logps, batch, stats))
        self.tokens += batch["attention_mask"].sum().to(self.tokens.device)

    def extend(self, other: MetricsWindow) -> None:
        """Add ``other``'s rows and tokens (one optimizer step's, once the step is known to be applied)."""
        for k in self.KEYS + self.STATS_KEYS:
            self.parts[k].extend(other.parts[k])
        self.tokens += other.tokens.to(self.tokens.device)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The rows concatenated; the token statistics only when every batch carried them."""
        n = len(self.parts["loss"])
        return {k: torch.cat(v) for k, v in self.parts.items() if k in self.KEYS or (v and len(v) == n)}


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
    """Loss + :func:`preference_metrics` over all rows, + :func:`token_metrics` (``entropy``,
    ``logits/chosen``, ``logits/rejected``, ``mean_token_accuracy``: token sums over all rows /
    token counts) when the rows carry the token statistics. Ranks follow the data rewards;
    pairwise rows are chosen-first with ``rewards[:, 0] >= rewards[:, 1]`` and the stable sort
    keeps ties in column order, so "chosen" is column 0 there, as in TRL."""
    out = LossOutput(t["loss"], t["implicit_rewards"], t["weights"])
    m = {"loss": t["loss"].mean()} | preference_metrics(out, t["policy_logps"], t["rewards"], t["mask"])
    if all(k in t for k in MetricsWindow.STATS_KEYS):
        stats = TokenStats(*(t[k] for k in MetricsWindow.STATS_KEYS))
        m |= token_metrics(stats, t["rewards"], t["mask"])
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
