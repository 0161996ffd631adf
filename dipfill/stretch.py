"""Percentile stretches: limits from a reference's valid pixels, then a linear map.

Every preview and score shares the limits (:func:`percentile_limits`: the run's quicklook in
:mod:`dipfill.raster.write`, the evaluation's pictures and SSIM) and differs, deliberately,
in the map:

* scoring (:func:`unit_stretch`): SSIM needs each band on roughly ``[0, 1]``; values are
  *not* clipped and a flat reference only shifts the band, so an overshooting prediction
  keeps its error;
* pictures (:func:`display_stretch`): quicklooks clip to ``[0, 1]`` and show a flat
  reference as black.

Pure numpy and no dipfill imports (the bottom floor), so any writer of previews can use it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["percentile_limits", "unit_stretch", "display_stretch"]


def percentile_limits(
    ref: NDArray, ref_valid: NDArray[np.bool_], percentiles: Sequence[float]
) -> list[tuple[float, float]]:
    """``(lo, hi)`` per band of ``ref [C, H, W]``: its ``percentiles`` over ``ref_valid`` pixels.

    A band without a valid pixel gets ``(0.0, 1.0)``.
    """
    r = np.asarray(ref, dtype=np.float64)
    limits = []
    for c in range(r.shape[0]):
        sel = r[c][ref_valid[c]]
        lo, hi = np.percentile(sel, percentiles) if sel.size else (0.0, 1.0)
        limits.append((lo, hi))
    return limits


def unit_stretch(
    values: NDArray, ref: NDArray, ref_valid: NDArray[np.bool_], percentiles: tuple[float, float] = (1.0, 99.0)
) -> NDArray[np.float64]:
    """Map each band of ``values [C, H, W]`` linearly so that ``ref``'s percentiles go to 0 and 1.

    The percentiles are taken per band over ``ref[ref_valid]``; values are not clipped (a
    prediction overshooting the truth's range keeps its error). A band whose reference is
    empty or flat is only shifted (scale 1).
    """
    x = np.asarray(values, dtype=np.float64)
    out = np.empty_like(x)
    for c, (lo, hi) in enumerate(percentile_limits(ref, ref_valid, percentiles)):
        scale = 1.0 / (hi - lo) if hi > lo else 1.0
        out[c] = (x[c] - lo) * scale
    return out


def display_stretch(values: NDArray, limits: Sequence[tuple[float, float]]) -> NDArray[np.float64]:
    """Band ``c`` of ``values [C, H, W]`` mapped by ``limits[c]`` onto ``[0, 1]`` and clipped; 0 where flat."""
    x = np.asarray(values, dtype=np.float64)
    out = np.empty_like(x)
    for c, (lo, hi) in enumerate(limits):
        scale = 1.0 / (hi - lo) if hi > lo else 0.0
        out[c] = np.clip((x[c] - lo) * scale, 0, 1)
    return out
