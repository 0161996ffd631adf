"""Read one STAC item as a scene: bands on one grid, the three-state mask, the footprint.

The one place where a STAC item becomes pixels. A collection profile
(:mod:`dipfill.stac.profiles`) says which assets hold the bands and the QA layer and how
the QA decodes; this module resolves the hrefs (relative ones against the item's self
href; local paths, ``file://``, ``http(s)://`` and ``s3://`` through GDAL's virtual file
systems; an optional ``sign`` hook such as ``planetary_computer.sign``), picks one target
grid (the finest band's, the coarsest's, or a given resolution) and reads any window of
it: assets already on the grid are read as they are (bit-exact), others through a
``WarpedVRT`` (``resampling`` for bands, nearest for the QA layer), so a patch window
costs the bytes of that window, not of the scene.

:func:`open_scene` returns a :class:`SceneSource`: a small frozen description (hrefs,
grid, options; no open datasets) that pickles to a worker, which calls
:meth:`SceneSource.read` for its window. :func:`read_window` and :func:`read_item` are
the one-call forms.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.errors import InputError, SceneReadError
from dipfill.raster.gdal import gdal_env
from dipfill.raster.hrefs import redact_href, resolve_href
from dipfill.raster.masks import (
    ACCEPTING_DECODERS,
    GAP,
    OBSERVED,
    OUTSIDE,
    MaskMode,
    decode_qa,
    footprint_from_validity,
    three_state,
)
from dipfill.raster.ndvi import NDVI_BAND, NdviInputs
from dipfill.raster.read import Grid
from dipfill.stac.item import self_href
from dipfill.stac.profiles import CollectionProfile, band_scale_offset, profile_for

__all__ = [
    "SceneSource",
    "SceneData",
    "open_scene",
    "read_window",
    "read_item",
]

log = logging.getLogger(__name__)

Resolution = float | Literal["finest", "coarsest"]
Signer = Callable[[str], str]


def _as_dict(item: Any) -> tuple[dict[str, Any], str | None]:
    """A STAC item as a dict and the href relative asset hrefs are resolved against."""
    if isinstance(item, Mapping):
        return dict(item), self_href(item)
    to_dict = getattr(item, "to_dict", None)
    if to_dict is None:
        raise InputError(f"not a STAC item (pystac.Item or dict): {type(item).__name__}")
    base = item.get_self_href() if hasattr(item, "get_self_href") else None
    d = to_dict(include_self_link=False, transform_hrefs=False)
    # pystac keeps asset hrefs as given; make them absolute where the item knows how
    for key, asset in getattr(item, "assets", {}).items():
        with contextlib.suppress(Exception):
            absolute = asset.get_absolute_href()
            if absolute:
                d["assets"][key]["href"] = absolute
    return d, base


# ------------------------------------------------------------------------ descriptors
@dataclass(frozen=True)
class SceneSource:
    """Where one scene's pixels are and how to put them on one grid.

    Holds no open dataset: cheap to pickle to a worker, which calls :meth:`read`.
    ``window`` arguments are rasterio ``Window`` s (or ``((row0, row1), (col0, col1))``)
    in pixels of ``grid``.
    """

    item_id: str
    collection: str | None
    profile: CollectionProfile
    grid: Grid
    band_names: tuple[str, ...]
    band_keys: tuple[str, ...]
    band_hrefs: tuple[str, ...]
    nodata: tuple[float | None, ...]
    scale: tuple[float, ...]
    offset: tuple[float, ...]
    qa_key: str | None
    qa_href: str | None
    geometry: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    mask: MaskMode = "fill"
    resampling: str = "nearest"
    db: bool = False
    gdal_options: tuple[tuple[str, str], ...] = ()
    # --product ndvi: the scene is one NDVI band derived from these assets when a window is
    # read (band_* then describe that band); qa_accept: the QA classes kept as observed
    derive: NdviInputs | None = None
    qa_accept: tuple[int, ...] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    def read(self, window: Any = None) -> "SceneData":
        """Bands, per-band validity, three-state mask and footprint of ``window``
        (default: the whole scene)."""
        return _read(self, _window(window, self.grid))

    def read_pixels(self, window: Any = None) -> tuple[NDArray, NDArray[np.bool_]]:
        """Bands and per-band validity of ``window`` only: what an engine worker or a
        blending task needs (the footprint comes from the plan's whole-scene mask)."""
        data, valid, _, _ = read_pixels(self, _window(window, self.grid))
        return data, valid


@dataclass
class SceneData:
    """One window of a scene on the target grid.

    ``data[band, y, x]`` in the assets' dtype (float32 after dB conversion; scale and
    offset are *not* applied: observed values pass through bit-exact, ``scale`` /
    ``offset`` describe them); ``valid[band, y, x]`` observed per band; ``state[y, x]``
    OUTSIDE / OBSERVED / GAP (:mod:`dipfill.raster.masks`); ``footprint[y, x]`` True inside the
    scene; ``grid`` the window's own grid.
    """

    data: NDArray
    valid: NDArray[np.bool_]
    state: NDArray[np.uint8]
    footprint: NDArray[np.bool_]
    grid: Grid
    window: Any
    band_names: tuple[str, ...]
    nodata: tuple[float | None, ...]
    scale: tuple[float, ...]
    offset: tuple[float, ...]
    item_id: str
    collection: str | None

    def fractions(self) -> dict[str, float]:
        """Share of pixels observed / gap / outside."""
        n = self.state.size or 1
        return {
            "observed": float((self.state == OBSERVED).sum() / n),
            "gap": float((self.state == GAP).sum() / n),
            "outside": float((self.state == OUTSIDE).sum() / n),
        }


def _window(window: Any, grid: Grid):
    from rasterio.windows import Window

    full = Window(0, 0, grid.width, grid.height)
    if window is None:
        return full
    if not isinstance(window, Window):
        window = Window.from_slices(*window)
    try:
        clipped = window.intersection(full)
    except Exception:  # rasterio raises WindowError for disjoint windows
        clipped = None
    if clipped is None or clipped.width <= 0 or clipped.height <= 0:
        raise InputError(f"window {window} lies outside the scene grid {grid.width}x{grid.height}")
    return Window(int(clipped.col_off), int(clipped.row_off), int(math.ceil(clipped.width)), int(math.ceil(clipped.height)))


# --------------------------------------------------------------------- opening a scene
def _raster_band(asset: Mapping[str, Any]) -> Mapping[str, Any]:
    bands = asset.get("raster:bands") or asset.get("bands") or [{}]
    return bands[0] if isinstance(bands, list) and bands and isinstance(bands[0], Mapping) else {}


def _open(href: str, what: str):
    from dipfill.raster.read import open_raster

    return open_raster(href, what)


def _target_grid(headers: list[tuple[Any, Any, int, int]], resolution: Resolution, item_id: str) -> Grid:
    """The grid of the finest or coarsest band, or one of ``resolution`` CRS units
    aligned to the finest band's origin and covering its extent."""
    from affine import Affine

    def res(h: tuple[Any, Any, int, int]) -> float:
        return abs(h[1].a)

    finest = min(headers, key=res)
    if resolution == "finest":
        crs, transform, width, height = finest
        return Grid(crs=crs, transform=transform, width=width, height=height)
    if resolution == "coarsest":
        crs, transform, width, height = max(headers, key=res)
        return Grid(crs=crs, transform=transform, width=width, height=height)
    try:
        size = float(resolution)
    except (TypeError, ValueError):
        raise InputError(f"resolution must be 'finest', 'coarsest' or a number, got {resolution!r}") from None
    if not size > 0:
        raise InputError(f"resolution must be positive, got {size}")
    crs, t, width, height = finest
    if t.b != 0 or t.d != 0:
        raise InputError(f"{item_id}: rotated rasters are not supported")
    extent_x, extent_y = abs(t.a) * width, abs(t.e) * height
    new_w = max(1, round(extent_x / size) if math.isclose(extent_x / size, round(extent_x / size)) else math.ceil(extent_x / size))
    new_h = max(1, round(extent_y / size) if math.isclose(extent_y / size, round(extent_y / size)) else math.ceil(extent_y / size))
    transform = Affine(math.copysign(size, t.a), 0, t.c, 0, math.copysign(size, t.e), t.f)
    return Grid(crs=crs, transform=transform, width=int(new_w), height=int(new_h))


def open_scene(
    item: Any,
    profile: CollectionProfile | None = None,
    *,
    bands: Sequence[str] | None = None,
    resolution: Resolution = "finest",
    mask: MaskMode = "fill",
    resampling: str = "nearest",
    db: bool = False,
    sign: Signer | None = None,
    gdal_options: Mapping[str, str] | None = None,
    grid: Grid | None = None,
    product: Literal["bands", "ndvi"] = "bands",
    accept: Sequence[int] | None = None,
) -> SceneSource:
    """Describe how to read ``item`` (``pystac.Item`` or dict) with ``profile`` (default:
    the profile of the item's collection).

    ``bands``: profile band names (``red``, ``nir08``, ...) or, for items with other
    naming, asset keys; default the profile's ``default_bands`` that the item has (every
    reflectance band: Landsat 7 has no ``coastal``). ``resolution``:
    ``finest`` / ``coarsest`` band grid or a pixel size in CRS units. ``mask``:
    ``fill`` (missing data only) or ``clouds`` (clouds and shadows too). ``resampling``:
    rasterio resampling name for bands not on the grid (QA always ``nearest``). ``db``:
    10·log10 of SAR power (profiles that allow it). ``sign``: applied to every asset
    href before it is opened (e.g. ``planetary_computer.sign``). ``grid``: read onto this
    grid instead (another scene's: a guide item read on its target's pixels). ``product``:
    ``ndvi`` makes the scene one float32 NDVI band (:mod:`dipfill.raster.ndvi`), computed from
    the profile's red and NIR bands (``bands`` may name those two) or read from its index
    band; ``accept``: the QA classes kept as observed (MODIS pixel reliability; default
    only "good"). Only the headers of the band assets are read here.
    """
    from rasterio.enums import Resampling

    d, base = _as_dict(item)
    item_id = str(d.get("id", "?"))
    if profile is None:
        try:
            profile = profile_for(d)
        except KeyError as exc:
            raise InputError(f"item {item_id}: {exc.args[0]}") from None
    if mask not in ("fill", "clouds"):
        raise InputError(f"mask must be 'fill' or 'clouds', got {mask!r}")
    if resampling not in Resampling.__members__:
        raise InputError(f"unknown resampling {resampling!r}; one of {', '.join(Resampling.__members__)}")
    if db and not profile.db_convertible:
        raise InputError(f"dB conversion is for SAR backscatter; profile {profile.name} does not allow it")
    assets: Mapping[str, Any] = d.get("assets") or {}
    if product == "ndvi":
        bands = _ndvi_inputs(profile, bands, item_id)
    elif product != "bands":
        raise InputError(f"product must be 'bands' or 'ndvi', got {product!r}")

    names, keys, hrefs, nodatas, scales, offsets, whys = [], [], [], [], [], [], []
    properties = d.get("properties") or {}
    for name in bands or _default_bands(profile, assets, item_id):
        spec = next((b for b in profile.bands if b.name == name), None)
        key = spec.keys.find(assets) if spec else (name if name in assets else None)
        if key is None:
            tried = ", ".join(spec.keys.candidates()) if spec else name
            raise InputError(
                f"item {item_id}: no asset for band {name!r} (tried {tried}); "
                f"assets: {', '.join(assets) or 'none'}"
            )
        info = _raster_band(assets[key])
        href = resolve_href(str(assets[key]["href"]), base)
        names.append(name)
        keys.append(key)
        hrefs.append(sign(href) if sign else href)
        nodatas.append(info["nodata"] if info.get("nodata") is not None else (spec.nodata if spec else None))
        scale, offset, why = band_scale_offset(profile, spec, info, properties)
        scales.append(scale)
        offsets.append(offset)
        whys.append(why)

    qa_key = profile.qa.keys.find(assets) if profile.qa else None
    qa_href = None
    if qa_key is not None:
        qa_href = resolve_href(str(assets[qa_key]["href"]), base)
        qa_href = sign(qa_href) if sign else qa_href
    elif profile.qa is not None:
        if mask == "clouds":
            raise InputError(
                f"item {item_id}: mask 'clouds' needs the QA asset ({', '.join(profile.qa.keys.candidates())}), "
                "which the item lacks"
            )
        log.warning("item %s: no QA asset (%s); gaps from nodata only", item_id, ", ".join(profile.qa.keys.candidates()))

    options = dict(gdal_options or {})
    headers = []
    with gdal_env(options):
        for key, href in zip(keys, hrefs):
            with _open(href, f"item {item_id} asset {key}") as ds:
                if ds.crs is None:
                    raise SceneReadError(f"item {item_id} asset {key}: {redact_href(href)} has no CRS")
                headers.append((ds.crs, ds.transform, ds.width, ds.height))
                file_nodata = ds.nodata
            i = len(headers) - 1
            if nodatas[i] is None and file_nodata is not None:
                nodatas[i] = file_nodata
    grid = grid if grid is not None else _target_grid(headers, resolution, item_id)
    if accept is not None and (profile.qa is None or profile.qa.decoder not in ACCEPTING_DECODERS):
        raise InputError(f"item {item_id}: --accept chooses QA classes of a MODIS quality layer; profile "
                         f"{profile.name} has {'no QA layer' if profile.qa is None else 'a QA bit field, not classes'}")
    derive = None
    if product == "ndvi":
        nodatas = [None if v is None else float(v) for v in nodatas]
        derive = NdviInputs("product" if len(names) == 1 else "computed", tuple(names), tuple(keys), tuple(hrefs),
                            tuple(nodatas), tuple(scales), tuple(offsets), tuple(whys),
                            (-0.2, 1.0) if len(names) == 1 and profile.ndvi_band else (-1.0, 1.0))
        names, keys, nodatas, scales, offsets = [NDVI_BAND], [NDVI_BAND], [float("nan")], [1.0], [0.0]
    return SceneSource(
        item_id=item_id,
        collection=d.get("collection"),
        profile=profile,
        grid=grid,
        band_names=tuple(names),
        band_keys=tuple(keys),
        band_hrefs=tuple(hrefs),
        nodata=tuple(None if v is None else float(v) for v in nodatas),
        scale=tuple(scales),
        offset=tuple(offsets),
        qa_key=qa_key,
        qa_href=qa_href,
        geometry=d.get("geometry"),
        mask=mask,
        resampling=resampling,
        db=db,
        gdal_options=tuple(sorted(options.items())),
        derive=derive,
        qa_accept=tuple(int(c) for c in accept) if accept is not None else None,
    )


def _ndvi_inputs(profile: CollectionProfile, bands: Sequence[str] | None, item_id: str) -> tuple[str, ...]:
    """The bands NDVI comes from: ``bands`` when given (red, NIR; or the index band), else
    the profile's index band or its (red, NIR)."""
    if bands:
        if len(bands) not in (1, 2):
            raise InputError(f"item {item_id}: --product ndvi takes --bands RED,NIR (or the NDVI band), "
                             f"got {','.join(bands)}")
        return tuple(bands)
    if profile.ndvi_band:
        return (profile.ndvi_band,)
    if profile.ndvi_from:
        return profile.ndvi_from
    raise InputError(f"item {item_id}: profile {profile.name} has no red/NIR bands or NDVI band for --product ndvi; "
                     "name them with --bands RED,NIR")


def _default_bands(profile: CollectionProfile, assets: Mapping[str, Any], item_id: str) -> tuple[str, ...]:
    """The profile's default bands the item has an asset for (a product is as complete as
    its input); an item with none of them is an error naming what was looked for."""
    present = tuple(n for n in profile.default_bands if profile.band(n).keys.find(assets))
    if not present:
        tried = ", ".join(k for n in profile.default_bands for k in profile.band(n).keys.candidates())
        raise InputError(f"item {item_id}: no asset for any band of profile {profile.name} (tried {tried}); "
                         f"assets: {', '.join(assets) or 'none'}; name the bands with --bands")
    return present


def read_window(item: Any, profile: CollectionProfile | None = None, window: Any = None, **options: Any) -> SceneData:
    """Read one window (target-grid pixels) of ``item``: see :func:`open_scene` for the
    options. Opening costs the band headers; for many windows keep the
    :class:`SceneSource` and call its ``read``."""
    source = item if isinstance(item, SceneSource) else open_scene(item, profile, **options)
    return source.read(window)


def read_item(item: Any, profile: CollectionProfile | None = None, **options: Any) -> SceneData:
    """Read the whole scene of ``item`` on one grid (see :func:`open_scene`)."""
    return read_window(item, profile, None, **options)


# ---------------------------------------------------------------------------- reading
def _same_grid(ds: Any, grid: Grid) -> bool:
    return (
        ds.crs == grid.crs
        and (ds.width, ds.height) == (grid.width, grid.height)
        and ds.transform.almost_equals(grid.transform, precision=1e-9)
    )


def _read_asset(href: str, what: str, grid: Grid, window: Any, resampling: str, nodata: float | None) -> NDArray:
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioIOError
    from rasterio.vrt import WarpedVRT

    with _open(href, what) as ds:
        try:
            if _same_grid(ds, grid):
                return ds.read(1, window=window)
            vrt_opts: dict[str, Any] = {}
            if nodata is not None:
                vrt_opts.update(src_nodata=nodata, nodata=nodata)
            with WarpedVRT(
                ds,
                crs=grid.crs,
                transform=grid.transform,
                width=grid.width,
                height=grid.height,
                resampling=Resampling[resampling],
                **vrt_opts,
            ) as vrt:
                return vrt.read(1, window=window)
        except RasterioIOError as exc:
            raise SceneReadError(f"{what}: {redact_href(href)}: cannot read window {window} ({redact_href(str(exc))})") from exc


def _band_validity(band: NDArray, nodata: float | None) -> NDArray[np.bool_]:
    from dipfill.raster.read import data_validity

    return data_validity(band, nodata)


def _geometry_footprint(geometry: Mapping[str, Any] | None, grid: Grid) -> NDArray[np.bool_] | None:
    """Item geometry (lon/lat) rasterised onto ``grid``: True where a pixel centre is inside."""
    if not geometry or geometry.get("type") not in ("Polygon", "MultiPolygon"):
        return None
    from rasterio.features import rasterize
    from rasterio.warp import transform_geom

    shape = transform_geom("EPSG:4326", grid.crs, geometry)
    return rasterize([(shape, 1)], out_shape=grid.shape, transform=grid.transform, fill=0, dtype="uint8").astype(bool)


def read_pixels(source: SceneSource, window: Any) -> tuple[NDArray, NDArray[np.bool_], NDArray[np.bool_] | None, Grid]:
    """Bands and per-band validity of ``window``, plus the footprint where it is local
    (decoded QA, or the item geometry); ``None`` when it comes from the validity of the
    whole scene (a closing: not computable from one window)."""
    from rasterio.windows import transform as window_transform

    grid = source.grid
    win_grid = Grid(
        crs=grid.crs,
        transform=window_transform(window, grid.transform),
        width=int(window.width),
        height=int(window.height),
    )
    options = dict(source.gdal_options)
    derive = source.derive
    assets = zip(derive.keys, derive.hrefs, derive.nodata) if derive is not None else \
        zip(source.band_keys, source.band_hrefs, source.nodata)
    with gdal_env(options):
        arrays = [
            _read_asset(href, f"item {source.item_id} asset {key}", grid, window, source.resampling, nodata)
            for key, href, nodata in assets
        ]
        qa = None
        if source.qa_href is not None:
            qa = _read_asset(
                source.qa_href, f"item {source.item_id} asset {source.qa_key}", grid, window, "nearest", None
            )
    dtype = np.result_type(*(a.dtype for a in arrays))
    data = np.stack([a.astype(dtype, copy=False) for a in arrays])
    del arrays
    valid = np.stack([_band_validity(band, nd) for band, nd in zip(data, derive.nodata if derive else source.nodata)])
    if derive is not None:
        data, valid = derive.apply(data, valid)
    if source.db:
        data, valid = _to_db(data, valid, source.nodata)

    profile = source.profile
    geom_fp = _geometry_footprint(source.geometry, win_grid) if profile.footprint == "geometry" else None
    footprint = None
    if qa is not None and profile.qa is not None:
        qa_state = decode_qa(profile.qa.decoder, qa, footprint=geom_fp, mask=source.mask, accept=source.qa_accept)
        footprint = qa_state != OUTSIDE
        valid &= (qa_state == OBSERVED)[None]
    elif geom_fp is not None:
        footprint = geom_fp | valid.any(axis=0)  # known values are never discarded
    return data, valid, footprint, win_grid


def _read(source: SceneSource, window: Any) -> SceneData:
    data, valid, footprint, win_grid = read_pixels(source, window)
    if footprint is None:
        footprint = footprint_from_validity(valid.any(axis=0))
    state = three_state(valid, footprint)
    return SceneData(
        data=data,
        valid=valid,
        state=state,
        footprint=state != OUTSIDE,
        grid=win_grid,
        window=window,
        band_names=source.band_names,
        nodata=source.nodata,
        scale=source.scale,
        offset=source.offset,
        item_id=source.item_id,
        collection=source.collection,
    )


def _to_db(
    data: NDArray, valid: NDArray[np.bool_], nodata: Sequence[float | None]
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Linear power → decibels (10·log10); non-positive power is not a measurement."""
    out = data.astype(np.float32)
    valid = valid & (out > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        db = 10.0 * np.log10(out)
    out = np.where(valid, db, np.float32(np.nan)).astype(np.float32)
    for b, nd in enumerate(nodata):
        if nd is not None and not math.isnan(nd):
            out[b][~valid[b]] = nd
    return out, valid
