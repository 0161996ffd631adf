"""SAR anonymisation math (paper 004): units ↔ dB, speckle statistics, coarse-to-fine pieces.

Numpy and scipy.ndimage on in-memory arrays; the pipeline (:mod:`dipfill.pipeline.anonymise`)
wires them around the fill engines.

Why dB: paper 004 fits its DIP on the log of the amplitude, normalised to about [-1, 1].
In dB fully developed speckle is additive with a known, signal-independent distribution
(the log of a Gamma(L, 1/L) intensity), so a network's smooth prior and an additive
speckle model both make sense there; in linear units speckle is multiplicative and its
variance follows the signal. Everything here works in ``dB = 10·log10(intensity)``, with
intensity = amplitude² for amplitude data (Sentinel-1 GRD DN are amplitudes).

Coarse-to-fine (why this and not concentric patch order): a region wider than a patch has
patches with no observed pixel, which no per-patch fit can fill. Block-averaging the
observed dB values by a factor ``f`` shrinks the region until a coarse patch holds it with
its surroundings, so the engine sees the *whole* region in context at once and fills its
local mean (the large-scale structure: fields, slopes, the brightness of the surroundings).
The full-resolution content is then that upsampled mean plus synthetic speckle whose
equivalent number of looks (ENL) is estimated from a ring of observed pixels around the
region, so the filled area has the surroundings' radiometric texture and nothing else. Near
the region's edge, where full-resolution patches do have context, the engine's own
full-resolution fill takes over (:func:`edge_weight`), so edges and textures continue
across the boundary. Concentric patch order would feed the engine's own output forward as
"observed" context, compounding its errors ring after ring over hundreds of pixels, and
would serialise the patches; coarse-to-fine costs one extra (small) fill and keeps the
patches independent.

Limits, stated: the synthetic speckle's ENL and pixel-to-pixel correlation (GRD speckle is
correlated by the processor's oversampling) are one number each per band, measured in the
ring, and it is log-Gamma only before that smoothing (Gaussian-ish after), so
heterogeneous texture inside the region comes only from the coarse mean and the engine
near the edge.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["UNITS", "Units", "detect_units", "to_db", "from_db", "local_enl", "estimate_enl", "speckle_db",
           "block_average", "upsample", "coarse_factor", "edge_weight", "ring", "lag1_correlation",
           "correlated_speckle"]

Units = Literal["db", "linear-amplitude", "linear-power"]
UNITS: tuple[str, ...] = ("db", "linear-amplitude", "linear-power")

#: dB written for a linear value <= 0 (log of zero): far below any Sentinel-1 backscatter
DB_FLOOR = -60.0


def detect_units(dtype: np.dtype, sample: NDArray) -> tuple[Units, str]:
    """Guess the units of a SAR band from its dtype and the range of ``sample`` (observed
    pixels *outside* the region only, so the decision leaks nothing from inside it).

    Integer data are amplitude DN (Sentinel-1 GRD: uint16 amplitude). Floats with negative
    values or a median below 0 are dB (σ⁰ in dB lies around -25…+5); non-negative floats are
    linear power (σ⁰ around 0.001…1) unless their median exceeds 1.5, which only amplitude
    reaches. Returns the units and the reason, which the caller logs and records."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return "linear-amplitude", f"integer dtype {dtype.name}: amplitude DN (as Sentinel-1 GRD)"
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return "db", "no finite sample: dB assumed"
    lo, med = float(finite.min()), float(np.median(finite))
    if lo < 0 or med < 0:
        return "db", f"float values down to {lo:.3g} (median {med:.3g}): σ⁰ in dB"
    if med > 1.5:
        return "linear-amplitude", f"non-negative floats, median {med:.3g} > 1.5: linear amplitude"
    return "linear-power", f"non-negative floats, median {med:.3g} <= 1.5: linear power (σ⁰)"


def to_db(values: NDArray, units: Units) -> NDArray[np.float64]:
    """``10·log10(intensity)`` of ``values`` in ``units`` (values <= 0 give :data:`DB_FLOOR`)."""
    x = np.asarray(values, dtype=np.float64)
    if units == "db":
        return x.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        db = (20.0 if units == "linear-amplitude" else 10.0) * np.log10(x)
    return np.where(x > 0, db, DB_FLOOR)


def from_db(db: NDArray, units: Units, dtype: np.dtype) -> NDArray:
    """``db`` back in ``units`` and ``dtype``: integers rounded and clipped to the dtype's
    range (0 stays out: a DN of 0 is Sentinel-1's nodata, so the smallest written is 1)."""
    d = np.asarray(db, dtype=np.float64)
    if units == "db":
        x = d
    else:
        x = 10.0 ** (d / (20.0 if units == "linear-amplitude" else 10.0))
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lo = max(info.min, 1) if units != "db" else info.min
        return np.clip(np.rint(np.where(np.isfinite(x), x, lo)), lo, info.max).astype(dtype)
    return x.astype(dtype)


