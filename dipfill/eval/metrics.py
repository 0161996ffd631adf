"""Per-band quality metrics over a pixel mask, and the mean-fill baseline. Pure numpy (SSIM
also uses scipy.ndimage).

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

__all__ = ["rmse", "r2", "psnr", "ssim", "ms_ssim", "enl", "epi", "mean_fill", "gaussian_1d"]


def _broadcast(
    truth: ArrayLike, pred: ArrayLike, mask: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """float64 truth and prediction and a bool mask, broadcast to one ``[..., C, H, W]`` shape."""
    t = np.asarray(truth, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if t.ndim < 3:
        raise ValueError(f"arrays must be [..., C, H, W], got truth shape {t.shape}")
    t, p, m = np.broadcast_arrays(t, p, m)
    return t, p, m


def _masked_bands(
    truth: ArrayLike, pred: ArrayLike, mask: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """Broadcast to one shape and move the band axis first: ``[C, N]`` arrays plus mask."""
    t, p, m = _broadcast(truth, pred, mask)
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


def gaussian_1d(size: int, sigma: float) -> NDArray[np.float64]:
    """The ``size``-tap Gaussian (σ = ``sigma``) centred on the middle tap, normalised to sum 1.

    SSIM's window is its outer product with itself (separable).
    """
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def ssim(
    truth: ArrayLike,
    pred: ArrayLike,
    mask: ArrayLike,
    *,
    data_range: ArrayLike,
    window: int = 11,
    sigma: float = 1.5,
) -> NDArray[np.float64]:
    """Mean structural similarity per band over ``mask`` (Wang et al. 2004, Gaussian window).

    Exactly what is computed, for every 2-D slice ``[H, W]`` of ``[..., C, H, W]``:

    * *Valid* pixels are those where both ``truth`` and ``pred`` are finite; pass NaN for
      pixels whose truth is unknown (nodata) and they take no part in any window.
    * Local statistics use the separable ``window`` × ``window`` Gaussian (σ = ``sigma``,
      11 × 11 and 1.5 by default, normalised to sum 1) restricted to valid pixels and
      renormalised: with ``w = G * v`` (``v`` = valid, ``*`` = correlation, zero outside
      the image), ``μx = G*(v·x) / w``, ``σx² = G*(v·x²) / w − μx²``,
      ``σxy = G*(v·x·y) / w − μx·μy``. Windows thus shrink at the image border and around
      nodata instead of reading padded or made-up values.
    * The SSIM map is ``(2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))``
      with ``C1 = (0.01 L)²``, ``C2 = (0.03 L)²`` and ``L = data_range`` (a scalar or one
      per band).
    * The result is the mean of the map over the pixels where ``mask`` is True, pooled over
      all slices of a band: 1 for a perfect prediction, lower for a worse one (it can go
      below 0).

    ``L`` matters: SSIM's constants assume the data span ``[0, L]``. Reflectance ×10⁴ scored
    with ``L = 10000`` makes the luminance term ≈ 1 whatever the prediction, so callers
    should first map each band onto roughly ``[0, 1]`` (:func:`dipfill.stretch.unit_stretch`
    with the truth's 1st/99th percentiles) and pass ``data_range=1``.

    A band is NaN when ``mask`` selects no pixel or selects a pixel that is not valid (a
    prediction that left a scored pixel unfilled has no SSIM, as it has no RMSE).
    """
    from scipy.ndimage import correlate1d

    t, p, m = _broadcast(truth, pred, mask)
    bands = t.shape[-3]
    rng = np.asarray(data_range, dtype=np.float64)
    if np.any(rng <= 0):
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    if rng.ndim == 1:
        rng = rng.reshape(-1, 1, 1)
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2

    valid = np.isfinite(t) & np.isfinite(p)
    v = valid.astype(np.float64)
    x = np.where(valid, t, 0.0)
    y = np.where(valid, p, 0.0)
    g = gaussian_1d(window, sigma)

    def filt(a: np.ndarray) -> np.ndarray:
        a = correlate1d(a, g, axis=-1, mode="constant", cval=0.0)
        return correlate1d(a, g, axis=-2, mode="constant", cval=0.0)

    with np.errstate(invalid="ignore", divide="ignore"):
        w = filt(v)
        w = np.where(w > 1e-12, w, np.nan)
        mx, my = filt(v * x) / w, filt(v * y) / w
        sxx = filt(v * x * x) / w - mx * mx
        syy = filt(v * y * y) / w - my * my
        sxy = filt(v * x * y) / w - mx * my
        smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))

    def flat(a: np.ndarray) -> np.ndarray:
        return np.moveaxis(a, -3, 0).reshape(bands, -1)

    sm, mm, vm = flat(smap), flat(m), flat(valid)
    n = mm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(mm, sm, 0.0).sum(axis=1) / n
    out[(n == 0) | np.any(mm & ~vm, axis=1)] = np.nan
    return out


def ms_ssim(truth: ArrayLike, pred: ArrayLike, *, data_range: ArrayLike, scales: int = 5, window: int = 11,
            sigma: float = 1.5) -> NDArray[np.float64]:
    """Multi-scale SSIM per band over the whole image, as paper 004 defines it (its eq. 10):
    the mean of :func:`ssim` (full image) at ``scales`` scales, each the previous one
    2×2-block averaged. Not Wang et al.'s weighted product of contrast-structure terms: the
    paper's figures use the mean. Scales stop where the image gets smaller than ``window``
    (a 120² BigEarthNet patch has 4: 120, 60, 30, 15); the number used is what is averaged.
    """
    t = np.asarray(truth, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    values = []
    for s in range(scales):
        if s and min(t.shape[-2:]) < window:
            break
        values.append(ssim(t, p, np.ones(t.shape, dtype=bool), data_range=data_range, window=window, sigma=sigma))
        h, w = (t.shape[-2] // 2) * 2, (t.shape[-1] // 2) * 2
        t = t[..., :h, :w].reshape(*t.shape[:-2], h // 2, 2, w // 2, 2).mean(axis=(-3, -1))
        p = p[..., :h, :w].reshape(*p.shape[:-2], h // 2, 2, w // 2, 2).mean(axis=(-3, -1))
        if min(t.shape[-2:]) < window:
            break
    return np.mean(values, axis=0)


def enl(values: ArrayLike, mask: ArrayLike, *, block: int = 25) -> NDArray[np.float64]:
    """Equivalent number of looks per band of ``values [C, H, W]`` (linear intensity) as paper
    004 computes it: ``mean² / variance`` in each non-overlapping ``block``² tile that lies
    wholly inside ``mask``, averaged over the tiles. NaN for a band without such a tile.
    (Intensity: for amplitude pass its square; for dB, ``10**(dB/10)``.)"""
    v = np.asarray(values, dtype=np.float64)
    m = np.broadcast_to(np.asarray(mask, dtype=bool), v.shape)
    c, h, w = v.shape
    hh, ww = h // block, w // block
    out = np.full(c, np.nan)
    if hh == 0 or ww == 0:
        return out
    tiles = v[:, :hh * block, :ww * block].reshape(c, hh, block, ww, block)
    inside = m[:, :hh * block, :ww * block].reshape(c, hh, block, ww, block).all(axis=(2, 4))
    mean = tiles.mean(axis=(2, 4))
    var = tiles.var(axis=(2, 4))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = mean * mean / var
    for b in range(c):
        sel = inside[b] & np.isfinite(ratio[b])
        if sel.any():
            out[b] = float(ratio[b][sel].mean())
    return out


def epi(truth: ArrayLike, pred: ArrayLike, mask: ArrayLike) -> NDArray[np.float64]:
    """Edge preservation index per band (paper 004 eq. 12, after Sattar et al. 1997): the sum
    of absolute horizontal and vertical differences of ``pred`` over pixel pairs inside
    ``mask``, divided by the same sum for ``truth``. 1: as much edge energy as the truth;
    below 1: smoother; above 1: rougher. NaN without a pair inside the mask."""
    t, p, m = _broadcast(truth, pred, mask)
    pair_y = m[..., 1:, :] & m[..., :-1, :]
    pair_x = m[..., :, 1:] & m[..., :, :-1]

    def energy(a: np.ndarray) -> np.ndarray:
        gy = np.where(pair_y, np.abs(np.diff(a, axis=-2)), 0.0)
        gx = np.where(pair_x, np.abs(np.diff(a, axis=-1)), 0.0)
        axes = tuple(i for i in range(a.ndim) if i != a.ndim - 3)
        return gy.sum(axis=axes) + gx.sum(axis=axes)

    with np.errstate(divide="ignore", invalid="ignore"):
        out = energy(p) / energy(t)
    return np.where(np.isfinite(out), out, np.nan)


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
