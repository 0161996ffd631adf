"""`dipfill sr`: guided super-resolution of a low-resolution raster onto a guide's grid (paper 003 §3.2).

Two layers, as :mod:`~dipfill.pipeline.fill`:

* :func:`sr_arrays` — arrays and an :class:`~dipfill.tiling.resample.SRGeometry` in, the
  high-resolution (HR) bands on the guide's grid out. The HR pixels inside the LR
  footprint are cut into the usual patches (``--patch``/``--overlap``); each patch gets the
  LR window it owns (:func:`~dipfill.tiling.resample.lowres_window`: the LR pixels whose
  downsampling kernel lies inside it) for the networks, or the LR pixels its bicubic
  kernels touch for the baselines, and the patches are merged with the Hann-feathered
  :class:`~dipfill.tiling.merge.InMemoryMerger` like every fill.
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
from dipfill.engines.sr import bicubic, guided_filter_upsample, make_sr_engine
from dipfill.errors import InputError
from dipfill.pipeline.compose import qa_counts
from dipfill.pipeline.fill import _write_or_undo, check_datetime
from dipfill.pipeline.outputs import SceneProduct
from dipfill.pipeline.plan import patch_seed
from dipfill.raster.hrefs import redact_href
from dipfill.raster.masks import QA_ENGINE, QA_OUTSIDE, QA_UNFILLED
from dipfill.raster.read import Grid, Scene, acquisition_date, data_validity, read_scene
from dipfill.raster.write import Preview
from dipfill.specs import FillOptions
from dipfill.stac.item import ItemExtras
from dipfill.storage import as_path, check_output_dir
from dipfill.tiling.grid import PatchWindow, axis_starts
from dipfill.tiling.merge import InMemoryMerger, cast_to_dtype
from dipfill.tiling.resample import (KERNELS, SRGeometry, apply_operator, lowres_window, project_consistent,
                                     row_support)

__all__ = ["METHODS", "SRReport", "SRResult", "sr_geometry", "sr_arrays", "sr_files"]

log = logging.getLogger(__name__)

#: ``--method``: the two classical baselines and paper 003's two variants.
METHODS = ("bicubic", "guided-filter", "mcpn-direct", "mcpn-stacked")
#: Relative disagreement allowed between ``--scale FACTOR`` and the factor the grids give.
SCALE_TOLERANCE = 1e-3


@dataclass
class SRResult:
    """Output of :func:`sr_arrays`: HR values (float64, NaN where not made), per-window
    diagnostics, and the RMSE of the output's downsample against the LR input."""

    values: NDArray[np.float64]  # [C, H, W]
    diagnostics: dict[str, PatchDiagnostics]
    lowres_rmse: list[float]  # per band, data units, over LR pixels observed and wholly inside the output
    windows: int


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


def sr_geometry(low: Grid, high: Grid, scale: str | float = "auto", *, low_name: str = "LOWRES",
                high_name: str = "the guide") -> SRGeometry:
    """Where the LR grid ``low`` sits on the HR grid ``high``, or an :class:`InputError`.

    ``scale`` ``auto`` reads the factor from the transforms; a number is checked against them
    (it places the LR raster at the guide's origin only when the LR raster has no
    georeference at all). Refused: different CRSs, rotated grids, a factor below 1, an LR
    footprint the guide does not cover."""
    factor = None if str(scale) == "auto" else _factor(scale)
    georef = low.crs is not None and not low.transform.is_identity
    if not georef:
        if factor is None:
            raise InputError(f"{low_name} has no georeference (no CRS/transform); give --scale FACTOR to place it "
                             f"at the origin of {high_name}")
        return _checked((factor, factor), (0.0, 0.0), low, high, low_name, high_name)
    if high.crs is None:
        raise InputError(f"{high_name} has no CRS but {low_name} has one; the guide must be georeferenced")
    if low.crs != high.crs:
        raise InputError(f"{low_name} is in {low.crs} and {high_name} in {high.crs}; reproject the low-resolution "
                         f"raster to the guide's CRS first (gdalwarp -t_srs {high.crs})")
    for name, t in ((low_name, low.transform), (high_name, high.transform)):
        if t.b != 0 or t.d != 0:
            raise InputError(f"{name} is a rotated grid; dipfill sr needs north-up rasters")
    sx, sy = low.transform.a / high.transform.a, low.transform.e / high.transform.e
    if sx <= 0 or sy <= 0:
        raise InputError(f"{low_name} and {high_name} have axes pointing opposite ways; warp one to north-up")
    if factor is not None and (abs(sx - factor) > SCALE_TOLERANCE * sx or abs(sy - factor) > SCALE_TOLERANCE * sy):
        raise InputError(f"--scale {factor:g} disagrees with the grids: {low_name}'s pixels are {sx:g} x {sy:g} of "
                         f"{high_name}'s; leave --scale auto")
    offset = ((low.transform.f - high.transform.f) / high.transform.e,
              (low.transform.c - high.transform.c) / high.transform.a)
    return _checked((sy, sx), offset, low, high, low_name, high_name)


