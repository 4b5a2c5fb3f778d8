"""The tutorials' views of the toy: one prompt's data, one compact run, the frontier, live sliders,
and π_θ(·|x) of one prompt as a still or a GIF.

==========================  ===================================================================
:func:`plot_bandit`         one prompt of a :class:`~ncakit.toy.bandit.Bandit`: μ, the rewards and
                            the data tuples (where comparisons overlap)
:func:`plot_live`           one setting in one row: metrics over steps, the mass, the reward–KL plane
:func:`plot_frontier`       final (KL, E[r]) of each loss as α, β, K or M varies, with every π*
:func:`live_controls`       ipywidgets sliders for α, β, K, the policy family and M, wired to a redraw
:func:`plot_policy`         π_θ(·|x) of the tracked prompt at one step, one panel per loss
:func:`animate_policy`      a GIF of the same over training (``toy/demo.py --animate``)
==========================  ===================================================================

They draw with the pieces of :mod:`ncakit.toy.figures` (style, bands, mass bars, legends) and take a
:class:`~ncakit.toy.trainer.History` (e.g. from :func:`ncakit.toy.presets.quick_run`) or a
``{setting name: History}`` dict. ipywidgets is imported inside :func:`live_controls` only.
"""

from __future__ import annotations

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

from ncakit.registry import REFERENCE_COLOR, loss_color, loss_label
from ncakit.toy.figures import (
    METRIC_LABELS,
    PI_STAR_LABEL,
    REFERENCE_LINE,
    SWEEP_PARAMS,
    color_shades,
    draw_band,
    draw_mass,
    draw_reward_kl,
    figure_title,
    finish_figure,
    loss_handles,
    loss_style,
    mass_handles,
    reference_handle,
    reward_kl_handles,
    style,
    sweep_axis,
)
from ncakit.toy.policies import FAMILIES
from ncakit.validation import check_int

__all__ = [
    "plot_bandit",
    "LIVE_PANELS",
    "plot_live",
    "plot_frontier",
    "LIVE_ALPHAS",
    "LIVE_BETAS",
    "live_controls",
    "plot_policy",
    "animate_policy",
    "animation_frames",
    "POLICY_FLOOR",
]


# ----------------------------------------------------------------------------------------------
# Animation
# ----------------------------------------------------------------------------------------------


def _pillow_writer(fps: int, hold_s: float = 0.0):
    """matplotlib's PillowWriter, with every frame mapped onto ONE palette taken from the first frame
    (Pillow otherwise quantizes each frame adaptively when saving, ~0.1 s a frame: most of the time),
    and the last frame shown ``hold_s`` seconds longer (a pause before the loop restarts, not re-drawn)."""
    from matplotlib.animation import PillowWriter
    from PIL import Image

    class _OnePaletteWriter(PillowWriter):
        def grab_frame(self, **savefig_kwargs):
            super().grab_frame(**savefig_kwargs)
            frame = self._frames[-1].convert("RGB")
            if len(self._frames) == 1:
                self._palette = frame.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
            self._frames[-1] = frame.quantize(palette=self._palette, dither=Image.Dither.NONE)

        def finish(self):
            step = int(1000 / self.fps)
            durations = [step] * (len(self._frames) - 1) + [step + int(1000 * hold_s)]
            self._frames[0].save(
                self.outfile, save_all=True, append_images=self._frames[1:], duration=durations, loop=0
            )

    return _OnePaletteWriter(fps=fps)


def _chosen_in_data(history, seed_index: int) -> np.ndarray:
    """[N] bool: the tracked prompt's responses that were CHOSEN (rank 1 of a tuple, or the chosen of a
    pair) in the data. The History keeps no data, so the seed's bandit is drawn again (make_bandit is
    deterministic per seed) and the tracked prompt found by its reward vector and seen set."""
    import torch

    from ncakit.toy.bandit import make_bandit

    reward = history.reference["track_reward"][seed_index]
    seen = history.reference["track_seen"][seed_index] > 0.5
    for dtype in (torch.float32, torch.float64):  # the dtype the run used is not recorded
        b = make_bandit(history.setting.bandit, [history.seeds[seed_index]], dtype=dtype)
        rewards = b.reward[0].detach().cpu().double().numpy()  # [X, N]
        prompt = int(np.argmin(np.abs(rewards - reward[None]).max(-1)))
        if np.allclose(rewards[prompt], reward, atol=1e-4) and np.array_equal(
            b.seen[0, prompt].cpu().numpy(), seen
        ):
            ids = np.concatenate(
                [b.tuples[0, prompt, :, 0].cpu().numpy(), b.pairs[0, prompt, :, 0].cpu().numpy()]
            )
            chosen = np.zeros(len(reward), dtype=bool)
            chosen[ids] = True
            return chosen
    raise ValueError(
        "history: cannot redraw the data of its tracked prompt (was the bandit drawn by make_bandit?)"
    )


