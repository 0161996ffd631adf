"""Bad input: a clear message naming the file, exit 1, and no output left behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from dipfill.cli.main import main
from dipfill.raster.masks import QA_ENGINE, QA_OBSERVED
from tests._data import ARG25_JAN


def fill(tmp_path: Path, *inputs: object, extra: tuple[str, ...] = ()) -> tuple[int, Path]:
    out = tmp_path / "out"
    rc = main(["fill", *map(str, inputs), "--out", str(out), "--engine", "fillnodata", *extra])
    return rc, out


def write(path: Path, data: np.ndarray, **overrides) -> Path:
    with rasterio.open(ARG25_JAN) as src:
        profile = {**src.profile, **overrides}
    profile.update(count=data.shape[0], height=data.shape[1], width=data.shape[2])
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_missing_file(tmp_path: Path, capsys) -> None:
    rc, out = fill(tmp_path, tmp_path / "nope.tif")
    assert rc == 1 and not out.exists()
    assert "nope.tif: no such file" in capsys.readouterr().err


def test_not_a_raster(tmp_path: Path, capsys) -> None:
    bogus = tmp_path / "notes.tif"
    bogus.write_text("this is not a raster\n")
    rc, out = fill(tmp_path, bogus)
    assert rc == 1 and not out.exists()
    err = capsys.readouterr().err
    assert "notes.tif" in err and "not a raster" in err


def test_all_nodata(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "empty.tif", np.full((3, 64, 64), -999, dtype=np.int16))
    rc, out = fill(tmp_path, path)
    assert rc == 1 and not out.exists()
    err = capsys.readouterr().err
    assert "empty.tif" in err and "nodata" in err


def test_mismatched_grids_name_the_file_and_the_difference(tmp_path: Path, capsys) -> None:
    with rasterio.open(ARG25_JAN) as src:
        band = src.read(1)[None]
        transform = src.transform
    a = write(tmp_path / "b3.tif", band)
    b = write(tmp_path / "b4.tif", band, transform=transform * rasterio.Affine.translation(1, 0))
    c = write(tmp_path / "b5.tif", band[:, :500, :])
    rc, out = fill(tmp_path, a, b)
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert "b4.tif: transform differs" in err and "b3.tif" in err
    rc, out = fill(tmp_path, a, c)
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert "b5.tif: size differs: 512x500 vs 512x512" in err


def test_existing_output_dir_is_left_as_it_was_on_error(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    rc, _ = fill(tmp_path, tmp_path / "nope.tif")
    assert rc == 1 and [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "x"
    assert "nope.tif: no such file" in capsys.readouterr().err


def test_raster_without_gaps_comes_back_unchanged(tmp_path: Path) -> None:
    with rasterio.open(ARG25_JAN) as src:
        data = src.read()
    data = np.where(data == -999, 1500, data).astype(np.int16)
    path = write(tmp_path / "full.tif", data)
    rc, out = fill(tmp_path, path)
    assert rc == 0
    with rasterio.open(next(out.glob("*_filled.vrt"))) as f:
        assert np.array_equal(f.read(), data)
    with rasterio.open(next(out.glob("*_qa.tif"))) as q:
        assert (q.read(1) == QA_OBSERVED).all()
    # nothing to fill: no window went to an engine
    assert json.loads(next(out.glob("*_patches.json")).read_text()) == []
    counts = json.loads((out / "full-dipfill.json").read_text())["properties"]["dipfill:counts"]
    assert counts["observed"] == 512 * 512 and counts["filled"] == counts["outside"] == 0


def test_multi_file_input_stacks_single_band_files(tmp_path: Path) -> None:
    with rasterio.open(ARG25_JAN) as src:
        data = src.read()
    paths = [write(tmp_path / f"scene_B{b}.tif", data[i : i + 1]) for i, b in enumerate((3, 4, 5))]
    rc, out = fill(tmp_path, *paths)
    assert rc == 0
    with rasterio.open(next(out.glob("*_filled.vrt"))) as f:
        res = f.read()
        assert f.count == 3 and list(f.descriptions) == ["scene_B3", "scene_B4", "scene_B5"]
    # one COG per band, named after its band
    assert sorted(p.name for p in out.glob("*_scene_B*.tif")) == [f"scene_B-dipfill_scene_B{b}.tif" for b in (3, 4, 5)]
    valid = data != -999
    assert np.array_equal(res[valid], data[valid]) and (res != -999).all()
    assert (out / "scene_B-dipfill.json").exists()
    # the same three-state mask as the multi-band file: each file's nodata is its band's
    with rasterio.open(next(out.glob("*_qa.tif"))) as q:
        np.testing.assert_array_equal(q.read(1), np.where(valid.all(axis=0), QA_OBSERVED, QA_ENGINE))


@pytest.mark.parametrize("flags", [("--overlap", "300"), ("--patch", "0")])
def test_bad_options(tmp_path: Path, flags: tuple[str, str], capsys) -> None:
    rc, out = fill(tmp_path, ARG25_JAN, extra=flags)
    assert rc == 1 and not out.exists()
    err = capsys.readouterr().err
    assert f"{flags[0]} must be" in err and f"got {flags[1]}" in err  # names the flag and the value


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--engine", "dip", "--preset", "unet"), "unknown dip preset 'unet'"),
        (("--engine", "dip", "--dip", "padding=circular"), "padding must be one of"),
        (("--engine", "dip", "--dip", "steps"), "--dip takes KEY=VALUE"),
        (("--engine", "dip", "--steps", "0"), "steps must be >= 1"),
    ],
)
def test_bad_dip_options_fail_before_any_output(tmp_path: Path, flags, message, capsys) -> None:
    rc, out = fill(tmp_path, ARG25_JAN, extra=flags)
    assert rc == 1 and not out.exists()
    assert message in capsys.readouterr().err
