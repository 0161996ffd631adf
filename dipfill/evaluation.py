"""Known-truth gap-filling experiments on real data: transplant one date's gaps onto another.

A real SLC-off scene has no truth under its stripes. Paper 002 (ConvNP) gets one by taking
the gap mask of a real SLC-off acquisition and applying it to a scene whose pixels *are*
observed there. We do the same with two dates of the same place: the hidden pixels are those
observed on the truth date but missing on the mask date, so the gap geometry (stripe widths,
spacing, cloud shapes) is real and the answer is known. Pure numpy; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["Transplant", "transplant_gaps"]


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


@dataclass(frozen=True)
class Score:
    """One method on one transplanted tile: per-band metrics over the hidden pixels."""

    method: str
    rmse: NDArray[np.float64]
    r2: NDArray[np.float64]
    psnr: NDArray[np.float64]
    seconds: float
    steps: int


def score_engine(method: str, engine, case: Transplant, *, seed: int = 0, data_range: float = 10000.0) -> Score:
    """Run ``engine`` (any :class:`dipfill.engines.Engine`) on ``case`` and score the hidden pixels.

    ``data_range`` sets PSNR's peak: 10000 for reflectance scaled by 10^4 (ARG25, Landsat C2
    before scaling is different: pass its own range).
    """
    import time

    from dipfill.metrics import psnr, r2, rmse

    start = time.perf_counter()
    result = engine.fill(case.values[None], case.observed[None], seeds=[seed])
    seconds = time.perf_counter() - start
    pred = result.values[0]
    return Score(
        method=method,
        rmse=rmse(case.truth, pred, case.hidden),
        r2=r2(case.truth, pred, case.hidden),
        psnr=psnr(case.truth, pred, case.hidden, data_range=data_range),
        seconds=seconds,
        steps=int(result.diagnostics[0].steps),
    )
