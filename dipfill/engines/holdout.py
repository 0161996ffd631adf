"""Gap-shaped held-out masks: observed pixels hidden from a fit to score it where it matters.

Scattered single held-out pixels are too easy to interpolate: a score on them keeps
improving long after the gaps stop (DESIGN.md). The gap mask shifted onto observed ground
and cut into pieces behaves like the gaps. Used by DIP's early stopping
(:mod:`~dipfill.engines.stopping`) and by the guided judge, which weighs a guide by how well
it predicts such pieces (:mod:`~dipfill.engines.guided_judge`). Numpy only.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["blend_weight", "stripe_holdout"]


def _shifted(mask: NDArray[np.bool_], dy: int, dx: int) -> NDArray[np.bool_]:
    """``mask`` moved by (dy, dx) pixels, zero-filled (no wrap-around)."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def stripe_holdout(
    observed: NDArray[np.bool_],
    fraction: float,
    rng: np.random.Generator,
    *,
    piece: int = 16,
    max_shift: int = 32,
) -> NDArray[np.bool_]:
    """A ``[H, W]`` mask of observed pixels to hold out, shaped like the patch's own gaps.

    The gap mask (``~observed``) is shifted by the offset (|dy|, |dx| <= ``max_shift``,
    at least 4 px) that lands the most gap pixels on observed ground: for SLC-off stripes
    that is about half a stripe period across the stripes. The shifted gaps on observed
    pixels are cut into ``piece``-sized tiles, taken in random order until ``fraction`` of
    the observed pixels is held out. Without usable gaps (none, or all shifts land on
    gaps), random ``piece/2``-sized blobs are used instead.
    """
    observed = np.asarray(observed, dtype=bool)
    h, w = observed.shape
    want = int(round(fraction * observed.sum()))
    if want <= 0:
        return np.zeros_like(observed)
    gap = ~observed
    candidate = np.zeros_like(observed)
    if gap.any():
        best = 0
        # each axis shifts by less than its own length (a 3 x 700 edge patch shifts
        # along its width only)
        lim_y, lim_x = min(max_shift, h - 1), min(max_shift, w - 1)
        for dy in range(-lim_y, lim_y + 1, 2):
            for dx in range(-lim_x, lim_x + 1, 2):
                if abs(dy) + abs(dx) < 4:
                    continue
                hit = _shifted(gap, dy, dx) & observed
                n = int(hit.sum())
                if n > best:
                    best, candidate = n, hit
    if candidate.sum() < want // 2:
        candidate = _blobs(observed, max(piece // 2, 1), rng)
    tiles = [(y, x) for y in range(0, h, piece) for x in range(0, w, piece)]
    out = np.zeros_like(observed)
    taken = 0
    for i in rng.permutation(len(tiles)):
        y, x = tiles[i]
        part = candidate[y : y + piece, x : x + piece]
        out[y : y + piece, x : x + piece] |= part
        taken += int(part.sum())
        if taken >= want:
            break
    return out


def _blobs(observed: NDArray[np.bool_], size: int, rng: np.random.Generator) -> NDArray[np.bool_]:
    """Observed pixels under a random half of a ``size`` grid of squares (fallback shape)."""
    h, w = observed.shape
    cells = rng.random((-(-h // size), -(-w // size))) < 0.5
    return np.kron(cells, np.ones((size, size), dtype=bool))[:h, :w] & observed


def blend_weight(
    truth: NDArray, guided: NDArray, spatial: NDArray, blocks: NDArray | None = None
) -> tuple[float, float]:
    """The ``w`` in [0, 1] minimising Σ (truth − w·guided − (1 − w)·spatial)², and its
    delete-one-block jackknife standard error over ``blocks`` (one label per pixel; None:
    every pixel its own block).

    With ``es = truth − spatial`` and ``d = guided − spatial`` the error is ``es − w·d``, so
    ``w = Σ es·d / Σ d²``, clipped; 0 (and se 0) when the two predictions agree everywhere.
    """
    es = np.asarray(truth, np.float64) - np.asarray(spatial, np.float64)
    d = np.asarray(guided, np.float64) - np.asarray(spatial, np.float64)
    labels = np.arange(es.size) if blocks is None else np.unique(np.asarray(blocks), return_inverse=True)[1]
    a, b = np.bincount(labels, es * d), np.bincount(labels, d * d)
    total_a, total_b = float(a.sum()), float(b.sum())
    if not total_b > 0:
        return 0.0, 0.0
    w = float(np.clip(total_a / total_b, 0.0, 1.0))
    n = a.size
    if n < 3:
        return w, 1.0  # no spread to measure: as uncertain as a weight can be
    with np.errstate(invalid="ignore", divide="ignore"):
        wj = np.clip((total_a - a) / (total_b - b), 0.0, 1.0)
    wj = np.where(np.isfinite(wj), wj, w)
    return w, float(np.sqrt((n - 1) / n * np.sum((wj - wj.mean()) ** 2)))
