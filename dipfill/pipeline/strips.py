"""Blending a run's scene in chunk-aligned strips, each in its own task.

After the engine workers have filled the scene's patch store, the scene is cut into
full-width strips of :data:`~dipfill.pipeline.write.MOSAIC_CHUNK` rows. Each strip task
reads its rows of the source, the fitted values of the windows that touch them, blends and
composites (:func:`~dipfill.pipeline.fill.compose_rows`), and writes its rows of the Zarr
mosaic: every Zarr chunk has exactly one writer, and no process ever holds more than a
strip of the scene. The driver only collects QA counts and preview rows for the quicklook.

No Ray here: the tasks are plain picklable descriptions run by whichever pool the run uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.pipeline.fill import FillPlan, compose_rows, qa_counts
from dipfill.pipeline.patchstore import PatchStore
from dipfill.pipeline.read import data_validity
from dipfill.pipeline.write import Preview, write_mosaic_rows
from dipfill.tiling import PatchWindow

__all__ = ["StripTask", "StripResult", "strip_tasks", "blend_strip"]


@dataclass(frozen=True)
class StripTask:
    """Rows ``row0 .. row1`` of one scene: what to blend and where to write it."""

    scene_key: str
    source: Any  # dipfill.pipeline.scene.SceneSource
    store_path: str
    mosaic_path: str
    row0: int
    row1: int
    state: NDArray[np.uint8]  # the plan's three-state mask for these rows
    windows: tuple[tuple[PatchWindow, int, bool], ...]  # (window, store index, from fallback), plan order
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    nodata: float | None
    preview_step: int


@dataclass(frozen=True)
class StripResult:
    row0: int
    counts: dict[str, int]
    preview: Preview


def strip_tasks(scene_key: str, source: Any, plan: FillPlan, store_path: str, mosaic_path: str,
                nodata: float | None, strip_rows: int, *, max_preview: int = 1024) -> list[StripTask]:
    """One task per ``strip_rows`` rows (a multiple of the mosaic chunk height); previews
    of at most ``max_preview`` pixels a side."""
    index = {w.id: i for i, w in enumerate(plan.windows)}
    placed = [(w, index[w.id], b.fallback) for b in plan.batches for w in b.windows]
    _, height, _ = plan.shape
    step = Preview.step_for(plan.state.shape, max_preview)
    tasks = []
    for row0 in range(0, height, strip_rows):
        row1 = min(row0 + strip_rows, height)
        touching = tuple(p for p in placed if p[0].row_off < row1 and p[0].row_off + p[0].height > row0)
        tasks.append(StripTask(scene_key, source, store_path, mosaic_path, row0, row1,
                               np.ascontiguousarray(plan.state[row0:row1]), touching, plan.rows, plan.cols,
                               nodata, step))
    return tasks


def blend_strip(task: StripTask) -> StripResult:
    """Blend, composite and write one strip; returns its QA counts and preview rows."""
    width = task.state.shape[1]
    data, valid = task.source.read_pixels(((task.row0, task.row1), (0, width)))
    store = PatchStore(task.store_path)
    values = ((w, store.read(i, w.height, w.width), fallback) for w, i, fallback in task.windows)
    out, qa = compose_rows(data, valid, task.state, task.row0, values, task.rows, task.cols, task.nodata)
    write_mosaic_rows(task.mosaic_path, task.row0, out, qa)
    preview = Preview.of_rows(data, out, valid, data_validity(out, task.nodata), task.row0, task.preview_step)
    return StripResult(task.row0, qa_counts(qa), preview)


def merge_counts(parts: Sequence[dict[str, int]]) -> dict[str, int]:
    """Sum per-strip QA counts."""
    total: dict[str, int] = {}
    for part in parts:
        for k, v in part.items():
            total[k] = total.get(k, 0) + v
    return total
