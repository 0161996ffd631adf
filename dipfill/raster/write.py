"""Write outputs atomically: COGs, the Zarr mosaic, the quicklook.

Every output is written under a hidden temporary name in its final directory and moved
into place with one rename, so a reader (or a crashed run) never sees a half-written
file. ``staged`` yields the temporary path and removes it if anything fails.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import rasterio
import rasterio.shutil
from numpy.typing import NDArray
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from dipfill.raster.read import Grid
from dipfill.storage import remove, staged, zarr_store
from dipfill.stretch import percentile_limits

__all__ = [
    "write_cog",
    "write_zarr_mosaic",
    "create_zarr_mosaic",
    "write_mosaic_block",
    "Preview",
    "write_quicklook",
    "write_vrt",
    "CopiedRaster",
    "copy_as_cog",
]

log = logging.getLogger(__name__)

#: GDAL block cache (MiB) while writing a COG: GDAL's default is 5 % of RAM, which a
#: full scene would fill; blocks are written once, so a small cache costs nothing.
COG_CACHE_MB = 64


#: Rows and columns of a Zarr mosaic chunk; also the block a run blends in one task.
MOSAIC_CHUNK = 512



def write_cog(
    path: str | os.PathLike[str],
    data: Any,
    grid: Grid,
    *,
    nodata: float | None,
    band_names: Sequence[str] = (),
    resampling: Literal["average", "nearest", "mode"] = "average",
    tags: dict[str, str] | None = None,
    blocksize: int = 256,
    rows: int = 512,
) -> None:
    """Write ``data[bands, y, x]`` (or ``[y, x]``) as a Cloud-Optimized GeoTIFF (GDAL COG driver).

    DEFLATE with the predictor chosen for the dtype (horizontal differencing for
    integers, floating-point for floats), internal tiles of ``blocksize`` and overviews
    down to one tile; ``average`` overviews respect nodata, ``nearest`` suits class
    layers such as QA.

    ``data`` needs only ``shape``, ``dtype`` and row slicing: a numpy array or a Zarr
    array. It is copied ``rows`` rows at a time into a tiled scratch GeoTIFF beside the
    output, which the COG driver then translates, with GDAL's block cache capped, so
    memory is bounded by the strip, not by the scene.
    """
    flat = len(data.shape) == 2
    count, height, width = (1, *data.shape) if flat else data.shape
    profile = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=np.dtype(data.dtype).name,
        **grid.georeferencing(),
        nodata=nodata,
        tiled=True,
        blockxsize=blocksize,
        blockysize=blocksize,
        BIGTIFF="IF_SAFER",
    )
    with staged(path) as tmp, rasterio.Env(GDAL_CACHEMAX=COG_CACHE_MB):
        scratch = tmp.with_name(tmp.name + ".scratch.tif")
        try:
            with rasterio.open(scratch, "w", **profile) as ds:
                for y0 in range(0, height, rows):
                    y1 = min(y0 + rows, height)
                    part = np.asarray(data[y0:y1] if flat else data[:, y0:y1])
                    ds.write(part[None] if flat else part, window=Window(0, y0, width, y1 - y0))
                for i, name in enumerate(band_names, start=1):
                    ds.set_band_description(i, name)
                if tags:
                    ds.update_tags(**tags)
            with rasterio.open(scratch) as src:
                rasterio.shutil.copy(
                    src,
                    str(tmp),
                    driver="COG",
                    COMPRESS="DEFLATE",
                    PREDICTOR="YES",
                    BLOCKSIZE=str(blocksize),
                    OVERVIEWS="AUTO",
                    RESAMPLING=resampling.upper(),
                    OVERVIEW_RESAMPLING=resampling.upper(),
                    NUM_THREADS="1",
                    BIGTIFF="IF_SAFER",
                )
        finally:
            remove(scratch)


def write_zarr_mosaic(
    path: str | os.PathLike[str],
    bands: NDArray,
    qa: NDArray[np.uint8],
    grid: Grid,
    *,
    nodata: float | None,
    band_names: Sequence[str],
    attrs: dict,
    chunk: int = MOSAIC_CHUNK,
) -> None:
    """Write the filled scene held in memory as a Zarr v3 group (see :func:`create_zarr_mosaic`)."""
    with staged(path) as tmp:
        create_zarr_mosaic(tmp, bands.shape, bands.dtype, grid, nodata=nodata, band_names=band_names,
                           attrs=attrs, chunk=chunk)
        write_mosaic_block(tmp, (0, 0), bands, qa)


def create_zarr_mosaic(
    path: str | os.PathLike[str],
    shape: tuple[int, int, int],
    dtype: np.dtype,
    grid: Grid,
    *,
    nodata: float | None,
    band_names: Sequence[str],
    attrs: dict,
    chunk: int = MOSAIC_CHUNK,
) -> None:
    """Create an empty Zarr v3 group for a filled scene: ``bands[band, y, x]`` and ``qa[y, x]``.

    Georeferenced the CF way, so ``xarray.open_zarr`` gives a Dataset that rioxarray and
    odc-geo place: dimension coordinates ``band`` (1-based), ``x`` and ``y`` (pixel
    centres; only for a north-up grid, where they exist) and a scalar ``spatial_ref``
    grid mapping (``crs_wkt``, ``spatial_ref``, ``GeoTransform``) named by ``grid_mapping``
    and ``coordinates`` on both data arrays. The group's attributes repeat the CRS and GDAL
    geotransform. Metadata is consolidated (it never changes after this call); chunks are
    one band by ``chunk``². Filled by :func:`write_mosaic_block`, one writer per chunk.
    """
    import zarr

    count, height, width = shape
    cy, cx = min(chunk, height), min(chunk, width)
    wkt = grid.crs.to_wkt() if grid.crs else None
    epsg = grid.crs.to_epsg() if grid.crs else None
    geo = {
        "crs_wkt": wkt,
        "proj:code": f"EPSG:{epsg}" if epsg else None,
        "proj:epsg": epsg,
        "geotransform": list(grid.transform.to_gdal()),
        "band_names": list(band_names),
    }
    cf = {"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}
    root = zarr.open_group(zarr_store(path), mode="w", zarr_format=3)
    root.attrs.update({**attrs, **geo})
    fill = None if nodata is None else np.asarray(nodata).astype(dtype).item()
    root.create_array(
        "bands",
        shape=shape,
        chunks=(1, cy, cx),
        dtype=dtype,
        fill_value=fill if fill is not None else 0,
        dimension_names=("band", "y", "x"),
        attributes={"nodata": fill, "long_name": list(band_names), **cf, **geo},
    )
    root.create_array(
        "qa",
        shape=(height, width),
        chunks=(cy, cx),
        dtype=np.uint8,
        fill_value=0,
        dimension_names=("y", "x"),
        attributes={"flag_values": attrs.get("qa_flag_values"), **cf, **geo},
    )
    _write_coordinates(root, grid, count)
    with warnings.catch_warnings():
        # zarr warns that consolidated metadata is not (yet) in the v3 spec; xarray reads it
        # and, without it, warns on every open_zarr
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)
        zarr.consolidate_metadata(zarr_store(path))


def _write_coordinates(root: Any, grid: Grid, count: int) -> None:
    """``band``, ``x``, ``y`` and ``spatial_ref`` arrays of a mosaic (the CF conventions
    rioxarray writes and reads)."""
    t = grid.transform
    height, width = grid.shape
    band = root.create_array("band", shape=(count,), dtype=np.int32, fill_value=0, dimension_names=("band",))
    band[:] = np.arange(1, count + 1, dtype=np.int32)
    if t.b == 0 and t.d == 0:  # north-up: one x per column, one y per row
        x = root.create_array("x", shape=(width,), dtype=np.float64, fill_value=0.0, dimension_names=("x",),
                              attributes={"axis": "X", "long_name": "x coordinate of pixel centre",
                                          "standard_name": "projection_x_coordinate", **_units(grid)})
        x[:] = t.c + t.a * (np.arange(width) + 0.5)
        y = root.create_array("y", shape=(height,), dtype=np.float64, fill_value=0.0, dimension_names=("y",),
                              attributes={"axis": "Y", "long_name": "y coordinate of pixel centre",
                                          "standard_name": "projection_y_coordinate", **_units(grid)})
        y[:] = t.f + t.e * (np.arange(height) + 0.5)
    wkt = grid.crs.to_wkt() if grid.crs else None
    ref = {"GeoTransform": " ".join(repr(float(v)) for v in t.to_gdal())}
    if wkt:
        ref.update(crs_wkt=wkt, spatial_ref=wkt)
    spatial_ref = root.create_array("spatial_ref", shape=(), dtype=np.int32, fill_value=0, dimension_names=(),
                                    attributes=ref)
    spatial_ref[...] = 0


def _units(grid: Grid) -> dict[str, str]:
    """CF ``units`` of the grid's projected axes (metre, or the CRS's own linear unit)."""
    if grid.crs is None or not grid.crs.is_projected:
        return {}
    unit = grid.crs.linear_units
    return {"units": "m" if unit in ("metre", "meter", "m") else unit}


def write_mosaic_block(path: str | os.PathLike[str], origin: tuple[int, int], bands: NDArray,
                       qa: NDArray[np.uint8]) -> None:
    """Write a block of a mosaic made by :func:`create_zarr_mosaic` whose top-left pixel is
    ``origin`` (row, col). The block must start on a chunk boundary and cover whole chunks
    (or reach the edge), and only one writer may own it: Zarr loses data when writers
    share a chunk."""
    import zarr

    root = zarr.open_group(zarr_store(path), mode="r+", zarr_format=3)
    cy, cx = root["qa"].chunks
    row0, col0 = origin
    if row0 % cy or col0 % cx:
        raise ValueError(f"mosaic blocks must start on a chunk boundary ({cy}x{cx}), got {origin}")
    h, w = qa.shape
    root["bands"][:, row0 : row0 + h, col0 : col0 + w] = bands
    root["qa"][row0 : row0 + h, col0 : col0 + w] = qa


@dataclass
class Preview:
    """Every ``step``-th row and column of a scene before and after filling, with validity:
    all a quicklook needs, small enough to collect from blocks processed elsewhere."""

    before: NDArray
    after: NDArray
    before_valid: NDArray[np.bool_]
    after_valid: NDArray[np.bool_]

    @staticmethod
    def step_for(shape: tuple[int, int], max_size: int = 1024) -> int:
        return max(1, int(np.ceil(max(shape) / max_size)))

    @classmethod
    def of_block(cls, before: NDArray, after: NDArray, before_valid: NDArray[np.bool_],
                 after_valid: NDArray[np.bool_], origin: tuple[int, int], step: int) -> "Preview":
        """The preview pixels of a block whose top-left pixel is scene pixel ``origin``."""
        sl = (slice(None), slice((-origin[0]) % step, None, step), slice((-origin[1]) % step, None, step))
        return cls(before[sl], after[sl], before_valid[sl], after_valid[sl])

    @classmethod
    def mosaic(cls, rows: Sequence[Sequence["Preview"]]) -> "Preview":
        """Join block previews: ``rows`` of blocks, each row in column order."""
        fields = ("before", "after", "before_valid", "after_valid")
        joined = [[np.concatenate([getattr(p, f) for p in row], axis=2) for f in fields] for row in rows]
        return cls(*(np.concatenate([row[i] for row in joined], axis=1) for i in range(len(fields))))


def write_quicklook(path: str | os.PathLike[str], preview: Preview, *, rgb: Sequence[int] = (0, 1, 2)) -> None:
    """Before | after PNG with one stretch (from the observed preview pixels) for both.

    Missing pixels are magenta in both panels, so unfilled gaps stand out after filling.
    """
    before, before_valid = preview.before, preview.before_valid
    count = before.shape[0]
    idx = [i for i in rgb if i < count] if count >= 3 else [0, 0, 0]
    if len(idx) != 3:
        idx = [0, 0, 0]
    panels = []
    for arr, valid in ((before, before_valid), (preview.after, preview.after_valid)):
        rgb_img = np.stack([_stretch_from(arr[i], valid[i], before[i], before_valid[i]) for i in idx])
        missing = ~valid[idx].all(axis=0)
        rgb_img[:, missing] = np.array([255, 0, 255], dtype=np.uint8)[:, None]
        panels.append(rgb_img)
    gutter = np.full((3, panels[0].shape[1], 8), 255, dtype=np.uint8)
    img = np.concatenate([panels[0], gutter, panels[1]], axis=2)
    with staged(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a picture, not a map
        with rasterio.open(
            tmp, "w", driver="PNG", width=img.shape[2], height=img.shape[1], count=3, dtype="uint8"
        ) as ds:
            ds.write(img)
        aux = Path(str(tmp) + ".aux.xml")
        if aux.exists():
            aux.unlink()


def _stretch_from(
    band: NDArray, valid: NDArray[np.bool_], ref: NDArray, ref_valid: NDArray[np.bool_]
) -> NDArray[np.uint8]:
    """Stretch ``band`` with limits taken from the reference (input) band's valid pixels onto
    1..255 (0 stays nodata: the quicklook's own encoding, unlike the eval pictures' [0, 1])."""
    out = np.zeros(band.shape, dtype=np.uint8)
    if not ref_valid.any() or not valid.any():
        return out
    ((lo, hi),) = percentile_limits(ref[None], ref_valid[None], (2, 98))
    scale = 254.0 / (hi - lo) if hi > lo else 0.0
    out[valid] = (np.clip((band[valid].astype(np.float64) - lo) * scale, 0, 254) + 1).astype(np.uint8)
    return out


def write_vrt(path: str | os.PathLike[str], sources: Sequence[tuple[str, int, str]], grid: Grid,
              dtype: np.dtype, nodata: float | None) -> None:
    """A GDAL VRT with one band per ``(file name beside it, 1-based band, description)``.

    Why: a product's bands are one COG each (as the input collection's assets, which is
    what one-band-per-asset readers such as stackstac need); a VRT of a few hundred bytes
    gives GDAL tools and QGIS the whole scene as one multi-band raster without storing the
    pixels twice. GDAL reads through to the COGs, their overviews included.
    """
    from xml.sax.saxutils import escape

    from rasterio.dtypes import _get_gdal_dtype, typename_fwd

    gdal_type = typename_fwd[_get_gdal_dtype(np.dtype(dtype).name)]
    t = grid.transform
    nodata_xml = f"    <NoDataValue>{nodata!r}</NoDataValue>\n" if nodata is not None else ""
    srs = f"  <SRS>{escape(grid.crs.to_wkt())}</SRS>\n" if grid.crs else ""
    placement = f"  <GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>\n"
    if grid.crs is None and grid.gcps:  # placed by GCPs only (Sentinel-1 GRD), as the input
        from rasterio.crs import CRS

        projection = escape(CRS.from_user_input(grid.gcp_crs).to_wkt(), {'"': "&quot;"}) if grid.gcp_crs else ""
        placement = f'  <GCPList Projection="{projection}">\n' + "".join(
            f'    <GCP Id="{i}" Pixel="{col!r}" Line="{row!r}" X="{x!r}" Y="{y!r}" Z="{z!r}"/>\n'
            for i, (row, col, x, y, z) in enumerate(grid.gcps, start=1)) + "  </GCPList>\n"
    height, width = grid.shape
    bands = "".join(
        f'  <VRTRasterBand dataType="{gdal_type}" band="{i}">\n'
        f"    <Description>{escape(description)}</Description>\n{nodata_xml}"
        "    <SimpleSource>\n"
        f'      <SourceFilename relativeToVRT="1">{escape(name)}</SourceFilename>\n'
        f"      <SourceBand>{band}</SourceBand>\n"
        "    </SimpleSource>\n"
        "  </VRTRasterBand>\n"
        for i, (name, band, description) in enumerate(sources, start=1)
    )
    xml = (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n{srs}{placement}'
        f"{bands}</VRTDataset>\n"
    )
    with staged(path) as tmp:
        tmp.write_text(xml)


@dataclass(frozen=True)
class CopiedRaster:
    """What :func:`copy_as_cog` wrote: the raster's own grid and pixel type."""

    grid: Grid
    dtype: str
    nodata: float | None


def copy_as_cog(href: str, path: str | os.PathLike[str], what: str,
                gdal_options: dict[str, str] | None = None) -> CopiedRaster:
    """Copy the raster at ``href`` (anything GDAL reads: a path, ``https://``, ``s3://``)
    to a COG at ``path``, pixels unchanged (lossless DEFLATE, ``nearest`` overviews: class
    and bit-flag layers such as QA stay exact at every level), on its own grid.

    Why re-encode instead of copying bytes: the source may be remote or a plain GeoTIFF;
    the product's assets are all COGs."""
    from dipfill.raster.gdal import gdal_env
    from dipfill.raster.read import open_raster

    with gdal_env(gdal_options), staged(path) as tmp:
        with open_raster(href, what) as src:
            rasterio.shutil.copy(
                src, str(tmp), driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE="256",
                OVERVIEWS="AUTO", RESAMPLING="NEAREST", OVERVIEW_RESAMPLING="NEAREST", NUM_THREADS="1",
                BIGTIFF="IF_SAFER",
            )
            return CopiedRaster(Grid(crs=src.crs, transform=src.transform, width=src.width, height=src.height),
                                src.dtypes[0], src.nodata)
