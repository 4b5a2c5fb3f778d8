"""Figures of the toy track, and the project-wide colour of every loss.

Colours (Okabe–Ito, colour-blind safe) are fixed for the losses the project talks about, and any
other name gets a stable colour from a second colour-blind-safe palette (Paul Tol's "muted"),
chosen by a hash of the name, so a figure, a notebook and a scale plot always agree::

    from ncakit.plots import loss_color, loss_style
    ax.plot(steps, chosen, **loss_style("nca"))      # colour, line style and label of NCA

Warm colours are the DPO family (which lower the chosen likelihood), cool ones NCA; pairwise
losses are dashed, K-way ones solid.

The figure functions take the ``{setting name: History}`` dict of :func:`ncakit.bandit.train` /
:func:`ncakit.bandit.run_preset` and return a matplotlib ``Figure`` (one column per setting):

==========================  ===================================================================
:func:`plot_dynamics`       (a) chosen / rejected / best-response log-ratio over steps, seed bands
:func:`plot_mass`           (b) where the probability mass goes: best seen / other seen / unseen
:func:`plot_reward_kl`      (c) expected true reward vs KL(π_θ || μ), with the optimal frontier and π*
:func:`plot_ranks`          (d) K-way losses: log-ratio of each reward rank, NCA's log(K·w̄)/β lines
:func:`plot_sweep`          final values against a swept hyper-parameter (α, β, K or M)
:func:`plot_frontier`       final (KL, E[r]) of each loss as α, β, K or M varies, with every π*
:func:`animate_policy`      a GIF of π_θ(·|x) of one prompt evolving under several losses
:func:`plot_policy`         a still of the same: π_θ(·|x) of one prompt at one step
:func:`plot_zoo`            every loss (the zoo preset): final chosen log-ratio and reward gain
==========================  ===================================================================

Classroom views for the tutorials: :func:`plot_bandit` (one prompt's μ, rewards and data tuples:
where comparisons overlap), :func:`plot_live` (one setting in one row: metrics over steps, the
mass, the reward–KL plane) and :func:`live_controls` (ipywidgets sliders for α, β, K, the policy
family and M, wired to a redraw; ipywidgets is imported only there).

matplotlib is imported here only (``import ncakit`` does not import it); the backend is left to the
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

__all__ = [
    "loss_style",
    "style",
    "plot_dynamics",
    "plot_mass",
    "plot_reward_kl",
    "plot_ranks",
    "plot_sweep",
    "animate_policy",
    "plot_policy",
    "plot_bandit",
    "plot_live",
    "plot_frontier",
    "plot_zoo",
    "live_controls",
    "LIVE_PANELS",
    "SWEEP_PARAMS",
    "preset_figures",
    "save_figure",
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
# Helpers
# ----------------------------------------------------------------------------------------------


def _check_runs(runs) -> list:
    if not isinstance(runs, dict) or not runs:
        raise ValueError("runs: expected a non-empty {setting name: History} dict (ncakit.bandit.train)")
    return list(runs.values())


def _band(ax, x, values, st, band=True):
    """Mean line and a mean ± std band over seeds (values [T, S])."""
    mean = values.mean(1)
    ax.plot(x, mean, **st)
    if band and values.shape[1] > 1:
        std = values.std(1, ddof=1)
        ax.fill_between(x, mean - std, mean + std, color=st["color"], alpha=0.18, linewidth=0)


def _finish(
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
    fig.suptitle(title, y=1 - 0.1 / h, va="top")
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 1 - 0.5 / h),
        ncol=ncol,
        frameon=False,
        handlelength=2.6,
        columnspacing=1.6,
    )


def _loss_handles(losses):
    return [Line2D([], [], **loss_style(n)) for n in losses]


def _n_seeds(h) -> int:
    return len(h.seeds)


# ----------------------------------------------------------------------------------------------
# (a) log-ratio dynamics
# ----------------------------------------------------------------------------------------------

_ROW_LABELS = {
    "chosen": "chosen\nlog π/μ (nats)",
    "rejected": "rejected\nlog π/μ (nats)",
    "best_logratio": "best seen response\nlog π/μ (nats)",
    "expected_reward": "E[r] under π",
    "kl": "KL(π || μ)",
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
    pair's). The dotted line is the reference (log-ratio 0: the likelihood under μ)."""
    hs = _check_runs(runs)
    losses = list(losses or hs[0].losses)
    with style():
        fig, axes = plt.subplots(
            len(metrics), len(hs), figsize=(5.2 * len(hs), 3.4 * len(metrics)), squeeze=False, sharex=True
        )
        for c, h in enumerate(hs):
            for r, m in enumerate(metrics):
                ax = axes[r, c]
                for loss in losses:
                    _band(ax, h.steps, h.metrics[m][:, h.loss_index(loss)], loss_style(loss))
                ax.axhline(0.0, color="black", linewidth=1.0, linestyle=":", zorder=0)
                if r == 0:
                    ax.set_title(h.setting.title)
                if c == 0:
                    ax.set_ylabel(_ROW_LABELS.get(m, m))
                if r == len(metrics) - 1:
                    ax.set_xlabel("training step")
        _finish(
            fig,
            f"Log-ratio log π_θ/μ during training (mean ± std over {_n_seeds(hs[0])} seeds)",
            _loss_handles(losses),
        )
    return fig


# ----------------------------------------------------------------------------------------------
# (b) where the mass goes
# ----------------------------------------------------------------------------------------------