def _tracked_prompt(history, losses, seed_index):
    """Validated losses and the tracked prompt's data, responses sorted by true reward (best last):
    (losses, mu [N], seen [N] bool, chosen [N] bool, best position, probs [T, L, N])."""
    losses = [n for n in losses if n in history.losses]
    if not losses:
        raise ValueError(
            f"losses: none of the requested losses were trained; trained: {list(history.losses)}"
        )
    check_int("seed_index", seed_index, 0, len(history.seeds) - 1)
    ref = history.reference
    reward = ref["track_reward"][seed_index]
    order = np.argsort(reward)
    mu = ref["track_ref_probs"][seed_index][order]
    seen = ref["track_seen"][seed_index][order] > 0.5
    chosen = _chosen_in_data(history, seed_index)[order]
    best = int(np.argmax(np.where(seen, reward[order], -np.inf)))
    probs = history.metrics["track_probs"][:, :, seed_index][..., order]  # [T, L, N]
    return losses, mu, seen, chosen, best, probs


#: The floor of the log-probability axis of the policy views: smaller probabilities sit on it.
POLICY_FLOOR = 1e-12
_CHOSEN_EDGE = "black"


def _policy_floor(probs, mu) -> float:
    """The y floor of a policy view: a decade under the smallest probability shown, >= POLICY_FLOOR."""
    low = min(float(np.min(probs[probs > 0])) if np.any(probs > 0) else 1.0, float(mu.min()))
    return max(POLICY_FLOOR, 10.0 ** np.floor(np.log10(low) - 0.5))


def _draw_policy(ax, heights, mu, seen, chosen, best, color, floor):
    """Bars of π_θ(·|x) on a LOG axis (pale: never seen in the data; thick black outline: chosen in the
    data), μ's step line, seen/best markers under the axis; returns the bars."""
    x = np.arange(len(mu))
    face = [color if s else (*to_rgb(color), 0.35) for s in seen]
    bars = ax.bar(
        x, np.maximum(heights, floor) - floor, bottom=floor, color=face,
        edgecolor=[_CHOSEN_EDGE if c else "none" for c in chosen], linewidth=[2.2 if c else 0 for c in chosen],
    )  # fmt: skip
    ax.step(x, mu, where="mid", color=REFERENCE_COLOR, linewidth=2.0, label="μ (reference)")
    ax.set_yscale("log")
    ax.set_ylim(floor, 1.5)
    tr = ax.get_xaxis_transform()  # x in data, y in axes coordinates: markers just under the axis
    _mark_seen_and_best(ax, x[seen], best, -0.04, seen_size=34, transform=tr)
    ax.set_xticks([])
    ax.set_xlabel("responses, sorted by true reward →", labelpad=18)
    ax.grid(False)
    ax.grid(axis="y", alpha=0.2)
    return bars


def _mark_seen_and_best(ax, x_seen, best, y, *, seen_size, **kw):
    """Under the bars: a black triangle at each response seen in the data, a gold star at the best
    seen one (``kw``: e.g. ``transform``)."""
    ax.scatter(x_seen, np.full(len(x_seen), y), marker="^", s=seen_size, color="black", clip_on=False, **kw)
    ax.scatter([best], [y], marker="*", s=190, color="gold", edgecolor="black", clip_on=False, zorder=5, **kw)


def _seen_and_best_handles(star_size):
    """The legend entries of :func:`_mark_seen_and_best`'s markers."""
    return [
        Line2D([], [], marker="^", color="black", linestyle="", label="seen in the data"),
        Line2D(
            [], [], marker="*", markersize=star_size, color="gold", markeredgecolor="black", linestyle="",
            label="best seen",
        ),
    ]  # fmt: skip


def _policy_legend(ax, fontsize=12):
    ax.legend(
        handles=[
            Line2D([], [], color=REFERENCE_COLOR, linewidth=2.0, label="μ (reference)"),
            Patch(facecolor="white", edgecolor=_CHOSEN_EDGE, linewidth=2.2, label="chosen in the data"),
            *_seen_and_best_handles(star_size=13),
        ],
        loc="upper left",
        frameon=True,
        framealpha=0.85,
        edgecolor="none",
        fontsize=fontsize,
    )  # fmt: skip


