"""`dipfill fill`: one raster in, filled COG + QA COG + Zarr mosaic + quicklook + STAC item out.

Two layers, so a notebook can use either:

* :func:`fill_arrays` — pure arrays: per-band validity and the footprint in, filled bands
  and QA out. Plans windows, sends only windows with gaps to the engine (patches with too
  few observed pixels to the fallback engine), blends, and composites observed pixels
  back bit-exact.
* :func:`fill_files` — reads the inputs, validates them, calls :func:`fill_arrays`, and
  writes every output atomically with the STAC item last (the item is the commit marker:
  if it exists, the outputs it lists are complete).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.engines import make_engine
from dipfill.engines.base import Engine, PatchDiagnostics
from dipfill.errors import InputError
from dipfill.pipeline.compose import assemble, qa_counts
from dipfill.pipeline.outputs import SceneProduct, write_outputs
from dipfill.pipeline.plan import batch_inputs, plan_fill
from dipfill.raster.masks import QA_OUTSIDE, footprint_from_validity
from dipfill.raster.read import Scene, acquisition_date, data_validity, footprint_from_geojson, read_mask, read_scene
from dipfill.raster.write import Preview
from dipfill.specs import FillOptions
from dipfill.storage import JsonFileCache, default_strategy_cache_path

__all__ = ["FillResult", "FillReport", "fill_arrays", "fill_files"]

log = logging.getLogger(__name__)


@dataclass
class FillResult:
    """Output of :func:`fill_arrays`."""

    data: NDArray  # [bands, y, x], input dtype
    qa: NDArray[np.uint8]  # [y, x]
    diagnostics: dict[str, PatchDiagnostics]
    windows_total: int
    windows_filled: int


@dataclass
class FillReport:
    """What :func:`fill_files` did: counts, outputs, timing. Printed by the CLI."""

    item_id: str
    outputs: dict[str, str]
    pixels: int
    counts: dict[str, int]
    windows_total: int
    windows_filled: int
    seconds: float
    engine: str
    engine_options: dict[str, Any]
    diagnostics: dict[str, PatchDiagnostics] = field(default_factory=dict)

    @property
    def filled_fraction(self) -> float:
        gap = self.counts["filled"] + self.counts["filled_fallback"] + self.counts["unfilled"]
        return (self.counts["filled"] + self.counts["filled_fallback"]) / gap if gap else 0.0


def fill_arrays(
    data: NDArray,
    valid: NDArray[np.bool_],
    footprint: NDArray[np.bool_],
    *,
    engine: Engine,
    fallback: Engine | None,
    options: FillOptions,
    nodata: float | None,
    progress: Callable[[int, int], None] | None = None,
) -> FillResult:
    """Fill ``data[bands, y, x]`` where ``valid`` is False inside ``footprint``, in process.

    Observed values are copied from ``data`` bit-exact; pixels outside the footprint get
    ``nodata`` (NaN for floats without nodata). Returns the filled bands and the QA layer.
    """
    plan = plan_fill(valid, footprint, options, with_fallback=fallback is not None)
    results: dict[str, tuple[NDArray, bool]] = {}
    diagnostics: dict[str, PatchDiagnostics] = {}
    total, done = len(plan.windows), 0
    for batch in plan.batches:
        eng = fallback if batch.fallback else engine
        patches, observed, seeds = batch_inputs(data, valid, batch.windows, options.seed)
        result = eng.fill(patches, observed, seeds=seeds)  # type: ignore[union-attr]
        for w, values, diag in zip(batch.windows, result.values, result.diagnostics):
            results[w.id] = (values, batch.fallback)
            diagnostics[w.id] = diag
        done += len(batch.windows)
        if progress:
            progress(done, total)
    out, qa = assemble(data, valid, plan, results, nodata)
    return FillResult(out, qa, diagnostics, plan.windows_total, total)


def _footprint(scene: Scene, data_valid: NDArray[np.bool_], options: FillOptions) -> NDArray[np.bool_]:
    if options.footprint == "auto":
        return footprint_from_validity(data_valid.any(axis=0), closing=options.collar_closing)
    if options.footprint == "all":
        return np.ones(scene.grid.shape, dtype=bool)
    return footprint_from_geojson(options.footprint, scene.grid)


def _default_item_id(sources: Sequence[str]) -> str:
    stems = [Path(s).stem for s in sources]
    if len(stems) == 1:
        return stems[0]
    prefix = os.path.commonprefix(stems).rstrip("_-. ")
    return prefix or stems[0]


def fill_files(
    inputs: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    options: FillOptions = FillOptions(),
    mask: str | None = None,
    item_id: str | None = None,
    datetime: str | None = None,
    rgb: Sequence[int] = (0, 1, 2),
    progress: Callable[[int, int], None] | None = None,
) -> FillReport:
    """Fill the raster(s) ``inputs`` and write all outputs into ``out_dir``.

    Inputs are fully validated before anything is written; if writing fails midway,
    temporary files are removed and no STAC item is written.
    """
    from dipfill.stac.item import sanitize_id

    t0 = time.perf_counter()
    scene = read_scene(inputs)
    data_valid = data_validity(scene.data, scene.nodata)
    if not data_valid.any():
        raise InputError(f"{scene.sources[0]}: every pixel is nodata; nothing to fill from")
    valid = data_valid
    if mask is not None:
        valid = data_valid & ~read_mask(mask, scene.grid)[None]
    footprint = _footprint(scene, data_valid, options)
    if not (valid & footprint[None]).any():
        raise InputError(f"{scene.sources[0]}: no observed pixel inside the footprint")
    item_id = sanitize_id(item_id or _default_item_id(scene.sources)) + "-dipfill"
    acq = datetime or acquisition_date(scene)

    engine = make_engine(options.engine, strategy_cache=JsonFileCache(default_strategy_cache_path()),
                         **dict(options.engine_options))
    fallback = make_engine(options.fallback) if options.fallback != "none" else None
    result = fill_arrays(
        scene.data,
        valid,
        footprint,
        engine=engine,
        fallback=fallback,
        options=options,
        nodata=scene.nodata,
        progress=progress,
    )
    counts = qa_counts(result.qa)
    after_valid = data_validity(result.data, scene.nodata)
    product = SceneProduct(
        grid=scene.grid,
        band_names=list(scene.band_names),
        dtype=scene.dtype,
        nodata=scene.nodata,
        sources=list(scene.sources),
        bands=result.data,
        qa=result.qa,
        footprint=result.qa != QA_OUTSIDE,
        preview=Preview.of_block(scene.data, result.data, valid, after_valid, (0, 0),
                                 Preview.step_for(scene.grid.shape)),
        counts=counts,
        diagnostics=result.diagnostics,
    )
    outputs = write_outputs(Path(out_dir), item_id, product, options, acq, rgb)
    return FillReport(
        item_id=item_id,
        outputs=outputs,
        pixels=int(result.qa.size),
        counts=counts,
        windows_total=result.windows_total,
        windows_filled=result.windows_filled,
        seconds=time.perf_counter() - t0,
        engine=options.engine,
        engine_options=dict(options.engine_options),
        diagnostics=result.diagnostics,
    )


