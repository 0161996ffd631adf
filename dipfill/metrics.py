"""Per-band quality metrics over a pixel mask, and the mean-fill baseline. Pure numpy.

Arrays are ``[..., C, H, W]`` (one patch ``[C, H, W]`` or a batch ``[B, C, H, W]``); every
metric reduces over all axes except the band axis (``-3``) and returns one float64 per band.
Only pixels where ``mask`` is True count: in gap-filling experiments that is the set of
*hidden* pixels (observed in the truth, withheld from the method), never the whole image,
because scoring pixels the method was given measures copying, not filling.

A band with no pixel in the mask scores NaN rather than a number that looks like a result.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["rmse", "r2", "psnr", "mean_fill"]


def _masked_bands(
    truth: ArrayLike, pred: ArrayLike, mask: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """Broadcast to one shape and move the band axis first: ``[C, N]`` arrays plus mask."""
    t = np.asarray(truth, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if t.ndim < 3:
        raise ValueError(f"arrays must be [..., C, H, W], got truth shape {t.shape}")
    t, p, m = np.broadcast_arrays(t, p, m)
    bands = t.shape[-3]

    def flat(a: np.ndarray) -> np.ndarray:
        return np.moveaxis(a, -3, 0).reshape(bands, -1)

    return flat(t), flat(p), flat(m)


def _sum_sq_err(t: np.ndarray, p: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band sum of squared errors over the mask and the mask count."""
    err = np.where(m, t - p, 0.0)
    return np.sum(err * err, axis=1), np.sum(m, axis=1)


def rmse(truth: ArrayLike, pred: ArrayLike, mask: ArrayLike) -> NDArray[np.float64]:
    """Root mean squared error per band: ``sqrt(mean((truth - pred)**2))`` over ``mask``.

    In the units of the data (for Landsat reflectance ×10000, RMSE 100 = 0.01 reflectance).
    """
    t, p, m = _masked_bands(truth, pred, mask)
    sse, n = _sum_sq_err(t, p, m)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(sse / n)


def r2(truth: ArrayLike, pred: ArrayLike, mask: ArrayLike) -> NDArray[np.float64]:
    """Coefficient of determination per band: ``1 - SS_res / SS_tot`` over ``mask``.

    ``SS_res = Σ (truth - pred)²`` and ``SS_tot = Σ (truth - mean(truth))²``, both over the
    masked pixels. This is *not* the squared Pearson correlation: a prediction with the
    right pattern but a bias or wrong contrast is penalised, 0 means "no better than the
    mean of the hidden truth" and it can be negative. NaN where ``SS_tot`` is 0.
    """
    t, p, m = _masked_bands(truth, pred, mask)
    sse, n = _sum_sq_err(t, p, m)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.sum(np.where(m, t, 0.0), axis=1) / n
        dev = np.where(m, t - mean[:, None], 0.0)
        sst = np.sum(dev * dev, axis=1)
        out = 1.0 - sse / sst
    out[~(sst > 0)] = np.nan
    return out


def psnr(
    truth: ArrayLike, pred: ArrayLike, mask: ArrayLike, *, data_range: ArrayLike
) -> NDArray[np.float64]:
    """Peak signal-to-noise ratio per band in dB: ``10·log10(data_range² / MSE)`` over ``mask``.

    ``data_range`` is the span the data could take (a scalar, or one per band), given by
    the caller because PSNR is meaningless without it: 1.0 for reflectance in [0, 1],
    10000 for reflectance ×10000. Infinite where the prediction is exact.
    """
    t, p, m = _masked_bands(truth, pred, mask)
    sse, n = _sum_sq_err(t, p, m)
    rng = np.broadcast_to(np.asarray(data_range, dtype=np.float64), sse.shape)
    if np.any(rng <= 0):
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    with np.errstate(invalid="ignore", divide="ignore"):
        return 10.0 * np.log10(rng * rng / (sse / n))


def mean_fill(patches: ArrayLike, observed: ArrayLike) -> NDArray[np.float32]:
    """The floor every filler must beat: each gap pixel gets its band's observed mean.

    The mean is taken per 2-D slice (per patch and band) over pixels where ``observed`` is
    True; observed pixels keep their values. A band with no observed pixel is all NaN,
    matching the engine protocol's "NaN = not filled".
    """
    x = np.asarray(patches, dtype=np.float64)
    obs = np.broadcast_to(np.asarray(observed, dtype=bool), x.shape)
    count = obs.sum(axis=(-2, -1), keepdims=True)
    total = np.where(obs, x, 0.0).sum(axis=(-2, -1), keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    return np.where(obs, x, mean).astype(np.float32)
