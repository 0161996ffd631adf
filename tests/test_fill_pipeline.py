"""`dipfill fill` end to end on the real SLC-off crop: outputs, exactness, QA, determinism."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from rio_cogeo.cogeo import cog_validate

from dipfill.cli.main import main
from dipfill.raster.masks import QA_ENGINE, QA_FALLBACK, QA_OBSERVED, QA_OUTSIDE, QA_UNFILLED
from tests._data import ARG25_JAN


def run_fill(tmp_path: Path, *args: str, inputs=(ARG25_JAN,), name: str = "out") -> Path:
    out = tmp_path / name
    rc = main(["fill", *map(str, inputs), "--out", str(out), *args])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> Path:
    """The real crop with a tilted no-data collar cut into it, filled with fillnodata."""
    tmp = tmp_path_factory.mktemp("fill")
    with rasterio.open(ARG25_JAN) as src:
        data = src.read()
        profile = src.profile
    rows, cols = np.mgrid[0:512, 0:512]
    data[:, rows > 2 * cols + 200] = -999  # collar of a tilted scene
    src_path = tmp / "LS7_ETM_095_082_20100116_collar.tif"
    with rasterio.open(src_path, "w", **profile) as dst:
        dst.write(data)
    return run_fill(tmp, "--engine", "fillnodata", "--patch", "256", "--overlap", "32", inputs=(src_path,))


def write_cut(tmp_path: Path, window) -> tuple[Path, np.ndarray]:
    """A georeferenced window of the real January crop as its own GeoTIFF."""
    (r0, r1), (c0, c1) = window
    with rasterio.open(ARG25_JAN) as src:
        profile = src.profile
        data = src.read(window=window)
        profile.update(height=r1 - r0, width=c1 - c0, transform=src.window_transform(window))
    path = tmp_path / f"LS7_ETM_095_082_20100116_r{r0}c{c0}.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path, data


def outputs(out: Path) -> dict[str, Path]:
    item_path = next(p for p in out.glob("*.json") if not p.name.endswith("_patches.json"))
    item = json.loads(item_path.read_text())
    return {"item": item_path, **{k: out / a["href"] for k, a in item["assets"].items()}}


def test_all_outputs_exist_and_nothing_temporary_is_left(filled: Path) -> None:
    files = outputs(filled)
    # one COG per band (no descriptions in the collar file: band1..3), the VRT of all bands
    assert set(files) == {"item", "filled", "qa", "mosaic", "quicklook", "patches", "band1", "band2", "band3"}
    for path in files.values():
        assert path.exists(), path
    assert not [p for p in filled.iterdir() if p.name.startswith(".")]
    assert sorted(p.name for p in filled.iterdir()) == sorted(p.name for p in files.values())  # nothing else
    # the item is written last: an item on disk means its outputs are complete
    def mtime(path: Path) -> int:
        if path.is_dir():
            return max(p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file())
        return path.stat().st_mtime_ns

    assert all(mtime(files["item"]) >= mtime(p) for p in files.values())


def test_patch_records_are_the_windows_with_gaps(filled: Path) -> None:
    """Only windows that contain gap pixels are fitted, and together they cover every gap."""
    files = outputs(filled)
    records = json.loads(files["patches"].read_text())
    with rasterio.open(files["qa"]) as q:
        qa = q.read(1)
    gap = (qa == QA_ENGINE) | (qa == QA_FALLBACK) | (qa == QA_UNFILLED)
    covered = np.zeros(qa.shape, dtype=bool)
    ids = []
    for rec in records:
        r, c, h, w = (int(v) for v in re.fullmatch(r"r(\d+)_c(\d+)_h(\d+)_w(\d+)", rec["window"]).groups())
        assert (h, w) == (256, 256) and r in (0, 224, 256) and c in (0, 224, 256), rec["window"]
        assert gap[r:r + h, c:c + w].any(), f"{rec['window']} has no gap but was fitted"
        assert rec["engine"] == "fillnodata"
        covered[r:r + h, c:c + w] = True
        ids.append(rec["window"])
    assert len(ids) == len(set(ids)) == 9  # the 3 x 3 lattice: stripes cross every window
    assert covered[gap].all()


def test_cogs_validate_and_keep_georeferencing(filled: Path) -> None:
    files = outputs(filled)
    for key in ("band1", "band2", "band3", "qa"):
        valid, errors, _ = cog_validate(str(files[key]))
        assert valid, errors
    for key in ("band1", "band2", "band3"):
        with rasterio.open(files[key]) as out, rasterio.open(ARG25_JAN) as src:
            assert out.count == 1
            assert out.crs == src.crs
            assert out.transform == src.transform
            assert out.dtypes[0] == src.dtypes[0]
            assert out.nodata == src.nodata
            assert out.overviews(1), "COG has no overviews"
            assert out.block_shapes[0] == (256, 256)
            assert out.profile["compress"].lower() == "deflate"


def test_observed_exact_gaps_filled_outside_untouched(filled: Path) -> None:
    files = outputs(filled)
    src_path = next(filled.parent.glob("*_collar.tif"))
    with rasterio.open(src_path) as s:
        src = s.read()
    with rasterio.open(files["filled"]) as f:
        out = f.read()
    with rasterio.open(files["qa"]) as q:
        qa = q.read(1)
    valid = src != -999
    assert np.array_equal(out[valid], src[valid]), "observed pixels changed"
    gap = qa == QA_ENGINE
    assert gap.sum() > 0.2 * qa.size
    assert (out[:, gap] != -999).all(), "a gap pixel was left nodata"
    outside = qa == QA_OUTSIDE
    rows, cols = np.mgrid[0:512, 0:512]
    collar = rows > 2 * cols + 200
    assert outside.sum() >= 0.98 * collar.sum() and (outside <= collar | ~valid.all(0)).all()
    assert (out[:, outside] == -999).all(), "an outside pixel was filled"
    # QA agrees with the input mask
    assert np.array_equal(qa == QA_OBSERVED, valid.all(axis=0))
    assert set(np.unique(qa)) <= {QA_OUTSIDE, QA_OBSERVED, QA_ENGINE}
    # filled values look like the band (stripes between similar pixels)
    for b in range(3):
        lo, hi = np.percentile(src[b][valid[b]], [0, 100])
        assert lo <= out[b, gap].min() and out[b, gap].max() <= hi


def test_filled_vrt_stacks_the_band_cogs(filled: Path) -> None:
    """The ``filled`` asset is a VRT of all bands over the one-band COGs (no pixels stored twice)."""
    files = outputs(filled)
    with rasterio.open(files["filled"]) as vrt:
        assert vrt.driver == "VRT" and vrt.count == 3 and vrt.crs.to_epsg() == 3577
        data, nodata, transform = vrt.read(), vrt.nodata, vrt.transform
    for b in (1, 2, 3):
        with rasterio.open(files[f"band{b}"]) as cog:
            assert cog.count == 1 and cog.nodata == nodata and cog.transform == transform
            assert np.array_equal(cog.read(1), data[b - 1])
    assert files["filled"].stat().st_size < 4096


def test_zarr_mosaic_matches_cog(filled: Path) -> None:
    files = outputs(filled)
    root = zarr.open_group(str(files["mosaic"]), mode="r")
    assert root.metadata.zarr_format == 3
    with rasterio.open(files["filled"]) as f:
        assert np.array_equal(root["bands"][...], f.read())
    with rasterio.open(files["qa"]) as q:
        assert np.array_equal(root["qa"][...], q.read(1))
    assert root["bands"].metadata.dimension_names == ("band", "y", "x")
    assert root.attrs["proj:epsg"] == 3577
    # georeferenced like the COG, with its nodata and the QA classes
    with rasterio.open(files["filled"]) as f:
        assert root.attrs["geotransform"] == list(f.transform.to_gdal())
        assert rasterio.crs.CRS.from_wkt(root.attrs["crs_wkt"]) == f.crs
        assert root["bands"].attrs["nodata"] == f.nodata == -999
        assert root.attrs["band_names"] == list(f.descriptions)
    assert root["qa"].attrs["flag_values"] == [QA_OUTSIDE, QA_OBSERVED, QA_ENGINE, QA_FALLBACK, QA_UNFILLED]


def test_stac_item_describes_outputs(filled: Path) -> None:
    import pystac

    files = outputs(filled)
    raw = json.loads(files["item"].read_text())
    # projection v2.0.0 (the version declared): proj:code; the removed proj:epsg is not written
    assert raw["properties"]["proj:code"] == "EPSG:3577" and "proj:epsg" not in raw["properties"]
    item = pystac.Item.from_file(str(files["item"]))
    assert item.id.endswith("-dipfill")
    assert item.datetime.date().isoformat() == "2010-01-16"
    assert item.properties["proj:code"] == "EPSG:3577"
    assert item.properties["proj:shape"] == [512, 512]
    bands = item.assets["filled"].extra_fields["raster:bands"]
    assert [b["data_type"] for b in bands] == ["int16"] * 3 and bands[0]["nodata"] == -999
    assert "data" in item.assets["filled"].roles and "overview" in item.assets["quicklook"].roles
    # lon/lat footprint lies around Menindee (32.3 S, 142.4 E)
    w, s, e, n = item.bbox
    assert 141.9 < w < e < 142.8 and -32.5 < s < n < -32.1
    # the counts are the QA layer's, class by class
    with rasterio.open(files["qa"]) as q:
        qa = q.read(1)
    counts = item.properties["dipfill:counts"]
    assert counts == {"outside": int((qa == QA_OUTSIDE).sum()), "observed": int((qa == QA_OBSERVED).sum()),
                      "filled": int((qa == QA_ENGINE).sum()), "filled_fallback": int((qa == QA_FALLBACK).sum()),
                      "unfilled": int((qa == QA_UNFILLED).sum())}
    assert counts["filled"] > 0 and counts["outside"] > 0 and sum(counts.values()) == 512 * 512
    # the config recorded is the one asked for
    cfg = item.properties["dipfill:config"]
    assert (cfg["engine"], cfg["patch"], cfg["overlap"], cfg["footprint"]) == ("fillnodata", 256, 32, "auto")


def test_quicklook_is_a_before_after_png(filled: Path) -> None:
    files = outputs(filled)
    with rasterio.open(files["quicklook"]) as ql:
        assert ql.driver == "PNG" and ql.count == 3
        assert ql.width == 2 * 512 + 8 and ql.height == 512
        img = ql.read()
    with rasterio.open(next(filled.parent.glob("*_collar.tif"))) as s:
        valid = (s.read() != -999).all(axis=0)
    with rasterio.open(files["qa"]) as q:
        qa = q.read(1)
    before, gutter, after = img[:, :, :512], img[:, :, 512:520], img[:, :, 520:]
    assert (gutter == 255).all()

    def magenta(panel: np.ndarray) -> np.ndarray:
        return (panel[0] == 255) & (panel[1] == 0) & (panel[2] == 255)

    # missing pixels are magenta: before, every gap and the collar; after, only the collar
    np.testing.assert_array_equal(magenta(before), ~valid)
    np.testing.assert_array_equal(magenta(after), qa == QA_OUTSIDE)
    assert (after[:, ~magenta(after)] > 0).all()  # every filled or observed pixel drawn
    # one stretch for both panels: observed pixels look the same before and after
    np.testing.assert_array_equal(before[:, valid], after[:, valid])


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = run_fill(tmp_path, "--engine", "telea", name="a")
    b = run_fill(tmp_path, "--engine", "telea", name="b")
    for key in ("filled", "qa"):
        assert outputs(a)[key].read_bytes() == outputs(b)[key].read_bytes()


def test_external_mask_adds_gaps_and_tiny_patches_work(tmp_path: Path) -> None:
    with rasterio.open(ARG25_JAN) as src:
        profile = src.profile
        data = src.read(window=((0, 40), (0, 70)))
        transform = src.window_transform(((0, 40), (0, 70)))
    profile.update(width=70, height=40, transform=transform)
    small = tmp_path / "small.tif"
    with rasterio.open(small, "w", **profile) as dst:
        dst.write(data)
    mask = np.zeros((40, 70), dtype=np.uint8)
    mask[5:9, 20:30] = 1  # a "cloud" over observed pixels
    mprof = {**profile, "count": 1, "dtype": "uint8", "nodata": None}
    with rasterio.open(tmp_path / "mask.tif", "w", **mprof) as dst:
        dst.write(mask[None])
    out = run_fill(tmp_path, "--engine", "ns", "--patch", "32", "--overlap", "8",
                   "--mask", str(tmp_path / "mask.tif"), "--footprint", "all", inputs=(small,))
    with rasterio.open(outputs(out)["qa"]) as q:
        qa = q.read(1)
    with rasterio.open(outputs(out)["filled"]) as f:
        res = f.read()
    assert (qa[5:9, 20:30] == QA_ENGINE).all()
    assert (res[:, 5:9, 20:30] != -999).all()
    valid = (data != -999).all(0)
    keep = valid & (mask == 0)
    assert np.array_equal(res[:, keep], data[:, keep])
    # QA pixel by pixel: the masked pixels and the nodata stripes are gaps, all else observed
    assert valid[5:9, 20:30].all() and not valid.all()  # the "cloud" hides observed pixels
    np.testing.assert_array_equal(qa, np.where(keep, QA_OBSERVED, QA_ENGINE))
    # the engine filled them from around: the pixels under the mask were not copied
    assert not np.array_equal(res[:, 5:9, 20:30], data[:, 5:9, 20:30])


def test_fallback_engine_for_patches_with_too_few_observed_pixels(tmp_path: Path) -> None:
    with rasterio.open(ARG25_JAN) as src:
        data = src.read()
        profile = src.profile
    data[:, :256, :256] = -999
    data[:, 100:104, 100:104] = 1000  # almost nothing observed in the top-left patch
    path = tmp_path / "holey.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    out = run_fill(tmp_path, "--engine", "telea", "--fallback", "fillnodata", "--min-observed", "0.2",
                   "--footprint", "all", inputs=(path,))
    with rasterio.open(outputs(out)["qa"]) as q:
        qa = q.read(1)
    with rasterio.open(outputs(out)["filled"]) as f:
        res = f.read()
    # near the few observed pixels: filled by the fallback (fillnodata reaches 100 px) ...
    assert (qa[60:140, 60:140][qa[60:140, 60:140] != QA_OBSERVED] == QA_FALLBACK).all()
    # ... beyond its reach and away from other patches: left unfilled, and still nodata
    assert (qa[:5, :5] == QA_UNFILLED).all() and (res[:, :5, :5] == -999).all()
    assert (res[:, qa == QA_FALLBACK] != -999).all()
    # only the top-left window went to the fallback: beyond it every gap is the engine's
    assert set(np.unique(qa[256:, :])) == set(np.unique(qa[:, 256:])) == {QA_OBSERVED, QA_ENGINE}
    engines = {r["window"]: r["engine"] for r in json.loads(outputs(out)["patches"].read_text())}
    assert engines.pop("r0_c0_h256_w256") == "fillnodata" and set(engines.values()) == {"telea"}
    # unfilled pixels are nodata, filled ones are not
    assert (res[:, qa == QA_UNFILLED] == -999).all() and (res[:, qa == QA_ENGINE] != -999).all()


def test_dip_engine_end_to_end_is_exact_and_reproducible(tmp_path: Path) -> None:
    """`dipfill fill --engine dip` on a real 96x128 SLC-off cut: every gap filled by DIP,
    observed pixels untouched, the config recorded in the item, same seed -> same bytes."""
    path, data = write_cut(tmp_path, ((300, 396), (100, 228)))
    args = ("--engine", "dip", "--preset", "mcpn-core", "--steps", "3", "--dip", "reg_noise_std=0.03",
            "--patch", "64", "--overlap", "16", "--footprint", "all", "--seed", "7")
    a = run_fill(tmp_path, *args, inputs=(path,), name="a")
    b = run_fill(tmp_path, *args, inputs=(path,), name="b")
    files = outputs(a)
    assert files["filled"].read_bytes() == outputs(b)["filled"].read_bytes()
    with rasterio.open(files["filled"]) as f, rasterio.open(files["qa"]) as q:
        res, qa = f.read(), q.read(1)
    valid = data != -999
    assert np.array_equal(res[valid], data[valid])
    gap = ~valid.all(axis=0)
    assert gap.any() and (qa[gap] == QA_ENGINE).all() and (res[:, gap] != -999).all()
    cfg = json.loads(files["item"].read_text())["properties"]["dipfill:config"]
    assert cfg["engine"] == "dip" and cfg["engine_options"]["steps"] == 3
    assert cfg["engine_options"]["preset"] == "mcpn-core" and cfg["engine_options"]["reg_noise_std"] == 0.03


def test_per_patch_diagnostics_are_written_and_referenced(tmp_path: Path, capsys) -> None:
    path, _ = write_cut(tmp_path, ((300, 364), (100, 164)))
    out = run_fill(tmp_path, "--engine", "dip", "--preset", "mcpn-core", "--steps", "60", "--stopping", "holdout",
                   "--patience", "1", "--dip", "check_every=5", "--strategy", "loop", "--patch", "64",
                   "--footprint", "all", inputs=(path,))
    files = outputs(out)
    records = json.loads(files["patches"].read_text())
    assert len(records) == 1 and records[0]["window"] == "r0_c0_h64_w64"
    rec = records[0]
    assert rec["engine"] == "dip" and 0 < rec["steps"] <= 60 and rec["extra"]["stopped_by"] in ("holdout", "steps")
    assert rec["extra"]["best_step"] <= rec["steps"] and rec["extra"]["best_holdout_rmse"] > 0
    assert rec["extra"]["plan"]["strategy"] == "loop"
    item = json.loads(files["item"].read_text())
    assert item["assets"]["patches"]["href"] == files["patches"].name
    opts = item["properties"]["dipfill:config"]["engine_options"]
    assert (opts["stopping"], opts["patience"], opts["check_every"], opts["steps"]) == ("holdout", 1, 5, 60)
    assert "steps     per patch" in capsys.readouterr().out


def test_item_carries_processing_and_file_checksums(filled: Path) -> None:
    from dipfill.stac.item import file_checksum

    files = outputs(filled)
    raw = json.loads(files["item"].read_text())
    props = raw["properties"]
    assert props["processing:software"]["dipfill"] and props["processing:level"] == "L3"
    assert "fillnodata" in props["processing:lineage"] and props["processing:datetime"].endswith("Z")
    for key in ("filled", "qa", "quicklook", "patches"):
        asset = raw["assets"][key]
        assert asset["file:size"] == files[key].stat().st_size
        assert asset["file:checksum"] == file_checksum(files[key])
    assert any("processing" in e for e in raw["stac_extensions"]) and any("/file/" in e for e in raw["stac_extensions"])


def test_patch_records_are_strict_json(filled: Path) -> None:
    # fillnodata has no loss: the record says null, not NaN (which JSON.parse rejects)
    def refuse(name: str):
        raise ValueError(f"non-JSON constant {name}")

    path = next(filled.glob("*_patches.json"))
    records = json.loads(path.read_text(), parse_constant=refuse)
    assert records and all(r["final_loss"] is None for r in records if r["engine"] == "fillnodata")