_MASS_PARTS = ("mass_best", "mass_other_seen", "mass_unseen")


def _draw_mass(ax, h, losses, *, label_fontsize=11):
    """Stacked bars of where the mass is at the end (μ, then every loss) for one History."""
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
    ax.set_xticks(x, names, rotation=30, ha="right")
    for tick, col in zip(ax.get_xticklabels(), colors):
        tick.set_color(col)
    ax.set_ylim(0, 1)
    ax.grid(axis="x", visible=False)


def _mass_handles():
    return [
        Patch(facecolor="0.35", edgecolor="0.35", label="best seen response"),
        Patch(facecolor=(0.35, 0.35, 0.35, 0.4), edgecolor="0.35", label="other seen responses"),
        Patch(facecolor="white", edgecolor="0.35", hatch="///", label="never seen in the data"),
    ]


def plot_mass(runs: dict, losses: Sequence[str] | None = None) -> Figure:
    """(b) Where the probability mass ends up: on each prompt's best SEEN response, on the other
    responses of the data, or on responses never seen in the data (mean over prompts and seeds),
    for μ and for every loss, one panel per setting."""
    hs = _check_runs(runs)
    losses = list(losses or hs[0].losses)
    with style():
        fig, axes = plt.subplots(1, len(hs), figsize=(5.2 * len(hs), 4.8), squeeze=False, sharey=True)
        for c, h in enumerate(hs):
            ax = axes[0, c]
            _draw_mass(ax, h, losses)
            ax.set_title(h.setting.title)
            if c == 0:
                ax.set_ylabel("probability mass (final)")
        _finish(
            fig,
            "Where the probability mass goes (final, mean over prompts and seeds)",
            _mass_handles(),
            bottom=1.35,
        )
    return fig


# ----------------------------------------------------------------------------------------------
# (c) expected reward vs KL
# ----------------------------------------------------------------------------------------------


def _draw_reward_kl(ax, h, losses):
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
    ax.set_xlabel("KL(π_θ || μ)  (nats)")


def _reward_kl_handles(losses):
    return _loss_handles(losses) + [
        Line2D([], [], color=REFERENCE_COLOR, alpha=0.6, linewidth=2, label="best reward at each KL"),
        Line2D([], [], marker="*", markersize=16, color="gold", markeredgecolor="black", linestyle="", label="π* ∝ μ·exp(r/αβ)"),
        Line2D([], [], marker="o", markersize=9, color=REFERENCE_COLOR, linestyle="", label="μ"),
    ]  # fmt: skip


def plot_reward_kl(runs: dict, losses: Sequence[str] | None = None) -> Figure:
    """(c) Expected TRUE reward against KL(π_θ || μ) along training (mean over seeds; bars: std of
    the final point over seeds). The grey curve is the best any policy can do at a given KL (π ∝ μ·e^{r/τ});
    the star is π* ∝ μ·exp(r/(αβ)), the target the losses' implicit rewards aim at."""
    hs = _check_runs(runs)
    losses = list(losses or hs[0].losses)
    with style():
        fig, axes = plt.subplots(1, len(hs), figsize=(5.2 * len(hs), 4.6), squeeze=False)
        for c, h in enumerate(hs):
            ax = axes[0, c]
            _draw_reward_kl(ax, h, losses)
            ax.set_title(h.setting.title)
            if c == 0:
                ax.set_ylabel("expected true reward")
        handles = _reward_kl_handles(losses)
        _finish(
            fig, "Expected true reward vs distance from the reference", handles, ncol=min(len(handles), 4)
        )
    return fig


# ----------------------------------------------------------------------------------------------
# (d) K-way: log-ratio by reward rank
# ----------------------------------------------------------------------------------------------


