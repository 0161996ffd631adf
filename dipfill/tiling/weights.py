"""Window functions: how much each overlapping patch counts at each of its pixels.

Weights are a separable raised-cosine (Hann) taper across each overlap with a
neighbouring window, 1 in the interior and at the raster border (there is no neighbour
to hand over to). On an overlap of ``n`` pixels the falling edge of one window and the
rising edge of the next sum to exactly one (sin² + cos²), so seams are feathered, and
every weight is strictly positive (half-pixel offsets), so a pixel covered by a window
always gets a defined value.

The merge itself (Σ w·x / Σ w, validity-aware) is :mod:`dipfill.tiling.merge`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.tiling.grid import PatchWindow

__all__ = ["hann_ramp", "axis_taper", "window_weights"]


def hann_ramp(n: int) -> NDArray[np.float64]:
    """Rising raised-cosine ramp of ``n`` samples, strictly inside (0, 1).

    ``hann_ramp(n) + hann_ramp(n)[::-1] == 1`` elementwise.
    """
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    return np.sin(0.5 * np.pi * t) ** 2


def axis_taper(start: int, size: int, starts: Sequence[int]) -> NDArray[np.float64]:
    """1-D weights of the window at ``start`` given all window origins on this axis."""
    w = np.ones(size, dtype=np.float64)
    before = [s for s in starts if s < start]
    after = [s for s in starts if s > start]
    if before:  # overlap with the previous window's end
        n = max(s + size for s in before) - start
        if n > 0:
            w[: min(n, size)] *= hann_ramp(n)[: min(n, size)]
    if after:  # overlap with the next window's start
        n = start + size - min(after)
        if n > 0:
            w[size - min(n, size) :] *= hann_ramp(n)[::-1][-min(n, size) :]
    return w


def window_weights(
    win: PatchWindow, row_starts: Sequence[int], col_starts: Sequence[int]
) -> NDArray[np.float64]:
    """2-D taper of one window: outer product of its row and column tapers."""
    return np.outer(
        axis_taper(win.row_off, win.height, row_starts),
        axis_taper(win.col_off, win.width, col_starts),
    )
