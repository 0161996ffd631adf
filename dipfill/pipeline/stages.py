"""One scene of a run as named stages: open → mask → plan → fit → merge → write → describe → publish.

Each stage is a function of the :class:`SceneJob` (what the earlier stages decided) and
returns what the next one needs, so one stage can be changed, timed or tested without
reading the others. Memory is bounded by blocks and batches, not by the scene:

* **open** the item's assets as one scene on one grid (nothing read yet);
* **mask** — the driver reads the scene in strips for its one-byte-per-pixel masks
  (three-state mask, observed bands per pixel); with a local ``--out`` it keeps what it
  read, uncompressed, in the scene's directory (:mod:`~dipfill.raster.pixel_cache`), where
  the fit and merge read their windows instead of decoding the files again (removed when
  the scene ends);
* **plan** windows and batches from them (the same planner as ``dipfill fill``) and the
  fit tasks still to do (a resumed scene keeps its finished batches);
* **guides** — for an engine that uses them, other acquisitions found through STAC and
  ranked by the scene's gaps they observe (:func:`guide_stage`); the choice is recorded in
  the patch store, and a resumed scene reuses it;
* **fit** — workers read their own windows, fit them, and write into the patch store;
* **merge** — workers merge blocks of 2 × 2 chunks from the store into the Zarr mosaic
  (one writer per chunk);
* **write** — the driver streams the mosaic into the COGs, writes the quicklook and, last,
  the STAC item (**describe**: the item states what the outputs are), then adds it to the
  static catalog;
* **publish** it to a STAC API when asked.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import zarr

from dipfill.engines import engine_uses_guides
from dipfill.engines.base import PatchDiagnostics
from dipfill.errors import InputError, RunInterrupted
from dipfill.pipeline.blocks import MERGE_BLOCK, BlockResult, block_tasks, merge_counts, preview_mosaic
from dipfill.pipeline.executor import BatchProgress, Executor, FitTask, reports_progress
from dipfill.pipeline.guide_resume import GuidesNotReusable, open_guides, reopen_recorded
from dipfill.pipeline.guides import GuideChoice, choose_guides
from dipfill.pipeline.outputs import (
    CarriedAsset,
    SceneProduct,
    cog_tasks,
    mosaic_attrs,
    mosaic_name,
    output_names,
    write_outputs,
)
from dipfill.pipeline.patchstore import PatchStore
from dipfill.pipeline.plan import FillPlan, patch_seed, plan_from_mask
from dipfill.pipeline.progress import Progress, SceneStatus, StageClock
from dipfill.raster.guides import ItemGuide
from dipfill.raster.hrefs import redact_href, signer
from dipfill.raster.masks import ACCEPTING_DECODERS, OUTSIDE
from dipfill.raster.pixel_cache import CACHE_NAME, CachedScene
from dipfill.raster.scene import SceneSource, open_scene
from dipfill.raster.scene_mask import SceneMask, scene_mask
from dipfill.raster.write import MOSAIC_CHUNK, create_zarr_mosaic
from dipfill.specs import RunRequest
from dipfill.stac.guides import GuideQuery
from dipfill.stac.ids import unique_id
from dipfill.stac.item import ItemExtras, mirrored_properties, sanitize_id, self_href
from dipfill.stac.publish import add_to_static_catalog, publish_item
from dipfill.storage import remove_stale_temporaries, staged_tree, zarr_store

#: Seconds between two ``steps`` events of a scene (progress within its batches) at most.
STEPS_EVERY = 5.0

__all__ = ["SceneJob", "SCENE_LOCK", "STEPS_EVERY", "process_scene", "mask_stage", "current_status", "scene_dir",
           "source_version", "output_id"]


@dataclass
class SceneJob:
    """One scene of one run: what it is, where it goes, and what the stages decided."""

    item: Mapping[str, Any]
    request: RunRequest
    config_hash: str
    item_id: str  # the output item's id
    scene_dir: Path
    source: SceneSource
    nodata: float | None
    plan: FillPlan | None = None
    dtype: Any = None
    store: PatchStore | None = None
    tasks: tuple[FitTask, ...] = ()
    resumed: int = 0
    guides: GuideChoice | None = None  # what the guide search chose (None: not searched)
    guide_sources: tuple[ItemGuide, ...] = ()
    pixels: CachedScene | None = None  # the mask pass's copy of the scene, while the scene runs

    @property
    def reader(self) -> Any:
        """What the workers read the scene's windows from: the cached copy when there is one."""
        return self.pixels if self.pixels is not None else self.source

    def drop_pixels(self) -> None:
        """Remove the cached copy (after the merge, and whenever the scene stops)."""
        if self.pixels is not None:
            self.pixels.cache.remove()
            self.pixels = None


