"""A filled scene's products: one COG per band (named as the input item's assets), the
input's QA layer copied, a VRT of all bands, dipfill's QA COG, Zarr mosaic, quicklook, patch
diagnostics, and — written last, as the commit marker — its STAC item.

Shared by ``dipfill fill`` (the scene in memory) and ``dipfill run`` (the scene streamed
back from its Zarr mosaic): :class:`SceneProduct` needs only row slicing of its arrays.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill import __version__
from dipfill.engines.base import PatchDiagnostics
from dipfill.raster.geometry import footprint_geometry
from dipfill.raster.masks import QA_CLASSES
from dipfill.raster.read import Grid, describe_grid_difference
from dipfill.raster.write import CopiedRaster, Preview, copy_as_cog, write_cog, write_quicklook, write_vrt, write_zarr_mosaic
from dipfill.specs import FillOptions
from dipfill.stac.item import FilledScene, ItemExtras, MirroredAsset, band_asset_keys, output_item, own_asset_keys
from dipfill.stac.publish import remote_hrefs
from dipfill.storage import ObjectPath, write_json

__all__ = ["SceneProduct", "CarriedAsset", "CogTask", "cog_tasks", "write_cog_task", "output_names", "mosaic_name",
           "mosaic_attrs", "write_outputs", "patch_records"]


@dataclass(frozen=True)
class CarriedAsset:
    """An input asset copied into the product as it is (the QA layer): its key, where to read
    it (signed, secrets allowed: never written anywhere) and its JSON (metadata mirrored)."""

    key: str
    href: str
    source: Mapping[str, Any]
    gdal_options: tuple[tuple[str, str], ...] = ()


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
    guides: Sequence[Mapping[str, Any]] = ()  # GuideSource.record() of each guide, in rank order
    # the input item's asset (key and JSON) of each band, in band order; empty: bands from
    # files (dipfill fill), keyed by their names
    band_assets: Sequence[tuple[str, Mapping[str, Any]]] = ()
    carried: Sequence[CarriedAsset] = ()  # input assets copied unchanged (the QA layer)

    @property
    def band_keys(self) -> list[str]:
        """The asset key (and file name part) of each band's COG."""
        if self.band_assets:
            return [key for key, _ in self.band_assets]
        return band_asset_keys(self.band_names)


def mosaic_name(item_id: str) -> str:
    """The Zarr mosaic's directory name (one per scene)."""
    return f"{item_id}_mosaic.zarr"


def output_names(item_id: str, band_keys: Sequence[str] = (), carried: Sequence[str] = ()) -> dict[str, str]:
    """File names of a scene's outputs by asset key (the item JSON is ``item``): a COG per
    band and per carried asset named after its key, and dipfill's own outputs (whose keys
    :func:`~dipfill.stac.item.own_asset_keys` moves aside where the input uses them)."""
    own = own_asset_keys([*band_keys, *carried])
    names = {
        own["filled"]: f"{item_id}_filled.vrt",
        own["qa"]: f"{item_id}_qa.tif",
        own["mosaic"]: mosaic_name(item_id),
        own["quicklook"]: f"{item_id}_quicklook.png",
        own["patches"]: f"{item_id}_patches.json",
    }
    used = {*names.values(), f"{item_id}.json"}
    for key in (*band_keys, *carried):
        stem = f"{item_id}_{_file_part(key)}"
        name = f"{stem}.tif"
        n = 1
        while name in used:  # keys that clean alike, or a key named like an own output
            n += 1
            name = f"{stem}-{n}.tif"
        names[key] = name
        used.add(name)
    names["item"] = f"{item_id}.json"
    return names