def _shades(color: str, k: int):
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
    policy can reach it (Σ_seen μ·e^{s*} <= 1) in at least half the prompts, noted otherwise."""

    hs = _check_runs(runs)
    losses = [n for n in (losses or hs[0].losses) if not loss_spec(n).pairwise]
    if not losses:
        raise ValueError("losses: plot_ranks needs at least one K-way loss (e.g. 'infonca', 'nca')")
    K = hs[0].metrics["rank_logratio"].shape[-1]
    with style():
        fig, axes = plt.subplots(
            len(losses), len(hs), figsize=(5.2 * len(hs), 3.6 * len(losses)), squeeze=False, sharex=True
        )
        for c, h in enumerate(hs):
            targets = h.reference["nca_target_rank"].mean(0)  # [K]
            feasible = h.reference["nca_target_feasible"].mean()
            for r, loss in enumerate(losses):
                ax = axes[r, c]
                li = h.loss_index(loss)
                shades = _shades(loss_color(loss), K)
                for k in range(K):
                    _band(ax, h.steps, h.metrics["rank_logratio"][:, li, :, k], {"color": shades[k]})
                ax.axhline(0.0, color="black", linewidth=1.0, linestyle=":", zorder=0)
                if _canonical(loss) == "nca":
                    if feasible >= 0.5:
                        for k in range(K):
                            ax.axhline(targets[k], color=shades[k], linestyle="--", linewidth=1.6)
                        if feasible < 0.995:
                            ax.text(
                                0.98, 0.04, f"(reachable in {feasible:.0%} of prompts)", transform=ax.transAxes,
                                ha="right", va="bottom", fontsize=11, color="0.3",
                            )  # fmt: skip
                    else:
                        beta = h.setting.beta
                        ax.text(
                            0.98, 0.04, f"optimum log(K·w̄)/β out of reach at β = {beta:g}:\nit asks for more than all the mass",
                            transform=ax.transAxes, ha="right", va="bottom", fontsize=11, color="0.3",
                        )  # fmt: skip
                if r == 0:
                    ax.set_title(h.setting.title)
                if c == 0:
                    ax.set_ylabel(f"{loss_label(loss)}\nlog π/μ (nats)")
                if r == len(losses) - 1:
                    ax.set_xlabel("training step")
                ax.xaxis.set_major_locator(MaxNLocator(5))  # 2000 steps: labels would run together
        grey = _shades("#444444", K)
        handles = [
            Line2D([], [], color=grey[k], label=f"rank {k + 1}" + (" (chosen)" if k == 0 else ""))
            for k in range(K)
        ]
        handles.append(
            Line2D([], [], color="0.3", linestyle="--", linewidth=1.6, label="NCA optimum log(K·w̄)/β")
        )
        _finish(fig, f"K = {K} rewards: log-ratio of each reward rank (mean ± std over seeds)", handles)
    return fig


# ----------------------------------------------------------------------------------------------
# Sweeps
# ----------------------------------------------------------------------------------------------


#: The hyper-parameters a sweep figure can put on its x axis: (symbol, axis label).
SWEEP_PARAMS = {
    "alpha": ("α", "α (reward temperature)"),
    "beta": ("β", "β (KL strength)"),
    "k": ("K", "K (responses per tuple)"),
    "tuples_per_prompt": ("M", "M (tuples per prompt)"),
}


def _param_value(h, param: str) -> float:
    """A setting's value of a swept hyper-parameter (α, β from the setting; K, M from its bandit)."""
    st = h.setting
    return float(getattr(st, param) if param in ("alpha", "beta") else getattr(st.bandit, param))