def _box_mean(a: NDArray[np.float64], size: int) -> NDArray[np.float64]:
    from scipy.ndimage import uniform_filter

    return uniform_filter(a, size=size, mode="constant", cval=0.0)


def local_enl(db: NDArray, usable: NDArray[np.bool_], *, window: int = 7) -> NDArray[np.float64]:
    """ENL ``mean² / variance`` of linear intensity in ``window``² boxes of a 2-D dB band,
    at every pixel whose whole box is usable (NaN elsewhere)."""
    inten = np.where(usable, 10.0 ** (np.asarray(db, dtype=np.float64) / 10.0), 0.0)
    full = _box_mean(usable.astype(np.float64), window) > 1 - 1e-9
    m1 = _box_mean(inten, window)
    m2 = _box_mean(inten * inten, window)
    var = m2 - m1 * m1
    with np.errstate(divide="ignore", invalid="ignore"):
        enl = np.where(full & (var > 0), m1 * m1 / var, np.nan)
    return enl


def estimate_enl(db: NDArray, usable: NDArray[np.bool_], *, window: int = 15, default: float = 4.4) -> float:
    """The band's ENL: the median of :func:`local_enl` in ``window``² boxes over ``usable``
    (the ring around the region). Boxes on edges or texture have a low ENL and homogeneous
    ones the speckle's, so the median sits between: the synthetic content, a smooth mean
    plus speckle of this ENL, is as rough at that scale as its surroundings (texture the
    coarse mean cannot carry is folded into the speckle). 15 px: on the GRD fixture the
    ring's median 15² ENL (8.5) is close to paper 004's 25² tile ENL of the ring (9.2-10.2)
    while 15 px still fits a 16 px ring. ``default`` (Sentinel-1 IW GRD's nominal ENL, 4.4) when no window fits."""
    enl = local_enl(db, usable, window=window)
    vals = enl[np.isfinite(enl)]
    return float(np.median(vals)) if vals.size >= 16 else default


def speckle_db(shape: tuple[int, ...], enl: float, rng: np.random.Generator) -> NDArray[np.float64]:
    """Zero-mean speckle in dB: ``10·log10(G) − E[10·log10(G)]`` with ``G ~ Gamma(L, 1/L)``
    (unit-mean L-look intensity), so adding it to a dB local mean keeps that mean."""
    L = max(float(enl), 0.5)
    g = rng.gamma(L, 1.0 / L, size=shape)
    from scipy.special import digamma

    bias = 10.0 / math.log(10.0) * (float(digamma(L)) - math.log(L))
    return 10.0 * np.log10(np.maximum(g, 1e-30)) - bias


def lag1_correlation(db: NDArray, usable: NDArray[np.bool_]) -> float:
    """Correlation of neighbouring pixels' dB residuals (the value minus its 5×5 mean) over
    ``usable``, horizontal and vertical averaged: how smooth the speckle is at the pixel.
    Sentinel-1 GRD and BigEarthNet resampled to 10 m have clearly positive values (the
    processor's oversampling); white speckle has about 0."""
    x = np.where(usable, np.asarray(db, dtype=np.float64), 0.0)
    n = _box_mean(usable.astype(np.float64), 5)
    with np.errstate(divide="ignore", invalid="ignore"):
        res = np.where(usable & (n > 0), x - _box_mean(x, 5) / n, 0.0)
    values = []
    for a, b, ok in ((res[:, :-1], res[:, 1:], usable[:, :-1] & usable[:, 1:]),
                     (res[:-1], res[1:], usable[:-1] & usable[1:])):
        if ok.sum() > 64:
            values.append(float(np.corrcoef(a[ok], b[ok])[0, 1]))
    return float(np.nanmean(values)) if values else 0.0


_RHO_GRID = np.linspace(0.05, 0.95, 19)


def _smoothed(s: NDArray[np.float64], rho: float) -> NDArray[np.float64]:
    """``s`` smoothed by the Gaussian whose white-noise lag-1 autocorrelation is ``rho``
    (``exp(-1 / (4σ²))``), rescaled to ``s``'s standard deviation."""
    from scipy.ndimage import gaussian_filter

    sigma = math.sqrt(-1.0 / (4.0 * math.log(rho)))
    smooth = gaussian_filter(s, sigma, mode="reflect")
    sd = smooth.std()
    return (smooth - smooth.mean()) * (s.std() / sd) if sd > 0 else s


