"""Planning: which windows need an engine, which engine, in which batches, with which seeds.

Everything decided before any engine runs, from one byte per pixel of the scene (the
three-state mask and the count of observed bands), so a run can plan a full scene
without holding its bands. Batches are cut from the whole plan in a fixed order and
seeds come from the window, not the batch: a resumed run refits exactly the batches an
uninterrupted run would, with the same seeds, and gives the same bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.raster.masks import GAP, three_state
from dipfill.specs import FillOptions
from dipfill.tiling import PatchWindow, axis_starts, plan_windows, windows_with_gaps

__all__ = ["Batch", "FillPlan", "patch_seed", "plan_fill", "plan_from_mask", "batch_inputs", "row_unions"]


def patch_seed(seed: int, win: PatchWindow) -> int:
    """Per-patch seed from the run seed and the window: independent of batching order."""
    digest = hashlib.sha256(f"{seed}:{win.id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class Batch:
    """Windows fitted together by one engine call. Batches are cut from the whole plan in a
    fixed order, so a resumed run refits exactly the batches an uninterrupted run would."""

    index: int
    fallback: bool  # True: the fallback engine (too few observed pixels for the primary)
    windows: tuple[PatchWindow, ...]


@dataclass(frozen=True)
class FillPlan:
    """Where to fit and how results are blended: everything decided before any engine runs."""

    shape: tuple[int, int, int]  # bands, y, x
    state: NDArray[np.uint8]  # three-state mask (one byte per pixel)
    windows_total: int
    batches: tuple[Batch, ...]
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @property
    def windows(self) -> list[PatchWindow]:
        return [w for b in self.batches for w in b.windows]


def plan_fill(valid: NDArray[np.bool_], footprint: NDArray[np.bool_], options: FillOptions, *,
              with_fallback: bool = True) -> FillPlan:
    """:func:`plan_from_mask` for a scene held in memory (per-band validity and footprint)."""
    return plan_from_mask(three_state(valid, footprint), valid.sum(axis=0, dtype=np.uint8), valid.shape[0],
                          options, with_fallback=with_fallback)


def plan_from_mask(state: NDArray[np.uint8], nvalid: NDArray[np.uint8], bands: int, options: FillOptions, *,
                   with_fallback: bool = True) -> FillPlan:
    """Windows with gaps, split between the primary engine and the fallback (patches with
    fewer than ``min_observed_fraction`` observed band-pixels), cut into batches.

    Needs only one byte per pixel of each of ``state`` and ``nvalid`` (observed bands per
    pixel), so a run can plan a full scene without holding its bands.
    """
    height, width = state.shape
    windows = plan_windows(height, width, size=options.patch, overlap=options.overlap)
    primary: list[PatchWindow] = []
    weak: list[PatchWindow] = []
    for w in windows_with_gaps(windows, _IsGap(state)):
        observed = nvalid[w.slices].sum(dtype=np.int64) / (bands * w.height * w.width)
        (primary if not with_fallback or observed >= options.min_observed_fraction else weak).append(w)
    batches = []
    for is_fallback, group in ((False, primary), (True, weak)):
        for i in range(0, len(group), options.batch_size):
            batches.append(Batch(len(batches), is_fallback, tuple(group[i : i + options.batch_size])))
    return FillPlan(
        shape=(bands, height, width),
        state=state,
        windows_total=len(windows),
        batches=tuple(batches),
        rows=tuple(axis_starts(height, options.patch, options.overlap)),
        cols=tuple(axis_starts(width, options.patch, options.overlap)),
    )


class _IsGap:
    """``state == GAP`` evaluated per window when sliced: no scene-sized boolean array."""

    def __init__(self, state: NDArray[np.uint8]) -> None:
        self.state = state

    def __getitem__(self, key: Any) -> NDArray[np.bool_]:
        return self.state[key] == GAP


def batch_inputs(data: NDArray, valid: NDArray[np.bool_], windows: Sequence[PatchWindow], seed: int, *,
                 guides: tuple[NDArray[np.float32], NDArray[np.bool_]] | None = None):
    """What an engine gets for ``windows``: float32 values (unobserved zeroed), observed
    masks and per-patch seeds. ``data``/``valid`` may be the scene or one window's read.

    With ``guides`` (``values[G, y, x]`` zero where not valid and ``valid[G, y, x]`` over the
    same region as ``data``, as :func:`dipfill.raster.guides.read_guides` returns them) it
    also returns the guides' patches ``[B, G, H, W]`` and their observed masks:
    ``(patches, observed, seeds, guide_patches, guide_observed)``.
    """
    patches = np.stack([_patch_values(data, valid, w) for w in windows])
    observed = np.stack([valid[(slice(None), *w.slices)] for w in windows])
    seeds = [patch_seed(seed, w) for w in windows]
    if guides is None:
        return patches, observed, seeds
    gvalues, gvalid = guides
    gpatches = np.stack([_patch_values(gvalues, gvalid, w) for w in windows])
    gobserved = np.stack([gvalid[(slice(None), *w.slices)] for w in windows])
    return patches, observed, seeds, gpatches, gobserved


def row_unions(windows: Sequence[PatchWindow]) -> list[tuple[PatchWindow, list[PatchWindow]]]:
    """Windows grouped by their first row (plan order kept within a group), each group with
    the union window its members share: neighbours overlap, so a group's pixels are read
    (and decoded) once for the union instead of once per window."""
    groups: dict[int, list[PatchWindow]] = {}
    for w in windows:
        groups.setdefault(w.row_off, []).append(w)
    out = []
    for row in groups.values():
        top, bottom = row[0].row_off, max(w.row_off + w.height for w in row)
        left, right = min(w.col_off for w in row), max(w.col_off + w.width for w in row)
        out.append((PatchWindow(top, left, bottom - top, right - left), row))
    return out


def _patch_values(data: NDArray, valid: NDArray[np.bool_], win: PatchWindow) -> NDArray[np.float32]:
    """A window of the bands as float32 with unobserved pixels zeroed (never NaN in a loss)."""
    sl = (slice(None), *win.slices)
    return np.where(valid[sl], data[sl], 0).astype(np.float32)


