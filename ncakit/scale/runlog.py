"""Read a ``scale/train.py`` run folder and draw its training dynamics (the paper's Figure 2).

A run folder holds ``run.json`` (the resolved configuration, data statistics, K, versions),
``metrics.jsonl`` (one JSON record per log: train records carry ``loss`` and the TRL-named
metrics, eval records the same names prefixed ``eval_``) and ``summary.json``.

:func:`plot_run_dynamics` draws, for one or several runs (e.g. NCA and DPO on the same data):

- left: the implicit rewards r̂ = β·log(π_θ/μ) over optimizer steps -- chosen and rejected for
  K = 2, every reward rank (``rewards/rank_1`` .. ``rank_K``, dark to light) for K > 2 -- with the
  reference level r̂ = 0 (policy likelihood = reference likelihood);
- right: the margin r̂_chosen − mean r̂_rejected.

Held-out (``eval_``) curves are drawn bold when the run has at least two evaluations, the training
window averages thin behind them. Chen et al. 2024 (MATH.md, "Facts about the authors' released
setup") report, in kind: NCA keeps the chosen reward near or above 0 while DPO / InfoNCA push it
down. Colours come from :func:`ncakit.registry.loss_color`, shared with every figure of the project.

matplotlib is imported here (``import ncakit`` does not import this module).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["RunLog", "read_run", "plot_run_dynamics", "rank_keys"]

from ncakit.registry import REFERENCE_COLOR, loss_color, loss_label


@dataclass
class RunLog:
    """One run folder, parsed. ``train`` / ``eval``: the logged records, in step order."""

    path: Path
    config: dict = field(default_factory=dict)
    k: int | None = None
    train: list[dict] = field(default_factory=list)
    eval: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def loss(self) -> str:
        return str(self.config.get("loss", "?"))

    @property
    def label(self) -> str:
        k = f", K = {self.k}" if self.k else ""
        return f"{loss_label(self.loss)}{k}"


def read_run(run_dir: str | Path) -> RunLog:
    """Parse ``run_dir`` (``metrics.jsonl`` required; ``run.json`` / ``summary.json`` if present)."""
    path = Path(run_dir)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ValueError(f"run_dir: {path} has no metrics.jsonl (is it a scale/train.py output_dir?)")
    run = RunLog(path=path)
    if (path / "run.json").is_file():
        info = json.loads((path / "run.json").read_text())
        run.config, run.k = info.get("config", {}), info.get("k")
    if (path / "summary.json").is_file():
        run.summary = json.loads((path / "summary.json").read_text())
    bad = 0
    for line in metrics.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1  # a line cut by a kill: counted, reported below
            continue
        if "loss" in rec:
            run.train.append(rec)
        if "eval_loss" in rec:
            run.eval.append(rec)
    if bad:
        import warnings

        warnings.warn(f"{metrics}: skipped {bad} unreadable line(s)", stacklevel=2)
    # a resumed run appends to the same log: keep the last record of each step
    for name in ("train", "eval"):
        recs = {r["step"]: r for r in getattr(run, name)}
        setattr(run, name, [recs[s] for s in sorted(recs)])
    if not run.train and not run.eval:
        raise ValueError(f"run_dir: {metrics} holds no train or eval records")
    return run


def rank_keys(records: list[dict], prefix: str = "") -> list[str]:
    """The r̂ series of a run: ``rewards/rank_1..K`` (K > 2) or ``rewards/chosen``, ``rewards/rejected``."""
    if not records:
        return []
    ranks = sorted(
        (k for k in records[0] if k.startswith(f"{prefix}rewards/rank_")),
        key=lambda k: int(k.rsplit("_", 1)[1]),
    )
    return ranks or [f"{prefix}rewards/chosen", f"{prefix}rewards/rejected"]


def _shade(color: str, i: int, k: int):
    from matplotlib.colors import to_rgb

    rgb = np.array(to_rgb(color))
    t = i / max(k - 1, 1)
    return tuple(np.clip(rgb * (1 - 0.6 * t) + 0.6 * t, 0, 1))


def _series(records: list[dict], key: str):
    xs = [r["step"] for r in records if r.get(key) is not None]
    ys = [r[key] for r in records if r.get(key) is not None]
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def plot_run_dynamics(runs: Sequence[str | Path | RunLog], *, title: str | None = None, fontsize: float = 11):
    """Figure 2 of Chen et al. 2024 for one or several runs: implicit rewards per rank (or
    chosen / rejected) and the margin over optimizer steps. Returns a matplotlib ``Figure``.
    ``fontsize`` sets the panel titles (legend 2 pt smaller, suptitle 2 pt larger); raise it for a projector."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if isinstance(runs, str | Path | RunLog):
        runs = [runs]
    logs = [r if isinstance(r, RunLog) else read_run(r) for r in runs]
    if not logs:
        raise ValueError("runs: expected at least one run folder")
    fig, (ax_r, ax_m) = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
    handles = []
    for run in logs:
        color = loss_color(run.loss)
        use_eval = len(run.eval) >= 2
        for bold, (records, prefix) in ((False, (run.train, "")), (True, (run.eval, "eval_"))):
            if bold and not use_eval:
                continue
            width, alpha = (2.6, 1.0) if (bold or not use_eval) else (1.0, 0.35)
            keys = rank_keys(records, prefix)
            for i, key in enumerate(keys):
                x, y = _series(records, key)
                ax_r.plot(
                    x, y, color=_shade(color, i, len(keys)), lw=width, alpha=alpha, ls="-" if i == 0 else "--"
                )
            x, y = _series(records, f"{prefix}rewards/margins")
            ax_m.plot(x, y, color=color, lw=width, alpha=alpha)
        keys = rank_keys(run.eval if use_eval else run.train, "eval_" if use_eval else "")
        for i, key in enumerate(keys):
            name = key.split("/")[-1].replace("rank_", "rank ")
            name = "chosen (rank 1)" if name == "rank 1" else name
            handles.append(
                Line2D(
                    [],
                    [],
                    color=_shade(color, i, len(keys)),
                    lw=2.6,
                    ls="-" if i == 0 else "--",
                    label=f"{run.label}: {name}",
                )
            )
    for ax in (ax_r, ax_m):
        ax.axhline(0.0, color=REFERENCE_COLOR, lw=1.2, ls=":")
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.25)
    handles.append(Line2D([], [], color=REFERENCE_COLOR, lw=1.2, ls=":", label="reference (r̂ = 0)"))
    which = (
        "held-out (bold) and training windows (thin)"
        if any(len(r.eval) >= 2 for r in logs)
        else "training windows"
    )
    ax_r.set_ylabel(r"implicit reward $\hat r = \beta \log \pi_\theta / \mu$")
    ax_r.set_title(f"implicit reward by reward rank: {which}", fontsize=fontsize)
    ax_m.set_ylabel(r"margin $\hat r_{chosen} - \hat r_{rejected}$")
    ax_m.set_title("margin", fontsize=fontsize)
    ax_r.legend(
        handles=handles,
        fontsize=fontsize - 2,
        loc="lower left",
        ncol=1 if len(handles) < 7 else 2,
        framealpha=0.9,
    )
    fig.suptitle(
        title or " vs ".join(r.label for r in logs) + f" ({logs[0].path.name})", fontsize=fontsize + 2
    )
    return fig
