"""Blend overlapping patch results into one mosaic: Σ w·x / Σ w.

Weights are a separable raised-cosine (Hann) taper across each overlap with a
neighbouring window, 1 in the interior and at the raster border (there is no neighbour
to hand over to). On an overlap of ``n`` pixels the falling edge of one window and the
rising edge of the next sum to exactly one (sin² + cos²), so seams are feathered, and
every weight is strictly positive (half-pixel offsets), so a pixel covered by a window
always gets a defined value.

Validity-aware: a patch contributes only where its value is finite. An engine marks
what it could not fill with NaN; such pixels get zero weight from that patch, and a pixel
that no patch could fill ends with Σw = 0, which the caller reports as unfilled. The
accumulators are float64 so that a constant field comes back exactly constant.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.tiling.grid import PatchWindow

__all__ = ["hann_ramp", "axis_taper", "window_weights", "Blender", "cast_to_dtype"]


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


class Blender:
    """Accumulates weighted patches for a ``[bands, y, x]`` mosaic, then finalises once.

    ``add`` may be called in any order (results do not depend on it beyond float64
    rounding); after ``finalize`` the blender refuses more work, so a late patch cannot
    silently go missing from an output that was already written.
    """

    def __init__(self, shape: tuple[int, int, int]):
        self.shape = shape
        self._num = np.zeros(shape, dtype=np.float64)
        self._den = np.zeros(shape, dtype=np.float64)
        self._done = False

    def add(
        self, win: PatchWindow, values: NDArray[np.floating], weights: NDArray[np.float64]
    ) -> None:
        """Add one patch ``values[bands, h, w]`` with spatial ``weights[h, w]``."""
        if self._done:
            raise RuntimeError("Blender already finalised; cannot add more patches")
        if values.shape != (self.shape[0], win.height, win.width):
            raise ValueError(
                f"patch values shape {values.shape} does not match window {win} "
                f"with {self.shape[0]} bands"
            )
        finite = np.isfinite(values)
        w = np.where(finite, weights[None, :, :], 0.0)
        rows, cols = win.slices
        self._num[:, rows, cols] += w * np.where(finite, values, 0.0)
        self._den[:, rows, cols] += w

    def finalize(self) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        """Return ``(blended, covered)``: blended is NaN where ``covered`` is False."""
        self._done = True
        covered = self._den > 0
        out = np.full(self.shape, np.nan, dtype=np.float64)
        np.divide(self._num, self._den, out=out, where=covered)
        return out, covered


def cast_to_dtype(
    values: NDArray[np.floating], dtype: np.dtype, nodata: float | None
) -> NDArray:
    """Cast filled float values to the output dtype without creating fake nodata.

    Integers are rounded to nearest and clipped to the dtype's range; a value that would
    land exactly on the nodata value is moved one step towards the valid side, otherwise
    a filled pixel would read back as missing.
    """
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = np.clip(np.rint(values), info.min, info.max).astype(dtype)
        if nodata is not None and info.min <= nodata <= info.max:
            nd = dtype.type(nodata)
            step = 1 if nd < info.max else -1
            out[out == nd] = dtype.type(int(nd) + step)
        return out
    out = values.astype(dtype)
    if nodata is not None and not np.isnan(nodata):
        hit = out == dtype.type(nodata)
        out[hit] = np.nextafter(out[hit], dtype.type(np.inf))
    return out
