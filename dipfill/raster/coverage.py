"""How much of a target scene's gaps another acquisition observes, measured cheaply.

Choosing a guide means asking, for each candidate item, *which share of the target's gap
pixels does it observe?* — a pixel the candidate itself misses (its nodata, its QA fill
or cloud bits) is no evidence there. Answering at full resolution would read every
candidate whole; here both sides are *sampled* on one coarse grid of a few hundred
pixels a side:

* the target's one-byte state (OUTSIDE / OBSERVED / GAP, what ``dipfill run`` already
  holds after masking) is sampled at one pixel of each block (:func:`lowres_state`);
* the candidate's validity is read onto that grid with nearest resampling, from the
  finest of its full resolution and its overviews that stays within a pixel budget
  (:func:`observed_on_grid`), so a 7000² COG costs the bytes of an overview, not of the
  scene;
* the answer is the share of the GAP samples the candidate observes
  (:func:`gap_fraction_observed`).

Also :func:`median_composite`, the per-pixel median of several guides' clear
observations (a "historical" composite guide, paper 003).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.errors import InputError, SceneReadError
from dipfill.raster.gdal import gdal_env
from dipfill.raster.hrefs import redact_href
from dipfill.raster.masks import GAP, OBSERVED, decode_qa
from dipfill.raster.read import Grid, data_validity, open_raster
from dipfill.raster.scene import Signer, open_scene

__all__ = [
    "DEFAULT_MAX_SIDE",
    "DEFAULT_MAX_PIXELS",
    "lowres_state",
    "observed_on_grid",
    "gap_fraction_observed",
    "observed_fraction_of_gaps",
    "median_composite",
]

#: Samples per side of the coarse grid: 256² = 65 536 samples, a few thousand of them gaps
#: in a striped scene — a share known to about ±1 % (measured below).
DEFAULT_MAX_SIDE = 256
#: Most pixels read of one asset: the finest level (full resolution or an overview) within
#: it. 2048² px is about 8 MB of a uint16 band.
DEFAULT_MAX_PIXELS = 2048 * 2048


def lowres_state(
    target_state: NDArray[np.uint8], grid: Grid, max_side: int = DEFAULT_MAX_SIDE
) -> tuple[NDArray[np.uint8], Grid]:
    """The target's state sampled on a grid at most ``max_side`` pixels a side, and that grid.

    The scene is cut into ``f``×``f`` blocks (``f`` = ceil(longest side / max_side)) and
    each low-res pixel takes the state of **one pixel of its block, the first (top-left)
    one** — neither "any" nor "most" of the block. Why: the question is a share of gap
    *pixels*, and a regular sample of pixels estimates a share without bias whatever the
    gaps' shape; a block rule cannot. "Most" loses SLC-off stripes narrower than a block
    (at ``f`` = 32 the ARG25 demo scene has no mostly-gap block at all), and "any" makes
    every block touching a stripe a gap, counting the observed pixels between the stripes
    as gaps to fill. Measured on the ARG25 pair (the 2010-02-01 item observes 0.607 of the
    2010-01-16 item's gap pixels): "any" gives 0.57–0.71 for ``f`` = 4–32; one pixel per
    block gives 0.604–0.610 for ``f`` = 2–16, within ±0.02 over all 256 choices of that
    pixel at ``f`` = 16. And a sample is exact where a block share smears: an item missing
    exactly the target's gaps (sharing its files, or its stripes) observes none of the
    sampled gaps, while per-block shares would credit it with every mixed block.

    Why the top-left pixel: a nearest-resampled overview (GDAL's, ``gdaladdo -r nearest``
    and the COG driver) keeps the top-left pixel of each block too, so a candidate on the
    target's pixel grid read from a 2×, 4×, … overview dividing ``f`` is sampled at the
    very same pixels. That matters: SLC-off stripes are a few pixels wide, and moving the
    candidate's sample one pixel changes the ARG25 answer by up to 0.09.

    The returned grid's pixel centres are the sampled pixels' centres (its origin lies
    (f-1)/2 pixels up-left of the scene's).
    """
    state = np.asarray(target_state)
    if state.ndim != 2:
        raise InputError(f"target state must be [y, x], got shape {state.shape}")
    if state.shape != grid.shape:
        raise InputError(f"target state shape {state.shape} differs from its grid {grid.shape}")
    if int(max_side) < 1:
        raise InputError(f"max_side must be a positive number of pixels, got {max_side!r}")
    from affine import Affine

    f = max(1, math.ceil(max(state.shape) / int(max_side)))
    sampled = np.ascontiguousarray(state[::f, ::f])
    shift = -(f - 1) / 2
    transform = grid.transform @ Affine.translation(shift, shift) @ Affine.scale(f)
    return sampled, Grid(crs=grid.crs, transform=transform, width=sampled.shape[1], height=sampled.shape[0])


# ------------------------------------------------------------------ a candidate's validity
def _bounds(grid: Grid) -> tuple[float, float, float, float]:
    from rasterio.transform import array_bounds

    west, south, east, north = array_bounds(grid.height, grid.width, grid.transform)
    return west, south, east, north


def _level(factors: Sequence[int], step: float, pixels: float, max_pixels: int) -> int:
    """The decimation to read at: the finest of full resolution (1) and the overview
    ``factors`` that is no coarser than the grid (``step`` asset pixels per grid pixel)
    and reads at most ``max_pixels`` (``pixels`` at full resolution); else the coarsest
    no coarser than the grid."""
    usable = sorted({1, *(int(f) for f in factors if f <= max(1.0, step))})
    for f in usable:
        if pixels / (f * f) <= max_pixels:
            return f
    return usable[-1]


def _valid_on_grid(href: str, what: str, grid: Grid, test: Callable[[NDArray], NDArray[np.bool_]],
                   max_pixels: int) -> NDArray[np.bool_]:
    """``test`` (array → valid) of the asset at ``href``, sampled onto ``grid`` (nearest).

    Only the window under ``grid`` is read, from the finest level that costs at most
    ``max_pixels`` (:func:`_level`; an overview is opened as its own dataset, GDAL's
    ``OVERVIEW_LEVEL``). Pixels beyond the asset are not valid.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioIOError
    from rasterio.warp import reproject, transform_bounds
    from rasterio.windows import Window, from_bounds

    out = np.zeros(grid.shape, dtype=np.uint8)
    with open_raster(href, what) as ds:
        if ds.crs is None:
            raise SceneReadError(f"{what}: {redact_href(href)} has no CRS")
        bounds = _bounds(grid)
        if ds.crs != grid.crs:
            bounds = transform_bounds(grid.crs, ds.crs, *bounds, densify_pts=21)
        try:
            win = from_bounds(*bounds, transform=ds.transform)
        except Exception:  # rasterio raises WindowError for a degenerate or rotated case
            win = Window(0, 0, ds.width, ds.height)
        c0, r0 = max(0, math.floor(win.col_off) - 1), max(0, math.floor(win.row_off) - 1)
        c1 = min(ds.width, math.ceil(win.col_off + win.width) + 1)
        r1 = min(ds.height, math.ceil(win.row_off + win.height) + 1)
        if c1 <= c0 or r1 <= r0:
            return out.astype(bool)  # the asset lies beyond the grid
        step = min((bounds[2] - bounds[0]) / grid.width / abs(ds.transform.a),
                   (bounds[3] - bounds[1]) / grid.height / abs(ds.transform.e))
        factors = ds.overviews(1)
        level = _level(factors, step, (c1 - c0) * (r1 - r0), max_pixels)
        try:
            if level == 1:
                data = ds.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
                src_transform, src_crs = ds.window_transform(Window(c0, r0, c1 - c0, r1 - r0)), ds.crs
            else:
                with rasterio.open(href, overview_level=list(factors).index(level)) as ov:
                    sx, sy = ds.width / ov.width, ds.height / ov.height
                    oc0, or0 = math.floor(c0 / sx), math.floor(r0 / sy)
                    ow = Window(oc0, or0, min(ov.width, math.ceil(c1 / sx)) - oc0,
                                min(ov.height, math.ceil(r1 / sy)) - or0)
                    data = ov.read(1, window=ow)
                    src_transform, src_crs = ov.window_transform(ow), ov.crs
        except RasterioIOError as exc:
            raise SceneReadError(f"{what}: {redact_href(href)}: cannot read ({redact_href(str(exc))})") from exc
    ok = np.asarray(test(data), dtype=np.uint8)
    reproject(ok, out, src_transform=src_transform, src_crs=src_crs, src_nodata=0,
              dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=0, resampling=Resampling.nearest)
    return out.astype(bool)


def observed_on_grid(
    candidate_item: Mapping[str, Any],
    grid: Grid,
    *,
    bands: Sequence[str] | None = None,
    mask: Literal["fill", "clouds"] = "fill",
    sign: Signer | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    product: Literal["bands", "ndvi"] = "bands",
    accept: Sequence[int] | None = None,
) -> NDArray[np.bool_]:
    """Where ``candidate_item`` observes, sampled on ``grid`` (any CRS; nearest).

    Observed = every band in ``bands`` (default: its collection profile's
    ``default_bands`` that it has: the bands a run fills) has data (not its nodata,
    finite) and, where the profile has a QA
    layer, the QA decodes to observed (``mask="clouds"``: clouds and shadows are not
    observations either). Outside the candidate's rasters nothing is observed.

    ``product="ndvi"``: the assets NDVI comes from (red and NIR, or the index band) and the
    QA classes ``accept`` (MODIS pixel reliability; default "good") decide, as they do for
    the target (:func:`~dipfill.raster.scene.open_scene`).

    Each asset is read once, under ``grid`` only, from the finest level — full resolution
    or one of its overviews — that reads at most ``max_pixels`` pixels (and is no coarser
    than ``grid``): a 7000² Landsat band at the default reads its 4× overview. An asset
    without overviews is read at full resolution (GDAL would fetch every block of it for
    a decimated read too). A candidate on the target's pixel grid is sampled at the
    target's sampled pixels exactly at full resolution, and from nearest overviews whose
    factor divides the block size; otherwise up to a level's pixel size away, which
    matters for gaps a few pixels wide (see :func:`lowres_state`). Raises
    :class:`~dipfill.errors.InputError` for an item without a profile or band asset, and
    :class:`~dipfill.errors.SceneReadError` for an asset that cannot be read.
    """
    source = open_scene(dict(candidate_item), bands=bands, mask=mask, sign=sign, product=product, accept=accept)
    inputs = (zip(source.derive.keys, source.derive.hrefs, source.derive.nodata) if source.derive is not None
              else zip(source.band_keys, source.band_hrefs, source.nodata))
    observed = np.ones(grid.shape, dtype=bool)
    with gdal_env(dict(source.gdal_options)):
        for key, href, nodata in inputs:
            observed &= _valid_on_grid(href, f"item {source.item_id} asset {key}", grid,
                                       lambda a, nd=nodata: data_validity(a, nd), max_pixels)
        if source.qa_href is not None and source.profile.qa is not None:
            decoder = source.profile.qa.decoder

            def clear(qa: NDArray) -> NDArray[np.bool_]:
                inside = np.ones(qa.shape, dtype=bool)  # only "observed" matters here
                return decode_qa(decoder, qa, footprint=inside, mask=mask, accept=source.qa_accept) == OBSERVED

            observed &= _valid_on_grid(source.qa_href, f"item {source.item_id} asset {source.qa_key}", grid, clear,
                                       max_pixels)
    return observed


def gap_fraction_observed(observed: NDArray[np.bool_], state_lowres: NDArray[np.uint8]) -> float:
    """Share of the GAP pixels of ``state_lowres`` where ``observed`` is True (NaN when
    there is no gap)."""
    observed, state = np.asarray(observed, dtype=bool), np.asarray(state_lowres)
    if observed.shape != state.shape:
        raise InputError(f"observed shape {observed.shape} differs from the state's {state.shape}")
    gaps = state == GAP
    n = int(gaps.sum())
    return float(observed[gaps].sum() / n) if n else math.nan


def observed_fraction_of_gaps(
    candidate_item: Mapping[str, Any],
    target_state_lowres: NDArray[np.uint8],
    lowres_grid: Grid,
    *,
    bands: Sequence[str] | None = None,
    mask: Literal["fill", "clouds"] = "fill",
    sign: Signer | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> float:
    """Share (0..1) of the target's gap pixels that ``candidate_item`` observes, measured
    on the coarse grid of :func:`lowres_state` (NaN when the target has no gap there).
    See :func:`observed_on_grid` for what counts as observed."""
    observed = observed_on_grid(candidate_item, lowres_grid, bands=bands, mask=mask, sign=sign,
                                max_pixels=max_pixels)
    return gap_fraction_observed(observed, target_state_lowres)


# ----------------------------------------------------------------------- composite guide
def median_composite(
    values: NDArray, valid: NDArray[np.bool_]
) -> tuple[NDArray[np.floating], NDArray[np.bool_]]:
    """Per-pixel, per-band median of the valid observations of K guides.

    ``values[K, C, h, w]`` (any numeric dtype) and ``valid[K, C, h, w]`` → ``values[C,
    h, w]`` and ``valid[C, h, w]``: valid where at least one member is (NaN elsewhere).
    With an even number of valid members the median is the mean of the middle two, so
    the result is float (float64 input stays float64, anything else becomes float32).
    A non-finite value counts as not valid.
    """
    values = np.asarray(values)
    valid = np.asarray(valid, dtype=bool)
    if values.ndim != 4 or values.shape != valid.shape:
        raise InputError(f"values and valid must both be [K, C, h, w]; got {values.shape} and {valid.shape}")
    out_dtype = np.float64 if values.dtype == np.float64 else np.float32
    v = values.astype(np.float64)
    ok = valid & np.isfinite(v)
    k = v.shape[0]
    if k == 0:
        raise InputError("a median composite needs at least one member")
    v = np.where(ok, v, np.nan)
    v.sort(axis=0)  # NaN sorts last: the first n of each pixel are its valid values
    n = ok.sum(axis=0)
    lo = np.clip((n - 1) // 2, 0, k - 1)[None]
    hi = np.clip(n // 2, 0, k - 1)[None]
    median = (np.take_along_axis(v, lo, 0)[0] + np.take_along_axis(v, hi, 0)[0]) / 2
    any_valid = n > 0
    median[~any_valid] = np.nan
    return median.astype(out_dtype), any_valid
