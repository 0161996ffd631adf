"""Collection profiles and scene reading, on the real QA rasters and STAC items.

Expected states are computed here with plain numpy bit and class tests, written out,
never by calling the decoders under test.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize
from rasterio.warp import transform_geom

from dipfill.errors import InputError
from dipfill.raster.masks import (
    GAP,
    OBSERVED,
    OUTSIDE,
    decode_landsat_qa_pixel,
    decode_modis_reliability,
    decode_s2_scl,
)
from dipfill.raster.scene import open_scene, read_item, read_window, resolve_href
from dipfill.stac.profiles import (
    LANDSAT_C2_L2,
    MODIS_13Q1,
    PROFILES,
    SENTINEL_1_RTC,
    SENTINEL_2_L2A,
    get_profile,
    profile_for,
)
from tests._data import shared_file

L8_DIR = "landsat8_clouds/riotilerpds_LC08_L2SP_001062_20201031_600m_cloudy"
L8_PREFIX = "LC08_L2SP_001062_20201031_20201106_02_T2_"
L8_ITEM = "stac/LC08_L2SP_001062_20201031_20201106_02_T2_SR_stac.json"
S2_DIR = "sentinel2/earthsearch_S2A_29RKH_20200219_L2A_reduced_res"
S2_ITEM = "stac/S2A_29RKH_20200219_0_L2A.json"
MODIS_PR = "modis/riotilerpds_MYD13A1_h30v10_2020153_reduced_res/MYD13A1.A2020153.h30v10.006.2020170024036_PR_B12.TIF"
# Earth Search v1 asset key → file of the reduced-resolution fixture
S2_FILES = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08", "swir16": "B11", "swir22": "B12", "scl": "SCL"}


def read1(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def fractions(state: np.ndarray) -> dict[str, float]:
    n = state.size
    return {
        "observed": float((state == OBSERVED).sum() / n),
        "gap": float((state == GAP).sum() / n),
        "outside": float((state == OUTSIDE).sum() / n),
    }


def expected_state(observed: np.ndarray, gap: np.ndarray, outside: np.ndarray) -> np.ndarray:
    assert not (observed & gap).any() and not (observed & outside).any() and not (gap & outside).any()
    assert (observed | gap | outside).all()
    state = np.empty(observed.shape, np.uint8)
    state[observed], state[gap], state[outside] = OBSERVED, GAP, OUTSIDE
    return state


def geometry_mask(item_path: Path, raster: Path) -> np.ndarray:
    """The item's lon/lat geometry rasterised onto the raster's grid (pixel centres)."""
    geom = json.loads(item_path.read_text())["geometry"]
    with rasterio.open(raster) as ds:
        shape = transform_geom("EPSG:4326", ds.crs, geom)
        return rasterize([(shape, 1)], out_shape=ds.shape, transform=ds.transform, fill=0).astype(bool)


# ------------------------------------------------------------------ records and naming
def item_json(rel: str) -> dict:
    return json.loads(shared_file(rel).read_text())


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        # Planetary Computer sentinel-2-l2a
        ("stac/S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json",
         {"red": "B04", "nir": "B08", "swir16": "B11", "qa": "SCL"}),
        # Earth Search v1 sentinel-2-l2a
        ("stac/S2A_29RKH_20200219_0_L2A.json", {"red": "red", "nir": "nir", "swir16": "swir16", "qa": "scl"}),
        # Earth Search v0 sentinel-s2-l2a-cogs
        ("stac/S2A_28QCH_20200714_0_L2A.json", {"red": "B04", "nir": "B08", "swir16": "B11", "qa": "SCL"}),
        # USGS landsat-c2l2-sr (common names, as PC and Earth Search v1)
        ("stac/LC08_L2SP_028030_20200114_20200824_02_T1_SR.json",
         {"red": "red", "nir08": "nir08", "swir16": "swir16", "qa": "qa_pixel"}),
        ("stac/LE07_L2SP_044033_20210329_20210424_02_T1_SR.json",
         {"red": "red", "nir08": "nir08", "swir16": "swir16", "qa": "qa_pixel"}),
    ],
)
def test_profile_finds_asset_keys_in_each_providers_naming(item: str, expected: dict) -> None:
    d = item_json(item)
    profile = profile_for(d)
    for band, key in expected.items():
        spec = profile.qa if band == "qa" else profile.band(band)
        assert spec.keys.find(d["assets"]) == key


def test_profile_records() -> None:
    assert get_profile("landsat-c2-l2") is LANDSAT_C2_L2
    assert get_profile("landsat-c2l2-sr") is LANDSAT_C2_L2  # USGS collection id
    assert get_profile("sentinel-s2-l2a-cogs") is SENTINEL_2_L2A  # Earth Search v0
    assert get_profile("modis-13Q1-061") is MODIS_13Q1
    assert get_profile("sentinel-1-rtc") is SENTINEL_1_RTC
    with pytest.raises(KeyError, match="no collection profile"):
        get_profile("nope")
    l_red = LANDSAT_C2_L2.band("red")
    assert (l_red.keys.planetary_computer, l_red.keys.earth_search) == ("red", "red")
    assert LANDSAT_C2_L2.qa.keys.planetary_computer == "qa_pixel"
    s_red = SENTINEL_2_L2A.band("red")
    assert (s_red.keys.planetary_computer, s_red.keys.earth_search, s_red.keys.earth_search_v0) == ("B04", "red", "B04")
    assert SENTINEL_2_L2A.band("nir").keys.earth_search == "nir"
    assert SENTINEL_2_L2A.qa.keys.candidates()[:2] == ("SCL", "scl")
    assert MODIS_13Q1.band("ndvi").keys.planetary_computer == "250m_16_days_NDVI"
    assert MODIS_13Q1.qa.keys.planetary_computer == "250m_16_days_pixel_reliability"
    for profile in PROFILES.values():
        again = pickle.loads(pickle.dumps(profile))  # frozen, hashable, picklable: sent to workers
        assert again == profile and hash(again) == hash(profile)
        assert set(profile.default_bands) <= set(profile.band_names)


# --------------------------------------------------------------- decoders on tiny arrays
def test_landsat_bits_one_by_one() -> None:
    #          fill, fill, clear, dil.cloud, cirrus, cloud, shadow, snow(5), water(7)
    qa = np.array([[1, 1, 1 << 6, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5, 1 << 7]], np.uint16)
    inside = np.array([[True, False, True, True, True, True, True, True, True]])
    fill_only = decode_landsat_qa_pixel(qa, footprint=inside)
    assert fill_only.tolist() == [[GAP, OUTSIDE] + [OBSERVED] * 7]
    clouds = decode_landsat_qa_pixel(qa, footprint=inside, mask="clouds")
    assert clouds.tolist() == [[GAP, OUTSIDE, OBSERVED, GAP, GAP, GAP, GAP, OBSERVED, OBSERVED]]


def test_s2_scl_classes() -> None:
    scl = np.arange(12, dtype=np.uint8)[None]
    assert decode_s2_scl(scl).tolist() == [[OUTSIDE, GAP] + [OBSERVED] * 10]
    clouds = decode_s2_scl(scl, mask="clouds")[0]
    assert [i for i in range(12) if clouds[i] == GAP] == [1, 3, 8, 9, 10]
    assert clouds[0] == OUTSIDE


def test_modis_reliability_codes() -> None:
    rel = np.array([[-1, 0, 1, 2, 3]], np.int8)
    assert decode_modis_reliability(rel).tolist() == [[OUTSIDE, OBSERVED, GAP, GAP, GAP]]
    as_uint8 = np.array([[255, 0, 1, 2, 3]], np.uint8)  # -1 read as uint8 in COG conversions
    assert decode_modis_reliability(as_uint8).tolist() == [[OUTSIDE, OBSERVED, GAP, GAP, GAP]]


# ------------------------------------------------------------- decoders on real rasters
def test_landsat8_qa_pixel_real(capsys) -> None:
    qa_path = shared_file(f"{L8_DIR}/{L8_PREFIX}QA_PIXEL.TIF")
    qa = read1(qa_path).astype(np.int64)
    inside = geometry_mask(shared_file(L8_ITEM), qa_path)
    fill = (qa & 0b1) != 0
    cloudy = ((qa & 0b10) | (qa & 0b100) | (qa & 0b1000) | (qa & 0b10000)) != 0  # bits 1-4

    want_fill = expected_state(~fill, fill & inside, fill & ~inside)
    got_fill = decode_landsat_qa_pixel(read1(qa_path), footprint=inside)
    np.testing.assert_array_equal(got_fill, want_fill)

    want_clouds = expected_state(~fill & ~cloudy, (fill & inside) | (~fill & cloudy), fill & ~inside)
    got_clouds = decode_landsat_qa_pixel(read1(qa_path), footprint=inside, mask="clouds")
    np.testing.assert_array_equal(got_clouds, want_clouds)

    f_fill, f_clouds = fractions(got_fill), fractions(got_clouds)
    with capsys.disabled():
        print(f"\nLandsat-8 001062 QA_PIXEL  fill: {f_fill}\n                          clouds: {f_clouds}")
    assert f_fill == fractions(want_fill) and f_clouds == fractions(want_clouds)
    # the scene is 99.94 % cloud (MTL): with clouds masked nothing is observed
    assert f_clouds["observed"] == 0.0
    assert 0.30 < f_fill["outside"] < 0.31 and f_fill["gap"] < 0.001

    # without a footprint, the collar is derived from the fill bit: same outside, no gap
    derived = decode_landsat_qa_pixel(read1(qa_path))
    np.testing.assert_array_equal(derived == OUTSIDE, fill)


def test_sentinel2_scl_real(capsys) -> None:
    scl = read1(shared_file(f"{S2_DIR}/SCL.tif")).astype(np.int64)
    no_data = scl == 0
    defective = scl == 1
    cloud = (scl == 3) | (scl == 8) | (scl == 9) | (scl == 10)

    got_fill = decode_s2_scl(scl.astype(np.uint8))
    np.testing.assert_array_equal(got_fill, expected_state(~no_data & ~defective, defective, no_data))
    got_clouds = decode_s2_scl(scl.astype(np.uint8), mask="clouds")
    np.testing.assert_array_equal(
        got_clouds, expected_state(~no_data & ~defective & ~cloud, ~no_data & (defective | cloud), no_data)
    )
    f = fractions(got_clouds)
    with capsys.disabled():
        print(f"\nSentinel-2 29RKH SCL (clouds): {f}")
    # MANIFEST: SCL 10 3.5 %, 8 0.3 %, 9 0.3 %; the item's eo:cloud_cover is 4.05 %
    assert f["gap"] == pytest.approx(0.0406, abs=0.0005)
    assert f["outside"] == 0.0 and fractions(got_fill)["observed"] == 1.0


def test_modis_pixel_reliability_real(capsys) -> None:
    pr = read1(shared_file(MODIS_PR)).astype(np.int64)
    fill = (pr == 255) | (pr == -1)
    good = pr == 0
    not_good = (pr == 1) | (pr == 2) | (pr == 3)
    got = decode_modis_reliability(read1(shared_file(MODIS_PR)))
    np.testing.assert_array_equal(got, expected_state(good, not_good, fill))
    f = fractions(got)
    with capsys.disabled():
        print(f"\nMODIS MYD13A1 h30v10 pixel reliability: {f}")
    # MANIFEST: 0 good 62.7 %, 1 marginal 0.7 %, 3 cloudy 0.1 %, 255 nodata 36.5 %
    assert f["observed"] == pytest.approx(0.627, abs=0.001)
    assert f["gap"] == pytest.approx(0.0083, abs=0.0005)
    assert f["outside"] == pytest.approx(0.365, abs=0.001)


# ------------------------------------------------------------------------ scene reading
def s2_item_with_local_hrefs(tmp_path: Path, *, relative: bool) -> Path:
    """The real Earth Search item, its hrefs pointing at the local reduced-resolution
    rasters: relative to the item (through a link in tmp_path) or as file:// URIs."""
    raster_dir = shared_file(f"{S2_DIR}/B04.tif").parent
    item = json.loads(shared_file(S2_ITEM).read_text())
    item_path = tmp_path / "item" / "S2A_29RKH_20200219_0_L2A.json"
    item_path.parent.mkdir()
    if relative:
        (tmp_path / "rasters").symlink_to(raster_dir, target_is_directory=True)
    for key, name in S2_FILES.items():
        item["assets"][key]["href"] = (
            f"../rasters/{name}.tif" if relative else (raster_dir / f"{name}.tif").as_uri()
        )
    item["links"] = [link for link in item["links"] if link["rel"] != "self"]
    item["links"].append({"rel": "self", "href": str(item_path), "type": "application/json"})
    item_path.write_text(json.dumps(item))
    return item_path