def output_id(item: Mapping[str, Any]) -> str:
    """The output item's id (and directory name): the source id made safe (and distinct:
    :func:`~dipfill.stac.ids.unique_id`), ``-dipfill``."""
    return unique_id(str(item["id"])) + "-dipfill"


#: A scene directory's lock file: held while a run processes the scene (see ``pipeline.run``).
SCENE_LOCK = ".dipfill.lock"


def scene_dir(out: Path, item: Mapping[str, Any]) -> Path:
    """``OUT/<collection>/<output id>/``."""
    return out / sanitize_id(str(item.get("collection") or "items")) / output_id(item)


def source_version(item: Mapping[str, Any]) -> str:
    """What identifies the version of a source item: its ``updated`` property when it has one,
    else a hash of its JSON without links (hrefs of a catalog move; content does not)."""
    props = item.get("properties") or {}
    if props.get("updated"):
        return f"updated:{props['updated']}"
    body = {k: v for k, v in item.items() if k != "links"}
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:32]


def current_status(item: Mapping[str, Any], out: Path, chash: str, request: RunRequest) -> SceneStatus | None:
    """The scene's status when its output is current (same source version and config)."""
    path = scene_dir(out, item) / f"{output_id(item)}.json"
    if request.force or not path.exists():
        return None
    props = json.loads(path.read_text()).get("properties", {})
    if props.get("dipfill:config_hash") == chash and props.get("dipfill:source_version") == source_version(item):
        return SceneStatus(str(item["id"]), "current", output=str(path),
                           message="output current (same source version and config): no engine work")
    return None


def process_scene(item: Mapping[str, Any], request: RunRequest, out: Path, chash: str, executor: Executor | None,
                  say: Progress, budget: list[int | None]) -> SceneStatus:
    """Every stage of one scene, timed; returns its status (raises what a stage raises).
    ``executor``: the engine actors (``--mode fill``: every stage's tasks; ``--mode sr`` and
    ``--mode anonymise``: the patches, the rest in the driver)."""
    if request.mode == "anonymise":  # the whole region at once in the driver, patches on the actors
        from dipfill.pipeline.anonymise import anonymise_scene

        job = open_stage(item, request, out, chash)
        return anonymise_scene(job, describe_stage(job), out, executor)
    if request.mode == "sr":  # LR bands and their guide on their own grids, in the driver (pipeline.sr_run)
        from dipfill.pipeline.sr_run import sr_item, write_sr

        done = sr_item(item, request, say, executor)
        job = SceneJob(item, request, chash, output_id(item), scene_dir(out, item), done.source,
                       one_nodata(done.source.nodata, str(item["id"])))
        job.scene_dir.mkdir(parents=True, exist_ok=True)
        return write_sr(job, done, describe_stage(job), out)
    assert executor is not None, "--mode fill needs the engine actors"
    clock = StageClock()
    job = open_stage(item, request, out, chash)
    clock.lap("open")
    try:
        mask = mask_stage(job, keep_pixels=True)
        clock.lap("mask")
        plan_stage(job, mask)
        del mask
        clock.lap("plan")
        if wants_guides(request):
            guide_stage(job, say)
            clock.lap("guides")
        diagnostics = fit_stage(job, executor, say, budget)
        clock.lap("fit")
        blocks = merge_stage(job, executor)
    finally:
        job.drop_pixels()  # read by fit and merge only; a rerun makes its own
    clock.lap("merge")
    outputs, counts = write_stage(job, blocks, diagnostics, out, clock, executor)  # laps write and describe
    if request.publish:
        publish_item(request.publish, outputs["item"], f"{item.get('collection') or 'items'}-dipfill")
        clock.lap("publish")
    assert job.plan is not None
    return SceneStatus(str(item["id"]), "done", output=outputs["item"], patches=len(job.plan.windows),
                       patches_fitted=sum(len(t.windows) for t in job.tasks), patches_resumed=job.resumed,
                       counts=counts, timings=clock.laps, driver_peak_mib=clock.peaks,
                       guides=job.guides.summary() if job.guides is not None else {})