def _file_part(key: str) -> str:
    """An asset key as part of a file name (USGS keys such as ``SR_B4.TIF`` lose the suffix)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", key)
    cleaned = re.sub(r"\.(tif|tiff|TIF|TIFF)$", "", cleaned).strip("._-")
    return cleaned or "asset"


@dataclass(frozen=True)
class CogTask:
    """One COG of a run's product (a band, or dipfill's QA layer) to write from the scene's
    Zarr mosaic: a plain picklable description, so the engine workers write a scene's COGs
    side by side (:func:`cog_tasks`) instead of the driver one after the other. Each
    COG is one file from one writer, so the bytes do not depend on who writes it."""

    path: str  # the COG (local path or object-storage URL)
    mosaic: str  # the scene's Zarr mosaic
    band: int | None  # band index in the mosaic; None: the QA layer
    grid: Grid
    nodata: float | None
    description: str
    tags: tuple[tuple[str, str], ...] = ()


def cog_tasks(out_dir: Path, item_id: str, product: SceneProduct, options: FillOptions,
              mosaic: str) -> list[CogTask]:
    """The band COGs and the QA COG of ``product`` as :class:`CogTask` s (bands first: they
    take longest), with the names and tags :func:`write_outputs` gives them."""
    band_keys = product.band_keys
    names = output_names(item_id, band_keys, [c.key for c in product.carried])
    own = own_asset_keys([*band_keys, *(c.key for c in product.carried)])
    tags = (("DIPFILL_VERSION", __version__), ("DIPFILL_ENGINE", options.engine))
    tasks = [CogTask(str(out_dir / names[key]), mosaic, b, product.grid, product.nodata, band_name, tags)
             for b, (key, band_name) in enumerate(zip(band_keys, product.band_names))]
    return tasks + [CogTask(str(out_dir / names[own["qa"]]), mosaic, None, product.grid, None, "qa")]


def write_cog_task(task: CogTask) -> str:
    """Write one :class:`CogTask` (memory: a strip of the mosaic, as :func:`write_cog`)."""
    import zarr

    from dipfill.storage import zarr_store

    mosaic = zarr.open_group(zarr_store(task.mosaic, read_only=True), mode="r", zarr_format=3)
    if task.band is None:
        write_cog(task.path, mosaic["qa"], task.grid, nodata=None, band_names=["qa"], resampling="nearest")
    else:
        write_cog(task.path, _BandRows(mosaic["bands"], task.band), task.grid, nodata=task.nodata,
                  band_names=[task.description], tags=dict(task.tags))
    return task.path


def mosaic_attrs(options: FillOptions) -> dict[str, Any]:
    return {"dipfill:version": __version__, "dipfill:config": options.hashable_dict(),
            "qa_flag_values": sorted(QA_CLASSES)}


def write_outputs(
    out_dir: Path,
    item_id: str,
    product: SceneProduct,
    options: FillOptions,
    acquired: str | None,
    rgb: Sequence[int],
    extras: ItemExtras | None = None,
    *,
    mosaic_written: bool = False,
    cogs_written: bool = False,
) -> dict[str, str]:
    """Write COGs (unless ``cogs_written``: a run's workers wrote the band and QA COGs from
    :func:`cog_tasks`), Zarr (unless ``mosaic_written``: a run's block tasks wrote it),
    quicklook, then the STAC item; remove ``out_dir`` if we made it and failed."""
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    band_keys = product.band_keys
    names = output_names(item_id, band_keys, [c.key for c in product.carried])
    own = own_asset_keys([*band_keys, *(c.key for c in product.carried)])
    paths = {k: out_dir / v for k, v in names.items()}
    tags = {"DIPFILL_VERSION": __version__, "DIPFILL_ENGINE": options.engine}
    try:
        for b, (key, band_name) in enumerate(zip(band_keys, product.band_names)):
            if not cogs_written:
                write_cog(paths[key], _BandRows(product.bands, b), product.grid, nodata=product.nodata,
                          band_names=[band_name], tags=tags)
        write_vrt(paths[own["filled"]], [(names[key], 1, name) for key, name in zip(band_keys, product.band_names)],
                  product.grid, product.dtype, product.nodata)
        copies = {c.key: copy_as_cog(c.href, paths[c.key], f"asset {c.key}", dict(c.gdal_options))
                  for c in product.carried}
        if not cogs_written:
            write_cog(paths[own["qa"]], product.qa, product.grid, nodata=None, band_names=["qa"],
                      resampling="nearest")
        if not mosaic_written:
            write_zarr_mosaic(paths[own["mosaic"]], product.bands, product.qa, product.grid, nodata=product.nodata,
                              band_names=product.band_names, attrs=mosaic_attrs(options))
        write_quicklook(paths[own["quicklook"]], product.preview, rgb=rgb)
        write_json(paths[own["patches"]], patch_records(product.diagnostics))
        scene = describe(item_id, product, extras or ItemExtras(), copies)
        item = output_item(scene, options, acquired, names, out_dir, extras or ItemExtras())
        doc = item.to_dict(include_self_link=False)
        # on object storage, asset hrefs are the objects' URLs (s3://...): what readers open
        write_json(paths["item"], remote_hrefs(doc, out_dir) if isinstance(out_dir, ObjectPath) else doc)
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    return {k: str(p) for k, p in paths.items()}


def patch_records(diagnostics: Mapping[str, PatchDiagnostics]) -> list[dict[str, Any]]:
    """One JSON record per fitted window: engine, steps used, best step and held-out RMSE,
    final loss, seconds, stopping reason and execution plan. Ordered by window id. A value
    that is not a number (a classical engine's loss) is ``null``: bare ``NaN`` is not JSON
    and strict readers (``JSON.parse``) reject the file."""
    return [_json_safe({"window": window_id, **asdict(diagnostics[window_id])}) for window_id in sorted(diagnostics)]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class _BandRows:
    """One band of a ``[band, y, x]`` array (numpy or Zarr) as a ``[y, x]`` array that
    :func:`write_cog` slices by rows: a Zarr band is read chunk row by chunk row."""

    def __init__(self, bands: Any, band: int) -> None:
        self.bands, self.band = bands, band
        self.shape = tuple(bands.shape[1:])
        self.dtype = bands.dtype

    def __getitem__(self, rows: slice) -> Any:
        return self.bands[self.band, rows]


def describe(item_id: str, product: SceneProduct, extras: ItemExtras,
             copies: Mapping[str, CopiedRaster] | None = None) -> FilledScene:
    """The plain values an output item states about ``product``: the source item's footprint
    when the run has one, else the footprint traced from the mask; the input assets its
    bands and copies mirror (``copies``: what :func:`copy_as_cog` wrote for each)."""
    if extras.geometry is not None and extras.bbox is not None:
        geometry, bbox = extras.geometry, list(extras.bbox)
    else:
        geometry, bbox = footprint_geometry(product.footprint, product.grid)
    crs = product.grid.crs
    dtype = np.dtype(product.dtype).name
    mirrored = [MirroredAsset(key, source, dtype, product.nodata, band=b)
                for b, (key, source) in enumerate(product.band_assets)]
    for c in product.carried:
        copy = (copies or {})[c.key]
        own_grid = describe_grid_difference(product.grid, copy.grid) is None
        ccrs = copy.grid.crs
        mirrored.append(MirroredAsset(
            c.key, c.source, copy.dtype, copy.nodata,
            shape=None if own_grid else copy.grid.shape,
            transform=None if own_grid else list(copy.grid.transform)[:6],
            epsg=None if own_grid or ccrs is None or ccrs == crs else ccrs.to_epsg(),
            wkt2=None if own_grid or ccrs is None or ccrs == crs or ccrs.to_epsg() else ccrs.to_wkt(),
        ))
    return FilledScene(
        item_id=item_id, geometry=geometry, bbox=bbox,
        epsg=crs.to_epsg() if crs else None, wkt2=crs.to_wkt() if crs else None,
        shape=product.grid.shape, transform=list(product.grid.transform)[:6],
        band_names=list(product.band_names), dtype=np.dtype(product.dtype).name, nodata=product.nodata,
        counts=product.counts, qa_classes=QA_CLASSES, sources=list(product.sources),
        guides=[dict(g) for g in product.guides], mirrored=mirrored,
        resolution=abs(product.grid.transform.a) if product.grid.transform.b == 0 else None,
    )