def test_resolve_href() -> None:
    assert resolve_href("B04.tif", "/data/item/item.json") == "/data/item/B04.tif"
    assert resolve_href("../r/B04.tif", "/data/item/item.json") == "/data/r/B04.tif"
    assert resolve_href("./B04.tif", "https://x.org/a/item.json") == "https://x.org/a/B04.tif"
    assert resolve_href("file:///data/B04.tif", None) == "/data/B04.tif"
    assert resolve_href("s3://bucket/B04.tif", "/x/item.json") == "s3://bucket/B04.tif"


@pytest.mark.parametrize("relative", [True, False], ids=["relative-hrefs", "file-uris"])
def test_s2_scene_on_one_grid_at_finest_resolution(tmp_path: Path, relative: bool) -> None:
    item_path = s2_item_with_local_hrefs(tmp_path, relative=relative)
    raster_dir = shared_file(f"{S2_DIR}/B04.tif").parent
    b04, b08, b11, scl = (read1(raster_dir / f"{n}.tif") for n in ("B04", "B08", "B11", "SCL"))
    assert b04.shape == b08.shape == (1098, 1098) and b11.shape == (549, 549)  # 10 m- and 20 m-class

    import pystac

    item = pystac.Item.from_file(str(item_path)) if relative else json.loads(item_path.read_text())
    scene = read_item(item, bands=["red", "nir", "swir16"], mask="clouds")
    assert scene.data.shape == (3, 1098, 1098) and scene.band_names == ("red", "nir", "swir16")
    assert scene.grid.transform.a == 100.0 and scene.grid.crs.to_epsg() == 32629
    np.testing.assert_array_equal(scene.data[0], b04)  # on the grid already: bit-exact
    np.testing.assert_array_equal(scene.data[1], b08)
    up = np.repeat(np.repeat(b11, 2, axis=0), 2, axis=1)  # nearest 200 m → 100 m
    np.testing.assert_array_equal(scene.data[2], up)
    assert scene.scale == (1e-4,) * 3 and scene.nodata == (0.0,) * 3

    scl_up = np.repeat(np.repeat(scl, 2, axis=0), 2, axis=1)
    cloud = np.isin(scl_up, [3, 8, 9, 10])
    want = expected_state(~cloud, cloud, np.zeros_like(cloud))
    np.testing.assert_array_equal(scene.state, want)
    assert not scene.valid[:, cloud].any() and scene.valid[:, ~cloud].all()