def open_stage(item: Mapping[str, Any], request: RunRequest, out: Path, chash: str) -> SceneJob:
    """Open the item's assets as one scene (headers only) and make its output directory."""
    source = open_scene(dict(item), bands=request.bands, mask=request.mask, sign=signer(request.sign),
                        product=request.product, accept=request.accept)  # type: ignore[arg-type]
    nodata = one_nodata(source.nodata, str(item["id"]))
    directory = scene_dir(out, item)
    directory.mkdir(parents=True, exist_ok=True)
    return SceneJob(item, request, chash, output_id(item), directory, source, nodata)


def mask_stage(job: SceneJob, *, keep_pixels: bool = False) -> SceneMask:
    """Read the scene in strips for its masks (three-state mask, observed bands per pixel).

    ``keep_pixels``: keep what was read in the scene's directory for the workers
    (``job.pixels``) where they may see it: a local ``--out`` (on object storage they could
    not), and a scene read pixel for pixel (nearest: a window then reads as the strip did)."""
    keep = keep_pixels and isinstance(job.scene_dir, Path) and job.source.resampling == "nearest"
    mask = scene_mask(job.source, rows=MOSAIC_CHUNK, closing=job.request.options.collar_closing,
                      cache=job.scene_dir / CACHE_NAME if keep else None)
    if mask.pixels is not None:
        job.pixels = CachedScene(job.source, mask.pixels)
    return mask


def plan_stage(job: SceneJob, mask: SceneMask | None = None) -> None:
    """Plan the windows and batches from the scene's masks (read here when not given), and
    list the fit tasks a resumed patch store still needs."""
    opts = job.request.options
    if mask is None:
        mask = mask_stage(job)
    plan = plan_from_mask(mask.state, mask.nvalid, mask.bands, opts, with_fallback=opts.fallback != "none")
    job.plan, job.dtype = plan, mask.dtype
    del mask  # the plan keeps the one-byte state; the count of observed bands is done with
    open_store(job)


def open_store(job: SceneJob, *, fresh: bool = False) -> None:
    """Open the scene's patch store (``fresh``: emptied first, the scene starts over) and
    list the fit tasks it still needs."""
    assert job.plan is not None
    plan, opts = job.plan, job.request.options
    index = {w.id: i for i, w in enumerate(plan.windows)}
    path = job.scene_dir / "patches.zarr"
    if fresh:
        PatchStore(str(path)).remove()
    job.store = PatchStore.open(path, len(index), plan.shape[0], opts.patch, job.config_hash)
    done = job.store.done()
    job.tasks = tuple(
        FitTask(job.item_id, job.reader, job.store.path, b.index, b.fallback, b.windows,
                tuple(index[w.id] for w in b.windows), tuple(patch_seed(opts.seed, w) for w in b.windows))
        for b in plan.batches
        if not all(done[index[w.id]] for w in b.windows)
    )
    job.resumed = int(done.sum()) - sum(int(done[i]) for t in job.tasks for i in t.indices)


def wants_guides(request: RunRequest) -> bool:
    """Guides are searched for and read only for an engine that uses them (``--guides auto``)."""
    opts = request.options
    return request.guides != "none" and (engine_uses_guides(opts.engine) or engine_uses_guides(opts.fallback))


