"""A filled scene's products: COG, QA COG, one-band VRTs, Zarr mosaic, quicklook, patch
diagnostics, and — written last, as the commit marker — its STAC item.

Shared by ``dipfill fill`` (the scene in memory) and ``dipfill run`` (the scene streamed
back from its Zarr mosaic): :class:`SceneProduct` needs only row slicing of its arrays.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill import __version__
from dipfill.engines.base import PatchDiagnostics
from dipfill.raster.geometry import footprint_geometry
from dipfill.raster.masks import QA_CLASSES
from dipfill.raster.read import Grid
from dipfill.raster.write import Preview, write_band_vrt, write_cog, write_quicklook, write_zarr_mosaic
from dipfill.specs import FillOptions
from dipfill.stac.item import FilledScene, ItemExtras, output_item
from dipfill.storage import write_json

__all__ = ["SceneProduct", "output_names", "mosaic_attrs", "write_outputs", "patch_records"]


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


def output_names(item_id: str, bands: int) -> dict[str, str]:
    """File names of a scene's outputs, by asset key (the item is ``item``)."""
    names = {
        "filled": f"{item_id}_filled.tif",
        "qa": f"{item_id}_qa.tif",
        "mosaic": f"{item_id}_mosaic.zarr",
        "quicklook": f"{item_id}_quicklook.png",
        "patches": f"{item_id}_patches.json",
        "item": f"{item_id}.json",
    }
    for b in range(1, bands + 1):
        names[f"filled_{b}"] = f"{item_id}_filled_b{b}.vrt"
    return names


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
) -> dict[str, str]:
    """Write COGs, Zarr (unless ``mosaic_written``: a run's block tasks wrote it), quicklook,
    then the STAC item; remove ``out_dir`` if we made it and failed."""
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    names = output_names(item_id, len(product.band_names))
    paths = {k: out_dir / v for k, v in names.items()}
    try:
        write_cog(
            paths["filled"],
            product.bands,
            product.grid,
            nodata=product.nodata,
            band_names=product.band_names,
            tags={"DIPFILL_VERSION": __version__, "DIPFILL_ENGINE": options.engine},
        )
        write_cog(paths["qa"], product.qa, product.grid, nodata=None, band_names=["qa"], resampling="nearest")
        for b, band_name in enumerate(product.band_names, start=1):
            write_band_vrt(paths[f"filled_{b}"], names["filled"], b, product.grid, product.dtype, product.nodata,
                           band_name)
        if not mosaic_written:
            write_zarr_mosaic(paths["mosaic"], product.bands, product.qa, product.grid, nodata=product.nodata,
                              band_names=product.band_names, attrs=mosaic_attrs(options))
        write_quicklook(paths["quicklook"], product.preview, rgb=rgb)
        write_json(paths["patches"], patch_records(product.diagnostics))
        item = output_item(describe(item_id, product, extras or ItemExtras()), options, acquired, names, out_dir,
                           extras or ItemExtras())
        write_json(paths["item"], item.to_dict(include_self_link=False))
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


def describe(item_id: str, product: SceneProduct, extras: ItemExtras) -> FilledScene:
    """The plain values an output item states about ``product``: the source item's footprint
    when the run has one, else the footprint traced from the mask."""
    if extras.geometry is not None and extras.bbox is not None:
        geometry, bbox = extras.geometry, list(extras.bbox)
    else:
        geometry, bbox = footprint_geometry(product.footprint, product.grid)
    crs = product.grid.crs
    return FilledScene(
        item_id=item_id, geometry=geometry, bbox=bbox,
        epsg=crs.to_epsg() if crs else None, wkt2=crs.to_wkt() if crs else None,
        shape=product.grid.shape, transform=list(product.grid.transform)[:6],
        band_names=list(product.band_names), dtype=np.dtype(product.dtype).name, nodata=product.nodata,
        counts=product.counts, qa_classes=QA_CLASSES, sources=list(product.sources),
        guides=[dict(g) for g in product.guides],
    )