def test_s2_scene_at_coarser_resolution(tmp_path: Path) -> None:
    item = json.loads(s2_item_with_local_hrefs(tmp_path, relative=False).read_text())
    raster_dir = shared_file(f"{S2_DIR}/B04.tif").parent
    b04, b11 = read1(raster_dir / "B04.tif"), read1(raster_dir / "B11.tif")

    scene = read_item(item, bands=["red", "swir16"], resolution="coarsest", resampling="average")
    assert scene.data.shape == (2, 549, 549) and scene.grid.transform.a == 200.0
    np.testing.assert_array_equal(scene.data[1], b11)  # on the grid already
    block_mean = b04.astype(np.float64).reshape(549, 2, 549, 2).mean(axis=(1, 3))
    assert np.abs(scene.data[0] - block_mean).max() <= 1.0  # 2×2 average, integer rounding

    by_number = read_item(item, bands=["red", "swir16"], resolution=200, resampling="average")
    assert by_number.grid == scene.grid
    np.testing.assert_array_equal(by_number.data, scene.data)


def test_window_read_equals_the_same_part_of_the_whole_scene(tmp_path: Path) -> None:
    item = json.loads(s2_item_with_local_hrefs(tmp_path, relative=False).read_text())
    source = open_scene(item, bands=["red", "nir", "swir16"], mask="clouds")
    whole = source.read()
    rows, cols = (700, 956), (800, 1056)  # a patch in the cloudy NE
    part = read_window(item, None, (rows, cols), bands=["red", "nir", "swir16"], mask="clouds")
    np.testing.assert_array_equal(part.data, whole.data[:, slice(*rows), slice(*cols)])
    np.testing.assert_array_equal(part.state, whole.state[slice(*rows), slice(*cols)])
    assert part.grid.transform.c == source.grid.transform.c + 800 * 100.0
    # the descriptor travels to workers
    again = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(again.read(((0, 10), (0, 10))).data, whole.data[:, :10, :10])
    with pytest.raises(InputError, match="outside the scene grid"):
        source.read(((2000, 2100), (0, 10)))


