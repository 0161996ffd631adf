"""When to stop fitting a DIP member, and which iterate to keep.

DIP's quality on gap pixels peaks and then declines as the network starts fitting noise
(DESIGN.md: peak at ~400–600 steps for light nets on a real Landsat crop). Two detectors:

- ``holdout``: hide ~5 % of the observed pixels from the loss, score the output on them
  every k steps, keep each member's best iterate and stop it after ``patience`` checks
  without improvement. The hidden pixels are *shaped like the gaps*: DESIGN.md measured that
  scattered single pixels keep improving long after the stripes stop (interpolating one
  pixel is easier than a 10-px-wide stripe), so they stop far too late (r² 0.47 vs 0.51);
  the gap mask shifted onto observed ground and cut into pieces picked a step 0.017 r² from
  the best. :func:`stripe_holdout` builds that mask.
- ``emv``: ES-EMV (Wang et al., "Early stopping for deep image prior"): the exponential
  moving variance of the output falls while the network learns structure and rises when it
  starts fitting noise; stop after ``patience`` checks without a new minimum and keep the
  iterate at the minimum. Needs no held-out pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = ["stripe_holdout", "MovingVariance"]


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
        lim = min(max_shift, max(h, w) - 1)
        for dy in range(-lim, lim + 1, 2):
            for dx in range(-lim, lim + 1, 2):
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


class MovingVariance:
    """Exponential moving mean and variance of each member's output (ES-EMV).

    ``update(x[M, ...])`` after every step; ``value`` is the per-member mean over pixels of
    the moving variance. ``alpha`` is the weight of the newest output.
    """

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha = alpha
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if self.mean is None:
            self.mean = x.clone()
            self.var = torch.zeros_like(x)
            return
        a = self.alpha
        delta = x - self.mean
        self.mean = self.mean + a * delta
        self.var = (1 - a) * (self.var + a * delta * delta)

    @property
    def value(self) -> torch.Tensor:
        if self.var is None:
            raise RuntimeError("MovingVariance.value before any update")
        return self.var.flatten(1).mean(dim=1)
