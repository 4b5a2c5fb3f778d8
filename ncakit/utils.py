"""Small helpers shared by every track: seeding (once, near the top of a script or notebook), plain
numbers for printing, an atomic file write, and the tutorials' figure defaults (matplotlib is
imported only when asked)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def write_atomic(path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that a reader (or a crash) sees the old file or the new one, never
    half of it: a temporary file in the same folder, flushed and fsynced, then ``os.replace`` d."""
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def seed_everything(seed: int = 0, *, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and torch once, and return an explicit CPU ``torch.Generator``.

    Prefer passing the returned generator (or one made from it) to the functions that sample,
    so results do not depend on what ran before. ``deterministic=True`` also asks torch for
    deterministic kernels (slower on GPU).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 -- seeding the legacy global RNG is the point here
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def rounded(x, digits: int = 3):
    """Plain Python floats (or nested lists of them) for printing: rounded, -0.0 shown as 0.0.

    Notebook cells that nbval checks compare printed text, so a tensor's repr (dtype, device,
    ``grad_fn``) or a ``-0.0`` would make the same result look different between runs.

    >>> rounded(torch.tensor([0.12345, -0.0001]))
    [0.123, 0.0]
    """
    x = x.detach().cpu() if torch.is_tensor(x) else x
    return (np.round(np.asarray(x, dtype=float), digits) + 0.0).tolist()


def notebook_style(font_size: float = 13, figsize: tuple[float, float] | None = (10, 4)) -> None:
    """Set the tutorials' matplotlib defaults for the whole session (one call, in the set-up cell).

    Readable fonts (titles one point larger, legends one smaller), a light grid and a wide default
    figure (``figsize=None`` keeps matplotlib's). The toy figure functions apply their own projector
    style on top of it.
    """
    if isinstance(font_size, bool) or not isinstance(font_size, (int, float)) or not font_size > 0:
        raise ValueError(f"font_size: expected a positive number, got {font_size!r}")
    import matplotlib.pyplot as plt  # here, not at the top: `import ncakit` must not load matplotlib

    rc = {
        "font.size": font_size,
        "axes.titlesize": font_size + 1,
        "axes.labelsize": font_size,
        "legend.fontsize": font_size - 1,
        "axes.grid": True,
        "grid.alpha": 0.3,
    }
    if figsize is not None:
        rc["figure.figsize"] = tuple(figsize)
    plt.rcParams.update(rc)
