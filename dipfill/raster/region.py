"""The region to anonymise as a mask on the scene's grid: a GeoJSON polygon or a mask raster.

GeoJSON (RFC 7946: lon/lat) is rasterised with ``all_touched=True``: every pixel the
polygon touches is inside, so no sliver of the original survives along the boundary.

Scenes without a CRS but with ground control points (Sentinel-1 GRD as distributed, like
the rio-tiler-pds ``iw-vv.tiff``: identity transform, 210 GCPs in EPSG:4326) are handled
through GDAL's GCP transformer (:class:`rasterio.transform.GCPTransformer`): the polygon's
vertices, densified every few pixels so the GCP polynomial's curvature is followed, are
mapped to pixel coordinates and rasterised on the pixel grid. Outputs of such a scene are
written on its pixel grid with the input's GCPs (``Grid.gcps``); the item's geometry is
the scene outline through them (:func:`gcp_outline`).
"""

from __future__ import annotations

import json

import numpy as np
from numpy.typing import NDArray

from dipfill.errors import InputError, SceneReadError
from dipfill.raster.hrefs import redact_href
from dipfill.raster.read import Grid, read_mask

__all__ = ["region_mask", "gcp_outline"]


def _gcps(grid: Grid) -> tuple[list, str | None]:
    """The grid's ground control points (as rasterio's) and their CRS; ``[]``, None without.
    The grid carries them from the scene's first file (:attr:`Grid.gcps`)."""
    placed = grid.georeferencing()
    return list(placed.get("gcps", [])), placed.get("crs") if "gcps" in placed else None


def _polygons(path: str) -> list[dict]:
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError as exc:
        raise SceneReadError(f"{path}: no such region file") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: region is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise InputError(f"{path}: region must be a GeoJSON FeatureCollection, Feature or Polygon")
    if doc.get("type") == "FeatureCollection":
        geoms = [feat.get("geometry") for feat in doc.get("features", [])]
    elif doc.get("type") == "Feature":
        geoms = [doc.get("geometry")]
    else:
        geoms = [doc]
    geoms = [g for g in geoms if isinstance(g, dict) and g.get("type") in ("Polygon", "MultiPolygon")]
    if not geoms:
        raise InputError(f"{path}: region has no Polygon or MultiPolygon; give one in lon/lat (EPSG:4326)")
    return geoms


def _densify(ring: list, steps: int = 64) -> list[tuple[float, float]]:
    pts: list[tuple[float, float]] = []
    for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:]):
        for t in np.linspace(0.0, 1.0, steps, endpoint=False):
            pts.append((x0 + t * (x1 - x0), y0 + t * (y1 - y0)))
    pts.append(tuple(ring[-1][:2]))  # type: ignore[arg-type]
    return pts


def _to_pixels(geom: dict, gcps: list, gcp_crs: object) -> dict:
    """``geom`` (lon/lat) in the scene's pixel coordinates (col, row) through its GCPs."""
    from rasterio.transform import GCPTransformer
    from rasterio.warp import transform_geom

    if gcp_crs is not None and str(gcp_crs) != "EPSG:4326":
        geom = transform_geom("EPSG:4326", gcp_crs, geom)
    polys = geom["coordinates"] if geom["type"] == "MultiPolygon" else [geom["coordinates"]]
    out = []
    with GCPTransformer(gcps) as tr:
        for poly in polys:
            rings = []
            for ring in poly:
                pts = _densify([tuple(p[:2]) for p in ring])
                rows, cols = tr.rowcol([p[0] for p in pts], [p[1] for p in pts], op=lambda v: v)
                rings.append([(float(c), float(r)) for r, c in zip(rows, cols)])
            out.append(rings)
    return {"type": "MultiPolygon", "coordinates": out}


def region_mask(grid: Grid, *, source: str, geojson: str | None = None, mask: str | None = None
                ) -> NDArray[np.bool_]:
    """The region on ``grid`` (True = anonymise): from ``geojson`` (lon/lat polygons,
    all_touched) or ``mask`` (a raster on the scene's grid, non-zero = inside). ``source``
    is the scene's first file, named when the grid has neither a CRS nor GCPs to place the
    polygon with."""
    from affine import Affine
    from rasterio.features import rasterize
    from rasterio.warp import transform_geom

    if (geojson is None) == (mask is None):
        raise InputError("give the region as exactly one of --region REGION.geojson or --mask FILE")
    if mask is not None:
        return read_mask(mask, grid)
    assert geojson is not None
    geoms = _polygons(geojson)
    if grid.crs is not None:
        shapes, transform = [transform_geom("EPSG:4326", grid.crs, g) for g in geoms], grid.transform
    else:
        gcps, gcp_crs = _gcps(grid)
        if not gcps:
            raise InputError(f"{redact_href(source)} has neither a CRS nor ground control points, so the lon/lat "
                             f"region {geojson} cannot be placed; give --mask FILE on the scene's grid instead")
        shapes, transform = [_to_pixels(g, gcps, gcp_crs) for g in geoms], Affine.identity()
    return rasterize([(g, 1) for g in shapes], out_shape=grid.shape, transform=transform, fill=0,
                     all_touched=True, dtype="uint8").astype(bool)


def gcp_outline(grid: Grid) -> dict | None:
    """The scene's outline in lon/lat through its GCPs (its four edges, densified), or None
    without GCPs: what the output item states as geometry for a scene without a CRS."""
    from rasterio.transform import GCPTransformer
    from rasterio.warp import transform_geom

    gcps, gcp_crs = _gcps(grid)
    if not gcps:
        return None
    h, w = grid.shape
    corners = _densify([(0.0, 0.0), (float(w), 0.0), (float(w), float(h)), (0.0, float(h)), (0.0, 0.0)], steps=8)
    with GCPTransformer(gcps) as tr:
        xs, ys = tr.xy([p[1] for p in corners], [p[0] for p in corners], offset="ul")
    geom = {"type": "Polygon", "coordinates": [[(float(x), float(y)) for x, y in zip(xs, ys)]]}
    if gcp_crs is not None and str(gcp_crs) != "EPSG:4326":
        geom = transform_geom(gcp_crs, "EPSG:4326", geom)
    return geom