def run_config(request: RunRequest) -> dict[str, Any]:
    """What decides a run's output bytes (hashed): the guide search only where it is used,
    and for the ``dip`` engine its whole configuration as resolved from the preset (the
    options name a preset; a preset whose contents change between versions, as sar2023's
    normalisation did, must make the next run redo its scenes, not find them current)."""
    cfg = request.config(with_guides=wants_guides(request))
    if request.options.engine == "dip":
        from dipfill.engines.config import DEFAULT_PRESET, preset

        given = dict(request.options.engine_options)
        cfg["dip_config"] = preset(given.pop("preset", DEFAULT_PRESET), **given).to_dict()
    return cfg


def guide_stage(job: SceneJob, say: Progress) -> None:
    """Choose the scene's guides once its gaps are known, and give them to the fit tasks.

    The search and ranking are :func:`~dipfill.pipeline.guides.choose_guides`; each chosen
    item is read on the scene's grid with its own cloud mask (:class:`~dipfill.raster.guides.ItemGuide`),
    in rank order. A scene without a usable guide is filled without one, and says why.

    The choice is recorded in the patch store before any patch is fitted; a resumed scene
    with fitted patches reuses it (a catalog changed since must not give the remaining
    patches other guides), or, when it cannot (:mod:`~dipfill.pipeline.guide_resume`),
    discards its patches and starts over, and says so."""
    assert job.plan is not None and job.store is not None
    r = job.request
    query = GuideQuery(collection=r.guide_collection, window_days=r.guide_window, years=r.guide_years,
                       max_guides=r.max_guides, composite=r.guide_composite)  # type: ignore[arg-type]
    sign = signer(r.sign)
    bands = r.guide_bands or (r.bands if not r.guide_collection else None)
    # --product ndvi: the guides are read as NDVI too, with the target's accepted QA classes
    read: dict[str, Any] = {"product": r.product, "accept": r.accept} if r.product != "bands" else {}
    scene, grid = str(job.item["id"]), job.source.grid
    choice: GuideChoice | None = None
    fitted = int(job.store.done().sum())
    if fitted:
        try:
            choice, job.guide_sources = reopen_recorded(job.store, query, grid, bands=bands, sign=sign, **read)
        except GuidesNotReusable as exc:
            say("guides", f"  {job.item_id}: {fitted} fitted patches discarded, the scene starts over: {exc}",
                scene=scene, restarted=True, patches_discarded=fitted, reason=str(exc))
            open_store(job, fresh=True)
    if choice is None:
        choice = choose_guides(r.stac, job.item, job.plan.state, grid, query, sign=sign, mask=r.mask, bands=bands,
                               **read)
        job.guide_sources = open_guides(choice, grid, bands=bands, sign=sign, **read)
        job.store.record_guides(choice.to_json())  # before any patch is fitted with them
    job.guides = choice
    if not choice:
        say("guides", f"  {job.item_id}: filled without a guide: {choice.reason}", scene=scene, guides=[],
            reason=choice.reason)
        return
    job.tasks = tuple(replace(t, guides=job.guide_sources) for t in job.tasks)
    say("guides", f"  {job.item_id}: guides " + ", ".join(
        f"{g.id} ({g.days_from_target:+.0f} d, {g.observed_gap_fraction:.0%} of the gaps)" for g in choice.guides),
        scene=scene, guides=choice.records())