def plot_sweep(runs: dict, param: str, losses: Sequence[str] | None = None) -> Figure:
    """Final chosen log-ratio, best-response log-ratio and expected-reward gain against a swept
    hyper-parameter (``"alpha"``, ``"beta"``, ``"k"`` or ``"tuples_per_prompt"``: read from each
    setting), mean ± std over seeds."""
    if param not in SWEEP_PARAMS:
        raise ValueError(f"param: expected 'alpha' or 'beta' (or 'k', 'tuples_per_prompt'), got {param!r}")
    hs = _check_runs(runs)
    losses = list(losses or hs[0].losses)
    xs = np.array([_param_value(h, param) for h in hs])
    order = np.argsort(xs)
    panels = (
        ("chosen", "chosen log π/μ (nats)"),
        ("best_logratio", "best seen response\nlog π/μ (nats)"),
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
            ax.axhline(0.0, color="black", linewidth=1.0, linestyle=":", zorder=0)
            ax.set_xscale("log")
            ax.set_xticks(xs[order], [f"{v:g}" for v in xs[order]])
            ax.minorticks_off()
            ax.set_xlabel(SWEEP_PARAMS[param][1])
            ax.set_ylabel(label)
        _finish(
            fig,
            f"Final values against {SWEEP_PARAMS[param][0]} (mean ± std over seeds)",
            _loss_handles(losses),
        )
    return fig


# ----------------------------------------------------------------------------------------------
# Animation
# ----------------------------------------------------------------------------------------------


def _pillow_writer(fps: int):
    """matplotlib's PillowWriter, with every frame mapped onto ONE palette taken from the first frame
    (Pillow otherwise quantizes each frame adaptively when saving, ~0.1 s a frame: most of the time)."""
    from matplotlib.animation import PillowWriter
    from PIL import Image

    class _OnePaletteWriter(PillowWriter):
        def grab_frame(self, **savefig_kwargs):
            super().grab_frame(**savefig_kwargs)
            frame = self._frames[-1].convert("RGB")
            if len(self._frames) == 1:
                self._palette = frame.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
            self._frames[-1] = frame.quantize(palette=self._palette, dither=Image.Dither.NONE)

    return _OnePaletteWriter(fps=fps)


def _tracked_prompt(history, losses, seed_index):
    """Validated losses and the tracked prompt's data, responses sorted by true reward (best last):
    (losses, mu [N], seen [N] bool, best position, probs [T, L, N])."""
    losses = [n for n in losses if n in history.losses]
    if not losses:
        raise ValueError(
            f"losses: none of the requested losses were trained; trained: {list(history.losses)}"
        )
    if not 0 <= seed_index < len(history.seeds):
        raise ValueError(f"seed_index: expected 0 <= seed_index < {len(history.seeds)}, got {seed_index}")
    ref = history.reference
    reward = ref["track_reward"][seed_index]
    order = np.argsort(reward)
    mu = ref["track_ref_probs"][seed_index][order]
    seen = ref["track_seen"][seed_index][order] > 0.5
    best = int(np.argmax(np.where(seen, reward[order], -np.inf)))
    probs = history.metrics["track_probs"][:, :, seed_index][..., order]  # [T, L, N]
    return losses, mu, seen, best, probs


def _draw_policy(ax, heights, mu, seen, best, color, ymax):
    """Bars of π_θ(·|x) (pale: never seen in the data), μ's outline, seen/best markers; the bars."""
    x = np.arange(len(mu))
    bars = ax.bar(x, heights, color=[color if s else (*to_rgb(color), 0.35) for s in seen])
    ax.step(x, mu, where="mid", color=REFERENCE_COLOR, linewidth=1.8, label="μ (reference)")
    ax.scatter(x[seen], np.full(seen.sum(), -0.035 * ymax), marker="^", s=30, color="black", clip_on=False)
    ax.scatter(
        [best], [-0.035 * ymax], marker="*", s=170, color="gold", edgecolor="black", clip_on=False, zorder=5
    )
    ax.set_ylim(0, ymax)
    ax.set_xticks([])
    ax.set_xlabel("responses, sorted by true reward →", labelpad=16)
    ax.grid(False)
    return bars


def _policy_legend(ax):
    ax.legend(
        handles=[
            Line2D([], [], color=REFERENCE_COLOR, linewidth=1.8, label="μ (reference)"),
            Line2D([], [], marker="^", color="black", linestyle="", label="seen in the data"),
            Line2D(
                [], [], marker="*", markersize=13, color="gold", markeredgecolor="black", linestyle="",
                label="best seen",
            ),
        ],
        loc="upper left",
        frameon=False,
        fontsize=12,
    )  # fmt: skip


def animate_policy(
    history,
    path: str | Path,
    losses: Sequence[str] = ("dpo", "nca"),
    *,
    seed_index: int = 0,
    fps: int = 10,
    max_frames: int = 40,
    dpi: int = 80,
) -> Path:
    """Write a GIF (matplotlib's PillowWriter) of π_θ(·|x) over the responses of the tracked prompt,
    one panel per loss, responses sorted by true reward (best on the right). Grey outline: μ; a
    triangle under a bar marks a response seen in the data; the star marks the best seen one; pale
    bars are responses never seen in the data."""
    from matplotlib.animation import FuncAnimation

    losses, mu, seen, best, probs = _tracked_prompt(history, losses, seed_index)
    T = probs.shape[0]
    # Quadratically spaced frames: the policy moves fastest early on.
    frames = np.unique((np.linspace(0, 1, min(max_frames, T)) ** 2 * (T - 1)).round().astype(int))
    ymax = min(1.0, max(probs[:, [history.loss_index(n) for n in losses]].max(), mu.max()) * 1.08)
    with style():
        fig, axes = plt.subplots(1, len(losses), figsize=(6.2 * len(losses), 4.8), squeeze=False, sharey=True)
        bars = []
        for ax, loss in zip(axes[0], losses):
            col = loss_color(loss)
            bars.append(_draw_policy(ax, probs[0, history.loss_index(loss)], mu, seen, best, col, ymax))
            ax.set_title(loss_label(loss), color=col)
        axes[0, 0].set_ylabel("π_θ(y | x)")
        _policy_legend(axes[0, 0])
        fig.subplots_adjust(
            left=0.9 / fig.get_size_inches()[0], right=0.98, bottom=0.17, top=0.8, wspace=0.08
        )
        text = fig.suptitle("", fontsize=15)

        def update(frame):
            for b, loss in zip(bars, losses):
                for rect, h in zip(b, probs[frame, history.loss_index(loss)]):
                    rect.set_height(h)
            unseen = [max(0.0, 1 - probs[frame, history.loss_index(n)][seen].sum()) for n in losses]
            text.set_text(
                f"{history.setting.title} — step {history.steps[frame]}\nmass on never-seen responses: "
                + ",  ".join(f"{loss_label(n)} {u:.0%}" for n, u in zip(losses, unseen))
            )
            return [r for b in bars for r in b] + [text]

        anim = FuncAnimation(fig, update, frames=frames, blit=False)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        anim.save(path, writer=_pillow_writer(fps), dpi=dpi)
        plt.close(fig)
    return path


def plot_policy(
    history, losses: Sequence[str] = ("dpo", "nca"), *, seed_index: int = 0, step: int = -1
) -> Figure:
    """π_θ(·|x) of the tracked prompt at one logged step (default: the last), one panel per loss:
    a still frame of :func:`animate_policy`. Responses sorted by true reward (best on the right);
    grey outline μ; triangles: seen in the data; star: the best seen response; pale bars: never seen.
    Each panel's title gives the mass on the best seen and on the never-seen responses."""
    losses, mu, seen, best, probs = _tracked_prompt(history, losses, seed_index)
    T = probs.shape[0]
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not -T <= step < T:
        raise ValueError(f"step: expected a logged-step index in [-{T}, {T}), got {step!r}")
    frame = probs[step]
    ymax = min(1.0, max(frame[[history.loss_index(n) for n in losses]].max(), mu.max()) * 1.12)
    with style():
        fig, axes = plt.subplots(1, len(losses), figsize=(5.6 * len(losses), 5.0), squeeze=False, sharey=True)
        for ax, loss in zip(axes[0], losses):
            col, p = loss_color(loss), frame[history.loss_index(loss)]
            _draw_policy(ax, p, mu, seen, best, col, ymax)
            unseen = max(0.0, 1.0 - p[seen].sum())
            ax.set_title(f"{loss_label(loss)}: best seen {p[best]:.0%}, never seen {unseen:.0%}", color=col)
        axes[0, 0].set_ylabel("π_θ(y | x)")
        _policy_legend(axes[0, 0])
        w, h = fig.get_size_inches()
        fig.subplots_adjust(left=0.9 / w, right=1 - 0.2 / w, bottom=0.8 / h, top=1 - 1.05 / h, wspace=0.08)
        fig.suptitle(
            f"{history.setting.title}: π_θ(·|x) of one prompt at step {history.steps[step]} "
            f"(seed {history.seeds[seed_index]})",
            y=1 - 0.1 / h, va="top",
        )  # fmt: skip
    return fig


# ----------------------------------------------------------------------------------------------
# Classroom views (tutorials 1 and 3): the data of one prompt, a compact run, the frontier, live controls
# ----------------------------------------------------------------------------------------------


def plot_bandit(bandit, *, seed_index: int = 0, prompt: int = 0) -> Figure:
    """What one prompt of a :class:`ncakit.bandit.Bandit` looks like, responses sorted by true reward.

    Left: the reference μ(y|x) over the N responses, coloured by true reward (pale: never sampled
    into the data; star: the best seen response). Right: the M data tuples of the prompt, one row
    each, one column per seen response; the number is the response's rank inside the tuple (1 =
    chosen) and the thick outline marks the two responses of the tuple's pairwise view (what DPO
    sees). A column holding a 1 in one row and a larger rank in another is a response that is
    chosen in one comparison and rejected in another: the overlap that makes the chosen likelihood fall.
    """
    S, X, N = bandit.shape
    if (
        isinstance(seed_index, bool)
        or not isinstance(seed_index, (int, np.integer))
        or not 0 <= seed_index < S
    ):
        raise ValueError(f"seed_index: expected 0 <= seed_index < {S}, got {seed_index!r}")
    if isinstance(prompt, bool) or not isinstance(prompt, (int, np.integer)) or not 0 <= prompt < X:
        raise ValueError(f"prompt: expected 0 <= prompt < {X}, got {prompt!r}")
    as_np = lambda t: t[seed_index, prompt].detach().to("cpu").numpy()  # noqa: E731
    reward = as_np(bandit.reward).astype(float)
    order = np.argsort(reward)  # position -> response id, worst first
    rank_of = np.empty(N, dtype=int)
    rank_of[order] = np.arange(N)  # response id -> position
    mu = np.exp(as_np(bandit.ref_logps).astype(float))[order]
    seen = as_np(bandit.seen)[order]
    best = int(rank_of[int(as_np(bandit.best_seen))])
    tuples, pairs = as_np(bandit.tuples), as_np(bandit.pairs)  # [M, K], [M, 2] response ids
    M, K = tuples.shape
    cols = np.flatnonzero(seen)  # positions of the seen responses
    col_of = {int(pos): c for c, pos in enumerate(cols)}
    cmap = plt.get_cmap("viridis")
    norm = mpl.colors.Normalize(reward.min(), reward.max())
    with style():
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, 5.6), gridspec_kw={"width_ratios": [1.15, 1]})
        colors = [(*cmap(norm(reward[i]))[:3], 1.0 if s else 0.3) for i, s in zip(order, seen)]
        x = np.arange(N)
        ax1.bar(x, mu, color=colors, edgecolor=[c[:3] for c in colors], linewidth=0.8)
        ymax = mu.max() * 1.12
        ax1.scatter(
            x[seen], np.full(seen.sum(), -0.035 * ymax), marker="^", s=30, color="black", clip_on=False
        )
        ax1.scatter(
            [best],
            [-0.035 * ymax],
            marker="*",
            s=190,
            color="gold",
            edgecolor="black",
            clip_on=False,
            zorder=5,
        )
        ax1.set_ylim(0, ymax)
        ax1.set_xticks([])
        ax1.set_xlabel("responses, sorted by true reward →", labelpad=16)
        ax1.set_ylabel("μ(y | x)")
        ax1.set_title(f"Reference policy: {mu[~seen].sum():.0%} of its mass is never sampled into the data")
        ax1.grid(False)
        fig.colorbar(
            mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax1, label="true reward r(x, y)", pad=0.01
        )
        ax1.legend(
            handles=[
                Line2D([], [], marker="^", color="black", linestyle="", label="seen in the data"),
                Line2D(
                    [], [], marker="*", markersize=14, color="gold", markeredgecolor="black", linestyle="",
                    label="best seen",
                ),
                Patch(facecolor=(*cmap(0.5)[:3], 0.3), label="never seen"),
            ],
            loc="upper left", frameon=False, fontsize=12,
        )  # fmt: skip

        shades = _shades("#3B3B3B", K)
        for m in range(M):
            for j in range(K):
                c = col_of[int(rank_of[tuples[m, j]])]
                rgb = shades[j]
                ax2.add_patch(mpl.patches.Rectangle((c - 0.45, m - 0.45), 0.9, 0.9, color=rgb))
                ax2.text(
                    c,
                    m,
                    str(j + 1),
                    ha="center",
                    va="center",
                    fontsize=12,
                    color="white" if j < K / 2 else "black",
                )
            for t in pairs[m]:
                c = col_of[int(rank_of[t])]
                ax2.add_patch(
                    mpl.patches.Rectangle(
                        (c - 0.45, m - 0.45), 0.9, 0.9, fill=False, edgecolor=loss_color("dpo"), linewidth=3
                    )
                )
        both = int(bandit.chosen_and_rejected()[seed_index, prompt])
        ax2.set_xlim(-0.6, len(cols) - 0.4)
        ax2.set_ylim(M - 0.4, -0.6)
        ax2.set_aspect("equal", anchor="N")  # square cells, whether M = 1 or 16
        ax2.set_xticks(
            np.arange(len(cols)), [f"{reward[order[pos]]:+.1f}" for pos in cols], rotation=90, fontsize=10
        )
        ax2.set_yticks(np.arange(M), [f"tuple {m + 1}" for m in range(M)], fontsize=12)
        ax2.set_xlabel("seen responses (their true reward), sorted →")
        ax2.set_title(f"The {M} data tuple{'s' if M > 1 else ''} (numbers: rank in the tuple, 1 = chosen)")
        ax2.grid(False)
        for side in ("top", "right", "left", "bottom"):
            ax2.spines[side].set_visible(False)
        ax2.tick_params(length=0)
        w, h = fig.get_size_inches()
        bottom, top = 1.6 / h, 1 - 0.95 / h
        overlap = f"{both} response{'s' if both != 1 else ''} chosen in one tuple, rejected in another"
        ax2.legend(
            handles=[
                Patch(facecolor="white", edgecolor=loss_color("dpo"), linewidth=3, label="the pair DPO sees"),
                Line2D([], [], linestyle="", label=overlap),
            ],
            loc="upper left", bbox_to_anchor=(-0.02, 0.0), ncol=1, frameon=False, fontsize=12,
            # 0.88 inch under the axes (past the rotated tick labels), however tall the grid is
            bbox_transform=mpl.transforms.offset_copy(ax2.transAxes, fig=fig, y=-0.88, units="inches"),
            handletextpad=0.6, borderaxespad=0.0,
        )  # fmt: skip
        fig.subplots_adjust(left=0.8 / w, right=1 - 0.2 / w, bottom=bottom, top=top, wspace=0.12)
        fig.suptitle(
            f"One prompt of the bandit (seed {bandit.seeds[seed_index]}, prompt {prompt}): "
            f"N = {N} responses, M = {M} tuple{'s' if M > 1 else ''} of K = {K}",
            y=1 - 0.1 / h, va="top",
        )  # fmt: skip
    return fig


