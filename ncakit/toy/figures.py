"""The toy's figures: what ``toy/demo.py`` writes for a preset, and the pieces they are drawn from.

The figure functions take the ``{setting name: History}`` dict of
:func:`ncakit.toy.trainer.train_bandits` / :func:`ncakit.toy.presets.run_preset` and return a
matplotlib ``Figure`` (one column per setting):

==========================  ===================================================================
:func:`plot_dynamics`       (a) chosen / rejected / best-response log-ratio over steps, seed bands
:func:`plot_mass`           (b) where the probability mass goes: best seen / other seen / unseen
:func:`plot_reward_kl`      (c) expected true reward vs KL(π_θ || μ), with the optimal frontier and π*
:func:`plot_ranks`          (d) K-way losses: log-ratio of each reward rank, NCA's log(K·w̄)/β lines
:func:`plot_sweep`          final values against a swept hyper-parameter (α, β, K or M)
:func:`plot_zoo`            every loss (the zoo preset): final chosen log-ratio and reward gain
:func:`preset_figures`      the figures of a preset, ``{file stem: Figure}``
==========================  ===================================================================

Colours and labels come from the loss registry (:func:`ncakit.registry.loss_color`,
:func:`ncakit.registry.loss_label`); :func:`loss_style` adds the line style (pairwise dashed, K-way
solid)::

    ax.plot(steps, chosen, **loss_style("nca"))      # colour, line style and label of NCA

The pieces shared with the tutorials' views (:mod:`ncakit.toy.classroom`): :func:`style` (the
projector rcParams), :func:`check_runs`, :func:`draw_band`, :func:`draw_mass`,
:func:`draw_reward_kl`, :func:`color_shades`, the legend handles (:func:`loss_handles`,
:func:`mass_handles`, :func:`reward_kl_handles`), :func:`finish_figure` (title, legend, margins),
:func:`figure_title`, :func:`sweep_axis` and :func:`param_value` with :data:`SWEEP_PARAMS`, and
:data:`METRIC_LABELS`.

matplotlib is imported here and in :mod:`ncakit.toy.classroom` only; the backend is left to the
caller (``toy/demo.py`` selects Agg).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ncakit.registry import ALIASES, LOSS_SPECS, REFERENCE_COLOR, loss_color, loss_label, loss_spec
from ncakit.toy.plotkit import (
    PI_STAR_LABEL,
    REFERENCE_LINE,
    final_labels,
    reference_handle,
    symlog_axis,
    symlog_ticks,
    text_color,
)
from ncakit.toy.presets import REPORTS
from ncakit.validation import check_choice

__all__ = [
    "loss_style",
    "style",
    "save_figure",
    "check_runs",
    "draw_band",
    "finish_figure",
    "loss_handles",
    "METRIC_LABELS",
    "PI_STAR_LABEL",
    "REFERENCE_LINE",
    "reference_handle",
    "symlog_axis",
    "draw_mass",
    "mass_handles",
    "draw_reward_kl",
    "reward_kl_handles",
    "color_shades",
    "SWEEP_PARAMS",
    "param_value",
    "sweep_axis",
    "figure_title",
    "plot_dynamics",
    "plot_mass",
    "plot_reward_kl",
    "plot_ranks",
    "plot_sweep",
    "plot_zoo",
    "preset_figures",
]


def _is_pairwise(key: str) -> bool:
    """Pairwise per the loss registry (the zoo's too); False for names it does not know."""
    info = LOSS_SPECS.get(key)
    return info is not None and info.pairwise


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name: expected a loss name (str), got {type(name).__name__}")
    return ALIASES.get(name, name)


def loss_style(name: str) -> dict:
    """``plot`` keyword arguments for a loss: colour, line style (pairwise dashed) and label."""
    return {
        "color": loss_color(name),
        "linestyle": "--" if _is_pairwise(_canonical(name)) else "-",
        "label": loss_label(name),
    }


_RC = {
    "font.size": 14,
    "axes.titlesize": 15,
    "axes.labelsize": 14,
    "xtick.labelsize": 12,
    "ytick.labelsize": 12,
    "legend.fontsize": 13,
    "figure.titlesize": 17,
    "lines.linewidth": 2.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "figure.dpi": 100,
    "savefig.dpi": 100,
}


@contextlib.contextmanager
def style():
    """Large fonts and thick lines for a projector (used by every figure function)."""
    with mpl.rc_context(_RC):
        yield


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save and close a figure (creating the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with style():
        fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# Shared pieces (the classroom views draw with them too)
# ----------------------------------------------------------------------------------------------


def check_runs(runs) -> list:
    """The Histories of a non-empty ``{setting name: History}`` dict, in order (``ValueError`` otherwise)."""
    if not isinstance(runs, dict) or not runs:
        raise ValueError(
            "runs: expected a non-empty {setting name: History} dict (ncakit.toy.trainer.train_bandits)"
        )
    return list(runs.values())


def draw_band(ax, x, values, st, band=True):
    """Mean line (``plot`` keywords ``st``, e.g. :func:`loss_style`) and, with ``band``, a mean ± std band
    over seeds (``values`` ``[T, S]``)."""
    mean = values.mean(1)
    ax.plot(x, mean, **st)
    if band and values.shape[1] > 1:
        std = values.std(1, ddof=1)
        ax.fill_between(x, mean - std, mean + std, color=st["color"], alpha=0.18, linewidth=0)


def finish_figure(
    fig,
    title: str,
    handles,
    ncol: int | None = None,
    *,
    left=1.25,
    bottom=0.75,
    right=0.25,
    wspace=0.32,
    hspace=0.22,
):
    """Title and legend above the panels, with margins fixed in inches (fast: no tight_layout, and
    no overlaps for the labels these figures use)."""
    ncol = ncol or len(handles)
    rows = -(-len(handles) // ncol)
    w, h = fig.get_size_inches()
    top_in = 0.95 + 0.36 * rows
    fig.subplots_adjust(
        left=left / w,
        right=1 - right / w,
        bottom=bottom / h,
        top=1 - top_in / h,
        wspace=wspace,
        hspace=hspace,
    )
    figure_title(fig, title)
    keys, labels = [], []
    for hd in handles:  # a Line2D/Patch, or a (key, label) pair such as mass_handles()'s swatches
        key, label = hd if isinstance(hd, tuple) else (hd, hd.get_label())
        keys.append(key)
        labels.append(label)
    fig.legend(
        keys,
        labels,
        handler_map=_swatch_handler(),
        loc="upper center",
        bbox_to_anchor=(0.5, 1 - 0.5 / h),
        ncol=ncol,
        frameon=False,
        handlelength=2.6,
        columnspacing=1.6,
    )


def figure_title(fig, title: str) -> None:
    """The figure's title, its top 0.1 inch below the top edge (whatever the figure's height)."""
    fig.suptitle(title, y=1 - 0.1 / fig.get_size_inches()[1], va="top")


def _panel_row(hs, draw, ylabel: str, *, height: float, sharey: bool = False):
    """One panel per setting in one row: ``draw(ax, history)``, the setting's title above, ``ylabel``
    on the first panel. Called inside :func:`style`."""
    fig, axes = plt.subplots(1, len(hs), figsize=(5.2 * len(hs), height), squeeze=False, sharey=sharey)
    for c, h in enumerate(hs):
        ax = axes[0, c]
        draw(ax, h)
        ax.set_title(h.setting.title)
        if c == 0:
            ax.set_ylabel(ylabel)
    return fig


def loss_handles(losses):
    """Legend handles, one line per loss (:func:`loss_style`)."""
    return [Line2D([], [], **loss_style(n)) for n in losses]


# ----------------------------------------------------------------------------------------------
# (a) log-ratio dynamics
# ----------------------------------------------------------------------------------------------

#: Axis labels of the metrics drawn over steps (other metrics are labelled with their name).
METRIC_LABELS = {
    "chosen": "chosen\n$\\log \\pi_\\theta/\\mu$ (nats)",
    "rejected": "rejected\n$\\log \\pi_\\theta/\\mu$ (nats)",
    "best_logratio": "best seen response\n$\\log \\pi_\\theta/\\mu$ (nats)",
    "expected_reward": "$\\mathbb{E}_{\\pi_\\theta}[r]$",
    "kl": "$\\mathrm{KL}(\\pi_\\theta \\,\\|\\, \\mu)$",
    "mass_unseen": "mass on unseen",
    "mass_best": "mass on best seen",
}


def plot_dynamics(
    runs: dict,
    metrics: Sequence[str] = ("chosen", "rejected", "best_logratio"),
    losses: Sequence[str] | None = None,
) -> Figure:
    """(a) Log-ratios over training, one column per setting, one row per metric; mean ± std over
    seeds. ``chosen``/``rejected`` follow each loss's own data (a pairwise loss's rejected is its
    pair's). The dotted line is the reference (log-ratio 0: the likelihood under μ). A panel whose
    values span more than :data:`SYMLOG_ABOVE` nats gets a symlog axis (linear within ±1 nat), so a
    +1.2 next to a −120 stays visible; each loss's final mean is written at the right edge."""
    hs = check_runs(runs)
    losses = list(losses or hs[0].losses)
    with style():
        fig, axes = plt.subplots(
            len(metrics), len(hs), figsize=(5.2 * len(hs), 3.4 * len(metrics)), squeeze=False, sharex=True
        )
        for c, h in enumerate(hs):
            for r, m in enumerate(metrics):
                ax = axes[r, c]
                vals = h.metrics[m][:, [h.loss_index(n) for n in losses]]  # [T, L', S]
                for i, loss in enumerate(losses):
                    draw_band(ax, h.steps, vals[:, i], loss_style(loss))
                ax.axhline(0.0, zorder=0, **REFERENCE_LINE)
                mean, std = vals.mean(-1), vals.std(-1)
                symlog_axis(ax, float((mean - std).min()), float((mean + std).max()))
                final_labels(ax, h.steps[-1], mean[-1], losses)
                if r == 0:
                    ax.set_title(h.setting.title)
                if c == 0:
                    ax.set_ylabel(METRIC_LABELS.get(m, m))
                if r == len(metrics) - 1:
                    ax.set_xlabel("training step")
        finish_figure(
            fig,
            f"Log-ratio $\\log \\pi_\\theta/\\mu$ during training (mean ± std over {len(hs[0].seeds)} seeds; "
            "wide ranges on a symlog axis, linear within ±1 nat)",
            loss_handles(losses) + [reference_handle()],
            right=0.95,
        )
    return fig


# ----------------------------------------------------------------------------------------------
# (b) where the mass goes
# ----------------------------------------------------------------------------------------------


_MASS_PARTS = ("mass_best", "mass_other_seen", "mass_unseen")


def draw_mass(ax, h, losses, *, label_fontsize=11):
    """Stacked bars of where the mass is at the end (μ, then every loss) for one History: best seen,
    other seen, never seen (labelled with its share when above 4 %)."""
    names = ["μ (ref)", *[loss_label(n) for n in losses]]
    colors = [REFERENCE_COLOR, *[loss_color(n) for n in losses]]
    values = [[h.metrics[p][0, 0].mean() for p in _MASS_PARTS]]  # step 0: every loss is at μ
    values += [[h.final(p)[h.loss_index(n)].mean() for p in _MASS_PARTS] for n in losses]
    x = np.arange(len(names))
    bottom = np.zeros(len(names))
    for j in range(3):
        v = np.array([vals[j] for vals in values])
        if j == 0:
            kw = {"color": colors}
        elif j == 1:
            kw = {"color": [(*to_rgb(col), 0.4) for col in colors]}
        else:
            kw = {"color": "white", "hatch": "///"}
        ax.bar(x, v, bottom=bottom, width=0.72, edgecolor=colors, linewidth=1.5, **kw)
        bottom += v
    for xi, vals in zip(x, values):
        if vals[2] > 0.04:
            ax.text(
                xi, 1.0 - vals[2] / 2, f"{vals[2]:.0%}", ha="center", va="center", fontsize=label_fontsize
            )
    ax.set_xticks(x, names, rotation=25, ha="right", rotation_mode="anchor")
    for tick, col in zip(ax.get_xticklabels(), colors):
        tick.set_color(col)
    ax.set_ylim(0, 1)
    ax.grid(axis="x", visible=False)


class _Swatches(tuple):
    """A legend key drawn as one small swatch per colour (the bars' own colours)."""


def _swatch_handler():
    from matplotlib.legend_handler import HandlerTuple

    return {_Swatches: HandlerTuple(ndivide=None, pad=0.0)}


def mass_handles(losses: Sequence[str] | None = None):
    """Legend handles of the three parts of :func:`draw_mass`'s bars, each drawn in the bars' colours
    (μ's grey and every loss's colour; ``losses=None``: μ's grey only)."""
    colors = [REFERENCE_COLOR, *[loss_color(n) for n in (losses or ())]]
    parts = (
        ("best seen response", lambda c: {"facecolor": c, "edgecolor": c}),
        ("other seen responses", lambda c: {"facecolor": (*to_rgb(c), 0.4), "edgecolor": c}),
        ("never seen in the data", lambda c: {"facecolor": "white", "edgecolor": c, "hatch": "///"}),
    )
    out = []
    for label, kw in parts:
        key = _Swatches(Patch(linewidth=1.2, **kw(c)) for c in colors)
        out.append((key, label))
    return out


def plot_mass(runs: dict, losses: Sequence[str] | None = None) -> Figure:
    """(b) Where the probability mass ends up: on each prompt's best SEEN response, on the other
    responses of the data, or on responses never seen in the data (mean over prompts and seeds),
    for μ and for every loss, one panel per setting."""
    hs = check_runs(runs)
    losses = list(losses or hs[0].losses)
    with style():
        draw = lambda ax, h: draw_mass(ax, h, losses)  # noqa: E731
        fig = _panel_row(hs, draw, "probability mass (final)", height=4.6, sharey=True)
        finish_figure(
            fig,
            "Where the probability mass goes (final, mean over prompts and seeds)",
            mass_handles(losses),
            bottom=1.05,
            wspace=0.12,
        )
    return fig


# ----------------------------------------------------------------------------------------------
# (c) expected reward vs KL
# ----------------------------------------------------------------------------------------------


def draw_reward_kl(ax, h, losses):
    """Frontier, π*, μ and every loss's (KL, E[r]) path for one History (one panel of plot_reward_kl)."""
    ref = h.reference
    fk, fr = ref["frontier_kl"].mean(0), ref["frontier_expected_reward"].mean(0)
    ax.plot(fk, fr, color=REFERENCE_COLOR, linewidth=2, alpha=0.6, zorder=1)
    ax.scatter(
        [ref["target_kl"].mean()], [ref["target_expected_reward"].mean()], marker="*", s=320,
        color="gold", edgecolor="black", zorder=5,
    )  # fmt: skip
    ax.scatter([0.0], [ref["ref_expected_reward"].mean()], s=90, color=REFERENCE_COLOR, zorder=5)
    for loss in losses:
        li, st = h.loss_index(loss), loss_style(loss)
        kl, er = h.metrics["kl"][:, li], h.metrics["expected_reward"][:, li]
        ax.plot(kl.mean(1), er.mean(1), **st, zorder=3)
        if kl.shape[1] > 1:  # spread of the final point over seeds
            ax.errorbar(
                kl[-1].mean(), er[-1].mean(), xerr=kl[-1].std(ddof=1), yerr=er[-1].std(ddof=1),
                color=st["color"], linewidth=1.4, capsize=3, zorder=3,
            )  # fmt: skip
        ax.scatter([kl[-1].mean()], [er[-1].mean()], s=80, color=st["color"], edgecolor="black", zorder=4)
    xmax = max(h.metrics["kl"].max(), ref["target_kl"].mean()) * 1.15
    ax.set_xlim(-0.05 * xmax, xmax)
    ax.set_xlabel(r"$\mathrm{KL}(\pi_\theta \,\|\, \mu)$  (nats)")


def reward_kl_handles(losses):
    """Legend handles of :func:`draw_reward_kl`: one line per loss, the frontier, π* and μ."""
    return loss_handles(losses) + [
        Line2D([], [], color=REFERENCE_COLOR, alpha=0.6, linewidth=2, label="best reward at each KL"),
        Line2D([], [], marker="*", markersize=16, color="gold", markeredgecolor="black", linestyle="", label=PI_STAR_LABEL),
        Line2D([], [], marker="o", markersize=9, color=REFERENCE_COLOR, linestyle="", label="μ"),
    ]  # fmt: skip


def plot_reward_kl(runs: dict, losses: Sequence[str] | None = None) -> Figure:
    """(c) Expected TRUE reward against KL(π_θ || μ) along training (mean over seeds; bars: std of
    the final point over seeds). The grey curve is the best any policy can do at a given KL (π ∝ μ·e^{r/τ});
    the star is π* ∝ μ·exp(r/(αβ)), the target the losses' implicit rewards aim at."""
    hs = check_runs(runs)
    losses = list(losses or hs[0].losses)
    with style():
        draw = lambda ax, h: draw_reward_kl(ax, h, losses)  # noqa: E731
        fig = _panel_row(hs, draw, "expected true reward", height=4.6)
        handles = reward_kl_handles(losses)
        finish_figure(
            fig, "Expected true reward vs distance from the reference", handles, ncol=min(len(handles), 4)
        )
    return fig


# ----------------------------------------------------------------------------------------------
# (d) K-way: log-ratio by reward rank
# ----------------------------------------------------------------------------------------------


def color_shades(color: str, k: int):
    """k shades of one colour, dark (rank 1) to light (rank k)."""
    rgb = np.array(to_rgb(color))
    out = []
    for i in range(k):
        t = i / max(k - 1, 1)
        mix = rgb * (1 - 0.65 * t) + np.ones(3) * 0.65 * t if t > 0 else rgb * 0.8
        out.append(tuple(np.clip(mix, 0, 1)))
    return out


def plot_ranks(runs: dict, losses: Sequence[str] | None = None) -> Figure:
    """(d) For the K-way losses: the log-ratio of the response at each reward rank of the K-tuples
    (rank 1 = chosen), mean over data and seeds. Dashed: NCA's per-response optimum log(K·w̄)/β
    (w̄: the mean soft label of that response over its tuples; MATH.md, NCA), drawn when a tabular
    policy can reach it (Σ_seen μ·exp(s*) <= 1) in at least half the prompts; where it is out of
    reach a footnote under the panels says so (the legend lists the dashed line only if one is drawn)."""

    hs = check_runs(runs)
    losses = [n for n in (losses or hs[0].losses) if not loss_spec(n).pairwise]
    if not losses:
        raise ValueError("losses: plot_ranks needs at least one K-way loss (e.g. 'infonca', 'nca')")
    K = hs[0].metrics["rank_logratio"].shape[-1]
    drawn, partly, unreachable = False, [], []
    with style():
        fig, axes = plt.subplots(
            len(losses), len(hs), figsize=(5.2 * len(hs), 3.6 * len(losses) + 0.5), squeeze=False, sharex=True
        )
        for c, h in enumerate(hs):
            targets = h.reference["nca_target_rank"].mean(0)  # [K]
            feasible = h.reference["nca_target_feasible"].mean()
            for r, loss in enumerate(losses):
                ax = axes[r, c]
                li = h.loss_index(loss)
                shades = color_shades(loss_color(loss), K)
                for k in range(K):
                    draw_band(ax, h.steps, h.metrics["rank_logratio"][:, li, :, k], {"color": shades[k]})
                ax.axhline(0.0, zorder=0, **REFERENCE_LINE)
                if _canonical(loss) == "nca":
                    if feasible >= 0.5:
                        for k in range(K):
                            ax.axhline(targets[k], color=shades[k], linestyle="--", linewidth=1.6)
                        drawn = True
                        if feasible < 0.995:
                            partly.append(f"{h.setting.name} ({feasible:.0%} of prompts)")
                    else:
                        unreachable.append(f"{h.setting.name} (β = {h.setting.beta:g})")
                if r == 0:
                    ax.set_title(h.setting.title)
                if c == 0:
                    ax.set_ylabel(f"{loss_label(loss)}\n$\\log \\pi_\\theta/\\mu$ (nats)")
                if r == len(losses) - 1:
                    ax.set_xlabel("training step")
                ax.xaxis.set_major_locator(MaxNLocator(5))  # 2000 steps: labels would run together
        grey = color_shades("#444444", K)
        handles = [
            Line2D([], [], color=grey[k], label=f"rank {k + 1}" + (" (chosen)" if k == 0 else ""))
            for k in range(K)
        ]
        if drawn:
            handles.append(
                Line2D(
                    [], [], color="0.3", linestyle="--", linewidth=1.6,
                    label="NCA optimum $\\log(K\\bar{w})/\\beta$",
                )
            )  # fmt: skip
        handles.append(reference_handle())
        notes = []
        if unreachable:
            notes.append(
                "NCA's optimum $\\log(K\\bar{w})/\\beta$ is out of reach (it asks for more than all the mass), "
                "not drawn: " + ", ".join(unreachable)
            )
        if partly:
            notes.append("optimum reachable in only part of the prompts: " + ", ".join(partly))
        finish_figure(
            fig,
            f"K = {K} rewards: log-ratio of each reward rank (mean ± std over seeds)",
            handles,
            bottom=0.75 + 0.3 * len(notes),
        )
        for i, note in enumerate(notes):
            fig.text(
                0.5, (0.1 + 0.3 * (len(notes) - 1 - i)) / fig.get_size_inches()[1], note,
                ha="center", va="bottom", fontsize=12, color="0.25",
            )  # fmt: skip
    return fig


# ----------------------------------------------------------------------------------------------
# Sweeps
# ----------------------------------------------------------------------------------------------


#: The hyper-parameters a sweep figure (or :func:`ncakit.toy.classroom.plot_frontier`) can put on its x
#: axis: (symbol, axis label).
SWEEP_PARAMS = {
    "alpha": ("α", "α (reward temperature)"),
    "beta": ("β", "β (KL strength)"),
    "k": ("K", "K (responses per tuple)"),
    "tuples_per_prompt": ("M", "M (tuples per prompt)"),
}


def param_value(h, param: str) -> float:
    """A setting's value of a swept hyper-parameter (α, β from the setting; K, M from its bandit)."""
    st = h.setting
    return float(getattr(st, param) if param in ("alpha", "beta") else getattr(st.bandit, param))


def sweep_axis(runs: dict, param: str, losses: Sequence[str] | None = None):
    """The checked inputs of a sweep figure: ``(histories, losses, values of param, their argsort)``;
    ``param`` is one of :data:`SWEEP_PARAMS`, ``losses`` defaults to the trained ones."""
    check_choice("param", param, SWEEP_PARAMS)
    hs = check_runs(runs)
    xs = np.array([param_value(h, param) for h in hs])
    return hs, list(losses or hs[0].losses), xs, np.argsort(xs)


def plot_sweep(runs: dict, param: str, losses: Sequence[str] | None = None) -> Figure:
    """Final chosen log-ratio, best-response log-ratio and expected-reward gain against a swept
    hyper-parameter (``"alpha"``, ``"beta"``, ``"k"`` or ``"tuples_per_prompt"``: read from each
    setting), mean ± std over seeds."""
    hs, losses, xs, order = sweep_axis(runs, param, losses)
    panels = (
        ("chosen", r"chosen $\log \pi_\theta/\mu$ (nats)"),
        ("best_logratio", "best seen response\n" r"$\log \pi_\theta/\mu$ (nats)"),
        ("reward_gain", "E[r] gain over μ"),
    )
    with style():
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
        for ax, (m, label) in zip(axes, panels):
            for loss in losses:
                vals = np.array([hs[i].final(m)[hs[i].loss_index(loss)] for i in order])  # [P, S]
                st = loss_style(loss)
                ax.errorbar(
                    xs[order], vals.mean(1), yerr=vals.std(1, ddof=1) if vals.shape[1] > 1 else None,
                    marker="o", markersize=7, capsize=4, **st,
                )  # fmt: skip
            ax.axhline(0.0, zorder=0, **REFERENCE_LINE)
            ax.set_xscale("log")
            ax.set_xticks(xs[order], [f"{v:g}" for v in xs[order]])
            ax.minorticks_off()
            ax.set_xlabel(SWEEP_PARAMS[param][1])
            ax.set_ylabel(label)
        finish_figure(
            fig,
            f"Final values against {SWEEP_PARAMS[param][0]} (mean ± std over seeds)",
            loss_handles(losses) + [reference_handle("μ (0)")],
        )
    return fig


# ----------------------------------------------------------------------------------------------
# The loss zoo: every loss on the same bandits
# ----------------------------------------------------------------------------------------------

_ZOO_LINTHRESH = 1.0  # symlog: linear within ±1 nat, logarithmic beyond (values reach −10^4 under robust DPO)


def _zoo_marker(name: str) -> dict:
    """Squares for pairwise losses, circles for K-way ones; hollow for reference-free ones."""
    col = loss_color(name)
    face = "white" if loss_spec(name).reference_free else col
    return {"marker": "s" if _is_pairwise(_canonical(name)) else "o", "mfc": face, "mec": col, "mew": 2.2}


def plot_zoo(runs: dict, losses: Sequence[str] | None = None, *, order_by: str | None = None) -> Figure:
    """Every loss on the same settings, two panels per setting: the final chosen log-ratio (symlog axis:
    left of 0 the chosen likelihood FELL below μ's) and the expected true-reward gain over μ, mean ± std
    over seeds, one row per loss (same order in every panel).

    A row per loss rather than a scatter of chosen vs gain: in the control setting most losses land on
    the same point, and 20 labels on one point are unreadable. Markers: squares pairwise, circles K-way,
    hollow reference-free (:attr:`ncakit.registry.LossSpec.reference_free`). Rows are sorted by the chosen log-ratio
    in ``order_by`` (default: the last setting, the shared one of the zoo preset), highest on top.
    """

    hs = check_runs(runs)
    losses = list(losses or hs[0].losses)
    for h in hs:
        for n in losses:
            h.loss_index(n)  # ValueError naming a loss that was not trained
    names = list(runs)
    key = order_by if order_by is not None else names[-1]
    if key not in runs:
        raise ValueError(f"order_by: expected a setting name, one of {names}; got {key!r}")
    h_key = runs[key]
    chosen_key = {n: h_key.final("chosen")[h_key.loss_index(n)].mean() for n in losses}
    losses.sort(key=lambda n: chosen_key[n])  # ascending: row 0 at the bottom, the highest on top
    y = np.arange(len(losses))
    n_set = len(hs)
    with style():
        width = 1.0 + 2.6 + n_set * 6.2
        height = 1.9 + 0.36 * len(losses) + 0.9
        fig = plt.figure(figsize=(width, height))
        ratios = []
        for i in range(n_set):
            ratios += [1.75, 1.0] + ([0.22] if i < n_set - 1 else [])
        gs = fig.add_gridspec(1, len(ratios), width_ratios=ratios, wspace=0.06)
        col = 0
        first = None
        for i, h in enumerate(hs):
            ax_c = fig.add_subplot(gs[0, col], sharey=first)
            ax_r = fig.add_subplot(gs[0, col + 1], sharey=ax_c)
            first = first or ax_c
            col += 3
            chosen = h.final("chosen")
            gain = h.final("reward_gain")
            for yi, n in zip(y, losses):
                li = h.loss_index(n)
                for ax, v in ((ax_c, chosen[li]), (ax_r, gain[li])):
                    ax.errorbar(
                        v.mean(), yi, xerr=v.std(ddof=1) if v.size > 1 else None, color=loss_color(n),
                        markersize=9, capsize=3, elinewidth=1.8, linestyle="none",
                        **_zoo_marker(n),
                    )  # fmt: skip
            # chosen log-ratio: symlog, the region where the chosen likelihood fell shaded
            lo = min(float(chosen.min()), -1.0)
            hi = max(float(chosen.max()), 1.0)
            ax_c.set_xscale("symlog", linthresh=_ZOO_LINTHRESH)
            ax_c.set_xlim(lo * 1.6 if lo < -_ZOO_LINTHRESH else lo - 0.5, hi * 1.6)
            symlog_ticks(ax_c, lo, hi)
            ax_c.axvspan(ax_c.get_xlim()[0], 0.0, color="#D55E00", alpha=0.07, linewidth=0, zorder=0)
            ax_c.axvline(0.0, color="black", linewidth=1.2, linestyle=":", zorder=1)
            ax_c.set_xlabel(r"chosen $\log \pi_\theta/\mu$ (nats)")
            ax_c.set_title(h.setting.title, loc="left", fontsize=15)
            # reward gain: linear, with the gain of π* ∝ μ·exp(r/(αβ)) for scale
            target = float(
                (h.reference["target_expected_reward"] - h.reference["ref_expected_reward"]).mean()
            )
            spread = gain.std(1, ddof=1) if gain.shape[1] > 1 else np.zeros(gain.shape[0])
            g_lo = min(0.0, float((gain.mean(1) - spread).min()))
            g_hi = max(target, float((gain.mean(1) + spread).max()))
            pad = 0.08 * (g_hi - g_lo)
            ax_r.set_xlim(g_lo - pad, g_hi + pad)
            ax_r.axvline(0.0, color="black", linewidth=1.2, linestyle=":", zorder=1)
            ax_r.axvline(target, color=REFERENCE_COLOR, linewidth=1.6, linestyle="--", zorder=1)
            ax_r.set_xlabel("E[r] gain over μ")
            ax_r.xaxis.set_major_locator(MaxNLocator(4))
            ax_r.tick_params(axis="y", left=False, labelleft=False)
            ax_c.grid(axis="y", visible=False)
            ax_r.grid(axis="y", visible=False)
            if i > 0:
                ax_c.tick_params(axis="y", labelleft=False)
            for ax in (ax_c, ax_r):
                for yi in y[::2]:  # zebra stripes guide the eye along a row across the panels
                    ax.axhspan(yi - 0.5, yi + 0.5, color="0.5", alpha=0.06, linewidth=0, zorder=0)
        first.set_yticks(y, [loss_label(n) for n in losses])
        for tick, n in zip(first.get_yticklabels(), losses):
            tick.set_color(text_color(loss_color(n)))
            tick.set_fontweight("bold")
        first.set_ylim(-0.6, len(losses) - 0.4)
        handles = [
            Line2D([], [], marker="s", color="0.3", linestyle="", markersize=9, label="pairwise (pair view)"),
            Line2D([], [], marker="o", color="0.3", linestyle="", markersize=9, label="K-way (K rewards)"),
            Line2D([], [], marker="o", color="0.3", mfc="white", mew=2, linestyle="", markersize=9,
                   label="reference-free"),
            Patch(facecolor="#D55E00", alpha=0.15, label="chosen likelihood fell below μ"),
            Line2D([], [], color=REFERENCE_COLOR, linestyle="--", linewidth=1.6, label="gain of " + PI_STAR_LABEL),
        ]  # fmt: skip
        h0 = hs[0]
        finish_figure(
            fig,
            f"Every loss on the same bandits: final chosen log-ratio and reward gain "
            f"(mean ± std over {len(h0.seeds)} seeds, {int(h0.steps[-1])} steps; top row: highest chosen in {key})",
            handles,
            left=2.9,
            bottom=0.85,
            right=0.3,
            wspace=0.06,
        )
    return fig


# ----------------------------------------------------------------------------------------------
# All figures of a preset
# ----------------------------------------------------------------------------------------------


def preset_figures(runs: dict, sweep: str | None = None, report: str = "standard") -> dict[str, Figure]:
    """The figures a preset produces, ``{file stem: Figure}``. ``report="standard"``: dynamics, mass and
    reward–KL always; the rank figure when a K-way loss was trained; the sweep figure for a sweep
    preset. ``report="zoo"`` (the zoo preset, many losses): the one figure ``zoo`` (:func:`plot_zoo`)."""

    check_choice("report", report, REPORTS)
    hs = check_runs(runs)
    if report == "zoo":
        return {"zoo": plot_zoo(runs)}
    figs = {
        "dynamics": plot_dynamics(runs),
        "mass": plot_mass(runs),
        "reward_kl": plot_reward_kl(runs),
    }
    if any(not loss_spec(n).pairwise for n in hs[0].losses):
        figs["ranks"] = plot_ranks(runs)
    if sweep:
        figs[f"sweep_{sweep}"] = plot_sweep(runs, sweep)
    return figs
