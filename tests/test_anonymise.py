"""`dipfill anonymise` (issue 13, item 2; paper 004) on real Sentinel-1 data from ../shared/data.

* the GRD fixture (uint16 amplitude DN, no CRS, 210 GCPs) with a 600×400 px region placed in
  lon/lat through the GCPs, filled with ``fillnodata`` and ``--patch 128``: a region several
  patches wide (coarse-to-fine), and the leak test: the original inside the region replaced
  by a bright target and random DN gives byte-identical outputs;
* a BigEarthNet σ⁰ (dB, float32) patch with a 64² hole in the centre, as the paper, filled
  once by DIP (sar2023) with a handful of steps through the command line;
* the metrics (SSIM/MS-SSIM/ENL/EPI) and the dB conversions on known inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from dipfill.engines.sar import correlated_speckle, detect_units, from_db, lag1_correlation, speckle_db, to_db
from dipfill.eval.metrics import enl, epi, ms_ssim, ssim
from tests._data import shared_file, static_catalog

GRD = "sentinel1/riotilerpds_S1A_IW_GRDH_20180716/iw-vv.tiff"
BEN = ("sentinel1/bigearthnet_example/BigEarthNet-S1-Example/S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48/"
       "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48_VV.tif")
ROWS, COLS = (200, 600), (300, 900)  # the GRD region: 400 rows × 600 columns, ~5 × 3 patches of 128


def _grd_region(path: Path, out: Path) -> Path:
    """A lon/lat polygon whose corners are the GRD's pixel corners ROWS × COLS, through its GCPs."""
    from rasterio.transform import GCPTransformer

    with rasterio.open(path) as ds:
        gcps, _ = ds.gcps
    rows = [ROWS[0], ROWS[0], ROWS[1], ROWS[1], ROWS[0]]
    cols = [COLS[0], COLS[1], COLS[1], COLS[0], COLS[0]]
    with GCPTransformer(gcps) as tr:
        xs, ys = tr.xy(rows, cols, offset="ul")
    out.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [[[float(x), float(y)] for x, y in zip(xs, ys)]]}}))
    return out


def _tampered(path: Path, region: np.ndarray, out: Path) -> Path:
    """A copy of ``path`` (GCPs kept) whose pixels inside ``region`` are a bright target on
    random DN: what anonymisation must not let through."""
    with rasterio.open(path) as ds:
        profile, data, (gcps, crs) = ds.profile, ds.read(), ds.gcps
    rng = np.random.default_rng(7)
    fake = rng.integers(1, 3000, size=data.shape, dtype=np.uint16)
    fake[:, 300:360, 500:700] = 4000  # a bright "site"
    data = np.where(region[None], fake, data)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
        dst.gcps = (gcps, crs)
    return out


@pytest.fixture(scope="module")
def grd_runs(tmp_path_factory):
    """The GRD anonymised twice with fillnodata: from the original and from a tampered copy."""
    from dipfill.pipeline.anonymise import anonymise_files
    from dipfill.specs import FillOptions

    src = shared_file(GRD)
    tmp = tmp_path_factory.mktemp("anon")
    region_file = _grd_region(src, tmp / "site.geojson")
    opts = FillOptions(engine="fillnodata", patch=128, overlap=16)
    first = anonymise_files([str(src)], str(tmp / "a"), region=str(region_file), options=opts)
    with rasterio.open(first.outputs["qa"]) as ds:
        region = ds.read(1) == 2
    fake = _tampered(src, region, tmp / "iw-vv.tiff")
    second = anonymise_files([str(fake)], str(tmp / "b"), region=str(region_file), options=opts)
    return src, fake, region, first, second


