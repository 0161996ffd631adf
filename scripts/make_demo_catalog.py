"""Write the committed static STAC catalog of the demo scenes (data/arg25_menindee/stac/).

One item per date of the ARG25 Menindee crops, collection ``ga-arg25-nbar``, with one
asset per band (B3, B4, B5): one-band VRTs over the committed 3-band GeoTIFF, so the
pixels are stored once. Run once; the output is committed (``make demo`` reads it).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import rasterio
from rasterio.warp import transform_bounds

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dipfill.raster.read import Grid  # noqa: E402
from dipfill.raster.write import write_vrt  # noqa: E402
from dipfill.stac.catalog import (  # noqa: E402
    catalog_with_collection,
    collection_with_item,
    new_catalog,
    new_collection,
    with_item_links,
)

DATA = REPO / "data" / "arg25_menindee"
ROOT = DATA / "stac"
COLLECTION = "ga-arg25-nbar"
BANDS = (("B3", "red", 0.63, 0.69), ("B4", "nir", 0.75, 0.90), ("B5", "swir16", 1.55, 1.75))


def item_for(tif: Path, root: Path = ROOT, suffix: str = "_crop512") -> dict:
    """The item for ``tif`` with its band VRTs written under ``root/<collection>/<id>/``."""
    date = tif.name.split("_")[4]
    item_id = f"LS7_ETM_095_082_{date}{suffix}"
    with rasterio.open(tif) as ds:
        grid = Grid(ds.crs, ds.transform, ds.width, ds.height)
        w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
        dtype, nodata = ds.dtypes[0], ds.nodata
    item_dir = root / COLLECTION / item_id
    item_dir.mkdir(parents=True, exist_ok=True)
    assets = {}
    for i, (key, common, lo, hi) in enumerate(BANDS, start=1):
        vrt = item_dir / f"{key}.vrt"
        write_vrt(vrt, [(os.path.relpath(tif, item_dir), i, f"ETM+ {key}")], grid, dtype, nodata)
        assets[key] = {
            "href": f"./{key}.vrt", "type": "application/x-vrt", "roles": ["data"], "title": f"ETM+ {key} NBAR x10000",
            "raster:bands": [{"data_type": dtype, "nodata": nodata, "scale": 1e-4, "spatial_resolution": 25}],
            "eo:bands": [{"name": key, "common_name": common, "center_wavelength": round((lo + hi) / 2, 3)}],
        }
    return {
        "type": "Feature", "stac_version": "1.1.0", "id": item_id, "collection": COLLECTION,
        "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json",
                            "https://stac-extensions.github.io/raster/v1.1.0/schema.json"],
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "bbox": [w, s, e, n],
        "properties": {"datetime": f"{date[:4]}-{date[4:6]}-{date[6:]}T00:00:00Z", "platform": "landsat-7",
                       "instruments": ["etm+"], "proj:code": f"EPSG:{grid.crs.to_epsg()}",
                       "proj:shape": [grid.height, grid.width], "proj:transform": list(grid.transform)[:6],
                       "description": "512x512 crop of Geoscience Australia ARG25 NBAR, SLC-off; CC BY 3.0 AU"},
        "links": [{"rel": "license", "href": "https://creativecommons.org/licenses/by/3.0/au/"}],
        "assets": assets,
    }


def write_catalog(root: Path, tifs: list[Path], suffix: str = "_crop512") -> Path:
    """A static catalog of ``tifs`` at ``root``; returns its catalog.json."""
    catalog = new_catalog("dipfill-demo", "Demo scenes for dipfill: ARG25 Landsat-7 SLC-off (CC BY 3.0 AU)")
    collection = new_collection(COLLECTION, "Geoscience Australia ARG25 Landsat-7 ETM+ NBAR surface reflectance "
                                "x10000 around Menindee (CC BY 3.0 AU, Geoscience Australia)", "CC-BY-3.0-AU")
    for tif in tifs:
        item = item_for(tif, root, suffix)
        path = root / COLLECTION / item["id"] / f"{item['id']}.json"
        path.write_text(json.dumps(with_item_links(item, COLLECTION), indent=2) + "\n")
        collection = collection_with_item(collection, item)
    (root / COLLECTION / "collection.json").write_text(json.dumps(collection, indent=2) + "\n")
    (root / "catalog.json").write_text(json.dumps(catalog_with_collection(catalog, COLLECTION), indent=2) + "\n")
    return root / "catalog.json"


def main() -> None:
    print(f"wrote {write_catalog(ROOT, sorted(DATA.glob('LS7_ETM_*_crop512.tif')))}")


if __name__ == "__main__":
    main()