def _chosen_logratio(p, mu, chosen) -> float:
    """Mean log-ratio log π_θ/μ of the chosen responses of the tracked prompt."""
    return float(np.mean(np.log(np.maximum(p[chosen], 1e-300)) - np.log(mu[chosen])))


def animation_frames(steps, max_frames: int = 40) -> np.ndarray:
    """Indices into the logged ``steps`` for a GIF: log-spaced in the training step (the policy moves
    fastest early on, and a log clock gives every decade of training the same screen time), from the
    first logged step to the last, each index once."""
    steps = np.asarray(steps)
    T = len(steps)
    check_int("max_frames", max_frames, 2)
    targets = np.geomspace(max(steps[1] if T > 1 else 1, 1), max(steps[-1], 1), max_frames - 1)
    return np.unique(np.concatenate([[0], np.searchsorted(steps, targets).clip(0, T - 1), [T - 1]])).astype(
        int
    )


def animate_policy(
    history,
    path: str | Path,
    losses: Sequence[str] = ("dpo", "nca"),
    *,
    seed_index: int = 0,
    fps: int = 8,
    max_frames: int = 40,
    dpi: int = 80,
    hold_s: float = 1.5,
) -> Path:
    """Write a GIF (matplotlib's PillowWriter) of π_θ(·|x) over the responses of the tracked prompt,
    one panel per loss, responses sorted by true reward (best on the right), on a LOG probability
    axis (a fall from 10 % to 0.001 % is visible). Thick black outline: the responses CHOSEN in the
    data; grey step line: μ; a triangle under a bar marks a response seen in the data; the star the
    best seen one; pale bars: never seen. The title follows the chosen responses' mean log-ratio.
    Frames (:func:`animation_frames`): log-spaced training steps at ``fps``, the last one held
    ``hold_s`` seconds longer."""
    from matplotlib.animation import FuncAnimation

    losses, mu, seen, chosen, best, probs = _tracked_prompt(history, losses, seed_index)
    frames = animation_frames(history.steps, max_frames)
    li = [history.loss_index(n) for n in losses]
    floor = _policy_floor(probs[:, li], mu)
    with style(), mpl.rc_context({"font.size": 16, "axes.titlesize": 18, "axes.labelsize": 16}):
        fig, axes = plt.subplots(1, len(losses), figsize=(6.4 * len(losses), 5.2), squeeze=False, sharey=True)
        bars = []
        for ax, loss, i in zip(axes[0], losses, li):
            col = loss_color(loss)
            bars.append(_draw_policy(ax, probs[0, i], mu, seen, chosen, best, col, floor))
            ax.set_title(loss_label(loss), color=col, fontweight="bold")
        axes[0, 0].set_ylabel(r"$\pi_\theta(y \mid x)$  (log scale)")
        _policy_legend(axes[0, 0], fontsize=13)
        fig.subplots_adjust(
            left=1.1 / fig.get_size_inches()[0], right=0.985, bottom=0.14, top=0.76, wspace=0.06
        )
        text = fig.suptitle("", fontsize=17, y=0.985, va="top")

        def update(frame):
            for b, i in zip(bars, li):
                for rect, h in zip(b, probs[frame, i]):
                    rect.set_height(max(h, floor) - floor)
            parts = [
                f"{loss_label(n)} {_chosen_logratio(probs[frame, i], mu, chosen):+.1f}"
                for n, i in zip(losses, li)
            ]
            text.set_text(
                f"{history.setting.title}: step {history.steps[frame]}\n"
                "chosen responses, mean log π/μ: " + ",   ".join(parts)
            )
            return [r for b in bars for r in b] + [text]

        anim = FuncAnimation(fig, update, frames=frames, blit=False)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        anim.save(path, writer=_pillow_writer(fps, hold_s), dpi=dpi)
        plt.close(fig)
    return path