def test_sign_hook_sees_every_href_and_missing_band_is_named(tmp_path: Path) -> None:
    item = json.loads(s2_item_with_local_hrefs(tmp_path, relative=False).read_text())
    seen: list[str] = []

    def sign(href: str) -> str:
        seen.append(href)
        return href

    open_scene(item, bands=["red", "nir"], sign=sign)
    assert [os.path.basename(h) for h in seen] == ["B04.tif", "B08.tif", "SCL.tif"]
    del item["assets"]["rededge1"]
    with pytest.raises(InputError, match="no asset for band 'rededge1' \\(tried B05, rededge1\\)"):
        open_scene(item, bands=["rededge1"])


def test_landsat_scene_outside_is_the_item_geometry(tmp_path: Path) -> None:
    """A USGS item (file-named asset keys) read with the Landsat profile: fill inside the
    item geometry is a gap, beyond it outside; non-fill pixels are observed."""
    item = json.loads(shared_file(L8_ITEM).read_text())
    qa_path = shared_file(f"{L8_DIR}/{L8_PREFIX}QA_PIXEL.TIF")
    for key in item["assets"]:
        if key.endswith(".TIF"):
            item["assets"][key]["href"] = str(qa_path.parent / f"{L8_PREFIX}{key}")
    scene = read_item(item, LANDSAT_C2_L2, bands=["SR_B4.TIF", "SR_B5.TIF", "SR_B6.TIF"])
    qa = read1(qa_path)
    fill = (qa & 1) != 0
    inside = geometry_mask(shared_file(L8_ITEM), qa_path)
    sr = np.stack([read1(qa_path.parent / f"{L8_PREFIX}SR_B{b}.TIF") for b in (4, 5, 6)])
    observed = ~fill & (sr != 0).all(axis=0)
    want = expected_state(observed, ~observed & (inside | ~fill), fill & ~inside)
    np.testing.assert_array_equal(scene.state, want)
