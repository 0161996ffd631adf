"""A network's gap fill judged against interpolation on held-out pixels, and blended.

Issue 11 measured single-image DIP *below* GDAL's ``fillnodata`` on real SLC-off stripes
(r² 0.468 vs 0.577), and guided DIP (``mcpn``) trusting a poor guide below it too. Whether
a network beats interpolation is a property of this patch and band, so it is measured,
the way the guided judge (:mod:`~dipfill.engines.guided_judge`) measures a guide: the
network is fitted without some observed pixels shaped like the gaps
(:func:`~dipfill.engines.holdout.stripe_holdout`), ``fillnodata`` predicts the same pixels
from the same remaining ones, and the gaps get ``w·network + (1 − w)·fillnodata`` with
``w`` in [0, 1] the least-squares weight on the held-out pixels, lowered by ``z`` jackknife
standard errors over the 16-px pieces (:func:`~dipfill.engines.holdout.blend_weight`).

Why a blend and not DIP as a residual on the interpolation: ``fillnodata`` returns the
observed pixels unchanged, so the residual is zero on every pixel a loss can see and the
network would learn zero. Numpy and ``rasterio.fill`` only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from dipfill.engines.classical import spatial_fill
from dipfill.engines.holdout import blend_weight

__all__ = ["MIN_BLEND_PIXELS", "judged_blend"]

#: fewest held-out pixels of a band that can judge it (as the guided judge's min_holdout)
MIN_BLEND_PIXELS = 200
#: stripe_holdout's piece size: the jackknife's blocks
_PIECE = 16


def judged_blend(
    values: NDArray, observed: NDArray[np.bool_], held: NDArray[np.bool_], prediction: NDArray, *, z: float = 1.0
) -> tuple[NDArray[np.float64], dict[str, Any]]:
    """The gaps of ``prediction [C, H, W]`` blended with ``fillnodata`` by judged weights.

    ``observed``: the usable pixels of ``values``; ``held``: those the network did not fit
    (a subset of ``observed``). Observed pixels of ``prediction`` are returned unchanged. A
    band with fewer than :data:`MIN_BLEND_PIXELS` held-out pixels that interpolation reaches
    keeps the network's output (weight ``None`` in the record); where interpolation cannot
    reach a gap pixel, the network fills it alone. Returns the blended array and a record
    (per band: weight, held-out RMSE of the network and of ``fillnodata``) for diagnostics.
    """
    v = np.asarray(values, dtype=np.float64)
    obs = np.asarray(observed, dtype=bool)
    held = np.asarray(held, dtype=bool) & obs
    train = obs & ~held
    spatial = spatial_fill(np.where(obs, v, 0.0), obs)
    spatial_cv = spatial_fill(np.where(train, v, 0.0), train)
    filled = np.array(prediction, dtype=np.float64)
    record: dict[str, list[float | None]] = {"blend_weight": [], "holdout_rmse_net": [], "holdout_rmse_fillnodata": []}
    for c in range(v.shape[0]):
        sel = held[c] & np.isfinite(spatial_cv[c]) & np.isfinite(filled[c])
        if sel.sum() < MIN_BLEND_PIXELS:
            for key in record:
                record[key].append(None)
            continue
        ys, xs = np.nonzero(sel)
        t, net, interp = v[c][sel], filled[c][sel], spatial_cv[c][sel]
        w, se = blend_weight(t, net, interp, (ys // _PIECE) * (v.shape[2] // _PIECE + 1) + xs // _PIECE)
        w = max(0.0, w - z * se)
        gap = ~obs[c] & np.isfinite(spatial[c])
        filled[c][gap] = w * filled[c][gap] + (1 - w) * spatial[c][gap]
        record["blend_weight"].append(round(w, 4))
        record["holdout_rmse_net"].append(round(float(np.sqrt(np.mean((t - net) ** 2))), 4))
        record["holdout_rmse_fillnodata"].append(round(float(np.sqrt(np.mean((t - interp) ** 2))), 4))
    return filled, record
