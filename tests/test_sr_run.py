"""`dipfill run --mode sr` (issue 13 item 3 "from dipfill run"): guided super-resolution of every
scene a STAC search finds, with the item's own finest bands as the guide.

The scene: the real Earth Search item of Sentinel-2 tile 29RKH (2020-02-19, the committed
fixture JSON) with its assets pointing at a crop of the reduced-resolution files in
../shared/data: the 10 m bands blue, green, red, nir (100 m in these files, 192² px), the real
20 m swir16 (B11, 200 m here, 96² px) and, as a second coarser grid, the real swir22 (B12)
area-averaged by 3 more (600 m, 32² px: what a 60 m band is to the 10 m ones). The run must
take both grids onto the guide's grid in one product. Skips without ../shared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform_bounds

from _data import REPO, shared_file, static_catalog
from _schemas import validation_errors
from dipfill.cli.main import main
from dipfill.errors import InputError
from dipfill.tiling.resample import SRGeometry, apply_operator

S2 = "sentinel2/earthsearch_S2A_29RKH_20200219_L2A_reduced_res"
HR = 192  # guide pixels (100 m), rows/cols 300..491 of the files
#: RMSE of the output's downsample against the LR input, relative to the LR band's spread,
#: with the consistency projection a run applies (what remains is rounding to uint16).
LR_TOLERANCE = 0.01


@pytest.fixture(scope="module", autouse=True)
def _ray_session():
    """The local Ray a `dipfill run --mode sr` starts for its engine actors, stopped at the end."""
    yield
    from dipfill.pipeline.ray_executor import stop_ray

    stop_ray()


def _write(path: Path, data: np.ndarray, profile: dict, transform: Affine) -> str:
    prof = {k: v for k, v in profile.items() if k not in ("blockxsize", "blockysize", "tiled")}
    prof.update(width=data.shape[1], height=data.shape[0], transform=transform, count=1, dtype=data.dtype.name)
    with rasterio.open(path, "w", **prof) as out:
        out.write(data, 1)
    return str(path)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import pystac

    root = tmp_path_factory.mktemp("srrun")
    hrefs, arrays = {}, {}
    for key, band in (("blue", "B02"), ("green", "B03"), ("red", "B04"), ("nir", "B08")):
        with rasterio.open(shared_file(f"{S2}/{band}.tif")) as ds:
            data = ds.read(1, window=((300, 300 + HR), (300, 300 + HR)))
            transform = ds.transform @ Affine.translation(300, 300)
            hrefs[key] = _write(root / f"{band}.tif", data, ds.profile, transform)
            crs, hr_transform = ds.crs, transform
    with rasterio.open(shared_file(f"{S2}/B11.tif")) as ds:
        b11 = ds.read(1, window=((150, 150 + HR // 2), (150, 150 + HR // 2)))
        hrefs["swir16"] = _write(root / "B11.tif", b11, ds.profile, ds.transform @ Affine.translation(150, 150))
        arrays["swir16"] = b11
    with rasterio.open(shared_file(f"{S2}/B12.tif")) as ds:
        b12 = ds.read(1, window=((150, 150 + HR // 2), (150, 150 + HR // 2))).astype(np.float64)
        b12 = np.rint(b12.reshape(HR // 6, 3, HR // 6, 3).mean(axis=(1, 3))).astype(np.uint16)
        hrefs["swir22"] = _write(root / "B12_600m.tif", b12, ds.profile,
                                 ds.transform @ Affine.translation(150, 150) @ Affine.scale(3))
        arrays["swir22"] = b12
    doc = json.loads((REPO / "tests/fixtures/stac/items/S2A_29RKH_20200219_0_L2A.json").read_text())
    w, s, e, n = transform_bounds(crs, "EPSG:4326", *rasterio.transform.array_bounds(HR, HR, hr_transform))
    item = pystac.Item(doc["id"], {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
                       [w, s, e, n], pystac.utils.str_to_datetime(doc["properties"]["datetime"]),
                       {k: v for k, v in doc["properties"].items() if k != "datetime"})
    for key, href in hrefs.items():
        asset = dict(doc["assets"][key])
        item.add_asset(key, pystac.Asset.from_dict({**asset, "href": href}))
    stac = static_catalog(root / "stac", "sentinel-2-l2a", [item])
    return {"root": root, "stac": str(stac), "item": item.to_dict(), "lr": arrays,
            "crs": crs, "transform": hr_transform}


def _request(catalog: dict, out: Path, **values):
    from dipfill.cli.run import build_request

    return build_request({"stac": catalog["stac"], "out": str(out), "collection": ["sentinel-2-l2a"], "mode": "sr",
                          **values})


def test_default_bands_guide_with_the_finest_and_super_resolve_the_coarser(catalog: dict) -> None:
    """The full Earth Search item: blue/green/red/nir (10 m) guide, the eight 20 m and 60 m
    bands are the LR input; a profile whose bands share one resolution needs --bands."""
    from dipfill.pipeline.sr_run import sr_band_names

    full = json.loads((REPO / "tests/fixtures/stac/items/S2A_29RKH_20200219_0_L2A.json").read_text())
    guide, low = sr_band_names(full, _request(catalog, catalog["root"] / "unused"))
    assert guide == ("blue", "green", "red", "nir")
    assert low == ("coastal", "rededge1", "rededge2", "rededge3", "nir08", "nir09", "swir16", "swir22")
    landsat = json.loads((REPO / "tests/fixtures/stac/items/LC08_L2SP_028030_20200114_20200824_02_T1_SR.json")
                         .read_text())
    with pytest.raises(InputError, match="no band of profile landsat-c2-l2 is coarser than the guide"):
        sr_band_names(landsat, _request(catalog, catalog["root"] / "unused"))
    with pytest.raises(InputError, match="red is both a low-resolution band"):
        sr_band_names(full, _request(catalog, catalog["root"] / "unused", bands="red,swir16"))


def test_run_mode_sr_takes_two_coarse_grids_onto_the_guide_grid(catalog: dict) -> None:
    """mcpn-direct (light core and heads, 1 step: the plumbing, not a quality claim) over the catalog:
    one product on the 10 m grid with B11 (factor 2) and B12 (factor 6), each band's
    downsample reproducing its LR input, the item saying mode, method, both grids and the
    guide, gsd the guide's; a rerun finds the scene current."""
    from dipfill.pipeline.executor import LocalPool
    from dipfill.pipeline.run import run

    pool = LocalPool("fillnodata", {}, "none")  # the patches go through the executor's upsample, in process
    light = ['channels_down=[8,16,32]', 'channels_up=[8,16,32]', 'channels_skip=[4,4,4]', 'head_channels=[8,8]',
             'head_skip=[8,8]']
    request = _request(catalog, catalog["root"] / "out", sr_method="mcpn-direct", steps=1, device="cpu", dip=light,
                       patch=128, overlap=32)
    assert request.config()["mode"] == {"mode": "sr", "guide_bands": []}
    summary = run(request, pool=pool)
    (scene,) = summary.scenes
    assert scene.status == "done", scene.message
    assert scene.patches == 4 + 4  # 128² patches over 192², per LR grid
    item = json.loads(Path(scene.output).read_text())
    props = item["properties"]
    assert props["dipfill:mode"] == "sr" and props["dipfill:source_item"] == catalog["item"]["id"]
    sr = props["dipfill:sr"]
    assert sr["method"] == "mcpn-direct" and sr["guide"] == ["B02.tif", "B03.tif", "B04.tif", "B08.tif"]
    assert [g["bands"] for g in sr["grids"]] == [["swir16"], ["swir22"]]
    assert [g["factor"] for g in sr["grids"]] == [[2.0, 2.0], [6.0, 6.0]]
    assert item["assets"]["swir16"]["gsd"] == 10 and item["assets"]["swir22"]["gsd"] == 10
    assert props["proj:shape"] == [HR, HR]
    assert validation_errors(item) == []  # every extension it declares (eo, raster, proj, processing)
    for key, factor in (("swir16", 2), ("swir22", 6)):
        with rasterio.open(Path(scene.output).parent / item["assets"][key]["href"]) as ds:
            assert ds.crs == catalog["crs"] and ds.transform.almost_equals(catalog["transform"])
            assert ds.shape == (HR, HR) and ds.dtypes[0] == "uint16" and ds.nodata == 0
            out = ds.read(1).astype(np.float64)
        low = catalog["lr"][key].astype(np.float64)
        n = HR // factor
        ay, ax = SRGeometry((factor, factor), (0.0, 0.0), (n, n), (HR, HR)).operators()
        down = apply_operator(ay, ax, out[None])[0]
        rel = np.sqrt(np.mean((down[1:-1, 1:-1] - low[1:-1, 1:-1]) ** 2)) / low.std()
        assert rel < LR_TOLERANCE, (key, rel)
    assert sr["lowres_rmse"][0] / catalog["lr"]["swir16"].std() < LR_TOLERANCE
    (again,) = run(request, pool=pool).scenes
    assert again.status == "current"