def _factor(scale: str | float) -> float:
    try:
        value = float(scale)
    except ValueError:
        raise InputError(f"--scale must be auto or a number >= 1, got {scale!r}") from None
    if not math.isfinite(value) or value < 1:
        raise InputError(f"--scale {scale}: the factor must be >= 1 (the low-resolution pixels are the larger ones)")
    return value


def _checked(scale: tuple[float, float], offset: tuple[float, float], low: Grid, high: Grid, low_name: str,
             high_name: str) -> SRGeometry:
    if min(scale) < 1:
        raise InputError(f"{low_name} has finer pixels than {high_name} (factor {min(scale):.3g} < 1); "
                         "pass the low-resolution raster first and the finer one as --guide")
    geo = SRGeometry(scale, offset, low.shape, high.shape)
    tol = 0.01  # HR pixels
    for k, axis in ((0, "rows"), (1, "columns")):
        lo = geo.offset[k]
        hi = lo + geo.lr_shape[k] * geo.scale[k]
        if lo < -tol or hi > geo.hr_shape[k] + tol:
            raise InputError(f"{high_name} does not cover the footprint of {low_name}: its {axis} span HR pixels "
                             f"{lo:.1f} to {hi:.1f} of the guide's 0 to {geo.hr_shape[k]}; give a guide that "
                             "covers the whole low-resolution raster (or crop it)")
    return geo


