"""Patch windows over a raster: pure geometry, no I/O.

Windows have a fixed size (default 256) and step ``size - overlap``; the last window on
each axis is snapped inside the raster (it overlaps its neighbour by more than
``overlap``), so every pixel is covered and every window has the full patch size unless
the raster itself is smaller than a patch, in which case the window is the whole axis.
A fixed step, rather than evenly spread windows, keeps window origins on one lattice, so
the patch id of a location does not depend on the raster's far edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from numpy.typing import NDArray

__all__ = ["PatchWindow", "Crop", "crop", "axis_starts", "plan_windows", "windows_with_gaps"]


@dataclass(frozen=True, order=True)
class PatchWindow:
    """A rectangular window in pixel coordinates: ``(row_off, col_off, height, width)`` — rows
    first, like numpy indexing (rasterio's ``Window`` puts columns first)."""

    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices for indexing a ``[..., y, x]`` array."""
        return (
            slice(self.row_off, self.row_off + self.height),
            slice(self.col_off, self.col_off + self.width),
        )

    def intersects(self, other: "PatchWindow") -> bool:
        """True when the two windows share at least one pixel."""
        return (self.row_off < other.row_off + other.height and other.row_off < self.row_off + self.height
                and self.col_off < other.col_off + other.width and other.col_off < self.col_off + self.width)

    @property
    def id(self) -> str:
        """Stable name of the window, used to derive per-patch seeds and checkpoint keys."""
        return f"r{self.row_off}_c{self.col_off}_h{self.height}_w{self.width}"


@dataclass(frozen=True)
class Crop:
    """The part of a window that falls in a region: where to take it from the window's own
    array (``source``) and where to put it in the region's array (``target``)."""

    source: tuple[slice, slice]
    target: PatchWindow


def crop(win: PatchWindow, region: PatchWindow) -> Crop | None:
    """Clip ``win`` onto ``region`` (both in scene pixels); ``None`` when they do not meet.

    The one place that intersects a patch with a block: blending a block, choosing the
    windows that touch it and reading a batch's pixels all go through it.
    """
    r0, r1 = max(win.row_off, region.row_off), min(win.row_off + win.height, region.row_off + region.height)
    c0, c1 = max(win.col_off, region.col_off), min(win.col_off + win.width, region.col_off + region.width)
    if r0 >= r1 or c0 >= c1:
        return None
    source = (slice(r0 - win.row_off, r1 - win.row_off), slice(c0 - win.col_off, c1 - win.col_off))
    return Crop(source, PatchWindow(r0 - region.row_off, c0 - region.col_off, r1 - r0, c1 - c0))


def axis_starts(length: int, size: int, overlap: int) -> list[int]:
    """Window origins along one axis of ``length`` pixels.

    Returns ``[0]`` when the axis is no longer than a patch. Otherwise origins step by
    ``size - overlap`` and the last one is ``length - size`` (snapped inside).
    """
    if length < 1:
        raise ValueError(f"axis length must be >= 1, got {length}")
    if size < 1:
        raise ValueError(f"patch size must be >= 1, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, size={size}), got {overlap}")
    if length <= size:
        return [0]
    step = size - overlap
    n = math.ceil((length - overlap) / step)
    starts = [i * step for i in range(n - 1)] + [length - size]
    return sorted(set(starts))


def plan_windows(
    height: int, width: int, *, size: int = 256, overlap: int = 32
) -> list[PatchWindow]:
    """All windows covering a ``height`` × ``width`` raster, row-major."""
    rows = axis_starts(height, size, overlap)
    cols = axis_starts(width, size, overlap)
    h, w = min(size, height), min(size, width)
    return [PatchWindow(r, c, h, w) for r in rows for c in cols]


def windows_with_gaps(
    windows: list[PatchWindow], gap: NDArray[np.bool_]
) -> Iterator[PatchWindow]:
    """The windows that contain at least one gap pixel: only those need an engine.

    A plain ``any`` per window: windows overlap little, so each pixel is looked at about
    1.3 times and nothing scene-sized is allocated (a summed-area table, O(1) per window,
    cost 8 bytes per pixel of the whole scene in int64: 130 MB at 16 Mpx).
    """
    for win in windows:
        if gap[win.slices].any():
            yield win
