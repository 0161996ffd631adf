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

import datetime as dt
import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill import __version__
from dipfill.engines import make_engine
from dipfill.engines.base import Engine, PatchDiagnostics
from dipfill.errors import InputError
from dipfill.masks import (
    DEFAULT_COLLAR_CLOSING,
    GAP,
    OBSERVED,
    OUTSIDE,
    QA_CLASSES,
    QA_ENGINE,
    QA_FALLBACK,
    QA_OBSERVED,
    QA_OUTSIDE,
    QA_UNFILLED,
    footprint_from_validity,
    three_state,
)
from dipfill.pipeline.read import (
    Grid,
    Scene,
    acquisition_date,
    data_validity,
    footprint_from_geojson,
    read_mask,
    read_scene,
)
from dipfill.pipeline.write import Preview, staged, write_band_vrt, write_cog, write_quicklook, write_zarr_mosaic
from dipfill.tiling import Blender, cast_to_dtype, PatchWindow, axis_starts, plan_windows, window_weights, windows_with_gaps

__all__ = ["FillOptions", "FillResult", "FillReport", "fill_arrays", "fill_files", "patch_seed"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FillOptions:
    """Everything that decides the output bytes (hashed into the STAC item), plus naming."""

    engine: str = "dip"
    engine_options: Mapping[str, Any] = field(default_factory=dict)
    fallback: str = "fillnodata"
    min_observed_fraction: float = 0.05
    patch: int = 256
    overlap: int = 32
    seed: int = 0
    batch_size: int = 4
    footprint: str = "auto"  # "auto" | "all" | path to a GeoJSON polygon (EPSG:4326)
    collar_closing: int = DEFAULT_COLLAR_CLOSING

    def __post_init__(self) -> None:
        if self.patch < 1:
            raise InputError(f"--patch must be >= 1, got {self.patch}")
        if not 0 <= self.overlap < self.patch:
            raise InputError(f"--overlap must be in [0, patch={self.patch}), got {self.overlap}")
        if not 0.0 <= self.min_observed_fraction <= 1.0:
            raise InputError(f"min_observed_fraction must be in [0, 1], got {self.min_observed_fraction}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")

    def hashable_dict(self) -> dict[str, Any]:
        """The options that determine the pixels (not where they are written)."""
        d = asdict(self)
        d["engine_options"] = dict(sorted(dict(self.engine_options).items()))
        return d


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


def batch_inputs(data: NDArray, valid: NDArray[np.bool_], windows: Sequence[PatchWindow], seed: int):
    """What an engine gets for ``windows``: float32 values (unobserved zeroed), observed
    masks and per-patch seeds. ``data``/``valid`` may be the scene or one window's read."""
    patches = np.stack([_patch_values(data, valid, w) for w in windows])
    observed = np.stack([valid[(slice(None), *w.slices)] for w in windows])
    return patches, observed, [patch_seed(seed, w) for w in windows]


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
    row0, col0 = origin
    blender = Blender((count, height, width))
    from_engine = np.zeros((height, width), dtype=np.float64)
    from_fallback = np.zeros((height, width), dtype=np.float64)
    row_list, col_list = list(rows), list(cols)
    for w, values, fallback in windows:
        r0, r1 = max(w.row_off, row0), min(w.row_off + w.height, row0 + height)
        c0, c1 = max(w.col_off, col0), min(w.col_off + w.width, col0 + width)
        if r0 >= r1 or c0 >= c1:
            continue
        ys, xs = slice(r0 - w.row_off, r1 - w.row_off), slice(c0 - w.col_off, c1 - w.col_off)
        weights = window_weights(w, row_list, col_list)[ys, xs]
        local = PatchWindow(r0 - row0, c0 - col0, r1 - r0, c1 - c0)
        blender.add(local, values[:, ys, xs], weights)
        (from_fallback if fallback else from_engine)[local.slices] += weights
    blended, covered = blender.finalize()

    target = ~valid & (state != OUTSIDE)[None]
    out = data.copy()
    fill_here = target & covered
    out[fill_here] = cast_to_dtype(blended[fill_here], data.dtype, nodata)
    missing_value = _missing_value(data.dtype, nodata)
    if missing_value is not None:
        out[~valid & ~fill_here] = missing_value

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


def _patch_values(data: NDArray, valid: NDArray[np.bool_], win: PatchWindow) -> NDArray[np.float32]:
    """A window of the bands as float32 with unobserved pixels zeroed (never NaN in a loss)."""
    sl = (slice(None), *win.slices)
    return np.where(valid[sl], data[sl], 0).astype(np.float32)


def _missing_value(dtype: np.dtype, nodata: float | None) -> float | None:
    if nodata is not None:
        return nodata
    if np.issubdtype(dtype, np.floating):
        return float("nan")
    return None


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

    engine = make_engine(options.engine, **dict(options.engine_options))
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
    outputs = _write_outputs(Path(out_dir), item_id, product, options, acq, rgb)
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


@dataclass
class SceneProduct:
    """What the writers need of a filled scene, held in memory (``dipfill fill``) or streamed
    back from its Zarr mosaic (``dipfill run``): ``bands`` and ``qa`` need only row slicing."""

    grid: Grid
    band_names: list[str]
    dtype: np.dtype
    nodata: float | None
    sources: list[str]
    bands: Any  # [band, y, x]: numpy or Zarr array
    qa: Any  # [y, x]
    footprint: NDArray[np.bool_] | None  # for the item geometry; None when the source item gives one
    preview: Preview
    counts: dict[str, int]
    diagnostics: Mapping[str, PatchDiagnostics]


def output_names(item_id: str, bands: int) -> dict[str, str]:
    """File names of a scene's outputs, by asset key (the item is ``item``)."""
    names = {
        "filled": f"{item_id}_filled.tif",
        "qa": f"{item_id}_qa.tif",
        "mosaic": "mosaic.zarr",
        "quicklook": f"{item_id}_quicklook.png",
        "patches": f"{item_id}_patches.json",
        "item": f"{item_id}.json",
    }
    for b in range(1, bands + 1):
        names[f"filled_{b}"] = f"{item_id}_filled_b{b}.vrt"
    return names


def mosaic_attrs(options: FillOptions) -> dict[str, Any]:
    return {"dipfill:version": __version__, "dipfill:config": options.hashable_dict(),
            "qa_flag_values": sorted(QA_CLASSES)}


def _write_outputs(
    out_dir: Path,
    item_id: str,
    product: SceneProduct,
    options: FillOptions,
    acquired: str | None,
    rgb: Sequence[int],
    extras: ItemExtras | None = None,
    *,
    mosaic_written: bool = False,
) -> dict[str, str]:
    """Write COGs, Zarr (unless ``mosaic_written``: a run's block tasks wrote it), quicklook,
    then the STAC item; remove ``out_dir`` if we made it and failed."""
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    names = output_names(item_id, len(product.band_names))
    paths = {k: out_dir / v for k, v in names.items()}
    try:
        write_cog(
            paths["filled"],
            product.bands,
            product.grid,
            nodata=product.nodata,
            band_names=product.band_names,
            tags={"DIPFILL_VERSION": __version__, "DIPFILL_ENGINE": options.engine},
        )
        write_cog(paths["qa"], product.qa, product.grid, nodata=None, band_names=["qa"], resampling="nearest")
        for b, band_name in enumerate(product.band_names, start=1):
            write_band_vrt(paths[f"filled_{b}"], names["filled"], b, product.grid, product.dtype, product.nodata,
                           band_name)
        if not mosaic_written:
            write_zarr_mosaic(paths["mosaic"], product.bands, product.qa, product.grid, nodata=product.nodata,
                              band_names=product.band_names, attrs=mosaic_attrs(options))
        write_quicklook(paths["quicklook"], product.preview, rgb=rgb)
        with staged(paths["patches"]) as tmp:
            tmp.write_text(_dump_json(patch_records(product.diagnostics)))
        item = _item(item_id, product, options, acquired, names, out_dir, extras or ItemExtras())
        with staged(paths["item"]) as tmp:
            tmp.write_text(_dump_json(item.to_dict(include_self_link=False)))
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    return {k: str(p) for k, p in paths.items()}


def patch_records(diagnostics: Mapping[str, PatchDiagnostics]) -> list[dict[str, Any]]:
    """One JSON record per fitted window: engine, steps used, best step and held-out RMSE,
    final loss, seconds, stopping reason and execution plan. Ordered by window id."""
    records = []
    for window_id in sorted(diagnostics):
        d = diagnostics[window_id]
        records.append({"window": window_id, **asdict(d)})
    return records


def _dump_json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


@dataclass(frozen=True)
class ItemExtras:
    """What a run knows about the source item: its geometry and bbox (used instead of the
    footprint's), ``derived_from`` hrefs and extra properties (source version...)."""

    geometry: dict[str, Any] | None = None
    bbox: Sequence[float] | None = None
    derived_from: Sequence[str] = ()
    properties: Mapping[str, Any] = field(default_factory=dict)
    scale_offset: Sequence[tuple[float, float]] = ()  # per band, from the source's raster:bands


def _item(item_id: str, scene: SceneProduct, options: FillOptions, acquired: str | None, names: Mapping[str, str],
          out_dir: Path, extras: ItemExtras):
    """Assemble the STAC item describing the written outputs (hrefs relative to it)."""
    from dipfill.pipeline.geometry import footprint_geometry
    from dipfill.stac.item import COG_MEDIA_TYPE, ZARR_MEDIA_TYPE, AssetSpec, ItemSpec, build_item, config_hash

    if extras.geometry is not None and extras.bbox is not None:
        geometry, bbox = extras.geometry, list(extras.bbox)
    else:
        geometry, bbox = footprint_geometry(scene.footprint, scene.grid)
    if acquired:
        when = dt.datetime.fromisoformat(acquired).replace(tzinfo=dt.timezone.utc)
        when_source = "input"
    else:
        when = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        when_source = "processing time (no acquisition date found; pass --datetime)"
    cfg = options.hashable_dict()
    nodata = None if scene.nodata is None or np.isnan(scene.nodata) else scene.nodata
    scales = list(extras.scale_offset) or [(1.0, 0.0)] * len(scene.band_names)
    bands = tuple(
        {"name": n, "data_type": scene.dtype.name, **({"nodata": nodata} if nodata is not None else {}),
         **({"scale": sc, "offset": off} if (sc, off) != (1.0, 0.0) else {})}
        for n, (sc, off) in zip(scene.band_names, scales)
    )
    qa_classes = [
        {"value": code, "name": name, "description": desc} for code, (name, desc) in QA_CLASSES.items()
    ]
    assets = [
        AssetSpec("filled", names["filled"], COG_MEDIA_TYPE, ("data",), "Filled bands (COG)", bands),
        AssetSpec(
            "qa",
            names["qa"],
            COG_MEDIA_TYPE,
            ("metadata",),
            "Fill QA (COG)",
            ({"name": "qa", "data_type": "uint8"},),
            {"classification:classes": qa_classes},
        ),
        *(
            AssetSpec(f"filled_{b}", names[f"filled_{b}"], "application/x-vrt", ("data",),
                      f"{band['name']} (one-band VRT of the filled COG, for one-band-per-asset readers)", (band,))
            for b, band in enumerate(bands, start=1)
        ),
        AssetSpec("mosaic", names["mosaic"], ZARR_MEDIA_TYPE, ("data",), "Filled scene (Zarr v3)"),
        AssetSpec("quicklook", names["quicklook"], "image/png", ("overview",), "Before | after"),
        AssetSpec("patches", names["patches"], "application/json", ("metadata",), "Per-patch fit diagnostics"),
    ]
    crs = scene.grid.crs
    spec = ItemSpec(
        item_id=item_id,
        geometry=geometry,
        bbox=bbox,
        datetime=when,
        epsg=crs.to_epsg() if crs else None,
        wkt2=crs.to_wkt() if crs else None,
        shape=scene.grid.shape,
        transform=list(scene.grid.transform)[:6],
        properties={
            "processing:software": {"dipfill": __version__},
            "processing:lineage": (
                f"Gaps filled with the '{options.engine}' engine (fallback '{options.fallback}') "
                f"in {options.patch}-px patches overlapping by {options.overlap} px, blended with "
                "a Hann taper; observed pixels copied from the source unchanged"
            ),
            "processing:datetime": dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
            .isoformat().replace("+00:00", "Z"),
            "processing:level": "L3",
            "dipfill:config": cfg,
            "dipfill:config_hash": config_hash(cfg),
            "dipfill:counts": scene.counts,
            "dipfill:datetime_source": when_source,
            "dipfill:sources": [os.path.basename(s) for s in scene.sources],
            **extras.properties,
        },
        assets=assets,
        files_dir=str(out_dir),
        derived_from=tuple(extras.derived_from),
    )
    item = build_item(spec)
    item.stac_extensions.append("https://stac-extensions.github.io/classification/v2.0.0/schema.json")
    return item
