"""Merge overlapping patch results into one raster: Σ w·x / Σ w, in memory or in Zarr.

Split → infer → merge are three roles connected only by the patch location (MONAI's
splitter / merger): a :class:`Merger` is told ``aggregate(values, window)`` for each
fitted patch, in any order, then ``finalize()`` once, and refuses work after that, so a
late patch cannot silently go missing from an output already written.

A merger covers a *region* of the scene (a whole scene, or one block of a run) and takes
windows in scene coordinates; the parts outside its region are cropped away
(:func:`~dipfill.tiling.grid.crop`). Weights are the Hann tapers of
:mod:`~dipfill.tiling.weights` over the plan's window lattice (``rows``, ``cols``).

Validity-aware: a patch contributes only where its value is finite. An engine marks what
it could not fill with NaN; such pixels get zero weight from that patch, and a pixel no
patch could fill ends with Σw = 0 (``covered`` False), which the caller reports as
unfilled. Accumulators are float64 so that a constant field comes back exactly constant.
Each aggregate may name a ``source`` (e.g. 0 = primary engine, 1 = fallback): the merger
also sums the taper weight per source, which tells the QA layer who filled a pixel.

Pure numpy: the Zarr-backed merger takes its arrays from zarr, imported where used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.tiling.grid import PatchWindow, crop
from dipfill.tiling.weights import window_weights

__all__ = ["Merged", "Merger", "InMemoryMerger", "ZarrMerger", "cast_to_dtype"]


@dataclass(frozen=True)
class Merged:
    """What a merger gives back: array-likes over its region (numpy, or zarr arrays)."""

    values: Any  # float64 [bands, y, x], NaN where not covered
    covered: Any  # bool [bands, y, x]: some patch gave a finite value here
    weight: Any  # float64 [sources, y, x]: Σ taper weight per source (finite or not)


class Merger(Protocol):
    """Accumulates patches for a region, then finalises once."""

    def aggregate(self, values: NDArray[np.floating], window: PatchWindow, *, source: int = 0) -> None:
        """Add one patch ``values[bands, h, w]`` fitted for ``window`` (scene pixels)."""

    def finalize(self) -> Merged:
        """Σ w·x / Σ w over the region; no more ``aggregate`` afterwards."""


class _WeightedMerger:
    """The merge arithmetic over any sliceable float64 accumulators (numpy or zarr)."""

    def __init__(self, num: Any, den: Any, tally: Any, *, region: PatchWindow, rows: Sequence[int],
                 cols: Sequence[int]) -> None:
        self._num, self._den, self._tally = num, den, tally
        self.region = region
        self.bands = int(num.shape[0])
        self.rows, self.cols = list(rows), list(cols)
        self._done = False

    def aggregate(self, values: NDArray[np.floating], window: PatchWindow, *, source: int = 0) -> None:
        if self._done:
            raise RuntimeError("merger already finalised; cannot aggregate more patches")
        if values.shape != (self.bands, window.height, window.width):
            raise ValueError(f"patch values shape {values.shape} does not match window {window} "
                             f"with {self.bands} bands")
        part = crop(window, self.region)
        if part is None:
            return
        ys, xs = part.source
        weights = window_weights(window, self.rows, self.cols)[ys, xs]
        vals = values[:, ys, xs]
        finite = np.isfinite(vals)
        w = np.where(finite, weights[None, :, :], 0.0)
        rows, cols = part.target.slices
        self._num[:, rows, cols] = self._num[:, rows, cols] + w * np.where(finite, vals, 0.0)
        self._den[:, rows, cols] = self._den[:, rows, cols] + w
        self._tally[source, rows, cols] = self._tally[source, rows, cols] + weights

    def _divide(self, num: NDArray[np.float64], den: NDArray[np.float64]) -> tuple[NDArray, NDArray]:
        covered = den > 0
        out = np.full(num.shape, np.nan, dtype=np.float64)
        np.divide(num, den, out=out, where=covered)
        return out, covered


class InMemoryMerger(_WeightedMerger):
    """A merger over numpy arrays: a block of a run, or a scene that fits in memory."""

    def __init__(self, bands: int, region: PatchWindow, *, rows: Sequence[int], cols: Sequence[int],
                 sources: int = 1) -> None:
        shape = (bands, region.height, region.width)
        super().__init__(np.zeros(shape), np.zeros(shape), np.zeros((sources, region.height, region.width)),
                         region=region, rows=rows, cols=cols)

    def finalize(self) -> Merged:
        self._done = True
        values, covered = self._divide(self._num, self._den)
        return Merged(values, covered, self._tally)


class ZarrMerger(_WeightedMerger):
    """A merger whose accumulators live in a Zarr group at ``path``: for a region larger
    than memory whose patches arrive in any order from one writer. ``finalize`` divides
    chunk row by chunk row into the group's ``values``/``covered`` arrays and returns them
    as zarr arrays (read them by slices). Same arithmetic, same bytes as
    :class:`InMemoryMerger` (tested)."""

    def __init__(self, path: str | os.PathLike[str], bands: int, region: PatchWindow, *, rows: Sequence[int],
                 cols: Sequence[int], sources: int = 1, chunk: int = 512) -> None:
        import zarr

        self._group = zarr.open_group(str(path), mode="w")
        shape = (bands, region.height, region.width)
        chunks = (1, chunk, chunk)

        def zeros(name: str, shp: tuple[int, ...], dtype: Any = "float64") -> Any:
            return self._group.create_array(name, shape=shp, chunks=chunks, dtype=dtype, fill_value=0,
                                            compressors=None)

        super().__init__(zeros("num", shape), zeros("den", shape), zeros("weight", (sources, *shape[1:])),
                         region=region, rows=rows, cols=cols)
        self._chunk = chunk

    def finalize(self) -> Merged:
        self._done = True
        shape = self._num.shape
        chunks = (1, self._chunk, self._chunk)
        values = self._group.create_array("values", shape=shape, chunks=chunks, dtype="float64",
                                          fill_value=np.nan, compressors=None)
        covered = self._group.create_array("covered", shape=shape, chunks=chunks, dtype="bool",
                                           fill_value=False, compressors=None)
        for r0 in range(0, shape[1], self._chunk):
            rows = slice(r0, min(r0 + self._chunk, shape[1]))
            v, c = self._divide(self._num[:, rows, :], self._den[:, rows, :])
            values[:, rows, :] = v
            covered[:, rows, :] = c
        return Merged(values, covered, self._tally)


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