def _calibration() -> NDArray[np.float64]:
    """:func:`lag1_correlation` (a residual measure, lower than the raw autocorrelation) of
    speckle smoothed for each raw value of ``_RHO_GRID``; fixed seed, so deterministic."""
    white = np.random.default_rng(0).standard_normal((160, 160))
    ones = np.ones(white.shape, dtype=bool)
    return np.array([lag1_correlation(_smoothed(white, r), ones) for r in _RHO_GRID])


def correlated_speckle(shape: tuple[int, int], enl: float, rho: float, rng: np.random.Generator
                       ) -> NDArray[np.float64]:
    """:func:`speckle_db` smoothed so that its :func:`lag1_correlation` is ``rho`` (as measured
    in the ring) and rescaled to its unsmoothed standard deviation: the surroundings'
    roughness (ENL) *and* pixel-to-pixel smoothness (what EPI measures)."""
    s = speckle_db(shape, enl, rng)
    table = _calibration()
    if rho <= table[0] or min(shape) < 3:
        return s
    return _smoothed(s, float(np.interp(rho, table, _RHO_GRID)))


def coarse_factor(region: NDArray[np.bool_], patch: int) -> int:
    """Smallest block factor that shrinks the region's bounding box to at most half a patch,
    so one coarse patch holds the whole region with as much context around it (1: no
    coarsening needed)."""
    rows, cols = np.nonzero(region)
    if rows.size == 0:
        return 1
    extent = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    return max(1, math.ceil(extent / max(patch // 2, 1)))


def block_average(values: NDArray, usable: NDArray[np.bool_], f: int, *, min_fraction: float = 0.5
                  ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Mean of the usable pixels of each ``f``×``f`` block of ``[C, H, W]`` (the edge blocks
    partial); a block is observed when at least ``min_fraction`` of its pixels are usable.
    Returns the coarse ``[C, ceil(H/f), ceil(W/f)]`` values (0 where not observed) and mask."""
    c, h, w = values.shape
    hh, ww = -(-h // f), -(-w // f)
    pad = ((0, 0), (0, hh * f - h), (0, ww * f - w))
    v = np.pad(np.where(usable, values, 0.0).astype(np.float64), pad).reshape(c, hh, f, ww, f)
    n = np.pad(usable.astype(np.float64), pad).reshape(c, hh, f, ww, f).sum(axis=(2, 4))
    inside = np.pad(np.ones((h, w)), pad[1:]).reshape(hh, f, ww, f).sum(axis=(1, 3))
    ok = n >= min_fraction * inside[None]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(ok, v.sum(axis=(2, 4)) / np.maximum(n, 1), 0.0)
    return mean, ok


def upsample(coarse: NDArray, f: int, shape: tuple[int, int]) -> NDArray[np.float64]:
    """Bilinear upsampling of ``[C, h, w]`` block means by ``f`` onto ``shape`` (block
    centres on the fine grid's block centres; clamped at the edges)."""
    from scipy.ndimage import map_coordinates

    h, w = shape
    ys = (np.arange(h) + 0.5) / f - 0.5
    xs = (np.arange(w) + 0.5) / f - 0.5
    yy, xx = np.meshgrid(np.clip(ys, 0, coarse.shape[1] - 1), np.clip(xs, 0, coarse.shape[2] - 1), indexing="ij")
    return np.stack([map_coordinates(np.asarray(b, dtype=np.float64), [yy, xx], order=1, mode="nearest")
                     for b in coarse])


def edge_weight(region: NDArray[np.bool_], reach: float) -> NDArray[np.float64]:
    """Weight of the full-resolution engine fill inside ``region``: 1 up to ``reach / 2``
    pixels from the nearest pixel outside it, falling linearly to 0 at ``reach`` (the
    coarse-to-fine content alone deeper in). 0 outside the region."""
    from scipy.ndimage import distance_transform_edt

    dist = distance_transform_edt(region)
    half = reach / 2.0
    return np.where(region, np.clip((reach - dist) / max(half, 1e-9), 0.0, 1.0), 0.0)


def ring(region: NDArray[np.bool_], usable: NDArray[np.bool_], width: int) -> NDArray[np.bool_]:
    """Usable pixels within ``width`` pixels of the region (the surroundings whose
    statistics the synthetic content copies); all usable pixels when that ring is empty."""
    from scipy.ndimage import distance_transform_edt

    near = (distance_transform_edt(~region) <= max(width, 1)) & ~region & usable
    return near if near.sum() >= 64 else usable & ~region
