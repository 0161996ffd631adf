"""Every failure path a user can hit, end to end through the command line (issue 12, item 8):
one line on stderr naming the file or value (and the fix), a non-zero exit, no traceback and
nothing visible in --out. Each case is built from the committed real ARG25 crop. Degenerate
but valid inputs (1 x 1, 3 x 700) are not errors: they are filled, observed pixels bit-exact.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import rasterio

from dipfill.cli.main import main
from dipfill.engines.holdout import stripe_holdout
from tests._data import ARG25_FEB, ARG25_JAN, DATA

CATALOG = DATA / "arg25_menindee" / "stac" / "catalog.json"


def _profile(**overrides) -> dict:
    with rasterio.open(ARG25_JAN) as src:
        profile = {**src.profile, **overrides}
    for key in ("blockxsize", "blockysize", "tiled", "compress", "interleave"):
        profile.pop(key, None)
    return profile


def _write(path: Path, data: np.ndarray, **overrides) -> Path:
    profile = _profile(**overrides)
    profile.update(count=data.shape[0], height=data.shape[1], width=data.shape[2])
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _jan(rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
    with rasterio.open(ARG25_JAN) as src:
        return src.read()[:, rows, cols]


# --- the cases: each makes its input files in a directory and returns the command line ---------


def truncated(d: Path) -> list[str]:
    cut = d / "cut.tif"
    cut.write_bytes(ARG25_JAN.read_bytes()[: ARG25_JAN.stat().st_size // 2])
    return ["fill", str(cut)]


def not_a_raster(d: Path) -> list[str]:
    (d / "scene.tif").write_text("<html>403 Forbidden</html>\n")
    return ["fill", str(d / "scene.tif")]


def empty_file(d: Path) -> list[str]:
    (d / "empty.tif").write_bytes(b"")
    return ["fill", str(d / "empty.tif")]


def bands_on_other_grids(d: Path) -> list[str]:
    data = _jan()
    shifted = _profile()["transform"] @ rasterio.Affine.translation(1, 0)
    return ["fill", str(_write(d / "b3.tif", data[:1])), str(_write(d / "b4.tif", data[1:2], transform=shifted))]


def mask_on_another_grid(d: Path) -> list[str]:
    shifted = _profile()["transform"] @ rasterio.Affine.translation(3, 0)
    mask = _write(d / "clouds.tif", np.zeros((1, 512, 512), np.uint8), dtype="uint8", nodata=None, transform=shifted)
    return ["fill", str(ARG25_JAN), "--mask", str(mask)]


def all_nodata(d: Path) -> list[str]:
    return ["fill", str(_write(d / "blank.tif", np.full((3, 64, 64), -999, np.int16)))]


def catalog_without_the_collection(d: Path) -> list[str]:
    return ["run", "--stac", str(CATALOG), "--collection", "ga-arg25-nbar-typo"]


def guide_collection_unknown(d: Path) -> list[str]:
    return ["run", "--stac", str(CATALOG), "--engine", "guided", "--guides", "auto",
            "--guide-collection", "sentinel-1-grd"]


def bad_option_value(d: Path) -> list[str]:
    return ["fill", str(ARG25_JAN), "--overlap", "300"]


def bad_choice(d: Path) -> list[str]:
    return ["fill", str(ARG25_JAN), "--engine", "kriging"]


def out_is_a_file(d: Path) -> list[str]:
    return ["fill", str(ARG25_JAN)]  # --out made a file by the test below


def missing_guide(d: Path) -> list[str]:
    return ["fill", str(ARG25_JAN), "--engine", "guided", "--guide", str(d / "no-such-guide.tif")]


def missing_region(d: Path) -> list[str]:
    return ["run", "--stac", str(CATALOG), "--mode", "anonymise", "--region", str(d / "no-such-site.geojson")]


CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    # name: (the case, what the one line must name)
    "truncated raster": (truncated, "cut.tif"),
    "not a raster": (not_a_raster, "scene.tif"),
    "empty file": (empty_file, "empty.tif"),
    "bands on other grids": (bands_on_other_grids, "b4.tif"),
    "mask on another grid": (mask_on_another_grid, "clouds.tif"),
    "all nodata": (all_nodata, "blank.tif"),
    "unknown collection": (catalog_without_the_collection, "ga-arg25-nbar-typo"),
    "unknown guide collection": (guide_collection_unknown, "sentinel-1-grd"),
    "option value": (bad_option_value, "300"),
    "option choice": (bad_choice, "kriging"),
    "out is a file": (out_is_a_file, "out"),
    "missing guide": (missing_guide, "no-such-guide.tif"),
    "missing region": (missing_region, "no-such-site.geojson"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_non_zero_and_leaves_nothing(name: str, tmp_path: Path, capsys) -> None:
    make, named = CASES[name]
    inputs = tmp_path / "in"
    inputs.mkdir()
    args = make(inputs)
    out = tmp_path / "out"
    if name == "out is a file":
        out.write_text("keep me\n")
    capsys.readouterr()
    engine = [] if "--engine" in args else ["--engine", "fillnodata"]  # never an expensive fit
    rc = main([*args, "--out", str(out), *engine])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc != 0, f"{name}: exit 0\n{err}"
    assert "Traceback" not in err and len(lines) == 1, f"{name}: not one line:\n{err}"
    assert named in lines[0] and "error" in lines[0], f"{name}: the line does not name {named!r}: {lines[0]}"
    if name == "out is a file":
        assert out.read_text() == "keep me\n"
    else:
        assert not out.exists() or not any(out.rglob("*")), f"{name}: left {sorted(out.rglob('*'))}"


# --- degenerate sizes are valid input: filled, observed pixels bit-exact -----------------------


def _tiled(path: Path, h: int, w: int) -> np.ndarray:
    """An ``h x w`` cut of the real crop tiled 2 x 2 (so 700 px fit), from row 100, column 5."""
    with rasterio.open(path) as src:
        return np.ascontiguousarray(np.tile(src.read(), (1, 2, 2))[:, 100 : 100 + h, 5 : 5 + w])


_SHAPES = [(1, 1), (3, 700), (700, 3)]


@pytest.mark.parametrize("engine, shape", [
    *[("fillnodata", s) for s in _SHAPES],
    *[("guided", s) for s in _SHAPES],  # its judge holds out gap-shaped pieces, as DIP does
])
def test_degenerate_sizes_are_filled(shape: tuple[int, int], engine: str, tmp_path: Path) -> None:
    h, w = shape
    data = _tiled(ARG25_JAN, h, w)
    if h * w > 1:
        data[:, :, ::3] = -999  # one-pixel stripes every third column (rows for 700 x 3)
        if w == 3:
            data = _tiled(ARG25_JAN, h, w)
            data[:, ::3, :] = -999
    path = _write(tmp_path / "strip.tif", data)
    extra: tuple[str, ...] = ()
    if engine == "guided":  # the other date, cut the same way onto the same grid
        extra = ("--guide", str(_write(tmp_path / "guide.tif", _tiled(ARG25_FEB, h, w))))
    out = tmp_path / "out"
    rc = main(["fill", str(path), "--out", str(out), "--engine", engine, "--footprint", "all", *extra])
    assert rc == 0
    with rasterio.open(next(out.glob("*_filled.*"))) as f:
        filled = f.read()
    observed = (data != -999).all(axis=0)
    assert filled.shape == data.shape and observed.any()
    assert np.array_equal(filled[:, observed], data[:, observed])  # bit-exact
    assert (filled != -999).all(), f"{engine} left gaps in a {h} x {w} raster"


@pytest.mark.parametrize("shape", [(3, 32), (32, 3), (1, 32)])
def test_held_out_pieces_fit_patches_thinner_than_the_shifts(shape: tuple[int, int]) -> None:
    """DIP's stopping and blend hold out gap-shaped pieces by shifting the gap mask up to 32 px:
    an edge patch 3 rows high once made that shift a broadcasting traceback."""
    observed = np.ones(shape, bool)
    observed[:, ::3] = False
    held = stripe_holdout(observed, 0.2, np.random.default_rng(0))
    assert held.shape == shape and not (held & ~observed).any() and held.any()
