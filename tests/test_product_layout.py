"""A run's product mirrors its input scene (issue 12, complete products): one COG per band
under the input's asset key with its eo:bands/raster:bands, every band of the profile by
default (``--bands`` narrows it), the input's QA asset carried, so code written for the
input collection reads the output unchanged — odc-stac with the same band names, stackstac's
default call. In process (``LocalPool``, fillnodata): the Ray path writes the same files
(tests/test_run.py, tests/test_item_schemas.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio

from dipfill.cli.run import build_request
from dipfill.pipeline import run as run_mod
from dipfill.pipeline.executor import LocalPool
from dipfill.raster.masks import QA_ENGINE, QA_OBSERVED
from dipfill.specs import PRODUCT_LAYOUT
from tests._data import DATA, REPO, shared_file
from tests._schemas import validation_errors

CATALOG = DATA / "arg25_menindee" / "stac" / "catalog.json"
JAN = "LS7_ETM_095_082_20100116_crop512"
INPUT = CATALOG.parent / "ga-arg25-nbar" / JAN / f"{JAN}.json"
BANDS = ["B3", "B4", "B5"]
# odc-stac takes only image/* and a few other media types as rasters; the demo catalog's
# assets are VRTs (application/x-vrt), so code for it names them: the same code reads the output
ODC_CFG = {"*": {"assets": {b: {"data_type": "int16", "nodata": -999} for b in BANDS}}}


def run_scene(out: Path, stac: Path = CATALOG, **values) -> dict:
    request = build_request({"stac": str(stac), "out": str(out), "engine": "fillnodata",
                             "datetime": "2010-01-01/2010-01-31", **values})
    pool = LocalPool(request.options.engine, dict(request.options.engine_options), request.options.fallback)
    summary = run_mod.run(request, pool=pool)
    assert [s.status for s in summary.scenes] == ["done"], summary.scenes
    return summary.scenes[0].output


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    """The January demo scene run with the defaults: every band of its profile."""
    return Path(run_scene(tmp_path_factory.mktemp("layout") / "out"))


def test_the_output_mirrors_the_input_items_band_assets(output: Path) -> None:
    source, item = json.loads(INPUT.read_text()), json.loads(output.read_text())
    assert validation_errors(item) == []
    for key in BANDS:  # every band of the ARG25 profile, under the input's key
        mine, theirs = item["assets"][key], source["assets"][key]
        assert mine["type"].startswith("image/tiff") and mine["roles"] == theirs["roles"]
        assert mine["eo:bands"] == theirs["eo:bands"]
        (band,), (want,) = mine["raster:bands"], theirs["raster:bands"]
        assert {k: band[k] for k in want} == want  # data type, nodata, scale, resolution as the input's
        with rasterio.open(output.parent / mine["href"]) as ds:
            assert ds.count == 1 and ds.dtypes[0] == "int16" and ds.nodata == -999
    assert {"filled", "qa", "mosaic", "quicklook", "patches"} <= set(item["assets"])
    assert (item["properties"]["platform"], item["properties"]["instruments"]) == ("landsat-7", ["etm+"])
    # the layout is in the config hash: outputs of the one-COG layout are not current
    assert item["properties"]["dipfill:run_config"]["product_layout"] == PRODUCT_LAYOUT == 2


def test_odc_stac_loads_input_and_output_with_the_same_band_names(output: Path) -> None:
    import odc.stac

    before = odc.stac.load([pystac.Item.from_file(str(INPUT))], bands=BANDS, chunks=None, stac_cfg=ODC_CFG)
    after = odc.stac.load([pystac.Item.from_file(str(output))], bands=BANDS, chunks=None, stac_cfg=ODC_CFG)
    plain = odc.stac.load([pystac.Item.from_file(str(output))], bands=BANDS, chunks=None)  # its own metadata
    assert after.odc.geobox == before.odc.geobox
    with rasterio.open(output.parent / json.loads(output.read_text())["assets"]["qa"]["href"]) as ds:
        qa = ds.read(1)
    for name in BANDS:
        x, y = before[name].values[0], after[name].values[0]
        assert x.dtype == y.dtype == np.int16 and np.array_equal(plain[name].values[0], y)
        observed = x != -999
        assert np.array_equal(y[observed], x[observed])  # observed pixels bit-exact
        assert 0.2 < (~observed).mean() and (y[~observed] != -999).all()  # every gap filled
        assert ((qa == QA_OBSERVED) <= observed).all() and (qa[~observed] == QA_ENGINE).all()


def test_stackstacs_default_call_reads_the_output(output: Path) -> None:
    """No ``assets=``: stackstac takes every image/tiff asset and needs each to have one band.
    (stackstac 0.5 reads only ``proj:epsg``, which projection v2 removed: copied back here.)"""
    import stackstac

    item = pystac.Item.from_file(str(output))
    item.make_asset_hrefs_absolute()
    raw = item.to_dict()
    raw["properties"]["proj:epsg"] = int(raw["properties"]["proj:code"].removeprefix("EPSG:"))
    arr = stackstac.stack([raw])
    assert list(arr.band.values) == [*BANDS, "qa"] and arr.shape == (1, 4, 512, 512)
    values = arr.isel(time=0).values
    for i, key in enumerate(BANDS):
        with rasterio.open(item.assets[key].get_absolute_href()) as ds:
            assert np.array_equal(values[i], ds.read(1) * 1e-4)  # scale applied, as for the input


def test_bands_narrows_the_product(tmp_path: Path) -> None:
    item = json.loads(Path(run_scene(tmp_path / "out", bands="B4")).read_text())
    assert validation_errors(item) == []
    assert "B4" in item["assets"] and not {"B3", "B5"} & set(item["assets"])
    assert len(item["assets"]["filled"]["raster:bands"]) == 1


# ------------------------------------------------------- Landsat C2 L2: every band, QA carried
L8_DIR = "landsat8_clouds/riotilerpds_LC08_L2SP_001062_20201031_600m_cloudy"
L8_PREFIX = "LC08_L2SP_001062_20201031_20201106_02_T2_"
L8_FILES = {"coastal": "SR_B1", "blue": "SR_B2", "green": "SR_B3", "red": "SR_B4", "nir08": "SR_B5",
            "swir16": "SR_B6", "swir22": "SR_B7", "qa_pixel": "QA_PIXEL"}


def landsat_catalog(root: Path) -> Path:
    """A static catalog of one Landsat C2 L2 item: the committed USGS STAC 1.0 item of an
    OLI scene (common-name asset keys, qa_pixel; tests/fixtures/stac/items) with its hrefs,
    id, date and footprint those of the real reduced-resolution OLI rasters in ../shared/data
    (whose own item is STAC 0.7, file-named keys)."""
    folder = shared_file(f"{L8_DIR}/{L8_PREFIX}QA_PIXEL.TIF").parent
    raster_item = json.loads(shared_file("stac/LC08_L2SP_001062_20201031_20201106_02_T2_SR_stac.json").read_text())
    item = json.loads((REPO / "tests/fixtures/stac/items/LC08_L2SP_028030_20200114_20200824_02_T1_SR.json").read_text())
    for key, stem in L8_FILES.items():
        item["assets"][key]["href"] = str(folder / f"{L8_PREFIX}{stem}.TIF")
        item["assets"][key].pop("alternate", None)
    item.update(id="LC08_L2SP_001062_20201031", collection="landsat-c2-l2", geometry=raster_item["geometry"],
                bbox=raster_item["bbox"], links=[])
    item["properties"]["datetime"] = "2020-10-31T14:37:00Z"
    for key in [k for k in item["properties"] if k.startswith("proj:")]:
        del item["properties"][key]  # the USGS scene's grid, not the rasters'
    (root / "landsat-c2-l2" / item["id"]).mkdir(parents=True)
    (root / "landsat-c2-l2" / item["id"] / f"{item['id']}.json").write_text(json.dumps(item))
    collection = {"type": "Collection", "stac_version": "1.0.0", "id": "landsat-c2-l2", "description": "test",
                  "license": "proprietary", "extent": {"spatial": {"bbox": [item["bbox"]]},
                                                       "temporal": {"interval": [[None, None]]}},
                  "links": [{"rel": "item", "href": f"./{item['id']}/{item['id']}.json"}]}
    (root / "landsat-c2-l2" / "collection.json").write_text(json.dumps(collection))
    catalog = {"type": "Catalog", "stac_version": "1.0.0", "id": "c", "description": "test",
               "links": [{"rel": "child", "href": "./landsat-c2-l2/collection.json"}]}
    (root / "catalog.json").write_text(json.dumps(catalog))
    return root / "catalog.json"


def test_landsat_product_has_every_reflectance_band_and_carries_qa_pixel(tmp_path: Path) -> None:
    stac = landsat_catalog(tmp_path / "stac")
    source = json.loads(next((tmp_path / "stac").glob("*/*/*.json")).read_text())
    out = Path(run_scene(tmp_path / "out", stac=stac, datetime="2020-10-01/2020-11-30"))
    item = json.loads(out.read_text())
    assert validation_errors(item) == []
    reflectance = ["coastal", "blue", "green", "red", "nir08", "swir16", "swir22"]
    with rasterio.open(out.parent / item["assets"]["qa"]["href"]) as ds:
        state = ds.read(1)
    assert (state == QA_OBSERVED).any() and (state == QA_ENGINE).any()
    for key in reflectance:
        asset = item["assets"][key]
        assert asset["eo:bands"] == source["assets"][key]["eo:bands"]
        (band,) = asset["raster:bands"]
        assert (band["data_type"], band["nodata"], band["scale"], band["offset"]) == ("uint16", 0, 2.75e-05, -0.2)
        with rasterio.open(out.parent / asset["href"]) as ds, \
                rasterio.open(source["assets"][key]["href"]) as src:
            filled, raw = ds.read(1), src.read(1)
        observed = state == QA_OBSERVED
        assert np.array_equal(filled[observed], raw[observed]) and (filled[state == QA_ENGINE] != 0).all()
    with rasterio.open(out.parent / item["assets"]["filled"]["href"]) as vrt:
        assert vrt.count == 7 and list(vrt.descriptions) == reflectance
    # the QA layer, copied: same key, the input's roles and title, the same pixels and grid
    qa = item["assets"]["qa_pixel"]
    assert qa["roles"] == source["assets"]["qa_pixel"]["roles"]
    assert qa["title"].startswith(source["assets"]["qa_pixel"]["title"])
    assert qa["raster:bands"][0]["data_type"] == "uint16" and "proj:shape" not in qa
    with rasterio.open(out.parent / qa["href"]) as ds, rasterio.open(source["assets"]["qa_pixel"]["href"]) as src:
        assert np.array_equal(ds.read(1), src.read(1)) and ds.transform == src.transform and ds.crs == src.crs
    assert item["assets"]["qa"]["roles"] == ["metadata"]  # dipfill's own QA beside it


# ------------------------------------------- Sentinel-2 L2A: the bands it has, SCL on its own grid
S2_DIR = "sentinel2/earthsearch_S2A_29RKH_20200219_L2A_reduced_res"
S2_FILES = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08", "swir16": "B11", "swir22": "B12", "scl": "SCL"}


def test_sentinel2_product_mirrors_the_bands_the_item_has_and_copies_scl_on_its_grid(tmp_path: Path) -> None:
    """The committed Earth Search item with hrefs to the real reduced-resolution rasters
    (100 m 10 m-class bands, 200 m 20 m-class bands and SCL; ../shared/data) and without the
    bands those lack: the default run fills the six it has on the finest grid, and SCL is
    copied on its own 200 m grid (asset proj: fields say so); odc-stac reads both."""
    import odc.stac

    folder = shared_file(f"{S2_DIR}/SCL.tif").parent
    item = json.loads((REPO / "tests/fixtures/stac/items/S2A_29RKH_20200219_0_L2A.json").read_text())
    item["assets"] = {key: {**item["assets"][key], "href": str(folder / f"{name}.tif")}
                      for key, name in S2_FILES.items()}
    item.update(collection="sentinel-2-l2a", links=[])
    root = tmp_path / "stac"
    (root / "sentinel-2-l2a" / item["id"]).mkdir(parents=True)
    (root / "sentinel-2-l2a" / item["id"] / f"{item['id']}.json").write_text(json.dumps(item))
    (root / "sentinel-2-l2a" / "collection.json").write_text(json.dumps(
        {"type": "Collection", "stac_version": "1.0.0", "id": "sentinel-2-l2a", "description": "test",
         "license": "proprietary", "extent": {"spatial": {"bbox": [item["bbox"]]}, "temporal": {"interval": [[None, None]]}},
         "links": [{"rel": "item", "href": f"./{item['id']}/{item['id']}.json"}]}))
    (root / "catalog.json").write_text(json.dumps({"type": "Catalog", "stac_version": "1.0.0", "id": "c",
                                                   "description": "test", "links": [
                                                       {"rel": "child", "href": "./sentinel-2-l2a/collection.json"}]}))
    out = Path(run_scene(tmp_path / "out", stac=root / "catalog.json", datetime="2020-02-01/2020-02-28",
                         mask="clouds"))
    product = json.loads(out.read_text())
    assert validation_errors(product) == []
    bands = [k for k in S2_FILES if k != "scl"]
    for key in bands:
        asset = product["assets"][key]
        assert asset["eo:bands"] == item["assets"][key]["eo:bands"] and asset["roles"] == ["data", "reflectance"]
        (band,) = asset["raster:bands"]
        assert band["scale"] == 1e-4 and band["spatial_resolution"] == 100.0  # on the 100 m grid now
        assert "proj:shape" not in asset
    scl = product["assets"]["scl"]
    assert scl["proj:shape"] == [549, 549] and scl["proj:transform"][0] == 200.0
    with rasterio.open(out.parent / scl["href"]) as ds, rasterio.open(folder / "SCL.tif") as src:
        assert np.array_equal(ds.read(1), src.read(1)) and ds.transform == src.transform
    loaded = odc.stac.load([pystac.Item.from_file(str(out))], bands=["red", "swir16"], chunks=None)
    with rasterio.open(out.parent / product["assets"]["red"]["href"]) as ds:
        assert np.array_equal(loaded["red"].values[0], ds.read(1))


def test_default_bands_are_those_of_the_profile_the_item_has() -> None:
    """Landsat 7 (ETM+) has no coastal band: its default product is the other six; Sentinel-2
    in Planetary Computer naming all twelve; an item with none of them is one clear error."""
    from dipfill.errors import InputError
    from dipfill.raster.scene import _default_bands
    from dipfill.stac.profiles import LANDSAT_C2_L2, SENTINEL_2_L2A

    items = REPO / "tests/fixtures/stac/items"
    le07 = json.loads((items / "LE07_L2SP_044033_20210329_20210424_02_T1_SR.json").read_text())
    assert _default_bands(LANDSAT_C2_L2, le07["assets"], "le07") == (
        "blue", "green", "red", "nir08", "swir16", "swir22")
    lc08 = json.loads((items / "LC08_L2SP_028030_20200114_20200824_02_T1_SR.json").read_text())
    assert _default_bands(LANDSAT_C2_L2, lc08["assets"], "lc08")[0] == "coastal"
    s2 = json.loads((items / "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json").read_text())
    assert len(_default_bands(SENTINEL_2_L2A, s2["assets"], "s2")) == 12
    with pytest.raises(InputError, match=r"item x: no asset for any band of profile landsat-c2-l2 .*--bands"):
        _default_bands(LANDSAT_C2_L2, {"thumbnail": {}}, "x")
    # the quicklook shows true colour where the product has it, whatever the band order
    assert LANDSAT_C2_L2.quicklook_indices(("blue", "green", "red", "nir08")) == (2, 1, 0)
    assert LANDSAT_C2_L2.quicklook_indices(("red", "nir08", "swir16")) == (0, 1, 2)  # --bands without blue