def _read(path: str) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def test_grd_region_placed_by_gcps_and_several_patches_wide(grd_runs):
    src, _, region, first, _ = grd_runs
    rows, cols = np.nonzero(region)
    # all_touched through the GCP polynomial: the polygon's pixels and the ones its edges touch
    assert ROWS[0] - 2 <= rows.min() <= ROWS[0] + 1 and ROWS[1] - 2 <= rows.max() <= ROWS[1] + 1
    assert COLS[0] - 2 <= cols.min() <= COLS[0] + 1 and COLS[1] - 2 <= cols.max() <= COLS[1] + 1
    assert region.sum() >= 400 * 600
    item = json.loads(Path(first.outputs["item"]).read_text())
    record = item["properties"]["dipfill:anonymise"]
    assert item["properties"]["dipfill:mode"] == "anonymise"
    assert record["units"] == "linear-amplitude" and "uint16" in record["units_decided_by"]
    assert record["coarse_factor"] >= 5  # 600 px wide region, half a 128 patch at coarse scale
    assert item["geometry"]["type"] == "Polygon"  # the outline through the GCPs
    # the outputs are placed as the input: same GCPs, same CRS, no CRS of their own
    with rasterio.open(src) as ds:
        want = [(p.row, p.col, p.x, p.y) for p in ds.gcps[0]], ds.gcps[1]
    for key in ("band1", "qa", "filled"):
        with rasterio.open(first.outputs[key]) as ds:
            got = [(p.row, p.col, p.x, p.y) for p in ds.gcps[0]], ds.gcps[1]
            assert ds.crs is None and got == want, key
    orig, out = _read(str(src)), _read(first.outputs["band1"])
    assert out.dtype == np.uint16
    assert np.array_equal(out[:, ~region], orig[:, ~region])  # outside: bit-exact
    inside = out[0][region]
    assert inside.min() >= 1  # every region pixel filled (DN 0 is nodata)
    assert not np.array_equal(inside, orig[0][region])
    # the synthetic content is as rough as its surroundings (ENL, paper 004's 25² tiles) and as bright
    ring = np.zeros_like(region)
    ring[ROWS[0] - 40:ROWS[1] + 40, COLS[0] - 40:COLS[1] + 40] = True
    ring &= ~region & (orig[0] > 0)
    e_in = enl(out.astype(float) ** 2, region[None])[0]
    e_ring = enl(orig.astype(float) ** 2, ring[None])[0]
    assert 0.5 < e_in / e_ring < 2.0, (e_in, e_ring)
    db_in, db_ring = to_db(inside, "linear-amplitude"), to_db(orig[0][ring], "linear-amplitude")
    assert abs(np.median(db_in) - np.median(db_ring)) < 3.0


def test_nothing_of_the_original_inside_the_region_survives(grd_runs):
    src, fake, region, first, second = grd_runs
    orig, fake_data = _read(str(src)), _read(str(fake))
    assert not np.array_equal(orig[:, region], fake_data[:, region])
    # inside-independence: every written product is the same bytes from either input
    for key in ("band1", "qa", "quicklook"):
        a, b = Path(first.outputs[key]).read_bytes(), Path(second.outputs[key]).read_bytes()
        assert a == b, key
    import zarr

    za, zb = (zarr.open_group(first.outputs["mosaic"], mode="r"), zarr.open_group(second.outputs["mosaic"], mode="r"))
    assert np.array_equal(za["bands"][:], zb["bands"][:])
    out = _read(first.outputs["band1"])[0][region].astype(float)
    r_orig = np.corrcoef(np.log(out), np.log(orig[0][region].astype(float)))[0, 1]
    r_fake = np.corrcoef(out, fake_data[0][region].astype(float))[0, 1]
    assert abs(r_fake) < 0.02  # independent of what was there
    assert abs(r_orig) < 0.2, r_orig  # only what the surroundings predict of the original


