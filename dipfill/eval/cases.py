"""Known-truth gap-filling experiments on real data: transplant one date's gaps onto another.

A real SLC-off scene has no truth under its stripes. Paper 002 (ConvNP) gets one by taking
the gap mask of a real SLC-off acquisition and applying it to a scene whose pixels *are*
observed there. We do the same with two dates of the same place: the hidden pixels are those
observed on the truth date but missing on the mask date, so the gap geometry (stripe widths,
spacing, cloud shapes) is real and the answer is known.

Also here: scoring a prediction over the hidden pixels (:func:`score_prediction`; over
several tiles at once, :func:`pooled_scores`) and choosing representative tiles of a scene
for such an experiment (:func:`pick_tiles`). Pure numpy/scipy; no I/O (``dipfill eval`` in
:mod:`dipfill.eval.experiments` does the reading, running and writing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.stretch import unit_stretch

__all__ = [
    "Transplant",
    "transplant_gaps",
    "shift_gaps",
    "composite",
    "score_prediction",
    "pooled_scores",
    "TileStats",
    "TileChoice",
    "tile_stats",
    "candidate_windows",
    "pick_tiles",
]


@dataclass(frozen=True)
class Transplant:
    """Inputs for a method and the pixels it is scored on (all ``[C, H, W]``).

    ``values`` holds the truth where ``observed`` and 0 elsewhere (what a method may see);
    ``hidden`` marks the truth pixels the method must reconstruct; ``truth`` is untouched.
    """

    truth: NDArray
    values: NDArray[np.float32]
    observed: NDArray[np.bool_]
    hidden: NDArray[np.bool_]


def transplant_gaps(
    truth: NDArray, truth_valid: NDArray[np.bool_], donor_valid: NDArray[np.bool_]
) -> Transplant:
    """Hide the pixels that ``donor_valid`` lacks from ``truth``.

    ``truth_valid`` / ``donor_valid`` are per-band validity of the truth date and of the
    date that donates its gaps. Pixels invalid in the truth are neither seen nor scored.
    """
    truth_valid = np.asarray(truth_valid, dtype=bool)
    donor_valid = np.asarray(donor_valid, dtype=bool)
    if not truth.shape == truth_valid.shape == donor_valid.shape:
        raise ValueError(
            f"truth {truth.shape}, truth validity {truth_valid.shape} and donor validity "
            f"{donor_valid.shape} differ in shape"
        )
    observed = truth_valid & donor_valid
    hidden = truth_valid & ~donor_valid
    values = np.where(observed, truth, 0).astype(np.float32)
    return Transplant(truth=truth, values=values, observed=observed, hidden=hidden)


def shift_gaps(valid: NDArray[np.bool_], rows: int) -> NDArray[np.bool_]:
    """``valid`` (``[..., H, W]``) with its gaps moved down ``rows`` rows (``--shift-mask``).

    Row ``r`` takes the validity of row ``r - rows``; the top ``rows`` rows, which no gap
    moves into, count as valid (nothing hidden there); gaps moved past the bottom are dropped.
    """
    valid = np.asarray(valid, dtype=bool)
    if rows == 0:
        return valid
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    out = np.ones_like(valid)
    if rows < valid.shape[-2]:
        out[..., rows:, :] = valid[..., : valid.shape[-2] - rows, :]
    return out


def composite(case: Transplant, pred: NDArray) -> NDArray[np.float64]:
    """What a fill would deliver: the truth where observed, ``pred`` elsewhere (float64).

    The pipeline always copies observed pixels back, so this is the image to judge; at
    the hidden pixels it equals ``pred``.
    """
    return np.where(case.observed, np.asarray(case.truth, dtype=np.float64), np.asarray(pred, dtype=np.float64))


SSIM_PERCENTILES = (1.0, 99.0)


def score_prediction(
    case: Transplant, pred: NDArray, *, data_range: float = 10000.0, truth_valid: NDArray[np.bool_] | None = None
) -> dict[str, NDArray]:
    """Per-band metrics of ``pred [C, H, W]`` over ``case.hidden``.

    ``rmse``, ``r2`` and ``psnr`` (peak ``data_range``) compare the hidden pixels directly.
    ``ssim`` is :func:`dipfill.eval.metrics.ssim` with ``data_range=1`` on the composite
    (:func:`composite`: truth where observed, ``pred`` in the gaps) against the truth, both
    stretched per band by :func:`~dipfill.stretch.unit_stretch` from the truth's valid
    pixels' 1st/99th percentiles; pixels without truth (``truth_valid`` False; default: observed or hidden)
    are left out of every window. ``hidden`` is the number of scored pixels per band.
    """
    from dipfill.eval.metrics import psnr, r2, rmse, ssim

    if truth_valid is None:
        truth_valid = case.observed | case.hidden
    truth = np.asarray(case.truth, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    full = composite(case, p)
    t_s = np.where(truth_valid, unit_stretch(truth, truth, truth_valid, SSIM_PERCENTILES), np.nan)
    p_s = np.where(truth_valid, unit_stretch(full, truth, truth_valid, SSIM_PERCENTILES), np.nan)
    return {
        "rmse": rmse(truth, p, case.hidden),
        "r2": r2(truth, p, case.hidden),
        "psnr": psnr(truth, p, case.hidden, data_range=data_range),
        "ssim": ssim(t_s, p_s, case.hidden, data_range=1.0),
        "hidden": case.hidden.reshape(case.hidden.shape[0], -1).sum(axis=1),
    }


def pooled_scores(
    cases: Sequence[Transplant], preds: Sequence[NDArray], ssims: Sequence[NDArray], *, data_range: float
) -> dict[str, NDArray[np.float64]]:
    """Per-band metrics over the hidden pixels of all tiles together.

    ``ssims`` are the tiles' SSIM results from :func:`score_prediction`. RMSE and PSNR pool
    the squared errors of every hidden pixel. r² is ``1 - Σ_tiles SS_res / Σ_tiles SS_tot``
    with each tile's SS_tot taken about that tile's own hidden-truth mean, so differences
    *between* tiles (which any per-tile constant gets right) do not inflate it; with one
    tile it is the plain r². SSIM is the mean of the SSIM maps over all hidden pixels: the
    tiles' means weighted by their hidden-pixel counts, NaN if any tile's is.
    """
    from dipfill.eval.metrics import psnr, rmse

    truth = np.stack([np.asarray(c.truth, dtype=np.float64) for c in cases])
    hidden = np.stack([c.hidden for c in cases])
    pred = np.stack([np.asarray(p, dtype=np.float64) for p in preds])
    counts = hidden.sum(axis=(0, 2, 3)).astype(np.float64)
    per_tile_counts = hidden.sum(axis=(2, 3)).astype(np.float64)  # [T, C]
    with np.errstate(invalid="ignore", divide="ignore"):
        ssim = np.nansum(np.stack(ssims) * per_tile_counts, axis=0) / counts
        tile_mean = np.where(hidden, truth, 0.0).sum(axis=(2, 3)) / per_tile_counts
        dev = np.where(hidden, truth - tile_mean[:, :, None, None], 0.0)
        err = np.where(hidden, truth - pred, 0.0)
        sst = (dev * dev).sum(axis=(0, 2, 3))
        r2_pooled = 1.0 - (err * err).sum(axis=(0, 2, 3)) / sst
    r2_pooled[~(sst > 0)] = np.nan
    ssim[np.isnan(np.stack(ssims)).any(axis=0) | (counts == 0)] = np.nan
    return {
        "rmse": rmse(truth, pred, hidden),
        "r2": r2_pooled,
        "psnr": psnr(truth, pred, hidden, data_range=data_range),
        "ssim": ssim,
    }


@dataclass(frozen=True)
class Score:
    """One method on one transplanted tile: per-band metrics over the hidden pixels."""

    method: str
    rmse: NDArray[np.float64]
    r2: NDArray[np.float64]
    psnr: NDArray[np.float64]
    seconds: float
    steps: int
    ssim: NDArray[np.float64] | None = None
    cpu_seconds: float = float("nan")


def score_engine(method: str, engine, case: Transplant, *, seed: int = 0, data_range: float = 10000.0) -> Score:
    """Run ``engine`` (any :class:`dipfill.engines.Engine`) on ``case`` and score the hidden pixels.

    ``data_range`` sets PSNR's peak: 10000 for reflectance scaled by 10^4 (ARG25, Landsat C2
    before scaling is different: pass its own range).
    """
    import time

    start, cpu = time.perf_counter(), time.process_time()
    result = engine.fill(case.values[None], case.observed[None], seeds=[seed])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    scores = score_prediction(case, result.values[0], data_range=data_range)
    return Score(
        method=method,
        rmse=scores["rmse"],
        r2=scores["r2"],
        psnr=scores["psnr"],
        seconds=seconds,
        steps=int(result.diagnostics[0].steps),
        ssim=scores["ssim"],
        cpu_seconds=cpu,
    )


# ---------------------------------------------------------------------------------------
# Choosing tiles

HIDDEN_RANGE = (0.05, 0.40)
MAX_TRUTH_NODATA = 0.40
TARGET_HIDDEN = 0.20


@dataclass(frozen=True)
class TileStats:
    """Fractions of one square window's pixels (a pixel counts when any band qualifies)."""

    hidden: float  # observed on the truth date, missing on the donor date: scored
    truth_nodata: float  # missing on the truth date: neither seen nor scored
    observed: float  # valid on both dates: what a method sees