def plot_policy(
    history, losses: Sequence[str] = ("dpo", "nca"), *, seed_index: int = 0, step: int = -1
) -> Figure:
    """π_θ(·|x) of the tracked prompt at one logged step (default: the last), one panel per loss:
    a still frame of :func:`animate_policy` (log probability axis; thick black outline: chosen in
    the data; grey step line μ; triangles: seen in the data; star: the best seen response; pale bars:
    never seen). Each panel's title gives the mass on the best seen and on the never-seen responses
    and the chosen responses' mean log-ratio."""
    losses, mu, seen, chosen, best, probs = _tracked_prompt(history, losses, seed_index)
    T = probs.shape[0]
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not -T <= step < T:
        raise ValueError(f"step: expected a logged-step index in [-{T}, {T}), got {step!r}")
    frame = probs[step]
    floor = _policy_floor(frame[[history.loss_index(n) for n in losses]], mu)
    with style():
        fig, axes = plt.subplots(1, len(losses), figsize=(5.8 * len(losses), 5.4), squeeze=False, sharey=True)
        for ax, loss in zip(axes[0], losses):
            col, p = loss_color(loss), frame[history.loss_index(loss)]
            _draw_policy(ax, p, mu, seen, chosen, best, col, floor)
            unseen = max(0.0, 1.0 - p[seen].sum())
            ax.set_title(
                f"{loss_label(loss)}: best seen {p[best]:.0%}, never seen {unseen:.0%}\n"
                f"chosen: mean log π/μ {_chosen_logratio(p, mu, chosen):+.1f}",
                color=col,
            )
        axes[0, 0].set_ylabel(r"$\pi_\theta(y \mid x)$  (log scale)")
        _policy_legend(axes[0, 0])
        w, h = fig.get_size_inches()
        fig.subplots_adjust(left=1.0 / w, right=1 - 0.2 / w, bottom=0.8 / h, top=1 - 1.45 / h, wspace=0.08)
        figure_title(
            fig,
            f"{history.setting.title}: π_θ(·|x) of one prompt at step {history.steps[step]} "
            f"(seed {history.seeds[seed_index]})",
        )
    return fig


# ----------------------------------------------------------------------------------------------
# Classroom views (tutorials 1 and 3): the data of one prompt, a compact run, the frontier, live controls
# ----------------------------------------------------------------------------------------------


def plot_bandit(bandit, *, seed_index: int = 0, prompt: int = 0) -> Figure:
    """What one prompt of a :class:`ncakit.toy.bandit.Bandit` looks like, responses sorted by true reward.

    Left: the reference μ(y|x) over the N responses, coloured by true reward (pale: never sampled
    into the data; star: the best seen response). Right: the M data tuples of the prompt, one row
    each, one column per seen response; the number is the response's rank inside the tuple (1 =
    chosen) and the thick outline marks the two responses of the tuple's pairwise view (what DPO
    sees). A column holding a 1 in one row and a larger rank in another is a response that is
    chosen in one comparison and rejected in another: the overlap that makes the chosen likelihood fall.
    """
    S, X, N = bandit.shape
    check_int("seed_index", seed_index, 0, S - 1)
    check_int("prompt", prompt, 0, X - 1)
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
        _mark_seen_and_best(ax1, x[seen], best, -0.035 * ymax, seen_size=30)
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
                *_seen_and_best_handles(star_size=14),
                Patch(facecolor=(*cmap(0.5)[:3], 0.3), label="never seen"),
            ],
            loc="upper left", frameon=False, fontsize=12,
        )  # fmt: skip

        shades = color_shades("#3B3B3B", K)
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
        figure_title(
            fig,
            f"One prompt of the bandit (seed {bandit.seeds[seed_index]}, prompt {prompt}): "
            f"N = {N} responses, M = {M} tuple{'s' if M > 1 else ''} of K = {K}",
        )
    return fig


#: Panels of :func:`plot_live`: a metric over steps, or one of these two views.
LIVE_PANELS = ("chosen", "rejected", "best_logratio", "expected_reward", "kl", "mass", "reward_kl")


