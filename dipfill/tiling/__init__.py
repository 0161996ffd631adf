"""Patch geometry, window functions and merging: pure numpy (no torch, Ray or rasterio).

* :mod:`~dipfill.tiling.grid` — windows over a raster, and the one crop of a window onto a region;
* :mod:`~dipfill.tiling.weights` — the Hann taper each window's pixels count with;
* :mod:`~dipfill.tiling.merge` — the :class:`Merger` protocol (``aggregate`` / ``finalize``),
  in memory or in Zarr, and the cast of merged values to the output dtype.

Takes and returns shapes, windows and arrays: no pipeline objects, no files of its own.
"""

from dipfill.tiling.grid import Crop, PatchWindow, axis_starts, crop, plan_windows, windows_with_gaps
from dipfill.tiling.merge import InMemoryMerger, Merged, Merger, ZarrMerger, cast_to_dtype
from dipfill.tiling.weights import axis_taper, hann_ramp, window_weights

__all__ = [
    "Crop",
    "InMemoryMerger",
    "Merged",
    "Merger",
    "PatchWindow",
    "ZarrMerger",
    "axis_starts",
    "axis_taper",
    "cast_to_dtype",
    "crop",
    "hann_ramp",
    "plan_windows",
    "window_weights",
    "windows_with_gaps",
]