def fit_stage(job: SceneJob, executor: Executor, say: Progress, budget: list[int | None]) -> dict[str, PatchDiagnostics]:
    """Fit the remaining batches into the patch store; returns every patch's diagnostics
    (those of a run this one resumed included)."""
    assert job.plan is not None and job.store is not None
    scene = str(job.item["id"])
    fitted = [0]
    t0 = time.perf_counter()
    total = sum(len(t.windows) for t in job.tasks)

    running: dict[int, BatchProgress] = {}  # batches being fitted, by batch index
    said = [time.perf_counter()]

    def on_steps(task: FitTask, progress: BatchProgress) -> None:
        """A ``steps`` event every STEPS_EVERY seconds at most while batches are fitted:
        DIP takes minutes per batch, and patches are only counted when a batch is done."""
        running[task.batch_index] = progress
        now = time.perf_counter()
        if now - said[0] < STEPS_EVERY:
            return
        said[0] = now
        done, most = sum(p.steps_done for p in running.values()), sum(p.steps_total for p in running.values())
        say("steps", f"  {job.item_id}: patches {fitted[0]}/{total}, fitting {len(running)} batch(es): "
            f"{done}/{most} steps ({100 * done / max(most, 1):.0f} %)", scene=scene, patches_done=fitted[0],
            patches_total=total, batches_fitting=len(running), steps_done=done, steps_total=most)

    def on_fitted(task: FitTask, diags: list[tuple[str, dict]]) -> None:
        running.pop(task.batch_index, None)
        fitted[0] += len(task.windows)
        rate = fitted[0] / max(time.perf_counter() - t0, 1e-9)
        eta = (total - fitted[0]) / rate if rate else float("nan")
        say("patches", f"  {job.item_id}: patches {fitted[0]}/{total} ({job.resumed} resumed), {rate:.2f} patches/s, "
            f"ETA {eta:.0f} s", scene=scene, patches_done=fitted[0], patches_total=total,
            patches_resumed=job.resumed, patches_per_s=round(rate, 3), eta_s=round(eta, 1))
        if budget[0] is not None:
            budget[0] -= 1
            if budget[0] <= 0:
                raise RunInterrupted(f"stopped after the requested number of batches ({job.item_id})")

    if reports_progress(executor):
        executor.run(job.tasks, on_fitted, on_progress=on_steps)  # type: ignore[call-arg]
    else:
        executor.run(job.tasks, on_fitted)
    windows = job.plan.windows
    return {windows[i].id: PatchDiagnostics(**d) for i, d in sorted(job.store.diagnostics().items())}


def merge_stage(job: SceneJob, executor: Executor) -> list[BlockResult]:
    """Merge the scene block by block into its Zarr mosaic (staged: complete or absent)."""
    assert job.plan is not None and job.store is not None
    plan = job.plan
    # The item is the commit marker: a stale one goes first, so a crash below leaves a
    # scene that the next run reprocesses, never an item describing mixed outputs.
    (job.scene_dir / output_names(job.item_id)["item"]).unlink(missing_ok=True)
    # left by a killed driver; never another live run's (two cron runs may share --out)
    remove_stale_temporaries(job.scene_dir / mosaic_name(job.item_id))
    blocks: list[BlockResult] = []
    # staged beside it locally; in place on object storage, where workers on other nodes write it
    with staged_tree(job.scene_dir / mosaic_name(job.item_id)) as tmp:
        create_zarr_mosaic(tmp, plan.shape, job.dtype, job.source.grid, nodata=job.nodata,
                           band_names=list(job.source.band_names), attrs=mosaic_attrs(job.request.options))
        tasks = block_tasks(job.item_id, job.reader, plan, job.store.path, str(tmp), job.nodata, MERGE_BLOCK)
        executor.run(tasks, lambda task, res: blocks.append(res), "blend")
    return blocks


def describe_stage(job: SceneJob) -> ItemExtras:
    """What the output item takes from the source item: footprint, lineage, versions, and
    its platform/instruments (common metadata code for the input collection filters on)."""
    item = job.item
    href = self_href(item)
    # lineage links are hrefs from outside: without their secrets (signatures, user:password@)
    derived_from = ((href,) if href else ()) + (tuple(job.guides.derived_from()) if job.guides else ())
    mode: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    if job.source.derive is not None:  # --product ndvi: what the index is, its QA classes, its threshold
        from dipfill.pipeline.ndvi import ndvi_item_fields

        opts, qa = job.request.options, job.source.profile.qa
        mode = ndvi_item_fields(job.source.derive, engine=opts.engine, engine_options=opts.engine_options,
                                accept=job.request.accept,
                                qa_layer=job.source.qa_key if qa and qa.decoder in ACCEPTING_DECODERS else None)
    return ItemExtras(
        geometry=item.get("geometry"),
        bbox=item.get("bbox"),
        derived_from=tuple(redact_href(h) for h in derived_from),
        properties={**mirrored_properties(item.get("properties") or {}),
                    "dipfill:source_version": source_version(item), "dipfill:source_item": str(item["id"]),
                    "dipfill:config_hash": job.config_hash, "dipfill:run_config": run_config(job.request),
                    **(job.guides.item_properties() if job.guides is not None else {}), **mode[0]},
        scale_offset=tuple(zip(job.source.scale, job.source.offset)),
        band_fields=mode[1],
    )