def test_cli_run_mode_sr_on_ray_actors_and_bad_flags(catalog: dict, capsys) -> None:
    """The README's command form with the guided filter and one guide band: the patches are
    computed on the engine actors of a local Ray (started on 127.0.0.1), and the COG is the
    bytes of the same run with the patches computed in process. A fill flag with --mode sr is
    one line naming it, and so is --sr-method without --mode sr."""
    from dipfill.cli.run import build_request
    from dipfill.pipeline.executor import LocalPool
    from dipfill.pipeline.run import run

    out = catalog["root"] / "cli"
    args = ["run", "--stac", catalog["stac"], "--collection", "sentinel-2-l2a", "--mode", "sr", "--patch", "64",
            "--sr-method", "guided-filter", "--bands", "swir16", "--sr-guide-bands", "nir", "--out", str(out)]
    assert main(args) == 0
    assert "done" in capsys.readouterr().out
    (item_path,) = out.glob("sentinel-2-l2a/*/*-dipfill.json")
    item = json.loads(item_path.read_text())
    assert item["properties"]["dipfill:sr"]["method"] == "guided-filter"
    assert item["properties"]["dipfill:sr"]["guide"] == ["B08.tif"] and set(item["assets"]) >= {"swir16", "qa"}
    here = _request(catalog, catalog["root"] / "here", sr_method="guided-filter", bands="swir16",
                    sr_guide_bands="nir", patch=64)
    (scene,) = run(here, pool=LocalPool("fillnodata", {}, "none")).scenes
    with rasterio.open(item_path.parent / item["assets"]["swir16"]["href"]) as a, \
            rasterio.open(Path(scene.output).parent / item["assets"]["swir16"]["href"]) as b:
        assert np.array_equal(a.read(), b.read())
    for bad, expected in ((["--engine", "dip"], "--mode sr does not take --engine"),
                          (["--mode", "fill"], "--sr-method is the method of --mode sr")):
        assert main([*args, "--out", str(catalog["root"] / "bad"), *bad]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (catalog["root"] / "bad").exists()


def test_run_mode_sr_writes_to_object_storage(catalog: dict, s3) -> None:
    """`--out s3://...` (a real S3 API on 127.0.0.1, moto): the product and item land in the
    bucket like a fill run's, the COG reads back over S3 with the local run's pixels."""
    bucket = s3.bucket("dipfill-sr")
    args = ["run", "--stac", catalog["stac"], "--collection", "sentinel-2-l2a", "--mode", "sr",
            "--sr-method", "bicubic", "--bands", "swir16"]
    assert main([*args, "--out", f"{bucket}/run"]) == 0
    assert main([*args, "--out", str(catalog["root"] / "local")]) == 0
    keys = s3.keys("dipfill-sr", "run/sentinel-2-l2a/")
    items = [k for k in keys if k.endswith("-dipfill.json")]
    assert len(items) == 1 and any(k.endswith("_swir16.tif") for k in keys), keys
    (local,) = (catalog["root"] / "local").glob("sentinel-2-l2a/*/*_swir16.tif")
    with rasterio.Env(**s3.rasterio_env()), \
            rasterio.open(f"s3://dipfill-sr/{next(k for k in keys if k.endswith('_swir16.tif'))}") as remote, \
            rasterio.open(local) as here:
        assert np.array_equal(remote.read(), here.read())
