"""The lecture-hall figure: ONE panel, large type, thick lines, 16:9 (``toy/demo.py --projector``).

:func:`plot_hero` draws the chosen likelihood over training under DPO, InfoNCA and NCA in the setting
with overlapping comparisons (the classic preset's ``tabular-overlap``): the picture the NCA paper
argues in words, readable from the back row. Colours and labels come from the loss registry, like
every other figure (:mod:`ncakit.toy.figures`).

    from ncakit.toy import presets, projector
    runs = presets.run_preset("classic", range(8))
    projector.plot_hero(runs).savefig("hero.png")
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ncakit.registry import loss_label
from ncakit.toy.figures import REFERENCE_LINE, check_runs, draw_band, loss_style

__all__ = ["HERO_LOSSES", "HERO_SIZE", "hero_setting", "plot_hero"]

#: The three losses of the hero figure, and its size in inches (16:9; 1920 x 1080 px at 120 dpi).
HERO_LOSSES = ("dpo", "infonca", "nca")
HERO_SIZE = (16.0, 9.0)
_HERO_RC = {
    "font.size": 22,
    "axes.titlesize": 26,
    "axes.labelsize": 24,
    "xtick.labelsize": 20,
    "ytick.labelsize": 20,
    "legend.fontsize": 22,
    "lines.linewidth": 5.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "savefig.dpi": 120,
}


def hero_setting(runs: dict) -> str:
    """The name of the setting the hero figure shows: the first with overlapping comparisons (role
    ``"overlap"``), else the first shared one, else ``ValueError`` naming the settings."""
    check_runs(runs)
    for role in ("overlap", "shared"):
        for name, h in runs.items():
            if h.setting.role == role:
                return name
    raise ValueError(
        f"runs: the hero figure needs a setting with overlapping comparisons (role 'overlap', e.g. the classic "
        f"preset's 'tabular-overlap'); got {list(runs)}"
    )


def plot_hero(runs: dict, setting: str | None = None, losses: Sequence[str] = HERO_LOSSES) -> Figure:
    """The chosen responses' log-ratio log π_θ/μ over training (mean ± std over seeds) under DPO,
    InfoNCA and NCA, in one setting (default :func:`hero_setting`), 16:9 with 22-26 pt type, the final
    value of each loss written next to its line; the dotted line is μ (log-ratio 0)."""
    name = setting if setting is not None else hero_setting(runs)
    if name not in runs:
        raise ValueError(f"setting: expected one of {list(runs)}, got {name!r}")
    h = runs[name]
    present = [n for n in losses if n in h.losses]
    if not present:
        raise ValueError(f"losses: none of {list(losses)} was trained; trained: {list(h.losses)}")
    with mpl.rc_context(_HERO_RC):
        fig, ax = plt.subplots(figsize=HERO_SIZE)
        ax.axhline(0.0, zorder=0, **{**REFERENCE_LINE, "linewidth": 3.0})
        ax.annotate(
            "μ (the reference)", (0.3, 0.0), xycoords=("axes fraction", "data"), xytext=(0, 8),
            textcoords="offset points", fontsize=20, color=REFERENCE_LINE["color"], va="bottom",
        )  # fmt: skip
        steps = h.steps
        for loss in present:
            st = {**loss_style(loss), "linestyle": "-"}
            vals = h.metrics["chosen"][:, h.loss_index(loss)]
            draw_band(ax, steps, vals, st)
            end = vals[-1].mean()
            ax.annotate(
                f"{loss_label(loss)}  {end:+.1f}", (steps[-1], end), xytext=(14, 0), textcoords="offset points",
                fontsize=24, fontweight="bold", color=st["color"], va="center", annotation_clip=False,
            )  # fmt: skip
        ax.set_xlim(steps[0], steps[-1])
        ax.set_xlabel("training step")
        ax.set_ylabel(r"chosen responses: $\log \pi_\theta / \mu$  (nats)")
        ax.set_title(
            "Does training raise the likelihood of the CHOSEN answers?\n"
            f"{h.setting.title} (mean ± std over {len(h.seeds)} seeds)",
            loc="left",
        )
        fig.subplots_adjust(left=0.1, right=0.8, bottom=0.12, top=0.85)
    return fig