def plot_live(history, panels: Sequence[str] = ("chosen", "best_logratio", "mass"), losses=None) -> Figure:
    """A compact one-row view of ONE setting (a :class:`ncakit.toy.trainer.History`, e.g. from
    :func:`ncakit.toy.presets.quick_run`), for the tutorials' live controls. Each panel is a metric over
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
                draw_mass(ax, h, losses)
                ax.set_ylabel("probability mass (final)")
            elif name == "reward_kl":
                draw_reward_kl(ax, h, losses)
                ax.set_ylabel("expected true reward")
            else:
                for loss in losses:
                    draw_band(ax, h.steps, h.metrics[name][:, h.loss_index(loss)], loss_style(loss))
                if name in ("chosen", "rejected", "best_logratio"):
                    ax.axhline(0.0, zorder=0, **REFERENCE_LINE)
                ax.set_ylabel(METRIC_LABELS.get(name, name))
                ax.set_xlabel("training step")
                ax.xaxis.set_major_locator(MaxNLocator(5))
        handles = loss_handles(losses)
        if any(n in panels for n in ("chosen", "rejected", "best_logratio")):
            handles.append(reference_handle())
        if "mass" in panels:
            handles += mass_handles(losses)
        if "reward_kl" in panels:
            handles += reward_kl_handles([])
        finish_figure(
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
    hs, losses, xs, order = sweep_axis(runs, param, losses)
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
        ax.set_xlabel(r"$\mathrm{KL}(\pi_\theta \,\|\, \mu)$  (nats)")
        ax.set_ylabel("expected true reward")
        ax.set_xlim(left=-0.1)
        handles = loss_handles(losses) + [
            Line2D([], [], color=REFERENCE_COLOR, alpha=0.6, linewidth=2.5, label="best reward at each KL"),
            Line2D(
                [], [], marker="*", markersize=17, color="gold", markeredgecolor="black", linestyle="",
                label=PI_STAR_LABEL,
            ),
            Line2D([], [], marker="o", markersize=10, color=REFERENCE_COLOR, linestyle="", label="μ"),
        ]  # fmt: skip
        finish_figure(
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
    replace_static: bool = True,
):
    """Sliders for the bandit's knobs (α, β, K, the policy family, M = tuples per prompt) wired with
    ``ipywidgets.interactive_output`` to ``draw(alpha=, beta=, k=, family=, tuples_per_prompt=)``,
    which should re-run a small bandit and draw a figure. Returns an ``ipywidgets.VBox`` (controls
    above the live output); display it as a cell's last expression.

    ONE figure: each redraw's figures are rendered into the live output and closed (so the inline
    backend does not show a second, static copy at the end of the cell). The box also carries the
    default figure as a PNG, what a viewer without a widget front-end (GitHub, nbviewer) shows in
    its place; with ``replace_static`` (default) the cell's earlier output (a static figure of the
    default values that the tutorials draw first) is cleared when the box appears, so a live
    notebook shows the live figure only. Needs ipywidgets (the ``notebooks`` extra); sliders fire on
    release (``continuous_update=False``).
    """
    try:
        import ipywidgets as widgets
    except ImportError as err:  # pragma: no cover - ipywidgets is in the notebooks extra
        raise ImportError("live_controls needs ipywidgets: pip install 'ncakit[notebooks]'") from err

    if alpha not in LIVE_ALPHAS:
        raise ValueError(f"alpha: expected one of the slider values {list(LIVE_ALPHAS)}, got {alpha!r}")
    if beta not in LIVE_BETAS:
        raise ValueError(f"beta: expected one of the slider values {list(LIVE_BETAS)}, got {beta!r}")
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {list(FAMILIES)}, got {family!r}")
    check_int("k", k, 2, 8)
    check_int("tuples_per_prompt", tuples_per_prompt, 1, 16)
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
    fallback: dict[str, str] = {}

    def live(**kw):
        figs = _draw_figures(draw, kw)
        from IPython.display import display

        for fig in figs:
            if not fallback:
                fallback["image/png"] = _png_base64(fig)
            display(fig)  # inside interactive_output: into the live output widget
            plt.close(fig)  # ... and only there: no static copy from the inline backend

    out = widgets.interactive_output(live, controls)

    class _LiveBox(widgets.VBox):
        # What a viewer without a widget front-end sees: the default figure and one line of text
        # instead of a long repr of every slider; a widget front-end renders the widget itself.
        def _repr_mimebundle_(self, **kwargs):
            bundle = super()._repr_mimebundle_(**kwargs)
            if bundle:
                bundle["text/plain"] = (
                    "[live controls: α, β, K, policy family, M; open the notebook in Jupyter to use them]"
                )
                bundle.update(fallback)
            return bundle

    if replace_static:
        from IPython.display import clear_output

        clear_output(wait=True)  # the cell's static default figure gives way to the box (which carries it)
    return _LiveBox([widgets.VBox(list(controls.values())), out])


def _draw_figures(draw, kwargs) -> list:
    """Call ``draw(**kwargs)`` with ``plt.show`` held back and matplotlib non-interactive; the
    figures it opened (the ones it returned or left open), for the caller to display once."""
    from unittest import mock

    before = set(plt.get_fignums())
    with plt.ioff(), mock.patch.object(plt, "show", lambda *a, **k: None):
        result = draw(**kwargs)
    figs = [plt.figure(n) for n in plt.get_fignums() if n not in before]
    if isinstance(result, Figure) and result not in figs:
        figs.append(result)
    return figs


def _png_base64(fig) -> str:
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")