#: Panels of :func:`plot_live`: a metric over steps, or one of these two views.
LIVE_PANELS = ("chosen", "rejected", "best_logratio", "expected_reward", "kl", "mass", "reward_kl")


def plot_live(history, panels: Sequence[str] = ("chosen", "best_logratio", "mass"), losses=None) -> Figure:
    """A compact one-row view of ONE setting (a :class:`ncakit.bandit.History`, e.g. from
    :func:`ncakit.bandit.quick_run`), for the tutorials' live controls. Each panel is a metric over
    steps (``"chosen"``, ``"best_logratio"``, ...; mean ± std over seeds), ``"mass"`` (where the mass
    ends up, as :func:`plot_mass`) or ``"reward_kl"`` (as :func:`plot_reward_kl`)."""
    if isinstance(panels, str) or not panels:
        raise ValueError(
            f"panels: expected a non-empty sequence of names from {list(LIVE_PANELS)}, got {panels!r}"
        )
    for name in panels:
        if name not in LIVE_PANELS:
            raise ValueError(f"panels: unknown {name!r}; expected names from {list(LIVE_PANELS)}")
    h = history
    losses = list(losses or h.losses)
    with style():
        fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.9), squeeze=False)
        for ax, name in zip(axes[0], panels):
            if name == "mass":
                _draw_mass(ax, h, losses)
                ax.set_ylabel("probability mass (final)")
            elif name == "reward_kl":
                _draw_reward_kl(ax, h, losses)
                ax.set_ylabel("expected true reward")
            else:
                for loss in losses:
                    _band(ax, h.steps, h.metrics[name][:, h.loss_index(loss)], loss_style(loss))
                if name in ("chosen", "rejected", "best_logratio"):
                    ax.axhline(0.0, color="black", linewidth=1.0, linestyle=":", zorder=0)
                ax.set_ylabel(_ROW_LABELS.get(name, name))
                ax.set_xlabel("training step")
                ax.xaxis.set_major_locator(MaxNLocator(5))
        handles = _loss_handles(losses)
        if "mass" in panels:
            handles += _mass_handles()
        if "reward_kl" in panels:
            handles += _reward_kl_handles([])
        _finish(
            fig,
            f"{h.setting.title}  ({len(h.seeds)} seeds, {int(h.steps[-1])} steps)",
            handles,
            ncol=min(len(handles), 5),
            bottom=1.35 if "mass" in panels else 0.75,
            wspace=0.38,
        )
    return fig


