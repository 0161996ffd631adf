"""Per-band, per-patch affine normalisation from observed pixels, and its exact inverse.

DIP fits a network whose last layer is a sigmoid, so targets must sit inside (0, 1). Each
2-D slice (one band of one patch) is mapped by ``y = x * scale + offset`` so that its
observed ``lo``/``hi`` percentiles (default 1st/99th: robust to a few hot or dead pixels)
land on ``target`` (default [0.1, 0.9]).

Why [0.1, 0.9] and not [0, 1] (DESIGN.md, measured on a real Landsat scene): with the
percentiles on the sigmoid's limits, gap pixels brighter than the observed 99th percentile
are unreachable. They were only ~1 % of the gap pixels but carried over half of the
visible bands' variance, so r² there was capped. The headroom keeps values up to
``lo + 1.125 * (hi - lo)`` (and down to ``lo - 0.125 * (hi - lo)``) representable.

Only observed pixels set the parameters; gap pixels are transformed with them, whatever
they hold (NaN stays NaN). Parameters are computed in float64 and ``denormalize`` applies
the algebraic inverse ``x = (y - offset) / scale``, so a round trip is exact to float64
rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["NormParams", "normalize", "denormalize"]


@dataclass(frozen=True)
class NormParams:
    """Affine parameters per 2-D slice; each array has the input's leading shape ``[...]``.

    ``lo``/``hi`` are the observed percentiles (the observed min/max where the percentiles
    coincide; NaN for a slice with no observed pixel); ``scale``/``offset`` define
    ``y = x * scale + offset``. ``degenerate`` marks slices whose observed pixels are all
    equal or absent: they get ``scale = 1`` and ``lo`` maps to
    the middle of ``target``, so nothing divides by zero and the inverse stays exact.
    """

    lo: NDArray[np.float64]
    hi: NDArray[np.float64]
    scale: NDArray[np.float64]
    offset: NDArray[np.float64]
    degenerate: NDArray[np.bool_]


def normalize(
    values: ArrayLike,
    observed: ArrayLike,
    *,
    percentiles: tuple[float, float] = (1.0, 99.0),
    target: tuple[float, float] = (0.1, 0.9),
) -> tuple[NDArray[np.float64], NormParams]:
    """Normalise each 2-D slice of ``values[..., H, W]`` from its observed pixels.

    Returns the normalised float64 array (same shape) and the :class:`NormParams` that
    :func:`denormalize` needs.
    """
    x = np.asarray(values, dtype=np.float64)
    obs = np.asarray(observed, dtype=bool)
    if x.ndim < 2 or obs.shape != x.shape:
        raise ValueError(
            f"values must be [..., H, W] with an observed mask of the same shape, "
            f"got {x.shape} and {obs.shape}"
        )
    p_lo, p_hi = percentiles
    if not 0.0 <= p_lo < p_hi <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {percentiles}")
    t_lo, t_hi = target
    if not t_lo < t_hi:
        raise ValueError(f"target must be increasing, got {target}")

    lead = x.shape[:-2]
    lo = np.full(lead, np.nan)
    hi = np.full(lead, np.nan)
    for idx in np.ndindex(*lead):
        vals = x[idx][obs[idx]]
        if vals.size:
            lo[idx], hi[idx] = np.percentile(vals, [p_lo, p_hi])
            if not hi[idx] > lo[idx]:  # mostly constant band with a few outliers
                lo[idx], hi[idx] = vals.min(), vals.max()

    span = hi - lo
    degenerate = ~(span > 0)  # also True where lo/hi are NaN
    scale = np.where(degenerate, 1.0, (t_hi - t_lo) / np.where(degenerate, 1.0, span))
    anchor = np.where(np.isnan(lo), 0.0, lo)
    offset = np.where(degenerate, 0.5 * (t_lo + t_hi) - anchor, t_lo - lo * scale)
    params = NormParams(lo=lo, hi=hi, scale=scale, offset=offset, degenerate=degenerate)
    return x * scale[..., None, None] + offset[..., None, None], params


def denormalize(normalized: ArrayLike, params: NormParams) -> NDArray[np.float64]:
    """Exact inverse of :func:`normalize` for the same parameters: ``(y - offset) / scale``."""
    y = np.asarray(normalized, dtype=np.float64)
    if y.shape[:-2] != params.scale.shape:
        raise ValueError(
            f"normalized leading shape {y.shape[:-2]} does not match the parameters' "
            f"{params.scale.shape}"
        )
    return (y - params.offset[..., None, None]) / params.scale[..., None, None]
