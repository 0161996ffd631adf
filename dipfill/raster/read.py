"""Read input rasters onto one grid and validate them, with errors that name the file.

One multi-band file, or several files (typically one band each) that must share a pixel
grid: CRS, transform, size, dtype and nodata are checked and the first difference is
reported as ``<file>: <what> differs: <value> vs <value> in <first file>``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError

from dipfill.errors import GridMismatchError, InputError, SceneReadError
from dipfill.raster.hrefs import redact_href, redact_text

__all__ = ["Grid", "Scene", "read_scene", "read_mask", "data_validity"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Grid:
    """A pixel grid: what several rasters must share to be stacked pixel for pixel."""

    crs: CRS | None
    transform: Affine
    width: int
    height: int
    # A raster placed by ground control points only (Sentinel-1 GRD: no CRS, identity
    # transform): its GCPs as (row, col, x, y, z) and their CRS, carried so outputs written
    # on this grid are placed as the input is (GDAL, QGIS, titiler warp through them).
    gcps: tuple[tuple[float, float, float, float, float], ...] = ()
    gcp_crs: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def georeferencing(self) -> dict[str, Any]:
        """The rasterio ``open(..., "w")`` keywords placing a raster on this grid: CRS and
        transform, or the GCPs (with their CRS) for a grid placed by GCPs only."""
        if self.crs is None and self.gcps:
            from rasterio.control import GroundControlPoint

            points = [GroundControlPoint(row, col, x, y, z) for row, col, x, y, z in self.gcps]
            return {"gcps": points, "crs": self.gcp_crs}
        return {"crs": self.crs, "transform": self.transform}


@dataclass
class Scene:
    """Bands of one scene on one grid, in their original dtype, plus what describes them."""

    data: NDArray  # [bands, y, x], original dtype
    grid: Grid
    nodata: float | None
    band_names: list[str]
    sources: list[str]
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype


def open_raster(href: str, what: str | None = None) -> rasterio.DatasetReader:
    """Open ``href`` with rasterio, or raise :class:`SceneReadError` naming it (``what``, if
    given, says which input it was: an item and asset). Secrets in URLs never reach the message."""
    prefix = f"{what}: " if what else ""
    if "://" not in href and not href.startswith("/vsi") and not os.path.exists(href):
        raise SceneReadError(f"{prefix}{href}: no such file")
    try:
        return rasterio.open(href)
    except RasterioIOError as exc:
        raise SceneReadError(
            f"{prefix}{redact_href(href)}: not a raster GDAL can read ({redact_href(str(exc))})"
        ) from exc


_open = open_raster


def describe_grid_difference(a: Grid, b: Grid) -> str | None:
    if (a.width, a.height) != (b.width, b.height):
        return f"size differs: {b.width}x{b.height} vs {a.width}x{a.height}"
    if a.crs != b.crs:
        return f"CRS differs: {b.crs} vs {a.crs}"
    if not b.transform.almost_equals(a.transform, precision=1e-9):
        return f"transform differs: {tuple(b.transform)[:6]} vs {tuple(a.transform)[:6]}"
    return None


def _grid_of(ds: rasterio.DatasetReader) -> Grid:
    grid = Grid(crs=ds.crs, transform=ds.transform, width=ds.width, height=ds.height)
    points, gcp_crs = ds.gcps if ds.crs is None else ((), None)
    if points:
        gcps = tuple((p.row, p.col, p.x, p.y, p.z or 0.0) for p in points)
        grid = replace(grid, gcps=gcps, gcp_crs=gcp_crs.to_string() if gcp_crs else None)
    return grid


def read_scene(paths: Sequence[str]) -> Scene:
    """Read one or more rasters as one band stack; check they share grid, dtype and nodata."""
    if not paths:
        raise InputError("no input raster given")
    arrays: list[NDArray] = []
    band_names: list[str] = []
    first: tuple[str, Grid, np.dtype, float | None] | None = None
    tags: dict[str, str] = {}
    for path in paths:
        with _open(path) as ds:
            grid = _grid_of(ds)
            dtype = np.dtype(ds.dtypes[0])
            nodata = ds.nodata
            if len(set(ds.dtypes)) > 1:
                raise InputError(f"{redact_href(path)}: bands have different dtypes {ds.dtypes}; convert to one")
            if first is None:
                first = (path, grid, dtype, nodata)
                tags = dict(ds.tags())
            else:
                p0, g0, d0, n0 = first
                diff = describe_grid_difference(g0, grid)
                if diff is None and dtype != d0:
                    diff = f"dtype differs: {dtype} vs {d0}"
                if diff is None and not _same_nodata(nodata, n0):
                    diff = f"nodata differs: {nodata} vs {n0}"
                if diff is not None:
                    raise GridMismatchError(f"{redact_href(path)}: {diff} in {redact_href(p0)}; inputs must share one grid")
            try:
                arrays.append(ds.read())
            except RasterioIOError as exc:
                raise SceneReadError(f"{redact_href(path)}: cannot read pixels ({redact_text(str(exc))})") from exc
            stem = os.path.splitext(os.path.basename(path))[0]
            for i, desc in enumerate(ds.descriptions, start=1):
                name = desc or (stem if ds.count == 1 and len(paths) > 1 else f"band{len(band_names) + 1}")
                band_names.append(name)
    assert first is not None
    data = np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
    return Scene(
        data=data,
        grid=first[1],
        nodata=first[3],
        band_names=band_names,
        sources=[str(p) for p in paths],
        tags=tags,
    )


def _same_nodata(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (np.isnan(a) and np.isnan(b)) or a == b


def data_validity(data: NDArray, nodata: float | None) -> NDArray[np.bool_]:
    """Per-band validity: not equal to nodata and, for floats, finite."""
    valid = np.ones(data.shape, dtype=bool)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data)
    if nodata is not None and not np.isnan(nodata):
        valid &= data != np.asarray(nodata).astype(data.dtype)
    return valid


def read_mask(path: str, grid: Grid) -> NDArray[np.bool_]:
    """Read an external gap mask (non-zero = gap) that must be on ``grid``.

    Pixels that are nodata in the mask file itself count as "not masked".
    """
    with _open(path) as ds:
        diff = describe_grid_difference(grid, _grid_of(ds))
        if diff is not None:
            raise GridMismatchError(f"{redact_href(path)}: {diff} of the input; the mask must share its grid")
        band = ds.read(1, masked=True)
    return np.asarray(band.filled(0) != 0)


_DATE_IN_NAME = re.compile(r"(?<!\d)(19|20)(\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)")


def acquisition_date(scene: Scene) -> str | None:
    """Best-effort acquisition date (ISO ``YYYY-MM-DD``) from tags, then file names.

    Landsat and most product names carry ``YYYYMMDD``; tags win when present.
    """
    for key in ("ACQUISITION_DATE", "DATE_ACQUIRED", "TIFFTAG_DATETIME"):
        value = scene.tags.get(key)
        if value:
            m = re.match(r"(\d{4})[-:](\d{2})[-:](\d{2})", value)
            if m:
                return "-".join(m.groups())
    for src in scene.sources:
        m = _DATE_IN_NAME.search(os.path.basename(src))
        if m:
            return f"{m.group(1)}{m.group(2)}-{m.group(3)}-{m.group(4)}"
    return None


def footprint_from_geojson(path: str, grid: Grid) -> NDArray[np.bool_]:
    """Rasterise a GeoJSON footprint (RFC 7946: lon/lat, EPSG:4326) onto ``grid``.

    Accepts a FeatureCollection, a Feature or a bare geometry; a pixel is inside when its
    centre is.
    """
    import json

    from rasterio.features import rasterize
    from rasterio.warp import transform_geom

    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError as exc:
        raise SceneReadError(f"{path}: no such footprint file") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: footprint is not valid JSON ({exc})") from exc
    if doc.get("type") == "FeatureCollection":
        geoms = [feat["geometry"] for feat in doc.get("features", [])]
    elif doc.get("type") == "Feature":
        geoms = [doc["geometry"]]
    else:
        geoms = [doc]
    geoms = [g for g in geoms if g and g.get("type") in ("Polygon", "MultiPolygon")]
    if not geoms:
        raise InputError(f"{path}: footprint has no Polygon or MultiPolygon")
    if grid.crs is None:
        raise InputError(f"{path}: the input raster has no CRS, so a lon/lat footprint cannot be placed")
    shapes = [transform_geom("EPSG:4326", grid.crs, g) for g in geoms]
    return rasterize(
        [(g, 1) for g in shapes], out_shape=grid.shape, transform=grid.transform, fill=0, dtype="uint8"
    ).astype(bool)
