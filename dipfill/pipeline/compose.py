"""Composing a block (or a whole scene): merged patch values, observed pixels and the QA layer.

The merge arithmetic is :mod:`dipfill.tiling.merge`; this module adds the mask policy
that only the pipeline knows: observed pixels are copied from the input bit-exact,
filled gaps are cast to the input dtype, pixels outside the footprint (and gaps no patch
could fill) get nodata, and the QA layer records which of these happened per pixel.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.pipeline.plan import FillPlan
from dipfill.raster.masks import GAP, OBSERVED, OUTSIDE, QA_CLASSES, QA_ENGINE, QA_FALLBACK, QA_OBSERVED, QA_OUTSIDE, QA_UNFILLED
from dipfill.tiling import InMemoryMerger, PatchWindow, cast_to_dtype

__all__ = ["assemble", "compose_block", "qa_counts", "missing_value"]

#: Merger sources: who fitted a window.
PRIMARY, FALLBACK = 0, 1


def assemble(
    data: NDArray,
    valid: NDArray[np.bool_],
    plan: FillPlan,
    results: Mapping[str, tuple[NDArray, bool]],
    nodata: float | None,
) -> tuple[NDArray, NDArray[np.uint8]]:
    """Blend per-window values (``results[window.id] = (values, from_fallback)``) over the
    whole scene: :func:`compose_block` with one block."""
    return compose_block(data, valid, plan.state, (0, 0), ((w, *results[w.id]) for w in plan.windows),
                         plan.rows, plan.cols, nodata)


def compose_block(
    data: NDArray,
    valid: NDArray[np.bool_],
    state: NDArray[np.uint8],
    origin: tuple[int, int],
    windows: Iterable[tuple[PatchWindow, NDArray, bool]],
    rows: Sequence[int],
    cols: Sequence[int],
    nodata: float | None,
) -> tuple[NDArray, NDArray[np.uint8]]:
    """Blend and composite the block of a scene whose top-left pixel is ``origin`` (row, col).

    ``data``/``valid``/``state`` are the block; ``windows`` yields ``(window, values,
    from_fallback)`` in plan order for the windows that may touch it (scene coordinates;
    parts outside the block are ignored). Observed pixels come from ``data`` bit-exact,
    filled gaps are cast to the input dtype, the rest is nodata; also the QA layer.

    Why blocks: a run blends each Zarr-chunk-sized block in its own task, so each chunk has
    exactly one writer and memory is bounded by the block, whatever the scene's size; per
    pixel the windows are accumulated in the same order, so blocks give the same bytes as
    one whole-scene pass (tested).
    """
    count, height, width = data.shape
    merger = InMemoryMerger(count, PatchWindow(*origin, height, width), rows=rows, cols=cols, sources=2)
    for w, values, fallback in windows:
        merger.aggregate(values, w, source=FALLBACK if fallback else PRIMARY)
    merged = merger.finalize()
    blended, covered = merged.values, merged.covered
    from_engine, from_fallback = merged.weight[PRIMARY], merged.weight[FALLBACK]

    target = ~valid & (state != OUTSIDE)[None]
    out = data.copy()
    fill_here = target & covered
    out[fill_here] = cast_to_dtype(blended[fill_here], data.dtype, nodata)
    missing = missing_value(data.dtype, nodata)
    if missing is not None:
        out[~valid & ~fill_here] = missing

    qa = np.full((height, width), QA_OUTSIDE, dtype=np.uint8)
    qa[state == OBSERVED] = QA_OBSERVED
    gap = state == GAP
    unfilled = (target & ~covered).any(axis=0)
    qa[gap] = np.where(from_fallback[gap] > from_engine[gap], QA_FALLBACK, QA_ENGINE)
    qa[gap & unfilled] = QA_UNFILLED
    return out, qa


def qa_counts(qa: NDArray[np.uint8]) -> dict[str, int]:
    """Pixels per QA class, by class name (what the item's ``dipfill:counts`` records)."""
    return {name: int((qa == code).sum()) for code, (name, _) in QA_CLASSES.items()}


def missing_value(dtype: np.dtype, nodata: float | None) -> float | None:
    """What a pixel without a value holds: ``nodata``, else NaN for floats, else nothing."""
    if nodata is not None:
        return nodata
    if np.issubdtype(dtype, np.floating):
        return float("nan")
    return None