def plot_frontier(runs: dict, param: str, losses: Sequence[str] | None = None) -> Figure:
    """Where each loss ends on the reward–KL plane as one hyper-parameter varies (one panel).

    Grey: the frontier π_τ ∝ μ·e^{r/τ} (the most expected reward at each KL; one curve per distinct
    bandit). Stars: π* ∝ μ·exp(r/(αβ)) of every setting, labelled with its ``param`` value. Dots: the
    final (KL, E[r]) of every loss (mean over seeds), joined in the order of ``param``."""
    if param not in SWEEP_PARAMS:
        raise ValueError(f"param: expected one of {list(SWEEP_PARAMS)}, got {param!r}")
    hs = _check_runs(runs)
    losses = list(losses or hs[0].losses)
    xs = np.array([_param_value(h, param) for h in hs])
    order = np.argsort(xs)
    sym = SWEEP_PARAMS[param][0]
    with style():
        fig, ax = plt.subplots(figsize=(11, 6.4))
        drawn = []
        for h in hs:
            fk, fr = h.reference["frontier_kl"].mean(0), h.reference["frontier_expected_reward"].mean(0)
            if not any(
                fk.shape == d[0].shape and np.allclose(fk, d[0]) and np.allclose(fr, d[1]) for d in drawn
            ):
                ax.plot(fk, fr, color=REFERENCE_COLOR, linewidth=2.5, alpha=0.6, zorder=1)
                drawn.append((fk, fr))
        ax.scatter(
            [0.0], [hs[0].reference["ref_expected_reward"].mean()], s=110, color=REFERENCE_COLOR, zorder=5
        )
        for i in order:
            ref = hs[i].reference
            tk, tr = ref["target_kl"].mean(), ref["target_expected_reward"].mean()
            ax.scatter([tk], [tr], marker="*", s=380, color="gold", edgecolor="black", zorder=6)
            ax.annotate(
                f"{sym} = {xs[i]:g}", (tk, tr), xytext=(4, 10), textcoords="offset points", fontsize=11,
                rotation=35, color="0.25",
            )  # fmt: skip
        for li, loss in enumerate(losses):
            st = loss_style(loss)
            finals = [
                (hs[i].final("kl"), hs[i].final("expected_reward"), hs[i].loss_index(loss)) for i in order
            ]
            pts = np.array([(kl[li_].mean(), er[li_].mean()) for kl, er, li_ in finals])  # [P, 2]
            ax.plot(pts[:, 0], pts[:, 1], marker="o", markersize=9, markeredgecolor="black", zorder=4, **st)
            for n, ((kx, ry), i) in enumerate(zip(pts, order)):
                # The first loss labels above its dots, the others below; alternate the distance and side
                # along the path (neighbouring dots are often close) and draw a leader line to the dot.
                side = 1 if li == 0 else -1
                dy = side * (16 + 15 * (n % 2)) - (6 if side < 0 else 0)
                ax.annotate(
                    f"{xs[i]:g}", (kx, ry), xytext=(10 if n % 2 == 0 else -10, dy),
                    textcoords="offset points", fontsize=11, color=st["color"], ha="center", va="center",
                    arrowprops={
                        "arrowstyle": "-", "color": st["color"], "linewidth": 0.8, "shrinkA": 2, "shrinkB": 5
                    },
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
                )  # fmt: skip
        ax.set_xlabel("KL(π_θ || μ)  (nats)")
        ax.set_ylabel("expected true reward")
        ax.set_xlim(left=-0.1)
        handles = _loss_handles(losses) + [
            Line2D([], [], color=REFERENCE_COLOR, alpha=0.6, linewidth=2.5, label="best reward at each KL"),
            Line2D(
                [], [], marker="*", markersize=17, color="gold", markeredgecolor="black", linestyle="",
                label="π* ∝ μ·exp(r/αβ)",
            ),
            Line2D([], [], marker="o", markersize=10, color=REFERENCE_COLOR, linestyle="", label="μ"),
        ]  # fmt: skip
        _finish(
            fig,
            f"Final expected reward vs KL as {sym} varies "
            f"(dots labelled with {sym}; mean over {len(hs[0].seeds)} seeds)",
            handles,
            ncol=min(len(handles), 5),
            left=1.0,
        )
    return fig


