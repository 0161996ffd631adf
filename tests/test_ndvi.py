"""NDVI mode (issue 13 item 1, paper 001) on real data from ../shared/data (skipped without it).

Expected values are computed here by hand from the raw DN with numpy, never by the code under
test: NDVI from Landsat C2 L2 and Sentinel-2 L2A assets with their scale/offset (the S2
processing-baseline offset included), MODIS pixel reliability / VI Quality decoding with
accepted classes, a vegetation-only DIP loss that water pixels cannot reach, and `dipfill
fill` / `dipfill run --product ndvi` writing a float32 NDVI COG (nodata NaN) whose observed
pixels are the computed NDVI bit for bit, with its QA COG and an item that says so.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio

from dipfill.cli.main import main
from dipfill.raster.masks import GAP, OBSERVED, OUTSIDE, QA_OBSERVED, QA_OUTSIDE, decode_qa
from dipfill.raster.scene import open_scene
from tests._data import REPO, shared_file, static_catalog
from tests._schemas import validation_errors
from tests.test_product_layout import L8_DIR, L8_PREFIX, landsat_catalog

MYD = "modis/riotilerpds_MYD13A1_h30v10_2020153_reduced_res/MYD13A1.A2020153.h30v10.006.2020170024036_"
LOMBARDY = "modis/modistsp_MOD13A1_NDVI_2016/MOD13A1_NDVI_2016_{doy}.tif"
S2_DIR = "sentinel2/earthsearch_S2A_29RKH_20200219_L2A_reduced_res"


def read1(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def hand_ndvi(red_dn: float, nir_dn: float, scale: float, offset: float) -> float:
    r, n = red_dn * scale + offset, nir_dn * scale + offset
    return (n - r) / (n + r)


# ------------------------------------------------------------- NDVI computed from reflectance
def test_landsat_c2_ndvi_applies_scale_and_offset(tmp_path: Path) -> None:
    """The Landsat C2 L2 item's red/nir08 assets: reflectance = DN x 2.75e-5 - 0.2 (the offset
    does not cancel in the ratio), checked on a few real pixels against a hand computation."""
    landsat_catalog(tmp_path / "stac")
    item = json.loads(next((tmp_path / "stac").glob("*/*/*.json")).read_text())
    source = open_scene(item, product="ndvi")
    assert source.band_names == ("ndvi",) and source.derive is not None
    assert source.derive.names == ("red", "nir08")
    assert (source.derive.scale, source.derive.offset) == ((2.75e-05, 2.75e-05), (-0.2, -0.2))
    scene = source.read()
    assert scene.data.dtype == np.float32 and scene.data.shape[0] == 1
    shipped = pickle.loads(pickle.dumps(source))  # as it travels to a run's workers
    assert np.array_equal(shipped.read_pixels(((0, 64), (0, 64)))[0], scene.data[:, :64, :64], equal_nan=True)
    folder = shared_file(f"{L8_DIR}/{L8_PREFIX}SR_B4.TIF").parent
    red, nir = read1(folder / f"{L8_PREFIX}SR_B4.TIF"), read1(folder / f"{L8_PREFIX}SR_B5.TIF")
    ys, xs = np.nonzero((red > 0) & (nir > 0) & scene.valid[0])
    assert len(ys) > 1000
    for y, x in zip(ys[:: len(ys) // 5], xs[:: len(xs) // 5]):
        want = hand_ndvi(float(red[y, x]), float(nir[y, x]), 2.75e-05, -0.2)
        got = scene.data[0, y, x]
        assert got == np.float32(want) and abs(got - hand_ndvi(red[y, x], nir[y, x], 2.75e-05, 0.0)) > 1e-3
    assert np.isnan(scene.data[0][(red == 0) | (nir == 0)]).all()  # no NDVI where a band is nodata (SR 0)


def _s2_item(**properties) -> dict:
    folder = shared_file(f"{S2_DIR}/B04.tif").parent
    item = json.loads((REPO / "tests/fixtures/stac/items/S2A_29RKH_20200219_0_L2A.json").read_text())
    item["assets"] = {k: {**item["assets"][k], "href": str(folder / f"{f}.tif")}
                      for k, f in {"red": "B04", "nir": "B08", "scl": "SCL"}.items()}
    item.update(collection="sentinel-2-l2a", links=[])
    item["properties"].update(properties)
    return item


@pytest.mark.parametrize("case,offset", [("baseline 02.14 (the item as published)", 0.0),
                                         ("baseline 04.00, no offset stated (Planetary Computer)", -0.1),
                                         ("baseline 04.00, offset stated but DN harmonised", 0.0)])
def test_sentinel2_ndvi_handles_the_baseline_04_offset(case: str, offset: float) -> None:
    """Sentinel-2 L2A B04/B08: reflectance = DN x 1e-4, minus 0.1 (BOA_ADD_OFFSET -1000 DN)
    from processing baseline 04.00 on, unless the provider harmonised the DN."""
    item = _s2_item()
    if "04.00" in case:
        item["properties"]["s2:processing_baseline"] = "04.00"
        for key in ("red", "nir"):
            band = item["assets"][key]["raster:bands"][0]
            if "no offset" in case:
                band.pop("offset")
            else:
                band["offset"] = -0.1
                item["properties"]["earthsearch:boa_offset_applied"] = True
    source = open_scene(item, product="ndvi")
    assert source.derive is not None and source.derive.offset == (offset, offset), source.derive.why
    scene = source.read(((300, 340), (300, 340)))
    folder = shared_file(f"{S2_DIR}/B04.tif").parent
    with rasterio.open(folder / "B04.tif") as r, rasterio.open(folder / "B08.tif") as n:
        red, nir = r.read(1, window=((300, 340), (300, 340))), n.read(1, window=((300, 340), (300, 340)))
    for y, x in ((0, 0), (7, 21), (39, 39)):
        assert scene.data[0, y, x] == np.float32(hand_ndvi(float(red[y, x]), float(nir[y, x]), 1e-4, offset))


# ---------------------------------------------------------------------- MODIS quality layers
def test_modis_reliability_and_vi_quality_decode_the_accepted_classes() -> None:
    pr = read1(shared_file(MYD + "PR_B12.TIF"))
    good, marginal, fill = pr == 0, pr == 1, pr == 255
    state = decode_qa("modis_reliability", pr)  # default: only "good", as paper 001
    assert np.array_equal(state == OBSERVED, good) and np.array_equal(state == OUTSIDE, fill)
    assert int(good.sum()) == 144426 and int((state == GAP).sum()) == int((~good & ~fill).sum())
    both = decode_qa("modis_reliability", pr, accept=(0, 1))
    assert np.array_equal(both == OBSERVED, good | marginal) and int(marginal.sum()) == 1637
    viq = read1(shared_file(MYD + "VIQ_B03.TIF"))
    modland = viq & 0b11  # bits 0-1: 0 good, 1 check other QA, 2 probably cloudy, 3 not produced
    vstate = decode_qa("modis_vi_quality", viq)
    assert np.array_equal(vstate == OBSERVED, modland == 0) and np.array_equal(vstate == OUTSIDE, viq == 65535)
    assert (vstate[viq == 65535] == OUTSIDE).all() and fill[viq == 65535].all()  # its fill is reliability's fill
    assert (vstate[good] == OBSERVED).all()  # reliability "good" is MODLAND "good" on this tile
    with pytest.raises(ValueError, match="accepted classes"):
        decode_qa("modis_reliability", pr, accept=(4,))
    with pytest.raises(ValueError, match="no classes to accept"):
        decode_qa("s2_scl", pr, accept=(0,))


# -------------------------------------------------------------- vegetation-only DIP loss
def test_vegetation_only_loss_never_sees_water_pixels() -> None:
    """Lombardy, March 2016: Lake Como's ~660 observed pixels have NDVI <= 0. With
    loss_min_value=0 (NDVI mode's default) the fit is the same whatever those pixels hold; with
    every observed pixel in the loss (None) changing them changes the fit."""
    from dipfill.engines import make_engine

    with rasterio.open(shared_file(LOMBARDY.format(doy="065"))) as ds:
        dn = ds.read(1, window=((0, 64), (0, 64)))  # the lake and its shores
        ndvi = np.where(dn != ds.nodata, dn * 1e-4, np.nan).astype(np.float32)[None]
    obs = np.isfinite(ndvi)
    water = obs & (ndvi <= 0)
    assert water.sum() > 500
    obs[:, 40:60, 30:60] = False  # a cloud-sized hole to fill
    other = np.where(water, np.float32(-0.6), ndvi)  # the lake's values changed, still water
    small = dict(preset="ndvi2024", steps=6, blend="none", stopping="fixed", strategy="loop", device="cpu",
                 channels_down=(8,) * 3, channels_up=(8,) * 3, channels_skip=(4,) * 3, input_channels=8)
    veg = make_engine("dip", loss_min_value=0.0, **small)
    a = veg.fill(ndvi[None], obs[None], seeds=[3]).values
    b = veg.fill(other[None], obs[None], seeds=[3]).values
    assert np.array_equal(a, b)
    every = make_engine("dip", loss_min_value=None, **small)
    c = every.fill(ndvi[None], obs[None], seeds=[3]).values
    d = every.fill(other[None], obs[None], seeds=[3]).values
    assert not np.allclose(c, d, atol=1e-4)


# ----------------------------------------------------------------------- end to end
def test_dipfill_fill_product_ndvi_writes_the_ndvi_cog_and_item(tmp_path: Path, capsys) -> None:
    """MYD13A1 NDVI (int16 x 10000, ocean -3000) with its pixel reliability: the float32 NDVI
    COG (nodata NaN) keeps every "good" pixel as DN x 1e-4 bit for bit, fills the others on
    land, leaves the ocean (reliability fill) NaN; the QA COG and the item say so."""
    ndvi_tif, pr_tif = shared_file(MYD + "NDVI_B01.TIF"), shared_file(MYD + "PR_B12.TIF")
    out = tmp_path / "out"
    assert main(["fill", str(ndvi_tif), "--product", "ndvi", "--reliability", str(pr_tif), "--engine", "fillnodata",
                 "--out", str(out)]) == 0
    item_path = next(out.glob("*-dipfill.json"))
    item = json.loads(item_path.read_text())
    assert validation_errors(item) == []
    asset = item["assets"]["ndvi"]
    (band,) = asset["raster:bands"]
    assert band["data_type"] == "float32" and band["nodata"] == "nan" and band["dipfill:index"] == "ndvi"
    assert band["dipfill:accepted_classes"] == [0]
    record = item["properties"]["dipfill:ndvi"]
    assert item["properties"]["dipfill:mode"] == "ndvi" and record["inputs"][0]["scale"] == 1e-4
    with rasterio.open(out / asset["href"]) as ds, rasterio.open(out / item["assets"]["qa"]["href"]) as q:
        assert ds.dtypes[0] == "float32" and np.isnan(ds.nodata)
        filled, qa = ds.read(1), q.read(1)
    dn, pr = read1(ndvi_tif), read1(pr_tif)
    observed = qa == QA_OBSERVED
    assert np.array_equal(observed, pr == 0)
    assert np.array_equal(filled[observed], (dn[observed].astype(np.float64) * 1e-4).astype(np.float32))
    assert np.array_equal(qa == QA_OUTSIDE, pr == 255) and np.isnan(filled[qa == QA_OUTSIDE]).all()
    assert np.isfinite(filled[qa != QA_OUTSIDE]).all()  # every land gap (marginal, cloudy) filled

    capsys.readouterr()
    assert main(["fill", str(ndvi_tif), "--product", "ndvi", "--accept", "7", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--accept" in err[0] and not (tmp_path / "x").exists()
    assert main(["fill", str(ndvi_tif), "--reliability", str(pr_tif), "--out", str(tmp_path / "y")]) == 1
    assert "--product ndvi" in capsys.readouterr().err


def test_ndvi_mode_runs_dip_with_the_paper_configuration_by_default(tmp_path: Path) -> None:
    """`dipfill fill --product ndvi` on a real MOD13A1 composite (Lombardy, its own nodata as
    gaps) with DIP: preset ndvi2024 and the vegetation-only loss (threshold 0) unless told
    otherwise, recorded in the item; observed pixels bit-exact (a tiny network: wiring, not
    quality)."""
    src = shared_file(LOMBARDY.format(doy="017"))
    out = tmp_path / "o"
    assert main(["fill", str(src), "--product", "ndvi", "--steps", "4", "--channels", "8", "--skip-channels", "4",
                 "--out", str(out)]) == 0
    item = json.loads(next(out.glob("*-dipfill.json")).read_text())
    opts = item["properties"]["dipfill:config"]["engine_options"]
    assert opts["preset"] == "ndvi2024" and opts["loss_min_value"] == 0.0
    assert item["assets"]["ndvi"]["raster:bands"][0]["dipfill:vegetation_threshold"] == 0.0
    with rasterio.open(out / item["assets"]["ndvi"]["href"]) as ds, \
            rasterio.open(out / item["assets"]["qa"]["href"]) as q, rasterio.open(src) as s:
        filled, qa, dn = ds.read(1), q.read(1), s.read(1)
    assert (qa == 2).sum() == (dn == 32767).sum() > 0  # every nodata pixel of the composite filled by DIP
    assert np.array_equal(filled[qa == 1], (dn[qa == 1] * 1e-4).astype(np.float32))


def _modis_catalog(root: Path) -> Path:
    """A static catalog of the MYD13A1 tile as a `modis-13A1-061` item (Planetary Computer keys)."""
    folder = shared_file(MYD + "NDVI_B01.TIF").parent
    stem = Path(MYD).name
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "MYD13A1.A2020153.h30v10.006",
            "collection": "modis-13A1-061", "bbox": [121.4, -20.0, 138.35, -9.94],
            "geometry": {"type": "Polygon", "coordinates": [[[121.4, -20.0], [138.35, -20.0], [138.35, -9.94],
                                                             [121.4, -9.94], [121.4, -20.0]]]},
            "properties": {"datetime": None, "start_datetime": "2020-06-01T00:00:00Z",
                           "end_datetime": "2020-06-16T23:59:59Z", "platform": "aqua"},
            "assets": {key: {"href": str(folder / f"{stem}{f}.TIF"), "type": "image/tiff", "roles": ["data"]}
                       for key, f in (("500m_16_days_NDVI", "NDVI_B01"), ("500m_16_days_EVI", "EVI_B02"),
                                      ("500m_16_days_pixel_reliability", "PR_B12"))},
            "links": []}
    d = root / "modis-13A1-061" / item["id"]
    d.mkdir(parents=True)
    (d / f"{item['id']}.json").write_text(json.dumps(item))
    (root / "modis-13A1-061" / "collection.json").write_text(json.dumps(
        {"type": "Collection", "stac_version": "1.0.0", "id": "modis-13A1-061", "description": "t",
         "license": "proprietary", "extent": {"spatial": {"bbox": [item["bbox"]]},
                                             "temporal": {"interval": [[None, None]]}},
         "links": [{"rel": "item", "href": f"./{item['id']}/{item['id']}.json"}]}))
    (root / "catalog.json").write_text(json.dumps({"type": "Catalog", "stac_version": "1.0.0", "id": "c",
                                                   "description": "t", "links": [
                                                       {"rel": "child", "href": "./modis-13A1-061/collection.json"}]}))
    return root / "catalog.json"


def test_dipfill_run_product_ndvi_over_a_modis_collection(tmp_path: Path) -> None:
    """`dipfill run --product ndvi --accept 0,1` over a MOD13 collection (in process): the
    NDVI read from the item's NDVI asset with the profile's scale, "good" and "marginal"
    pixels observed, the reliability layer carried, the item's mode and classes recorded."""
    from dipfill.cli.run import build_request
    from dipfill.pipeline import run as run_mod
    from dipfill.pipeline.executor import LocalPool

    request = build_request({"stac": str(_modis_catalog(tmp_path / "stac")), "out": str(tmp_path / "out"),
                             "engine": "fillnodata", "product": "ndvi", "accept": "0,1"})
    assert request.config()["product"] == {"product": "ndvi", "accept": [0, 1]}
    pool = LocalPool(request.options.engine, dict(request.options.engine_options), request.options.fallback)
    (scene,) = run_mod.run(request, pool=pool).scenes
    assert scene.status == "done", scene.message
    out = Path(scene.output)
    item = json.loads(out.read_text())
    assert validation_errors(item) == []
    assert {"ndvi", "500m_16_days_pixel_reliability", "qa"} <= set(item["assets"])
    assert item["properties"]["dipfill:ndvi"]["accepted_classes"] == [0, 1]
    with rasterio.open(out.parent / item["assets"]["ndvi"]["href"]) as ds, \
            rasterio.open(out.parent / item["assets"]["qa"]["href"]) as q:
        filled, qa = ds.read(1), q.read(1)
    dn, pr = read1(shared_file(MYD + "NDVI_B01.TIF")), read1(shared_file(MYD + "PR_B12.TIF"))
    assert np.array_equal(qa == QA_OBSERVED, (pr == 0) | (pr == 1))
    observed = qa == QA_OBSERVED
    assert np.array_equal(filled[observed], (dn[observed] * 1e-4).astype(np.float32))
    assert np.array_equal(qa == QA_OUTSIDE, pr == 255) and np.isnan(filled[pr == 255]).all()


def test_dipfill_fill_computes_ndvi_from_landsat_c2_files(tmp_path: Path) -> None:
    """`dipfill fill SR_B4.TIF SR_B5.TIF --product ndvi`: the USGS C2 L2 file names give the
    collection's scale/offset; the COG's observed pixels are the hand-computed NDVI (float32)
    bit for bit, and the item says where the scale/offset came from."""
    folder = shared_file(f"{L8_DIR}/{L8_PREFIX}SR_B4.TIF").parent
    red_tif, nir_tif = folder / f"{L8_PREFIX}SR_B4.TIF", folder / f"{L8_PREFIX}SR_B5.TIF"
    out = tmp_path / "o"
    assert main(["fill", str(red_tif), str(nir_tif), "--product", "ndvi", "--engine", "fillnodata",
                 "--out", str(out)]) == 0
    item = json.loads(next(out.glob("*-dipfill.json")).read_text())
    inputs = item["properties"]["dipfill:ndvi"]["inputs"]
    assert [(b["scale"], b["offset"]) for b in inputs] == [(2.75e-05, -0.2)] * 2 and "Landsat" in inputs[0]["from"]
    with rasterio.open(out / item["assets"]["ndvi"]["href"]) as ds, \
            rasterio.open(out / item["assets"]["qa"]["href"]) as q:
        filled, qa = ds.read(1), q.read(1)
    red, nir = read1(red_tif).astype(np.float64), read1(nir_tif).astype(np.float64)
    observed = qa == QA_OBSERVED
    r, n = red * 2.75e-05 - 0.2, nir * 2.75e-05 - 0.2
    assert observed.sum() > 10000 and np.isnan(filled[qa == QA_OUTSIDE]).all()
    assert np.array_equal(filled[observed], np.clip((n - r) / (n + r), -1, 1)[observed].astype(np.float32))


SINOP = "modis/sits_MOD13Q1_NDVI_sinop/TERRA_MODIS_012010_NDVI_{date}.tif"
UKIS = "sentinel2/ukis-csmask/sentinel2.npz"


def _sinop_catalog(root: Path, dates: list[str], target: str, hidden: np.ndarray) -> Path:
    """A static `modis-13Q1-061` catalog of Sinop MOD13Q1 NDVI composites (Planetary Computer's
    asset key, no reliability layer: gaps from the -3000 fill), ``target``'s copy with the
    ``hidden`` pixels set to fill."""
    import pystac
    from rasterio.warp import transform_bounds

    root.mkdir(parents=True)
    items = []
    for date in dates:
        path = shared_file(SINOP.format(date=date))
        if date == target:
            with rasterio.open(path) as ds:
                profile, dn = ds.profile, ds.read(1)
            path = root / path.name
            with rasterio.open(path, "w", **profile) as out:
                out.write(np.where(hidden, -3000, dn).astype(dn.dtype), 1)
        with rasterio.open(path) as ds:
            w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
        item = pystac.Item(f"MOD13Q1.{date}.sinop", {"type": "Polygon", "coordinates": [
            [[w, s], [e, s], [e, n], [w, n], [w, s]]]}, [w, s, e, n], None,
            {"start_datetime": f"{date}T00:00:00Z", "end_datetime": f"{date}T23:59:59Z",
             "datetime": f"{date}T00:00:00Z"})
        item.add_asset("250m_16_days_NDVI", pystac.Asset(str(path), media_type=pystac.MediaType.GEOTIFF,
                                                         roles=["data"]))
        items.append(item)
    return static_catalog(root, "modis-13Q1-061", items)


def test_run_product_ndvi_takes_neighbouring_dates_found_through_stac_as_guides(tmp_path: Path, monkeypatch) -> None:
    """`dipfill run --product ndvi --engine guided` over a MOD13Q1 collection: the search finds
    the composites 32 days before and after the target and reads them as NDVI (scale applied,
    their fill not evidence), and the target's real Sentinel-2 cloud mask transplanted onto
    observed ground is filled far better than by fillnodata, which has no other date (bench:
    docs/benchmarks "NDVI", guided t±1 0.115 vs 0.165 gap RMSE)."""
    from dipfill.cli.run import build_request
    from dipfill.pipeline import run as run_mod
    from dipfill.pipeline.executor import LocalPool

    target = "2013-10-16"
    truth = read1(shared_file(SINOP.format(date=target))).astype(np.float64) * 1e-4
    msk = np.load(shared_file(UKIS))["msk"][..., 0]
    clouds = ((msk == 4) | (msk == 0))[: truth.shape[0], : truth.shape[1]]
    hidden = clouds & (truth > -0.2)
    stac = _sinop_catalog(tmp_path / "stac", ["2013-09-14", target, "2013-11-17"], target, hidden)
    from dipfill.pipeline import guide_resume

    opened = []  # the guides as the run opens them for its workers
    real_open = guide_resume.open_item_guide
    monkeypatch.setattr(guide_resume, "open_item_guide", lambda *a, **k: opened.append(real_open(*a, **k))
                        or opened[-1])
    errors = {}
    for engine in ("guided", "fillnodata"):
        request = build_request({"stac": str(stac), "out": str(tmp_path / engine), "engine": engine,
                                 "product": "ndvi", "datetime": "2013-10-10/2013-10-20"})
        pool = LocalPool(request.options.engine, dict(request.options.engine_options), request.options.fallback)
        (scene,) = run_mod.run(request, pool=pool).scenes
        assert scene.status == "done", scene.message
        item = json.loads(Path(scene.output).read_text())
        with rasterio.open(Path(scene.output).parent / item["assets"]["ndvi"]["href"]) as ds:
            filled = ds.read(1).astype(np.float64)
        veg = hidden & (truth > 0)
        assert np.isfinite(filled[veg]).all()
        errors[engine] = float(np.sqrt(np.mean((filled[veg] - truth[veg]) ** 2)))
        if engine == "guided":
            guides = item["properties"]["dipfill:guides"]
            assert [g["datetime"][:10] for g in guides] in (["2013-09-14", "2013-11-17"],
                                                           ["2013-11-17", "2013-09-14"]), guides
            assert scene.guides and validation_errors(item) == []
            for guide in opened:  # read as NDVI: DN x 1e-4, the -3000 fill not evidence
                values, valid = guide.read(0, truth.shape[0], 0, truth.shape[1])
                date = guide.datetime[:10]
                dn = read1(shared_file(SINOP.format(date=date)))
                assert np.array_equal(valid[0], (dn >= -2000) & (dn <= 10000)) and valid.mean() > 0.9
                assert np.allclose(values[0][valid[0]], dn[valid[0]] * 1e-4, atol=1e-6)
    assert len(opened) == 2
    assert errors["guided"] < 0.8 * errors["fillnodata"], errors