def write_stage(job: SceneJob, blocks: Sequence[BlockResult], diagnostics: Mapping[str, PatchDiagnostics],
                out: Path, clock: StageClock | None = None, executor: Executor | None = None
                ) -> tuple[dict[str, str], dict[str, int]]:
    """COGs streamed from the mosaic, quicklook, diagnostics, then the item (last); the patch
    store goes and the static catalog gets the item. Returns the outputs and QA counts.

    With an ``executor`` the band and QA COGs are written by its workers, side by side
    (:func:`~dipfill.pipeline.outputs.cog_tasks`): compressing them is most of this stage,
    and the driver would write them one after the other while the workers wait.

    ``clock`` laps ``describe`` (what the item states, and the static catalog's update) and
    ``write`` (the files, the item's own JSON file included: it is written with them, last)."""
    assert job.plan is not None and job.store is not None
    plan, item = job.plan, job.item
    lap = clock.lap if clock is not None else (lambda name: None)
    mosaic = zarr.open_group(zarr_store(job.scene_dir / mosaic_name(job.item_id), read_only=True), mode="r",
                             zarr_format=3)
    counts = merge_counts([b.counts for b in blocks])
    extras = describe_stage(job)
    lap("describe")
    product = SceneProduct(
        grid=job.source.grid,
        band_names=list(job.source.band_names),
        dtype=job.dtype,
        nodata=job.nodata,
        sources=[redact_href(self_href(item) or str(item["id"]))],
        bands=mosaic["bands"],
        qa=mosaic["qa"],
        footprint=None if extras.geometry is not None and extras.bbox is not None else plan.state != OUTSIDE,
        preview=preview_mosaic(blocks),
        counts=counts,
        diagnostics=diagnostics,
        **mirrored_assets(job),
    )
    props = item.get("properties") or {}
    when = props.get("datetime") or props.get("start_datetime")
    rgb = job.source.profile.quicklook_indices(job.source.band_names)
    if executor is not None:
        executor.run(cog_tasks(job.scene_dir, job.item_id, product, job.request.options,
                               str(job.scene_dir / mosaic_name(job.item_id))), lambda task, path: None, "write_cog")
    outputs = write_outputs(job.scene_dir, job.item_id, product, job.request.options,
                            when.replace("Z", "+00:00") if when else None, rgb, extras, mosaic_written=True,
                            cogs_written=executor is not None)
    job.store.remove()
    lap("write")
    add_to_static_catalog(out, job.scene_dir, job.scene_dir.parent.name)
    lap("describe")
    return outputs, counts


def mirrored_assets(job: SceneJob) -> dict[str, Any]:
    """What the product repeats of the input item: each band's asset (key and JSON, for its
    metadata) and the QA asset, copied (read from its signed href; never written down)."""
    assets = job.item.get("assets") or {}
    src = job.source
    carried = ()
    if src.qa_key is not None and src.qa_href is not None:
        carried = (CarriedAsset(src.qa_key, src.qa_href, dict(assets.get(src.qa_key) or {}), src.gdal_options),)
    if src.derive is not None:  # an NDVI band derived from other assets: none of their metadata holds for it
        return {"band_assets": [(key, {}) for key in src.band_keys], "carried": carried}
    return {"band_assets": [(key, dict(assets.get(key) or {})) for key in src.band_keys], "carried": carried}


def one_nodata(values: Sequence[float | None], item_id: str) -> float | None:
    """The one nodata value of the scene's bands (one output COG needs one)."""
    distinct = {v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))}
    if len(distinct) > 1:
        raise InputError(f"item {item_id}: bands have different nodata values {sorted(distinct)}; "
                         "one output COG needs one")
    return distinct.pop() if distinct else (values[0] if values else None)

