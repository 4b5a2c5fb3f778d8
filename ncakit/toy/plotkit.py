"""Small drawing helpers shared by the toy's figures (:mod:`ncakit.toy.figures`, :mod:`ncakit.toy.classroom`,
:mod:`ncakit.toy.projector`): the labelled reference line, symlog axes with readable ticks (so a +1.2
stays visible next to a −120), final values written at a panel's right edge, and text colours that
read on white. Colours come from the loss registry.
"""

from __future__ import annotations

import matplotlib as mpl
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D

from ncakit.registry import REFERENCE_COLOR, loss_color

__all__ = [
    "PI_STAR_LABEL",
    "REFERENCE_LINE",
    "SYMLOG_LINTHRESH",
    "SYMLOG_ABOVE",
    "reference_handle",
    "symlog_axis",
    "symlog_ticks",
    "final_labels",
    "text_color",
]

#: The legend label of π* (mathtext).
PI_STAR_LABEL = r"$\pi^* \propto \mu\, e^{r/(\alpha\beta)}$"
#: The dotted line at log-ratio 0 (the likelihood under μ), labelled in every legend that draws it.
REFERENCE_LINE = {"color": REFERENCE_COLOR, "linewidth": 1.4, "linestyle": ":"}
#: symlog axes (:func:`symlog_axis`): linear within ±1 nat, logarithmic beyond, so NCA's +1.2 stays
#: readable on the same panel as DPO's −120; used when a panel's range exceeds SYMLOG_ABOVE nats.
SYMLOG_LINTHRESH, SYMLOG_ABOVE = 1.0, 12.0


def reference_handle(label: str = "μ (log-ratio 0)") -> Line2D:
    """Legend handle of the dotted reference line (:data:`REFERENCE_LINE`)."""
    return Line2D([], [], label=label, **REFERENCE_LINE)


def symlog_axis(ax, lo: float, hi: float, axis: str = "y") -> bool:
    """Put a symlog scale on ``axis`` (linear within ±1 nat) when [lo, hi] spans more than
    :data:`SYMLOG_ABOVE` nats, with readable ticks (0, ±1, ±10, ±100 ...); True if it did."""
    if hi - lo <= SYMLOG_ABOVE:
        return False
    (ax.set_yscale if axis == "y" else ax.set_xscale)("symlog", linthresh=SYMLOG_LINTHRESH)
    symlog_ticks(ax, lo, hi, axis=axis)
    pad = lambda v: v * 1.5 if abs(v) > SYMLOG_LINTHRESH else v + 0.5 * np.sign(v)  # noqa: E731
    (ax.set_ylim if axis == "y" else ax.set_xlim)(pad(min(lo, -0.5)), pad(max(hi, 0.5)))
    return True


def final_labels(ax, x_end, finals, losses, fontsize=11):
    """Each loss's final mean value, written just right of the panel at its height (nudged apart)."""
    scale = ax.transScale  # data -> linear coordinates (the symlog transform on a symlog axis)
    lo, hi = (scale.transform((0, v))[1] for v in ax.get_ylim())
    ys = np.array([scale.transform((0, v))[1] for v in finals])
    frac = (ys - lo) / (hi - lo)  # heights in axes fractions
    placed = frac.copy()
    order = np.argsort(frac)
    for a, b in zip(order[:-1], order[1:]):  # keep labels 7 % of the axis apart
        placed[b] = max(placed[b], placed[a] + 0.07)
    placed -= max(0.0, placed.max() - 0.98)  # the group pushed back under the top edge
    for v, y, loss in zip(finals, placed, losses):
        ax.annotate(
            f"{v:+.1f}", (1.01, y), xycoords="axes fraction", fontsize=fontsize,
            color=text_color(loss_color(loss)), va="center", ha="left", annotation_clip=False,
        )  # fmt: skip


def symlog_ticks(ax, lo: float, hi: float, axis: str = "x"):
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
    (ax.set_yticks if axis == "y" else ax.set_xticks)(ticks, labels)
    (ax.yaxis if axis == "y" else ax.xaxis).set_minor_locator(mpl.ticker.NullLocator())


def text_color(color: str) -> str:
    """The colour darkened until text in it reads on white (light palette entries such as sand)."""
    rgb = np.array(to_rgb(color))
    luminance = float(rgb @ np.array([0.2126, 0.7152, 0.0722]))
    if luminance > 0.45:
        rgb = rgb * (0.45 / luminance)
    return mpl.colors.to_hex(rgb)