def sr_arrays(
    lowres: NDArray,
    lowres_valid: NDArray[np.bool_],
    guides: NDArray,
    guide_valid: NDArray[np.bool_],
    geometry: SRGeometry,
    *,
    method: str = "mcpn-direct",
    kernel: str = "bilinear",
    patch: int = 256,
    overlap: int = 32,
    seed: int = 0,
    engine_options: dict[str, Any] | None = None,
    consistency: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> SRResult:
    """Super-resolve ``lowres [C, h, w]`` onto the grid of ``guides [G, H, W]`` (see the module doc).

    ``consistency``: each patch's output is corrected by
    :func:`~dipfill.tiling.resample.project_consistent` so that its downsample equals the LR
    pixels it owns (the merge then feathers corrected patches); False writes the method's
    output as it is (the paper's protocol, what scripts/bench_sr.py scores)."""
    if method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if kernel not in KERNELS:
        raise InputError(f"--operator must be one of {', '.join(KERNELS)}, got {kernel!r}")
    c = lowres.shape[0]
    ay, ax = geometry.operators(kernel)
    support = (row_support(ay), row_support(ax))  # once, not per patch
    uy, ux = geometry.upsamplers()
    region = geometry.covered()
    if region.height == 0 or region.width == 0:
        raise InputError("the low-resolution raster covers no pixel centre of the guide")
    size = min(patch, max(region.height, region.width))
    rows = [region.row_off + s for s in axis_starts(region.height, size, min(overlap, size - 1))]
    cols = [region.col_off + s for s in axis_starts(region.width, size, min(overlap, size - 1))]
    h, w = min(size, region.height), min(size, region.width)
    windows = [PatchWindow(r, q, h, w) for r in rows for q in cols]
    low = np.asarray(lowres, dtype=np.float64)
    engine = make_sr_engine(method.split("-", 1)[1], **(engine_options or {})) if method.startswith("mcpn") else None
    merger = InMemoryMerger(c, region, rows=rows, cols=cols)
    diagnostics: dict[str, PatchDiagnostics] = {}
    for n, win in enumerate(windows):
        ys, xs = win.slices
        g, gv = guides[:, ys, xs], guide_valid[:, ys, xs]
        lwin, ay_w, ax_w = lowres_window(ay, ax, win, support)
        if engine is not None:
            if lwin.height == 0 or lwin.width == 0:
                raise InputError(f"a {win.height}x{win.width} patch holds no whole low-resolution pixel at factor "
                                 f"{max(geometry.scale):.3g}; give --patch of at least {_min_patch(geometry)}")
            ly, lx = lwin.slices
            values, diag = engine.upsample(low[:, ly, lx], lowres_valid[:, ly, lx], ay_w, ax_w, g, gv,
                                           seed=patch_seed(seed, win))
        else:
            (r0, r1), (c0, c1) = _support(uy[ys]), _support(ux[xs])
            args = (low[:, r0:r1, c0:c1], lowres_valid[:, r0:r1, c0:c1], uy[ys, r0:r1], ux[xs, c0:c1])
            start = time.perf_counter()
            if method == "bicubic":
                values = bicubic(*args)
            else:
                values = guided_filter_upsample(*args, g, gv, scale=max(geometry.scale),
                                                **{k: v for k, v in (engine_options or {}).items() if k == "eps"})
            diag = PatchDiagnostics(engine=method, seconds=time.perf_counter() - start)
        if consistency and lwin.height and lwin.width:
            ly, lx = lwin.slices
            values = project_consistent(values, low[:, ly, lx], lowres_valid[:, ly, lx], ay_w, ax_w)
        merger.aggregate(values, win)
        diagnostics[win.id] = diag
        if progress:
            progress(n + 1, len(windows))
    merged = merger.finalize()
    out = np.full((c,) + geometry.hr_shape, np.nan)
    out[(slice(None), *region.slices)] = merged.values
    return SRResult(out, diagnostics, _lowres_rmse(out, low, lowres_valid, ay, ax, region), len(windows))


def _min_patch(geo: SRGeometry) -> int:
    return int(math.ceil(4 * max(geo.scale)))


def _support(u: NDArray[np.float64]) -> tuple[int, int]:
    """The LR index range ``[first, last + 1)`` the rows of ``u`` give weight to."""
    cols = np.flatnonzero((u != 0).any(axis=0))
    return int(cols[0]), int(cols[-1]) + 1


def _lowres_rmse(out: NDArray[np.float64], low: NDArray[np.float64], valid: NDArray[np.bool_],
                 ay: NDArray[np.float64], ax: NDArray[np.float64], region: PatchWindow) -> list[float]:
    """Per band: RMSE between the output's downsample and the LR input over the LR pixels that
    are observed and whose whole kernel lies inside the made region."""
    lwin, ay_r, ax_r = lowres_window(ay, ax, region)
    if lwin.height == 0 or lwin.width == 0:
        return [float("nan")] * low.shape[0]
    down = apply_operator(ay_r, ax_r, out[(slice(None), *region.slices)])
    ly, lx = lwin.slices
    ok = valid[:, ly, lx] & np.isfinite(down) & np.isfinite(low[:, ly, lx])
    err = (down - low[:, ly, lx]) ** 2
    return [float(np.sqrt(err[b][ok[b]].mean())) if ok[b].any() else float("nan") for b in range(low.shape[0])]


def _nearest_preview(scene: Scene, geo: SRGeometry) -> tuple[NDArray, NDArray[np.bool_]]:
    """The LR input sampled (nearest) at the HR pixel centres: the quicklook's "before"."""
    idx = []
    for k in (0, 1):
        u = np.floor((np.arange(geo.hr_shape[k]) + 0.5 - geo.offset[k]) / geo.scale[k]).astype(np.int64)
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
    *,
    method: str = "mcpn-direct",
    scale: str | float = "auto",
    kernel: str = "bilinear",
    patch: int = 256,
    overlap: int = 32,
    seed: int = 0,
    engine_options: dict[str, Any] | None = None,
    consistency: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> SRProduct:
    """Super-resolve every scene of ``lows`` onto ``high``'s grid (all of ``high``'s bands form
    one guide) as one product, bands in the order of ``lows``.

    Each scene of ``lows`` is one low-resolution grid: a Sentinel-2 item's 20 m bands are
    one, its 60 m bands another (``dipfill run --mode sr``). Everything is checked before any
    engine work: each grid's place on the guide (:func:`sr_geometry`), one dtype and nodata
    for all (one product), the engine's options, a patch large enough to hold a whole LR
    pixel, and observed pixels in every scene."""
    if method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if kernel not in KERNELS:
        raise InputError(f"--operator must be one of {', '.join(KERNELS)}, got {kernel!r}")
    guide_name = f"guide {_name(high.sources[0])}"
    geos = [sr_geometry(low.grid, high.grid, scale, low_name=_name(low.sources[0]), high_name=guide_name)
            for low in lows]
    first = lows[0]
    for low in lows[1:]:
        if low.dtype != first.dtype or not _same_value(low.nodata, first.nodata):
            raise InputError(f"{_name(low.sources[0])} is {low.dtype} with nodata {low.nodata} but "
                             f"{_name(first.sources[0])} is {first.dtype} with nodata {first.nodata}; one product "
                             "needs one dtype and nodata: super-resolve them separately")
    if method.startswith("mcpn"):
        make_sr_engine(method.split("-", 1)[1], **dict(engine_options or {}))  # options checked before any work
        need = max(_min_patch(g) for g in geos)
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
    bands = sum(low.data.shape[0] for low in lows)
    data = np.empty((bands, *hr_shape), dtype=first.dtype)
    covered = np.zeros(hr_shape, dtype=bool)
    made_all = np.ones(hr_shape, dtype=bool)
    rmse: list[float] = []
    diagnostics: dict[str, PatchDiagnostics] = {}
    windows = 0
    befores, before_valids = [], []
    b = 0
    for k, (low, valid, geo) in enumerate(zip(lows, valids, geos)):
        result = sr_arrays(low.data, valid, high.data, high_valid, geo, method=method, kernel=kernel, patch=patch,
                           overlap=overlap, seed=seed, engine_options=engine_options, consistency=consistency,
                           progress=progress)
        made = np.isfinite(result.values)
        c = low.data.shape[0]
        band = cast_to_dtype(np.where(made, result.values, 0.0), first.dtype, nodata)
        band[~made] = np.asarray(nodata).astype(first.dtype)
        data[b:b + c] = band
        b += c
        del band
        covered[geo.covered().slices] = True
        made_all &= made.all(axis=0)
        rmse += result.lowres_rmse
        windows += result.windows
        prefix = f"{k}:" if len(lows) > 1 else ""  # one window id per LR grid
        diagnostics.update({prefix + key: d for key, d in result.diagnostics.items()})
        before, before_valid = _nearest_preview(low, geo)
        befores.append(before)
        before_valids.append(before_valid)
    qa = np.where(covered, np.where(made_all, QA_ENGINE, QA_UNFILLED), QA_OUTSIDE).astype(np.uint8)
    guide_records = [{"href": os.path.abspath(g) if "://" not in g else redact_href(g), "datetime": None,
                      "bands": int(high.data.shape[0]) if len(high.sources) == 1 else 1,
                      "resampling": "none (the output grid)"} for g in high.sources]
    made_mask = np.concatenate([np.ones((low.data.shape[0], 1, 1), bool) for low in lows]) & made_all[None]
    product = SceneProduct(
        grid=high.grid, band_names=[n for low in lows for n in low.band_names], dtype=first.dtype, nodata=nodata,
        sources=[s for low in lows for s in low.sources], bands=data, qa=qa, footprint=qa != QA_OUTSIDE,
        preview=Preview.of_block(np.concatenate(befores), data, np.concatenate(before_valids), made_mask, (0, 0),
                                 Preview.step_for(hr_shape)),
        counts=qa_counts(qa), diagnostics=diagnostics, guides=guide_records,
    )
    record = {
        "method": method,
        "variant": method.split("-", 1)[1] if method.startswith("mcpn") else None,
        "factor": [round(s, 6) for s in geos[0].scale],
        "offset": [round(o, 6) + 0.0 for o in geos[0].offset],
        "operator": kernel,
        "consistency": "projected" if consistency else "none",
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
    if method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if kernel not in KERNELS:
        raise InputError(f"--operator must be one of {', '.join(KERNELS)}, got {kernel!r}")
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
    made = super_resolve([low], high, method=method, scale=scale, kernel=kernel, patch=patch, overlap=overlap,
                         seed=seed, engine_options=engine_options, consistency=consistency, progress=progress)
    extras = ItemExtras(properties={"dipfill:mode": "sr", "dipfill:sr": made.record,
                                    "processing:lineage": f"{made.lineage} (dipfill sr)"})
    rgb = (0, 1, 2) if low.data.shape[0] >= 3 else (0, 0, 0)
    stem = Path(low.sources[0]).stem if len(low.sources) == 1 else "lowres"
    item_id = unique_id(item_id or stem) + "-sr"
    acquired = datetime or acquisition_date(low)
    outputs = _write_or_undo(as_path(out_dir), item_id, made.product, options, acquired, rgb, extras)
    return SRReport(item_id, outputs, method, made.geometries[0], made.product.counts, made.lowres_rmse,
                    made.windows, time.perf_counter() - t0, made.diagnostics)
