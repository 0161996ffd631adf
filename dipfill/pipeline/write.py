"""Write outputs atomically: COGs, the Zarr mosaic, the quicklook.

Every output is written under a hidden temporary name in its final directory and moved
into place with one rename, so a reader (or a crashed run) never sees a half-written
file. ``staged`` yields the temporary path and removes it if anything fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import rasterio
import rasterio.shutil
from numpy.typing import NDArray
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from dipfill.pipeline.read import Grid

__all__ = ["staged", "write_cog", "write_zarr_mosaic", "write_quicklook"]

log = logging.getLogger(__name__)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def staged(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it onto ``final`` in one rename.

    Directories (Zarr stores) cannot be atomically replaced when the target exists, so
    an existing target is first renamed aside and deleted after the new one is in place.
    """
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if tmp.is_dir() and final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
            os.replace(tmp, final)
            _remove(old)
        else:
            os.replace(tmp, final)
    finally:
        _remove(tmp)


def write_cog(
    path: str | os.PathLike[str],
    data: NDArray,
    grid: Grid,
    *,
    nodata: float | None,
    band_names: Sequence[str] = (),
    resampling: Literal["average", "nearest", "mode"] = "average",
    tags: dict[str, str] | None = None,
    blocksize: int = 256,
) -> None:
    """Write ``data[bands, y, x]`` as a Cloud-Optimized GeoTIFF (GDAL COG driver).

    DEFLATE with the predictor chosen for the dtype (horizontal differencing for
    integers, floating-point for floats), internal tiles of ``blocksize`` and overviews
    down to one tile; ``average`` overviews respect nodata, ``nearest`` suits class
    layers such as QA.
    """
    count, height, width = data.shape
    profile = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=data.dtype.name,
        crs=grid.crs,
        transform=grid.transform,
        nodata=nodata,
    )
    with staged(path) as tmp, MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(data)
            for i, name in enumerate(band_names, start=1):
                ds.set_band_description(i, name)
            if tags:
                ds.update_tags(**tags)
        with mem.open() as src:
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
            )


def write_zarr_mosaic(
    path: str | os.PathLike[str],
    bands: NDArray,
    qa: NDArray[np.uint8],
    grid: Grid,
    *,
    nodata: float | None,
    band_names: Sequence[str],
    attrs: dict,
    chunk: int = 512,
) -> None:
    """Write the filled scene as a Zarr v3 group: ``bands[band, y, x]`` and ``qa[y, x]``.

    Dimension names and georeferencing attributes (CRS WKT, GDAL geotransform) let
    xarray and GDAL's Zarr driver place the arrays; chunks are one band by ``chunk``².
    """
    import zarr

    count, height, width = bands.shape
    cy, cx = min(chunk, height), min(chunk, width)
    geo = {
        "crs_wkt": grid.crs.to_wkt() if grid.crs else None,
        "proj:epsg": grid.crs.to_epsg() if grid.crs else None,
        "geotransform": list(grid.transform.to_gdal()),
        "band_names": list(band_names),
    }
    with staged(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs.update({**attrs, **geo})
        fill = None if nodata is None else np.asarray(nodata).astype(bands.dtype).item()
        arr = root.create_array(
            "bands",
            shape=bands.shape,
            chunks=(1, cy, cx),
            dtype=bands.dtype,
            fill_value=fill if fill is not None else 0,
            dimension_names=("band", "y", "x"),
            attributes={"nodata": fill, **geo},
        )
        arr[...] = bands
        q = root.create_array(
            "qa",
            shape=qa.shape,
            chunks=(cy, cx),
            dtype=np.uint8,
            fill_value=0,
            dimension_names=("y", "x"),
            attributes={"flag_values": attrs.get("qa_flag_values"), **geo},
        )
        q[...] = qa


def write_quicklook(
    path: str | os.PathLike[str],
    before: NDArray,
    after: NDArray,
    before_valid: NDArray[np.bool_],
    after_valid: NDArray[np.bool_],
    *,
    rgb: Sequence[int] = (0, 1, 2),
    max_size: int = 1024,
) -> None:
    """Before | after PNG with one stretch (taken from the observed pixels) for both.

    Missing pixels are magenta in both panels, so unfilled gaps stand out after filling.
    """
    count = before.shape[0]
    idx = [i for i in rgb if i < count] if count >= 3 else [0, 0, 0]
    if len(idx) != 3:
        idx = [0, 0, 0]
    step = max(1, int(np.ceil(max(before.shape[1:]) / max_size)))
    panels = []
    for arr, valid in ((before, before_valid), (after, after_valid)):
        arr, valid = arr[:, ::step, ::step], valid[:, ::step, ::step]
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
    """Stretch ``band`` with limits taken from the reference (input) band's valid pixels."""
    out = np.zeros(band.shape, dtype=np.uint8)
    if not ref_valid.any() or not valid.any():
        return out
    lo, hi = np.percentile(ref[ref_valid].astype(np.float64), [2, 98])
    scale = 254.0 / (hi - lo) if hi > lo else 0.0
    out[valid] = (np.clip((band[valid].astype(np.float64) - lo) * scale, 0, 254) + 1).astype(np.uint8)
    return out


def write_band_vrt(path: str | os.PathLike[str], cog_name: str, band: int, grid: Grid, dtype: np.dtype,
                   nodata: float | None, description: str = "") -> None:
    """A one-band GDAL VRT selecting ``band`` (1-based) of the COG ``cog_name`` beside it.

    Why: stackstac (and other readers that map one asset to one band) refuse multi-band
    assets. A VRT of a few hundred bytes per band gives them single-band assets without
    storing the pixels twice; GDAL reads through to the COG, overviews included.
    """
    from xml.sax.saxutils import escape

    from rasterio.dtypes import _get_gdal_dtype, typename_fwd

    gdal_type = typename_fwd[_get_gdal_dtype(np.dtype(dtype).name)]
    t = grid.transform
    nodata_xml = f"    <NoDataValue>{nodata!r}</NoDataValue>\n" if nodata is not None else ""
    srs = f"  <SRS>{escape(grid.crs.to_wkt())}</SRS>\n" if grid.crs else ""
    height, width = grid.shape
    xml = (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n{srs}'
        f"  <GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>\n"
        f'  <VRTRasterBand dataType="{gdal_type}" band="1">\n'
        f"    <Description>{escape(description)}</Description>\n{nodata_xml}"
        "    <SimpleSource>\n"
        f'      <SourceFilename relativeToVRT="1">{escape(cog_name)}</SourceFilename>\n'
        f"      <SourceBand>{band}</SourceBand>\n"
        "    </SimpleSource>\n"
        "  </VRTRasterBand>\n"
        "</VRTDataset>\n"
    )
    with staged(path) as tmp:
        tmp.write_text(xml)