@dataclass(frozen=True)
class TileChoice:
    row: int
    col: int
    size: int
    stats: tuple[TileStats, ...]  # one per direction
    reason: str


def _any_band(a: NDArray[np.bool_]) -> NDArray[np.bool_]:
    a = np.asarray(a, dtype=bool)
    return a.any(axis=0) if a.ndim == 3 else a


def tile_stats(
    truth_valid: NDArray[np.bool_], donor_valid: NDArray[np.bool_], row: int, col: int, size: int
) -> TileStats:
    """Hidden, truth-nodata and observed fractions of the window at ``row, col``."""
    win = (Ellipsis, slice(row, row + size), slice(col, col + size))
    tv = np.asarray(truth_valid, dtype=bool)[win]
    dv = np.asarray(donor_valid, dtype=bool)[win]
    return TileStats(
        hidden=float(_any_band(tv & ~dv).mean()),
        truth_nodata=float(_any_band(~tv).mean()),
        observed=float((~_any_band(~(tv & dv))).mean()),
    )


def _positions(n: int, size: int, stride: int) -> list[int]:
    pos = list(range(0, n - size + 1, stride))
    if pos[-1] != n - size:
        pos.append(n - size)
    return pos


def candidate_windows(shape: tuple[int, int], size: int) -> list[tuple[int, int]]:
    """Top-left corners of ``size`` squares at half-tile steps, the last on each axis snapped inside."""
    height, width = shape
    if size > height or size > width:
        raise ValueError(f"tile size {size} does not fit a {width}x{height} raster")
    stride = max(1, size // 2)
    return [(r, c) for r in _positions(height, size, stride) for c in _positions(width, size, stride)]


def pick_tiles(
    directions: Sequence[tuple[NDArray[np.bool_], NDArray[np.bool_]]],
    size: int,
    n: int = 3,
    *,
    hidden_range: tuple[float, float] = HIDDEN_RANGE,
    max_truth_nodata: float = MAX_TRUTH_NODATA,
) -> tuple[list[TileChoice], int, int]:
    """Choose up to ``n`` non-overlapping representative windows; deterministic.

    ``directions`` holds ``(truth_valid, donor_valid)`` per direction (``[C, H, W]`` or
    ``[H, W]``). A candidate (half-tile steps over the raster) is *eligible* when, in every
    direction, its hidden fraction lies in ``hidden_range`` and its truth nodata is at most
    ``max_truth_nodata``. The eligible candidates are ordered along the raster's longer axis
    and cut into ``n`` consecutive groups, so the picks spread over the whole eligible area;
    each group gives its best candidate not overlapping an earlier pick: least truth nodata
    (worst direction), then hidden fraction nearest 20 %, then position. Groups left
    without a pick are made up from the remaining eligible candidates in the same order.

    Returns the choices (in pick order), the number of eligible and of all candidates.
    """
    shape = np.asarray(directions[0][0]).shape[-2:]
    cands = candidate_windows(shape, size)
    stats = {rc: tuple(tile_stats(tv, dv, *rc, size) for tv, dv in directions) for rc in cands}
    lo, hi = hidden_range

    def ok(st: tuple[TileStats, ...]) -> bool:
        return all(lo <= s.hidden <= hi and s.truth_nodata <= max_truth_nodata for s in st)

    def key(rc: tuple[int, int]) -> tuple:
        st = stats[rc]
        return (
            round(max(s.truth_nodata for s in st), 4),
            round(max(abs(s.hidden - TARGET_HIDDEN) for s in st), 4),
            rc,
        )

    eligible = [rc for rc in cands if ok(stats[rc])]
    long_axis = 1 if shape[1] >= shape[0] else 0
    eligible.sort(key=lambda rc: (rc[long_axis], rc[1 - long_axis]))
    groups = [list(g) for g in np.array_split(np.arange(len(eligible)), max(n, 1))] if eligible else []
    chosen: list[tuple[int, int]] = []
    reasons: list[str] = []

    def free(rc: tuple[int, int]) -> bool:
        return all(abs(rc[0] - r) >= size or abs(rc[1] - c) >= size for r, c in chosen)

    axis_name = "columns" if long_axis == 1 else "rows"
    for gi, idx in enumerate(groups):
        members = [eligible[i] for i in idx]
        options = sorted((rc for rc in members if free(rc)), key=key)
        if not options:
            continue
        span = (min(rc[long_axis] for rc in members), max(rc[long_axis] for rc in members) + size)
        chosen.append(options[0])
        reasons.append(
            f"auto: least truth nodata (then hidden fraction nearest {TARGET_HIDDEN:.0%}) among the "
            f"{len(members)} eligible windows of group {gi + 1}/{len(groups)} ({axis_name} {span[0]}-{span[1]})"
        )
    for rc in sorted(eligible, key=key):
        if len(chosen) >= n:
            break
        if free(rc) and rc not in chosen:
            chosen.append(rc)
            reasons.append("auto: best remaining eligible window (its group had no free window)")
    return (
        [TileChoice(r, c, size, stats[(r, c)], why) for (r, c), why in zip(chosen[:n], reasons[:n])],
        len(eligible),
        len(cands),
    )
