"""Footprint geometry of a written scene, in lon/lat for its STAC item."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from rasterio.warp import transform_geom
from rasterio.windows import Window, bounds as window_bounds

from dipfill.raster.read import Grid

__all__ = ["footprint_geometry"]


def footprint_geometry(
    inside: NDArray[np.bool_], grid: Grid
) -> tuple[dict[str, Any] | None, list[float] | None]:
    """GeoJSON polygon (EPSG:4326) of the bounding box of the inside pixels, and its bbox.

    The box is densified before reprojection so its edges follow the projection's
    curvature. ``(None, None)`` when the raster has no CRS or nothing is inside (STAC
    allows a null geometry, with no bbox).
    """
    if grid.crs is None or not inside.any():
        return None, None
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    win = Window(cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1)
    left, bottom, right, top = window_bounds(win, grid.transform)
    n = 16
    xs = np.linspace(left, right, n + 1)
    ys = np.linspace(bottom, top, n + 1)
    ring = (
        [(x, bottom) for x in xs]
        + [(right, y) for y in ys[1:]]
        + [(x, top) for x in xs[::-1][1:]]
        + [(left, y) for y in ys[::-1][1:]]
    )
    poly = {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}
    geom = transform_geom(grid.crs, "EPSG:4326", poly, precision=7)
    coords = np.asarray(geom["coordinates"][0])
    bbox = [float(coords[:, 0].min()), float(coords[:, 1].min()), float(coords[:, 0].max()), float(coords[:, 1].max())]
    geom = {"type": geom["type"], "coordinates": [[list(map(float, c)) for c in geom["coordinates"][0]]]}
    return geom, bbox