#: The values the live sliders offer (log-spaced, so a redraw of a value seen before is a cache hit).
LIVE_ALPHAS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
LIVE_BETAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def live_controls(
    draw,
    *,
    alpha: float = 0.3,
    beta: float = 0.1,
    k: int = 4,
    family: str = "lowrank",
    tuples_per_prompt: int = 8,
):
    """Sliders for the bandit's knobs (α, β, K, the policy family, M = tuples per prompt) wired with
    ``ipywidgets.interactive_output`` to ``draw(alpha=, beta=, k=, family=, tuples_per_prompt=)``,
    which should re-run a small bandit and draw a figure. Returns an ``ipywidgets.VBox`` (controls
    above the live output); display it as a cell's last expression.

    Without a widget front-end (nbval, nbclient, a static viewer) the box shows a one-line text
    instead, so a notebook should draw the default figure itself as well. Needs ipywidgets (the
    ``notebooks`` extra); sliders fire on release (``continuous_update=False``).
    """
    try:
        import ipywidgets as widgets
    except ImportError as err:  # pragma: no cover - ipywidgets is in the notebooks extra
        raise ImportError("live_controls needs ipywidgets: pip install 'ncakit[notebooks]'") from err
    from ncakit.bandit import FAMILIES

    if alpha not in LIVE_ALPHAS:
        raise ValueError(f"alpha: expected one of the slider values {list(LIVE_ALPHAS)}, got {alpha!r}")
    if beta not in LIVE_BETAS:
        raise ValueError(f"beta: expected one of the slider values {list(LIVE_BETAS)}, got {beta!r}")
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {list(FAMILIES)}, got {family!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 8:
        raise ValueError(f"k: expected an int in [2, 8], got {k!r}")
    if (
        isinstance(tuples_per_prompt, bool)
        or not isinstance(tuples_per_prompt, int)
        or not 1 <= tuples_per_prompt <= 16
    ):
        raise ValueError(f"tuples_per_prompt: expected an int in [1, 16], got {tuples_per_prompt!r}")
    common = {
        "continuous_update": False,
        "style": {"description_width": "160px"},
        "layout": {"width": "520px"},
    }
    controls = {
        "alpha": widgets.SelectionSlider(
            options=LIVE_ALPHAS, value=alpha, description="α (reward temp.)", **common
        ),
        "beta": widgets.SelectionSlider(
            options=LIVE_BETAS, value=beta, description="β (KL strength)", **common
        ),
        "k": widgets.IntSlider(value=k, min=2, max=8, description="K (per tuple)", **common),
        "family": widgets.ToggleButtons(
            options=list(FAMILIES),
            value=family,
            description="policy family",
            style={"description_width": "160px"},
        ),
        "tuples_per_prompt": widgets.IntSlider(
            value=tuples_per_prompt, min=1, max=16, description="M (tuples/prompt)", **common
        ),
    }
    out = widgets.interactive_output(draw, controls)

    class _LiveBox(widgets.VBox):
        # What a viewer without a widget front-end sees instead of a long repr of every slider.
        def _repr_mimebundle_(self, **kwargs):
            bundle = super()._repr_mimebundle_(**kwargs)
            if bundle:
                bundle["text/plain"] = (
                    "[live controls: α, β, K, policy family, M; open the notebook in Jupyter to use them]"
                )
            return bundle

    return _LiveBox([widgets.VBox(list(controls.values())), out])


# ----------------------------------------------------------------------------------------------
# The loss zoo: every loss on the same bandits
# ----------------------------------------------------------------------------------------------

_ZOO_LINTHRESH = 1.0  # symlog: linear within ±1 nat, logarithmic beyond (values reach −10^4 under robust DPO)


def _zoo_marker(name: str) -> dict:
    """Squares for pairwise losses, circles for K-way ones; hollow for reference-free ones."""
    col = loss_color(name)
    face = "white" if loss_spec(name).reference_free else col
    return {"marker": "s" if _is_pairwise(_canonical(name)) else "o", "mfc": face, "mec": col, "mew": 2.2}


def _symlog_ticks(ax, lo: float, hi: float):
    """Readable symlog ticks: 0; −1, −10, −100, −10³ ... (every other decade beyond five); +1, +3, +10 ..."""
    neg = []
    p = 0
    while lo < 0 and 10.0**p <= -lo * 1.0001:
        neg.append(p)
        p += 1
    if len(neg) > 5:
        neg = neg[::2]
    pos = [v for v in (1, 3, 10, 30, 100, 300) if v <= hi * 1.0001]
    ticks = [-(10.0**q) for q in reversed(neg)] + [0.0] + [float(v) for v in pos]
    labels = [(f"−{10**q:g}" if q < 3 else f"$-10^{{{q}}}$") for q in reversed(neg)] + ["0"]
    labels += [f"+{v:g}" for v in pos]
    ax.set_xticks(ticks, labels)
    ax.minorticks_off()


def _text_color(color: str) -> str:
    """The colour darkened until text in it reads on white (light palette entries such as sand)."""
    rgb = np.array(to_rgb(color))
    luminance = float(rgb @ np.array([0.2126, 0.7152, 0.0722]))
    if luminance > 0.45:
        rgb = rgb * (0.45 / luminance)
    return mpl.colors.to_hex(rgb)


def plot_zoo(runs: dict, losses: Sequence[str] | None = None, *, order_by: str | None = None) -> Figure:
    """Every loss on the same settings, two panels per setting: the final chosen log-ratio (symlog axis:
    left of 0 the chosen likelihood FELL below μ's) and the expected true-reward gain over μ, mean ± std
    over seeds, one row per loss (same order in every panel).

    A row per loss rather than a scatter of chosen vs gain: in the control setting most losses land on
    the same point, and 20 labels on one point are unreadable. Markers: squares pairwise, circles K-way,
    hollow reference-free (:attr:`ncakit.registry.LossSpec.reference_free`). Rows are sorted by the chosen log-ratio
    in ``order_by`` (default: the last setting, the shared one of the zoo preset), highest on top.
    """

    hs = _check_runs(runs)
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
            _symlog_ticks(ax_c, lo, hi)
            ax_c.axvspan(ax_c.get_xlim()[0], 0.0, color="#D55E00", alpha=0.07, linewidth=0, zorder=0)
            ax_c.axvline(0.0, color="black", linewidth=1.2, linestyle=":", zorder=1)
            ax_c.set_xlabel("chosen log π/μ (nats)")
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
            tick.set_color(_text_color(loss_color(n)))
            tick.set_fontweight("bold")
        first.set_ylim(-0.6, len(losses) - 0.4)
        handles = [
            Line2D([], [], marker="s", color="0.3", linestyle="", markersize=9, label="pairwise (pair view)"),
            Line2D([], [], marker="o", color="0.3", linestyle="", markersize=9, label="K-way (K rewards)"),
            Line2D([], [], marker="o", color="0.3", mfc="white", mew=2, linestyle="", markersize=9,
                   label="reference-free"),
            Patch(facecolor="#D55E00", alpha=0.15, label="chosen likelihood fell below μ"),
            Line2D([], [], color=REFERENCE_COLOR, linestyle="--", linewidth=1.6, label="gain of π* ∝ μ·exp(r/αβ)"),
        ]  # fmt: skip
        h0 = hs[0]
        _finish(
            fig,
            f"Every loss on the same bandits: final chosen log-ratio and reward gain "
            f"(mean ± std over {_n_seeds(h0)} seeds, {int(h0.steps[-1])} steps; top row: highest chosen in {key})",
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

    if report not in ("standard", "zoo"):
        raise ValueError(f"report: expected 'standard' or 'zoo', got {report!r}")
    hs = _check_runs(runs)
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