def test_dip_on_bigearthnet_db_through_the_cli(tmp_path, capsys):
    from rasterio.warp import transform_geom

    from dipfill.cli.main import main

    src = shared_file(BEN)
    with rasterio.open(src) as ds:
        t, crs, orig = ds.transform, ds.crs, ds.read()
    (x0, y0), (x1, y1) = t @ (28, 28), t @ (92, 92)
    geom = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [[(x0, y0), (x1, y0), (x1, y1),
                                                                                 (x0, y1), (x0, y0)]]})
    (tmp_path / "hole.geojson").write_text(json.dumps(geom))
    rc = main(["anonymise", str(src), "--region", str(tmp_path / "hole.geojson"), "--out", str(tmp_path / "o"),
               "--patch", "128", "--overlap", "16", "--steps", "4", "--strategy", "loop", "--device", "cpu", "--channels", "16",
               "--dip", "compile=off", "--dip", "precision=fp32"])
    assert rc == 0, capsys.readouterr().err
    assert "4096 pixels replaced" in capsys.readouterr().out  # all_touched adds nothing on pixel edges
    (cog,) = (tmp_path / "o").glob("*_band1.tif")
    out = _read(str(cog))
    hole = np.zeros(orig.shape[1:], dtype=bool)
    hole[28:92, 28:92] = True
    assert out.dtype == np.float32
    assert np.array_equal(out[:, ~hole], orig[:, ~hole])
    assert np.isfinite(out[:, hole]).all() and not np.array_equal(out[:, hole], orig[:, hole])
    (item_path,) = (tmp_path / "o").glob("*-dipfill.json")
    props = json.loads(item_path.read_text())["properties"]
    assert props["dipfill:anonymise"]["units"] == "db"
    assert props["dipfill:config"]["engine_options"]["preset"] == "sar2023"
    assert props["dipfill:config"]["engine_options"]["blend"] == "none"


def test_sar2023_normalises_observed_db_to_the_papers_range():
    """Paper 004 fits dB "normalised approximately between -1 and 1": sar2023's normalisation
    puts the observed 1st/99th percentiles of a real σ⁰ patch on -1/1 (the hole left out),
    ~98 % of the observed pixels inside, and inverts exactly back to dB."""
    from dipfill.engines.config import preset
    from dipfill.engines.normalize import denormalize, normalize

    with rasterio.open(shared_file(BEN)) as ds:
        db = ds.read().astype(np.float64)
    observed = np.ones(db.shape, dtype=bool)
    observed[:, 28:92, 28:92] = False
    cfg = preset("sar2023")
    norm, params = normalize(np.where(observed, db, 0.0), observed, percentiles=cfg.percentiles,
                             target=cfg.target_range)
    seen = norm[observed]
    assert np.percentile(seen, [1, 99]) == pytest.approx([-1.0, 1.0], abs=1e-9)
    assert 0.97 <= np.mean(np.abs(seen) <= 1.0) <= 0.99 and abs(float(np.median(seen))) < 0.5
    assert params.lo[0] < -5 and not params.degenerate.any()  # it was dB, not [0, 1] already
    assert np.allclose(denormalize(norm, params)[observed], db[observed], rtol=0, atol=1e-9)


