"""`dipfill fill`: one raster in, filled COG + QA COG + Zarr mosaic + quicklook + STAC item out.

Two layers, so a notebook can use either:

* :func:`fill_arrays` — pure arrays: per-band validity and the footprint in, filled bands
  and QA out. Plans windows, sends only windows with gaps to the engine (patches with too
  few observed pixels to the fallback engine), blends, and composites observed pixels
  back bit-exact. Guides (:class:`~dipfill.raster.guides.GuideSource`) are read window by
  window and reach the output only through the engine's fill.
* :func:`fill_files` — reads the inputs and opens the guides of ``options.guides`` on
  their grid, validates them, calls :func:`fill_arrays`, and writes every output
  atomically with the STAC item last (the item is the commit marker: if it exists, the
  outputs it lists are complete).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.engines import make_engine
from dipfill.engines.base import Engine, PatchDiagnostics, uses_guides
from dipfill.errors import InputError
from dipfill.pipeline.compose import assemble, qa_counts
from dipfill.pipeline.executor import ArrayTask, BatchProgress, fill_batch
from dipfill.pipeline.models import read_model
from dipfill.pipeline.outputs import SceneProduct, output_names, write_outputs
from dipfill.pipeline.plan import patch_seed, plan_fill
from dipfill.raster.guides import GuideSource, open_guide
from dipfill.raster.hrefs import redact_href
from dipfill.raster.masks import QA_OUTSIDE, footprint_from_validity
from dipfill.raster.read import Scene, acquisition_date, data_validity, footprint_from_geojson, read_mask, read_scene
from dipfill.raster.write import Preview
from dipfill.specs import FillOptions
from dipfill.stac.item import ItemExtras
from dipfill.storage import JsonFileCache, ObjectPath, as_path, check_output_dir, default_strategy_cache_path, remove
from dipfill.tiling.grid import PatchWindow

__all__ = ["FillResult", "FillReport", "fill_arrays", "fill_files", "check_datetime", "check_rgb"]

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
    guides: list[dict[str, Any]] = field(default_factory=list)  # as the item's dipfill:guides

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
    guides: Sequence[GuideSource] = (),
    on_steps: Callable[[int, int, BatchProgress], None] | None = None,
    executor: Any = None,
) -> FillResult:
    """Fill ``data[bands, y, x]`` where ``valid`` is False inside ``footprint``, in process or,
    with an ``executor`` (the engine actors of a run), by its workers: each batch travels as
    an :class:`~dipfill.pipeline.executor.ArrayTask` with its pixels (the workers' engines are
    the run's; ``engine``/``fallback`` here are then not called). With guides the batches
    are filled here (the guides' files may not be visible to the workers).

    Observed values are copied from ``data`` bit-exact; pixels outside the footprint get
    ``nodata`` (NaN for floats without nodata). Returns the filled bands and the QA layer.
    ``guides`` (opened on ``data``'s grid) are read for each batch's windows and given to
    an engine that uses them (``uses_guides``); an engine is called without guide
    arguments when there are none.

    ``progress(done, total)`` is called as each batch of windows is done;
    ``on_steps(done, total, BatchProgress)`` while a batch is fitted, by engines that
    report steps (DIP, every ``check_every`` steps).
    """
    for g in guides:
        if g.grid.shape != data.shape[1:]:
            raise InputError(f"guide {g.record()['href']} was opened on a {g.grid.width}x{g.grid.height} grid, "
                             f"not this {data.shape[2]}x{data.shape[1]} one")
    plan = plan_fill(valid, footprint, options, with_fallback=fallback is not None)
    results: dict[str, tuple[NDArray, bool]] = {}
    diagnostics: dict[str, PatchDiagnostics] = {}
    total = len(plan.windows)

    def read_pixels(span: tuple[tuple[int, int], tuple[int, int]]) -> tuple[NDArray, NDArray[np.bool_]]:
        rows, cols = slice(*span[0]), slice(*span[1])
        return data[:, rows, cols], valid[:, rows, cols]

    def collect(windows: Sequence[PatchWindow], fallback_used: bool, result: Any) -> None:
        for w, values, diag in zip(windows, result.values, result.diagnostics):
            results[w.id] = (values, fallback_used)
            diagnostics[w.id] = diag
        if progress:
            progress(len(results), total)

    if executor is not None and not guides:
        tasks = []
        for batch in plan.batches:
            union = _bounding(batch.windows)
            rows, cols = union.slices
            tasks.append(ArrayTask(tuple(batch.windows), tuple(patch_seed(options.seed, w) for w in batch.windows),
                                   batch.fallback, (union.row_off, union.col_off), data[:, rows, cols],
                                   valid[:, rows, cols]))
        executor.run(tasks, lambda task, result: collect(task.windows, task.fallback, result), "fill_arrays")
    else:
        for batch in plan.batches:
            eng = fallback if batch.fallback else engine
            seeds = [patch_seed(options.seed, w) for w in batch.windows]
            steps = None if on_steps is None else (lambda p, done=len(results): on_steps(done, total, p))
            result = fill_batch(eng, read_pixels, batch.windows, seeds, guides,  # type: ignore[arg-type]
                                on_steps=steps)
            collect(batch.windows, batch.fallback, result)
    out, qa = assemble(data, valid, plan, results, nodata)
    return FillResult(out, qa, diagnostics, plan.windows_total, total)


def _bounding(windows: Sequence[PatchWindow]) -> PatchWindow:
    """The smallest window holding every one of ``windows``."""
    top, left = min(w.row_off for w in windows), min(w.col_off for w in windows)
    bottom, right = max(w.row_off + w.height for w in windows), max(w.col_off + w.width for w in windows)
    return PatchWindow(top, left, bottom - top, right - left)


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


def check_datetime(text: str) -> str:
    """``--datetime`` as the item will read it (ISO 8601; a final ``Z`` means UTC, another
    offset is converted to UTC), or an :class:`InputError` naming the value and what to
    give instead."""
    value = text.strip()
    if value[-1:] in ("Z", "z"):
        value = value[:-1] + "+00:00"
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"--datetime {text!r} is not an ISO 8601 date or date-time; "
                         "give e.g. 2010-01-16 or 2010-01-16T00:35:00Z") from None
    # the item states UTC: a time with another offset is converted, not relabelled
    return when.astimezone(dt.timezone.utc).isoformat() if when.tzinfo is not None else value


def check_rgb(rgb: Sequence[int] | None, scene: Scene) -> tuple[int, int, int]:
    """The quicklook's 0-based R, G, B bands: ``rgb`` checked against the scene's bands, or
    by default bands 1-3 (band 1 as grey when the scene has fewer than three)."""
    count = scene.data.shape[0]
    if rgb is None:
        return (0, 1, 2) if count >= 3 else (0, 0, 0)
    bad = [i + 1 for i in rgb if not 0 <= i < count]
    if len(rgb) != 3 or bad:
        one = len(scene.sources) == 1
        what = os.path.basename(redact_href(scene.sources[0])) if one else f"the {len(scene.sources)} inputs"
        problem = f"band {bad[0]} is out of range" if bad else "not three band numbers"
        raise InputError(f"--rgb {','.join(str(i + 1) for i in rgb)}: {problem}; {what} {'has' if one else 'have'} "
                         f"{count} band(s), so give three numbers from 1 to {count}")
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def fill_files(
    inputs: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    options: FillOptions = FillOptions(),
    mask: str | None = None,
    item_id: str | None = None,
    datetime: str | None = None,
    rgb: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_steps: Callable[[int, int, BatchProgress], None] | None = None,
    mode: Any = None,
    executor: Any = None,
) -> FillReport:
    """Fill the raster(s) ``inputs`` and write all outputs into ``out_dir``.

    ``mode``: a job other than gap filling on the same pipeline (e.g.
    :class:`~dipfill.pipeline.anonymise.AnonymiseMode`): its ``prepare(scene, valid,
    footprint)`` decides the gaps and footprint (and may blank the scene's pixels), its
    ``fill`` replaces :func:`fill_arrays`, its ``extras()`` go into the item.

    ``progress``, ``on_steps`` and ``executor``: as for :func:`fill_arrays`.

    ``rgb``: the quicklook's 0-based bands (default: the first three, or band 1 as grey).
    Inputs, options and ``out_dir`` are fully validated before any engine work or any
    write. Every file is written under a temporary name and renamed, with the STAC item
    last; if writing fails midway, the outputs this call created are removed again and
    no item is written.
    """
    from dipfill.stac.ids import unique_id

    t0 = time.perf_counter()
    check_output_dir(out_dir)
    if datetime is not None:
        datetime = check_datetime(datetime)
    scene = read_scene(inputs)
    rgb = check_rgb(rgb, scene)
    data_valid = data_validity(scene.data, scene.nodata)
    if not data_valid.any():
        raise InputError(f"{redact_href(scene.sources[0])}: every pixel is nodata; nothing to fill from")
    valid = data_valid
    if mask is not None:
        valid = data_valid & ~read_mask(mask, scene.grid)[None]
    footprint = _footprint(scene, data_valid, options)
    if mode is not None:
        count = scene.data.shape[0]
        valid, footprint = mode.prepare(scene, valid, footprint)
        if scene.data.shape[0] != count:  # the mode made other bands (NDVI): the quicklook shows those
            rgb = check_rgb(None, scene)
    if not (valid & footprint[None]).any():
        raise InputError(f"{redact_href(scene.sources[0])}: no observed pixel inside the footprint")
    item_id = unique_id(item_id or _default_item_id(scene.sources)) + "-dipfill"
    acq = datetime or acquisition_date(scene)
    masks = options.guide_masks + (None,) * (len(options.guides) - len(options.guide_masks))
    guides = tuple(
        open_guide(href, scene.grid, bands=options.guide_bands or None, resampling=options.guide_resampling,
                   mask=mask)
        for href, mask in zip(options.guides, masks)
    )
    # the item records the guides as opened (absolute paths, no secrets): that is what is hashed
    options = replace(options, guides=tuple(g.record()["href"] for g in guides),
                      guide_masks=tuple(g.record()["mask"] for g in guides if g.mask is not None))

    engine = make_engine(options.engine, strategy_cache=JsonFileCache(default_strategy_cache_path()),
                         model_reader=read_model, **dict(options.engine_options))
    fallback = make_engine(options.fallback) if options.fallback != "none" else None
    if guides and not uses_guides(engine):
        log.warning("engine %r ignores guides: the %d guide(s) are recorded in the item but do not change the fill",
                    options.engine, len(guides))
    result = (mode.fill if mode is not None else fill_arrays)(
        scene.data,
        valid,
        footprint,
        engine=engine,
        fallback=fallback,
        options=options,
        nodata=scene.nodata,
        progress=progress,
        guides=guides,
        on_steps=on_steps,
        executor=executor,
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
        guides=[g.record() for g in guides],
    )
    extras: ItemExtras | None = mode.extras() if mode is not None else None
    outputs = _write_or_undo(as_path(out_dir), item_id, product, options, acq, rgb, extras)
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
        guides=[g.record() for g in guides],
    )


def _write_or_undo(out: "Path | ObjectPath", item_id: str, product: SceneProduct, options: FillOptions, acquired: str | None,
                   rgb: Sequence[int], extras: ItemExtras | None = None) -> dict[str, str]:
    """:func:`write_outputs`, and on failure remove the outputs it created (each already
    complete: they are renamed into place) so that no product without its item is left;
    outputs of an earlier fill of this id stay, and so does ``out`` when it existed."""
    created = not out.exists()
    paths = [out / name for name in output_names(item_id, product.band_keys, [c.key for c in product.carried]).values()]
    existed = {p for p in paths if p.exists() or p.is_symlink()}
    try:
        return write_outputs(out, item_id, product, options, acquired, rgb, extras)
    except BaseException:
        for p in paths:
            if p not in existed:
                remove(p)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
