"""`dipfill sr`: guided super-resolution of a low-resolution raster onto a guide's grid (paper 003 §3.2).

Three layers, as :mod:`~dipfill.pipeline.fill`:

* :func:`sr_arrays` — arrays and an :class:`~dipfill.tiling.resample.SRGeometry` in, the
  high-resolution (HR) bands on the guide's grid out, strip by strip. The HR pixels inside
  the LR footprint are cut into the usual patches (``--patch``/``--overlap``); each patch
  gets the LR window it owns (:func:`~dipfill.tiling.resample.lowres_window`: the LR pixels
  whose downsampling kernel lies inside it) for the networks, or the LR pixels its bicubic
  kernels touch for the baselines, and the patches are merged with the Hann-feathered
  :class:`~dipfill.tiling.merge.InMemoryMerger` like every fill, a strip of rows at a time.
* :func:`super_resolve` — one or more LR scenes (one grid each) onto one guide as one
  product in the LR dtype, with the consistency check and the quicklook (what both
  ``dipfill sr`` and ``dipfill run --mode sr`` write).
* :func:`sr_files` — reads the LR raster(s) and the guide raster(s), derives the geometry
  from their transforms (:func:`sr_geometry`: same CRS, north-up, any non-integer factor
  >= 1 and sub-pixel shift; the guide must cover the LR footprint), validates everything
  before any engine work, then writes the products of ``dipfill fill`` (one COG per band,
  VRT, QA, Zarr mosaic, quicklook, patch diagnostics) with the STAC item last.

Outputs are on the guide's grid (its CRS, transform and size) in the LR input's dtype and
nodata; HR pixels whose centre lies outside the LR footprint are nodata (QA ``outside``),
never extrapolated. The item says ``dipfill:mode = sr`` and ``dipfill:sr`` (method,
variant, factor, offset, operator, the LR input, the guides, and how well the output's
downsample reproduces the LR input).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.engines.base import PatchDiagnostics
from dipfill.engines.sr import make_sr_engine
from dipfill.errors import InputError
from dipfill.pipeline.compose import qa_counts
from dipfill.pipeline.fill import _write_or_undo, check_datetime
from dipfill.pipeline.outputs import SceneProduct
from dipfill.pipeline.plan import patch_seed
from dipfill.pipeline.sr_geometry import min_patch, sr_geometry
from dipfill.pipeline.sr_patch import SREngines, SRPatch, upsample_patch
from dipfill.raster.hrefs import redact_href
from dipfill.raster.masks import QA_ENGINE, QA_OUTSIDE, QA_UNFILLED
from dipfill.raster.read import Scene, acquisition_date, data_validity, read_scene
from dipfill.raster.write import Preview
from dipfill.specs import FillOptions
from dipfill.stac.item import ItemExtras
from dipfill.storage import as_path, check_output_dir
from dipfill.tiling.grid import PatchWindow, axis_starts
from dipfill.tiling.merge import InMemoryMerger, cast_to_dtype
from dipfill.tiling.resample import KERNELS, BandedOperator, SRGeometry, apply_operator, lowres_window

__all__ = ["METHODS", "SRSettings", "SRProduct", "SRReport", "SRResult", "sr_geometry", "sr_arrays", "super_resolve",
           "sr_files"]

log = logging.getLogger(__name__)

#: ``--method``: the two classical baselines and paper 003's two variants.
METHODS = ("bicubic", "guided-filter", "mcpn-direct", "mcpn-stacked")


@dataclass(frozen=True)
class SRSettings:
    """How to super-resolve, whatever the inputs: the method (``engine_options``: its network's
    or the guided filter's options), the downsampling operator ``kernel``, the patches and
    their seed, and whether each patch is projected onto the LR pixels it owns. Checked when
    made: a wrong method or operator is one line before any read."""

    method: str = "mcpn-direct"
    kernel: str = "bilinear"
    patch: int = 256
    overlap: int = 32
    seed: int = 0
    engine_options: dict[str, Any] = field(default_factory=dict)
    consistency: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.kernel not in KERNELS:
            raise InputError(f"--operator must be one of {', '.join(KERNELS)}, got {self.kernel!r}")

    @property
    def networks(self) -> bool:
        """Whether the method fits paper 003's networks (``mcpn-*``)."""
        return self.method.startswith("mcpn")


@dataclass
class SRResult:
    """What :func:`sr_arrays` did besides handing its rows to ``sink``: the region it made
    (the HR pixels inside the LR footprint), per-window diagnostics, the window count."""

    region: PatchWindow
    diagnostics: dict[str, PatchDiagnostics]
    windows: int
    operators: tuple[BandedOperator, BandedOperator]  # (Ay, Ax): the consistency check reuses them
    support: tuple[Any, Any]  # their row support, computed once


@dataclass
class SRReport:
    """What :func:`sr_files` did; printed by the CLI."""

    item_id: str
    outputs: dict[str, str]
    method: str
    geometry: SRGeometry
    counts: dict[str, int]
    lowres_rmse: list[float]
    windows: int
    seconds: float
    diagnostics: dict[str, PatchDiagnostics] = field(default_factory=dict)


def sr_arrays(
    lowres: NDArray,
    lowres_valid: NDArray[np.bool_],
    guides: NDArray,
    guide_valid: NDArray[np.bool_],
    geometry: SRGeometry,
    settings: SRSettings,
    *,
    sink: Callable[[int, NDArray[np.float64]], None],
    progress: Callable[[int, int], None] | None = None,
    executor: Any = None,
) -> SRResult:
    """Super-resolve ``lowres [C, h, w]`` onto the grid of ``guides [G, H, W]`` (see the module
    doc), handing the merged HR rows to ``sink(first_row, values [C, rows, region width])``
    (float64, NaN where not made) as soon as no later patch reaches them.

    Memory is two rows of patches, not the scene: the patches are fitted row by row, and
    each strip of rows from one row of patches' start to the next one's is merged by its own
    :class:`~dipfill.tiling.merge.InMemoryMerger` over the patches that reach it, with the
    feathering weights of the whole grid (the same sums in the same order as one merger
    over the region: the same bytes).

    ``consistency``: each patch's output is corrected by
    :func:`~dipfill.tiling.resample.project_consistent` so that its downsample equals the LR
    pixels it owns (the merge then feathers corrected patches); False writes the method's
    output as it is (the paper's protocol, what scripts/bench_sr.py scores).

    ``executor``: an :class:`~dipfill.pipeline.executor.Executor` whose workers compute each
    row's patches side by side (:class:`~dipfill.pipeline.sr_patch.SRPatch` tasks, ``upsample``);
    None computes them here. Either way the same bytes."""
    c = lowres.shape[0]
    method, patch, overlap, seed = settings.method, settings.patch, settings.overlap, settings.seed
    ay, ax = geometry.banded_operators(settings.kernel)  # blocks on demand: never the whole LR x HR matrices
    support = (ay.support(), ax.support())  # once, not per patch
    uy, ux = geometry.banded_upsamplers()
    region = geometry.covered()
    if region.height == 0 or region.width == 0:
        raise InputError("the low-resolution raster covers no pixel centre of the guide")
    size = min(patch, max(region.height, region.width))
    rows = [region.row_off + s for s in axis_starts(region.height, size, min(overlap, size - 1))]
    cols = [region.col_off + s for s in axis_starts(region.width, size, min(overlap, size - 1))]
    h, w = min(size, region.height), min(size, region.width)
    total = len(rows) * len(cols)
    low = np.asarray(lowres, dtype=np.float64)
    networks = settings.networks
    engine = SREngines().get(method, dict(settings.engine_options)) if executor is None else None
    diagnostics: dict[str, PatchDiagnostics] = {}

    def patch_task(win: PatchWindow) -> SRPatch:
        """The patch's inputs, cut out of the scene's arrays and operators."""
        ys, xs = win.slices
        lwin, ay_w, ax_w = lowres_window(ay, ax, win, support)
        if networks and (lwin.height == 0 or lwin.width == 0):
            raise InputError(f"a {win.height}x{win.width} patch holds no whole low-resolution pixel at factor "
                             f"{max(geometry.scale):.3g}; give --patch of at least {min_patch(geometry)}")
        ly, lx = lwin.slices
        base: dict[str, Any] = {}
        if not networks:
            (r0, r1), (c0, c1) = _support(uy[ys]), _support(ux[xs])
            base = {"low": low[:, r0:r1, c0:c1], "low_valid": lowres_valid[:, r0:r1, c0:c1],
                    "uy": uy[ys, r0:r1], "ux": ux[xs, c0:c1]}
        return SRPatch(win, method, guides[:, ys, xs], guide_valid[:, ys, xs], low[:, ly, lx],
                       lowres_valid[:, ly, lx], ay_w, ax_w, patch_seed(seed, win), settings.consistency,
                       max(geometry.scale), dict(settings.engine_options), **base)

    def upsample_rows(windows: list[PatchWindow]) -> list[tuple[NDArray[np.float64], PatchDiagnostics]]:
        """Rows of patches, here or on the executor's workers (the same bytes)."""
        if executor is None:
            return [upsample_patch(patch_task(win), engine) for win in windows]
        done: dict[str, tuple[NDArray[np.float64], PatchDiagnostics]] = {}
        executor.run([patch_task(win) for win in windows],
                     lambda task, result: done.__setitem__(task.window.id, result), "upsample")
        return [done[win.id] for win in windows]

    # rows sent to the executor at once: enough patches for every worker (a 10980² tile's row
    # is ~43 patches; a cluster of 64 GPUs takes two rows), no more (memory: those rows)
    per_call = max(1, -(-len(getattr(executor, "actors", ())) // len(cols)))
    pending: list[tuple[PatchWindow, NDArray[np.float64]]] = []  # fitted patches that reach rows not yet merged
    end = region.row_off + region.height
    for first in range(0, len(rows), per_call):
        chunk = range(first, min(first + per_call, len(rows)))
        windows = [PatchWindow(rows[i], q, h, w) for i in chunk for q in cols]
        fitted = dict(zip((win.id for win in windows), upsample_rows(windows)))
        for i in chunk:
            for q in cols:
                win = PatchWindow(rows[i], q, h, w)
                values, diagnostics[win.id] = fitted.pop(win.id)
                pending.append((win, values))
            if progress:
                progress(len(diagnostics), total)
            top, bottom = rows[i], rows[i + 1] if i + 1 < len(rows) else end
            merger = InMemoryMerger(c, PatchWindow(top, region.col_off, bottom - top, region.width), rows=rows,
                                    cols=cols)
            for win, values in pending:
                merger.aggregate(values, win)
            sink(top, merger.finalize().values)
            pending = [(win, values) for win, values in pending if win.row_off + win.height > bottom]
    return SRResult(region, diagnostics, total, (ay, ax), support)


def _support(u: NDArray[np.float64]) -> tuple[int, int]:
    """The LR index range ``[first, last + 1)`` the rows of ``u`` give weight to."""
    cols = np.flatnonzero((u != 0).any(axis=0))
    return int(cols[0]), int(cols[-1]) + 1


def _lowres_rmse(data: NDArray, made: NDArray[np.bool_], low: NDArray[np.float64], valid: NDArray[np.bool_],
                 ay: BandedOperator, ax: BandedOperator, support: tuple[Any, Any], region: PatchWindow,
                 strip: int = 1024) -> list[float]:
    """Per band: RMSE between the written output's downsample (``data [C, H, W]`` where
    ``made``) and the LR input, over the LR pixels that are observed and whose whole kernel
    lies inside the made ``region``. By strips of HR rows (each strip reaching one kernel
    further, each LR row counted once): memory is a strip, not the scene."""
    c = low.shape[0]
    first, last = support[0]
    reach = int((last - first + 1)[first <= last].max(initial=1))
    sse, count = np.zeros(c), np.zeros(c, dtype=np.int64)
    done = 0  # LR rows before this one are counted
    end = region.row_off + region.height
    cols = slice(region.col_off, region.col_off + region.width)
    for r0 in range(region.row_off, end, strip):
        r1 = min(end, r0 + strip + reach)
        lwin, ay_w, ax_w = lowres_window(ay, ax, PatchWindow(r0, region.col_off, r1 - r0, region.width), support)
        skip = max(0, done - lwin.row_off)
        if lwin.width and lwin.height > skip:
            block = np.where(made[None, r0:r1, cols], data[:, r0:r1, cols], np.nan)
            down = apply_operator(ay_w[skip:], ax_w, block)
            ly, lx = slice(lwin.row_off + skip, lwin.row_off + lwin.height), lwin.slices[1]
            ok = valid[:, ly, lx] & np.isfinite(down) & np.isfinite(low[:, ly, lx])
            err = np.where(ok, down - low[:, ly, lx], 0.0) ** 2
            sse += err.sum(axis=(1, 2))
            count += ok.sum(axis=(1, 2))
            done = lwin.row_off + lwin.height
        if r1 == end:
            break
    return [float(np.sqrt(sse[b] / count[b])) if count[b] else float("nan") for b in range(c)]


def _nearest_preview(scene: Scene, geo: SRGeometry, step: int) -> tuple[NDArray, NDArray[np.bool_]]:
    """The LR input sampled (nearest) at every ``step``-th HR pixel centre: the quicklook's
    "before" (:class:`~dipfill.raster.write.Preview`'s pixels, not the whole HR grid)."""
    idx = []
    for k in (0, 1):
        u = np.floor((np.arange(0, geo.hr_shape[k], step) + 0.5 - geo.offset[k]) / geo.scale[k]).astype(np.int64)
        idx.append((np.clip(u, 0, geo.lr_shape[k] - 1), (u >= 0) & (u < geo.lr_shape[k])))
    (iy, oky), (ix, okx) = idx
    before = scene.data[:, iy[:, None], ix[None, :]]
    valid = data_validity(before, scene.nodata) & (oky[:, None] & okx[None, :])[None]
    return before, valid


@dataclass
class SRProduct:
    """What :func:`super_resolve` made: the product to write (band assets and item extras are
    the caller's), the item's ``dipfill:sr`` record, and the figures the CLI prints."""

    product: SceneProduct
    record: dict[str, Any]
    lineage: str
    geometries: list[SRGeometry]
    lowres_rmse: list[float]
    windows: int
    diagnostics: dict[str, PatchDiagnostics]


def _name(href: str) -> str:
    return os.path.basename(redact_href(href))


def super_resolve(
    lows: Sequence[Scene],
    high: Scene,
    settings: SRSettings,
    *,
    scale: str | float = "auto",
    progress: Callable[[int, int], None] | None = None,
    executor: Any = None,
) -> SRProduct:
    """Super-resolve every scene of ``lows`` onto ``high``'s grid (all of ``high``'s bands form
    one guide) as one product, bands in the order of ``lows``.

    Each scene of ``lows`` is one low-resolution grid: a Sentinel-2 item's 20 m bands are
    one, its 60 m bands another (``dipfill run --mode sr``). Everything is checked before any
    engine work: each grid's place on the guide (:func:`sr_geometry`), one dtype and nodata
    for all (one product), the engine's options, a patch large enough to hold a whole LR
    pixel, and observed pixels in every scene. ``executor``: see :func:`sr_arrays`."""
    method, patch, overlap = settings.method, settings.patch, settings.overlap
    guide_name = f"guide {_name(high.sources[0])}"
    geos = [sr_geometry(low.grid, high.grid, scale, low_name=_name(low.sources[0]), high_name=guide_name)
            for low in lows]
    first = lows[0]
    for low in lows[1:]:
        if low.dtype != first.dtype or not _same_value(low.nodata, first.nodata):
            raise InputError(f"{_name(low.sources[0])} is {low.dtype} with nodata {low.nodata} but "
                             f"{_name(first.sources[0])} is {first.dtype} with nodata {first.nodata}; one product "
                             "needs one dtype and nodata: super-resolve them separately")
    if settings.networks:
        make_sr_engine(method.split("-", 1)[1], **dict(settings.engine_options))  # options checked before any work
        need = max(min_patch(g) for g in geos)
        if min(patch, max(geos[0].hr_shape)) < need and min(geos[0].hr_shape) >= need:
            raise InputError(f"--patch {patch} holds no whole low-resolution pixel at factor "
                             f"{max(max(g.scale) for g in geos):.3g}; give --patch of at least {need}")
    valids = [data_validity(low.data, low.nodata) for low in lows]
    for low, valid in zip(lows, valids):
        if not valid.any():
            raise InputError(f"{_name(low.sources[0])}: every pixel is nodata; nothing to super-resolve")
    high_valid = data_validity(high.data, high.nodata)

    nodata = first.nodata
    if nodata is None:
        nodata = float("nan") if np.issubdtype(first.dtype, np.floating) else 0.0
    hr_shape = geos[0].hr_shape
    fill = np.asarray(nodata).astype(first.dtype)
    data = np.full((sum(low.data.shape[0] for low in lows), *hr_shape), fill, dtype=first.dtype)
    covered = np.zeros(hr_shape, dtype=bool)
    made_all = np.ones(hr_shape, dtype=bool)
    rmse: list[float] = []
    diagnostics: dict[str, PatchDiagnostics] = {}
    windows = 0
    step = Preview.step_for(hr_shape)
    befores, before_valids = [], []
    b = 0
    for k, (low, valid, geo) in enumerate(zip(lows, valids, geos)):
        c, region = low.data.shape[0], geo.covered()
        made = np.zeros(hr_shape, dtype=bool)  # every band of this grid made

        def sink(top: int, values: NDArray[np.float64], b: int = b, c: int = c, made: NDArray[np.bool_] = made,
                 cols: slice = slice(region.col_off, region.col_off + region.width)) -> None:
            """Merged rows of this grid's bands into the output, in its dtype."""
            rows = slice(top, top + values.shape[1])
            ok = np.isfinite(values)
            band = cast_to_dtype(np.where(ok, values, 0.0), first.dtype, nodata)
            band[~ok] = fill
            data[b:b + c, rows, cols] = band
            made[rows, cols] = ok.all(axis=0)

        result = sr_arrays(low.data, valid, high.data, high_valid, geo, settings, sink=sink, progress=progress,
                           executor=executor)
        rmse += _lowres_rmse(data[b:b + c], made, np.asarray(low.data, dtype=np.float64), valid, *result.operators,
                             result.support, result.region)
        b += c
        covered[result.region.slices] = True
        made_all &= made
        windows += result.windows
        prefix = f"{k}:" if len(lows) > 1 else ""  # one window id per LR grid
        diagnostics.update({prefix + key: d for key, d in result.diagnostics.items()})
        before, before_valid = _nearest_preview(low, geo, step)
        befores.append(before)
        before_valids.append(before_valid)
    qa = np.full(hr_shape, QA_OUTSIDE, dtype=np.uint8)
    qa[covered] = QA_UNFILLED
    qa[covered & made_all] = QA_ENGINE
    guide_records = [{"href": os.path.abspath(g) if "://" not in g else redact_href(g), "datetime": None,
                      "bands": int(high.data.shape[0]) if len(high.sources) == 1 else 1,
                      "resampling": "none (the output grid)"} for g in high.sources]
    after_valid = np.broadcast_to(made_all[None, ::step, ::step], (data.shape[0], *made_all[::step, ::step].shape))
    product = SceneProduct(
        grid=high.grid, band_names=[n for low in lows for n in low.band_names], dtype=first.dtype, nodata=nodata,
        sources=[s for low in lows for s in low.sources], bands=data, qa=qa, footprint=qa != QA_OUTSIDE,
        preview=Preview(np.concatenate(befores), data[:, ::step, ::step], np.concatenate(before_valids),
                        np.ascontiguousarray(after_valid)),
        counts=qa_counts(qa), diagnostics=diagnostics, guides=guide_records,
    )
    record = {
        "method": method,
        "variant": method.split("-", 1)[1] if method.startswith("mcpn") else None,
        "factor": [round(s, 6) for s in geos[0].scale],
        "offset": [round(o, 6) + 0.0 for o in geos[0].offset],
        "operator": settings.kernel,
        "consistency": "projected" if settings.consistency else "none",
        "lowres": [_name(s) for low in lows for s in low.sources],
        "lowres_shape": list(geos[0].lr_shape),
        "lowres_transform": list(first.grid.transform)[:6],
        "guide": [_name(s) for s in high.sources],
        "guide_bands": int(high.data.shape[0]),
        "lowres_rmse": rmse,
        # every LR grid (the flat fields above are the first one's)
        "grids": [{"bands": list(low.band_names), "factor": [round(s, 6) for s in geo.scale],
                   "offset": [round(o, 6) + 0.0 for o in geo.offset], "lowres_shape": list(geo.lr_shape),
                   "lowres_transform": list(low.grid.transform)[:6]} for low, geo in zip(lows, geos)],
    }
    factors = " and ".join(dict.fromkeys(f"{max(g.scale):g}" for g in geos))
    lineage = (f"Guided super-resolution (paper 003 §3.2) of {', '.join(record['lowres'])} by {factors} onto the "
               f"grid of the guide {', '.join(record['guide'])} with {method} in {patch}-px patches overlapping by "
               f"{overlap} px, blended with a Hann taper")
    return SRProduct(product, record, lineage, geos, rmse, windows, diagnostics)


def _same_value(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def sr_files(
    lowres: Sequence[str],
    guides: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    method: str = "mcpn-direct",
    scale: str | float = "auto",
    kernel: str = "bilinear",
    patch: int = 256,
    overlap: int = 32,
    seed: int = 0,
    engine_options: dict[str, Any] | None = None,
    item_id: str | None = None,
    datetime: str | None = None,
    consistency: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> SRReport:
    """Super-resolve the raster(s) ``lowres`` (one grid) with the guide raster(s) ``guides`` (one
    grid; all their bands form one guide modality) and write the products into ``out_dir``."""
    from dipfill.stac.ids import unique_id

    t0 = time.perf_counter()
    check_output_dir(out_dir)
    settings = SRSettings(method, kernel, patch, overlap, seed, dict(engine_options or {}), consistency)
    if not guides:
        raise InputError("dipfill sr needs --guide HIGHRES: the finer raster whose grid the output takes")
    if datetime is not None:
        datetime = check_datetime(datetime)
    options = FillOptions(engine=method, engine_options={**(engine_options or {}), "consistency": consistency},
                          fallback="none", patch=patch,
                          overlap=overlap, seed=seed, guides=tuple(guides))
    low = read_scene(lowres)
    high = read_scene(guides)
    if len(low.sources) == low.data.shape[0] and all(n == f"band{i + 1}" or not n
                                                     for i, n in enumerate(low.band_names)):
        low.band_names = [Path(s).stem for s in low.sources]  # B11.tif -> B11, not band1
    made = super_resolve([low], high, settings, scale=scale, progress=progress)
    extras = ItemExtras(properties={"dipfill:mode": "sr", "dipfill:sr": made.record,
                                    "processing:lineage": f"{made.lineage} (dipfill sr)"})
    rgb = (0, 1, 2) if low.data.shape[0] >= 3 else (0, 0, 0)
    stem = Path(low.sources[0]).stem if len(low.sources) == 1 else "lowres"
    item_id = unique_id(item_id or stem) + "-sr"
    acquired = datetime or acquisition_date(low)
    outputs = _write_or_undo(as_path(out_dir), item_id, made.product, options, acquired, rgb, extras)
    return SRReport(item_id, outputs, method, made.geometries[0], made.product.counts, made.lowres_rmse,
                    made.windows, time.perf_counter() - t0, made.diagnostics)