def test_region_errors_are_one_line(tmp_path, capsys):
    from dipfill.cli.main import main

    src = shared_file(BEN)
    (tmp_path / "far.geojson").write_text(json.dumps(
        {"type": "Polygon", "coordinates": [[[0, 0], [0.01, 0], [0.01, 0.01], [0, 0.01], [0, 0]]]}))
    assert main(["anonymise", str(src), "--region", str(tmp_path / "far.geojson"), "--out", str(tmp_path / "o"),
                 "--engine", "fillnodata"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "covers no valid pixel" in err[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    assert main(["anonymise", str(src), "--out", str(tmp_path / "o")]) == 2  # no region given


# -- units and speckle ---------------------------------------------------------------


def test_units_detection_and_round_trip():
    assert detect_units(np.dtype("uint16"), np.array([10.0, 200.0]))[0] == "linear-amplitude"
    assert detect_units(np.dtype("float32"), np.array([-20.0, -11.0, 2.0]))[0] == "db"
    assert detect_units(np.dtype("float32"), np.array([0.01, 0.2, 0.05]))[0] == "linear-power"
    dn = np.array([1, 100, 1000, 65535], dtype=np.uint16)
    assert np.array_equal(from_db(to_db(dn, "linear-amplitude"), "linear-amplitude", dn.dtype), dn)
    assert to_db(np.array([100.0]), "linear-amplitude")[0] == pytest.approx(40.0)  # 20·log10(A) = 10·log10(A²)
    assert to_db(np.array([0.01]), "linear-power")[0] == pytest.approx(-20.0)
    clipped = from_db(np.array([-200.0, 200.0]), "linear-amplitude", np.dtype("uint16"))
    assert clipped.tolist() == [1, 65535]  # DN 0 is nodata: never written inside the region


def test_speckle_has_the_asked_enl_and_keeps_the_mean():
    s = speckle_db((1, 500, 500), 4.0, np.random.default_rng(0))
    assert abs(s.mean()) < 0.05  # zero-mean in dB
    assert enl(10 ** (s / 10), np.ones(s.shape, bool))[0] == pytest.approx(4.0, rel=0.1)
    ones = np.ones((300, 300), bool)
    assert abs(lag1_correlation(s[0, :300, :300], ones)) < 0.07  # white
    c = correlated_speckle((300, 300), 4.0, 0.4, np.random.default_rng(1))
    assert lag1_correlation(c, ones) == pytest.approx(0.4, abs=0.05)  # as smooth as asked (GRD-like)
    assert c.std() == pytest.approx(s.std(), rel=0.05)  # and as rough


# -- metrics (paper 004) on known inputs ---------------------------------------------


def test_ms_ssim_enl_epi_on_known_inputs():
    rng = np.random.default_rng(1)
    x = rng.random((1, 120, 120))
    full = np.ones(x.shape, bool)
    assert ms_ssim(x, x, data_range=1.0)[0] == pytest.approx(1.0)
    noisy = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1)
    # averaging over scales reduces the noise: MS-SSIM (paper eq. 10, a mean over scales) > SSIM
    assert ms_ssim(x, noisy, data_range=1.0)[0] > ssim(x, noisy, full, data_range=1.0)[0]
    const = np.full((1, 50, 50), 3.0)
    const[0, :, :25] = 1.0
    assert np.isnan(enl(const, full[:, :50, :50])[0])  # zero variance in every tile: no ENL
    g = rng.gamma(2.0, 0.5, (1, 500, 500))
    assert enl(g, np.ones(g.shape, bool))[0] == pytest.approx(2.0, rel=0.1)
    assert np.isnan(enl(g, np.zeros(g.shape, bool))[0])  # no tile inside the mask
    assert epi(x, x, full)[0] == pytest.approx(1.0)
    assert epi(x, 0.5 * x, full)[0] == pytest.approx(0.5)
    assert epi(x, np.full_like(x, 0.3), full)[0] == 0.0


# -- dipfill run --mode anonymise ----------------------------------------------------


def test_run_mode_anonymise_over_a_sentinel1_catalog(tmp_path):
    """A static catalog of one sentinel-1-rtc item (BigEarthNet VV/VH): the run anonymises the
    region in the scene's directory like a fill run's product, and a rerun finds it current."""
    import pystac
    from rasterio.warp import transform_bounds, transform_geom

    from dipfill.cli.run import build_request
    from dipfill.pipeline.executor import LocalPool
    from dipfill.pipeline.run import run

    vv = shared_file(BEN)
    vh = Path(str(vv).replace("_VV.tif", "_VH.tif"))
    with rasterio.open(vv) as ds:
        t, crs, bounds, orig = ds.transform, ds.crs, ds.bounds, ds.read()
    (x0, y0), (x1, y1) = t @ (28, 28), t @ (92, 92)
    region = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [[(x0, y0), (x1, y0), (x1, y1),
                                                                                   (x0, y1), (x0, y0)]]})
    (tmp_path / "site.geojson").write_text(json.dumps(region))
    w, s, e, n = transform_bounds(crs, "EPSG:4326", *bounds)
    item = pystac.Item("S1A_87_48", {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
                       [w, s, e, n], dt_parse("2017-06-13T16:50:43Z"), {})
    item.add_asset("vv", pystac.Asset(str(vv), media_type=pystac.MediaType.GEOTIFF, roles=["data"]))
    item.add_asset("vh", pystac.Asset(str(vh), media_type=pystac.MediaType.GEOTIFF, roles=["data"]))
    static_catalog(tmp_path / "stac", "sentinel-1-rtc", [item])

    request = build_request({"stac": str(tmp_path / "stac" / "catalog.json"), "out": str(tmp_path / "out"),
                             "collection": ["sentinel-1-rtc"], "mode": "anonymise",
                             "region": str(tmp_path / "site.geojson"), "engine": "fillnodata", "patch": 128,
                             "overlap": 16})
    assert request.mode == "anonymise" and request.config()["mode"]["units"] == "auto"
    pool = LocalPool("fillnodata", {}, "fillnodata")  # the run's engine workers: they fill the patches
    first = run(request, pool=pool)
    (scene,) = first.scenes
    assert scene.status == "done", scene.message
    assert scene.counts["filled"] == 4096
    props = json.loads(Path(scene.output).read_text())["properties"]
    assert props["dipfill:mode"] == "anonymise" and props["dipfill:source_item"] == "S1A_87_48"
    assert props["dipfill:anonymise"]["units"] == "db"
    cogs = sorted(Path(scene.output).parent.glob("*-dipfill_*.tif"))
    vv_out = _read(str(next(p for p in cogs if "_VV" in p.name)))  # fill's layout: COGs named after the files
    hole = np.zeros(orig.shape[1:], dtype=bool)
    hole[28:92, 28:92] = True
    assert np.array_equal(vv_out[:, ~hole], orig[:, ~hole]) and not np.array_equal(vv_out[:, hole], orig[:, hole])
    # the patches filled by the workers are the bytes of `dipfill anonymise`, which fills them in process
    from dipfill.pipeline.anonymise import anonymise_files

    here = anonymise_files([str(vv), str(vh)], str(tmp_path / "here"), region=str(tmp_path / "site.geojson"),
                           options=request.options)
    assert np.array_equal(vv_out, _read(here.outputs[next(k for k in here.outputs if k.endswith("_VV"))]))
    (again,) = run(request, pool=pool).scenes
    assert again.status == "current"
    # the region counts by content: the same file elsewhere changes nothing, an edited one redoes the scene
    values = {"stac": str(tmp_path / "stac" / "catalog.json"), "out": str(tmp_path / "out"),
              "collection": ["sentinel-1-rtc"], "mode": "anonymise", "engine": "fillnodata", "patch": 128,
              "overlap": 16}
    (tmp_path / "moved.geojson").write_text((tmp_path / "site.geojson").read_text())
    (moved,) = run(build_request({**values, "region": str(tmp_path / "moved.geojson")}), pool=pool).scenes
    assert moved.status == "current"
    (x2, y2) = t @ (100, 100)
    (tmp_path / "moved.geojson").write_text(json.dumps(transform_geom(crs, "EPSG:4326", {
        "type": "Polygon", "coordinates": [[(x0, y0), (x2, y0), (x2, y2), (x0, y2), (x0, y0)]]})))
    (edited,) = run(build_request({**values, "region": str(tmp_path / "moved.geojson")}), pool=pool).scenes
    assert edited.status == "done" and edited.counts["filled"] == 72 * 72
    dip = build_request({"stac": "x", "out": str(tmp_path / "o2"), "mode": "anonymise",
                         "region": str(tmp_path / "site.geojson")})
    assert dip.options.engine_options["preset"] == "sar2023" and dip.options.engine_options["blend"] == "none"


def dt_parse(text: str):
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
