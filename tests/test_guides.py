"""Guides as inputs (issue 11 item 1): another date of the same ground, on any grid, read
onto the target grid with its own gaps kept out of the evidence, and through `dipfill fill`
to the output item. Real data: the committed ARG25 crops (January target, February guide)."""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject

from dipfill.cli.main import main
from dipfill.engines.base import check_batch
from dipfill.engines.classical import FillnodataEngine
from dipfill.errors import InputError, SceneReadError
from dipfill.raster.guides import GuideSource, open_guide, read_guides
from dipfill.raster.read import Grid, data_validity
from dipfill.specs import FillOptions
from dipfill.stac.item import config_hash
from tests._data import ARG25_FEB, ARG25_JAN

FULL = (slice(0, 512), slice(0, 512))


def grid_of(path: Path) -> Grid:
    with rasterio.open(path) as ds:
        return Grid(ds.crs, ds.transform, ds.width, ds.height)


def feb() -> tuple[np.ndarray, np.ndarray]:
    """The February crop (on January's grid) and its validity."""
    with rasterio.open(ARG25_FEB) as ds:
        data = ds.read()
    return data, data != -999


def write_reprojected(path: Path, crs: str, resolution: float, *, nodata: float = -999, dtype: str = "int16",
                      invalid_value: float | None = None) -> Path:
    """The February crop warped with GDAL to ``crs`` at ``resolution`` (tags kept), its
    nodata pixels holding ``invalid_value`` (default: the nodata value)."""
    with rasterio.open(ARG25_FEB) as src:
        transform, width, height = calculate_default_transform(
            src.crs, crs, src.width, src.height, *src.bounds, resolution=resolution)
        out = np.full((3, height, width), nodata, dtype)
        reproject(src.read().astype(dtype), out, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                  dst_crs=crs, src_nodata=-999, dst_nodata=nodata, resampling=Resampling.bilinear)
        tags, descriptions = src.tags(), src.descriptions
    if invalid_value is not None:
        out[out == nodata] = invalid_value
    profile = dict(driver="GTiff", dtype=dtype, count=3, width=width, height=height, crs=crs, transform=transform,
                   nodata=nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(out)
        dst.update_tags(**tags)
        dst.descriptions = descriptions
    return path


@pytest.fixture(scope="module")
def guide_4326(tmp_path_factory) -> Path:
    """February in lon/lat at 0.0004° (~40 × 44 m, vs the target's 25 m Albers)."""
    return write_reprojected(tmp_path_factory.mktemp("guide") / "feb_4326.tif", "EPSG:4326", 0.0004)


# ----------------------------------------------------------------------------- reading
def test_guide_on_another_crs_and_resolution_lands_on_the_target_grid(guide_4326: Path) -> None:
    """Warped back onto January's grid, the lon/lat guide matches February read on that grid
    directly: values close, and aligned (a one-pixel shift correlates worse)."""
    guide = open_guide(str(guide_4326), grid_of(ARG25_JAN))
    values, valid = read_guides([guide], FULL)
    assert values.shape == (3, 512, 512) and values.dtype == np.float32 and valid.dtype == bool
    truth, truth_valid = feb()
    assert 0.5 < valid.mean() < truth_valid.mean()  # its own stripes (grown by the kernel) stay gaps
    both = valid & truth_valid
    for b in range(3):
        x, y = values[b][both[b]], truth[b][both[b]].astype(np.float64)
        r = np.corrcoef(x, y)[0, 1]
        assert r > 0.95, (b, r)
        assert np.abs(x - y).mean() < 0.2 * y.std(), b
        shifted = both[b][:, 1:] & truth_valid[b][:, :-1]
        r1 = np.corrcoef(values[b][:, 1:][shifted], truth[b][:, :-1][shifted])[0, 1]
        assert r > r1 + 0.005, (b, r, r1)
    assert (values[~valid] == 0).all()
    assert guide.datetime == "2010-02-01" and guide.band_names[0] == "B3 red"


def test_guide_reads_do_not_depend_on_the_window(guide_4326: Path) -> None:
    """A pixel's guide value is the same whichever window it is read in (batches, resumed
    runs and `dipfill fill` vs `dipfill run` see the same bytes)."""
    guide = open_guide(str(guide_4326), grid_of(ARG25_JAN))
    whole, whole_valid = read_guides([guide], FULL)
    for window in (((100, 300), (37, 299)), (slice(255, 257), slice(0, 512)), ((500, 512), (3, 4))):
        part, part_valid = read_guides([guide], window)
        rows, cols = (w if isinstance(w, slice) else slice(*w) for w in window)
        np.testing.assert_array_equal(part, whole[:, rows, cols])
        np.testing.assert_array_equal(part_valid, whole_valid[:, rows, cols])


def test_guide_on_the_target_grid_is_read_bit_exact(tmp_path: Path) -> None:
    """A guide on the target's pixel lattice is not resampled: the same raster, or a cut of
    it whose origin is whole pixels away (pixels beyond it are not valid)."""
    truth, truth_valid = feb()
    values, valid = read_guides([open_guide(str(ARG25_FEB), grid_of(ARG25_JAN))], FULL)
    np.testing.assert_array_equal(valid, truth_valid)
    np.testing.assert_array_equal(values, np.where(truth_valid, truth, 0).astype(np.float32))

    window = ((100, 400), (50, 300))
    with rasterio.open(ARG25_FEB) as src:
        profile = {**src.profile, "height": 300, "width": 250, "transform": src.window_transform(window)}
        cut = src.read(window=window)
    with rasterio.open(tmp_path / "cut.tif", "w", **profile) as dst:
        dst.write(cut)
    values, valid = read_guides([open_guide(str(tmp_path / "cut.tif"), grid_of(ARG25_JAN))], FULL)
    inside = np.zeros((512, 512), bool)
    inside[100:400, 50:300] = True
    np.testing.assert_array_equal(valid, truth_valid & inside)
    np.testing.assert_array_equal(values, np.where(truth_valid & inside, truth, 0).astype(np.float32))


def test_gdal_warper_renormalises_over_nodata_but_a_guide_gap_is_never_evidence(tmp_path: Path) -> None:
    """GDAL's warper with a source nodata fills a target pixel from whichever of its kernel's
    source pixels are valid: next to a gap it gives a value made from one side. read_guides
    counts such a pixel as a gap, and never lets the gap's value (here 1e30) through."""
    from affine import Affine
    from rasterio.vrt import WarpedVRT

    src = np.arange(64, dtype=np.float32).reshape(8, 8) * 10
    src[3, 3] = 1e30
    path = tmp_path / "gap.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="float32", crs="EPSG:3577",
                       transform=Affine(10, 0, 1000, 0, -10, 2000), nodata=1e30) as dst:
        dst.write(src, 1)
    grid = Grid(rasterio.crs.CRS.from_epsg(3577), Affine(10, 0, 1005, 0, -10, 1995), 7, 7)  # half a pixel off
    with rasterio.open(path) as ds, WarpedVRT(ds, crs=grid.crs, transform=grid.transform, width=7, height=7,
                                              resampling=Resampling.bilinear, dtype="float32", nodata=np.nan) as vrt:
        gdal = vrt.read(1)
    # target (2, 3) sits on source pixels (2..3, 3..4): (3, 3) is the gap, GDAL averages the other three
    assert gdal[2, 3] == pytest.approx((src[2, 3] + src[2, 4] + src[3, 4]) / 3)
    values, valid = read_guides([open_guide(str(path), grid)], ((0, 7), (0, 7)))
    touched = np.zeros((7, 7), bool)
    touched[2:4, 2:4] = True  # the four target pixels whose kernels reach source (3, 3)
    np.testing.assert_array_equal(valid[0], ~touched)
    assert (values[0][touched] == 0).all() and values.max() < 1000
    # elsewhere the exact bilinear mean of the four source pixels
    assert values[0, 0, 0] == pytest.approx(src[0:2, 0:2].mean())


def test_guide_nodata_never_reaches_the_engine_even_when_warped(tmp_path: Path) -> None:
    """The February guide in UTM whose gaps hold 30000 (its declared nodata): no engine
    input comes near that value, and the guide's stripes stay gaps on the target grid."""
    path = write_reprojected(tmp_path / "feb_utm.tif", "EPSG:32754", 30.0, nodata=30000)
    with rasterio.open(path) as ds:
        assert (ds.read() == 30000).mean() > 0.2  # stripes and the rotated raster's corners
    values, valid = read_guides([open_guide(str(path), grid_of(ARG25_JAN))], FULL)
    _, truth_valid = feb()
    assert values.max() < 10000 and (values[~valid] == 0).all()
    assert 0.5 < valid.mean() < truth_valid.mean()


def test_nodata_override_and_nan(tmp_path: Path) -> None:
    """``nodata=`` replaces a file's missing nodata; NaN is never valid."""
    data, truth_valid = feb()
    floats = data.astype(np.float32)
    floats[0, :10] = np.nan
    with rasterio.open(ARG25_FEB) as src:
        profile = {**src.profile, "dtype": "float32", "nodata": None}
    with rasterio.open(tmp_path / "no_nodata.tif", "w", **profile) as dst:
        dst.write(floats)
    grid = grid_of(ARG25_JAN)
    _, valid = read_guides([open_guide(str(tmp_path / "no_nodata.tif"), grid)], FULL)
    np.testing.assert_array_equal(valid, np.isfinite(floats))  # -999 is a value to this file
    _, valid = read_guides([open_guide(str(tmp_path / "no_nodata.tif"), grid, nodata=-999)], FULL)
    np.testing.assert_array_equal(valid, truth_valid & np.isfinite(floats))


def test_guide_bands_pick_bands_and_guides_stack_in_order(guide_4326: Path) -> None:
    grid = grid_of(ARG25_JAN)
    truth, truth_valid = feb()
    picked = open_guide(str(ARG25_FEB), grid, bands=[3, 1])
    warped = open_guide(str(guide_4326), grid, bands=[2])
    values, valid = read_guides([picked, warped], ((0, 64), (0, 512)))
    assert values.shape == (3, 64, 512) and picked.count == 2
    np.testing.assert_array_equal(values[0], np.where(truth_valid[2, :64], truth[2, :64], 0))
    np.testing.assert_array_equal(values[1], np.where(truth_valid[0, :64], truth[0, :64], 0))
    alone, alone_valid = read_guides([open_guide(str(guide_4326), grid)], ((0, 64), (0, 512)))
    np.testing.assert_array_equal(values[2], alone[1])
    np.testing.assert_array_equal(valid[2], alone_valid[1])


def test_guide_source_pickles_without_an_open_dataset(guide_4326: Path) -> None:
    guide = open_guide(str(guide_4326), grid_of(ARG25_JAN), resampling="nearest")
    copy = pickle.loads(pickle.dumps(guide))
    assert copy == guide and hash(copy) == hash(guide) and isinstance(copy, GuideSource)
    a, b = read_guides([guide], ((0, 40), (0, 40))), read_guides([copy], ((0, 40), (0, 40)))
    np.testing.assert_array_equal(a[0], b[0])
    assert guide.record() == {"href": str(guide_4326), "datetime": "2010-02-01", "bands": [1, 2, 3],
                              "resampling": "nearest"}


@pytest.mark.parametrize("case, error, message", [
    ("missing", SceneReadError, "no such file"),
    ("text", SceneReadError, "not a raster GDAL can read"),
    ("band", InputError, "band 4 does not exist (it has 3 bands: 1..3); fix --guide-bands"),
    ("far", InputError, "does not overlap the target"),
    ("no_crs", InputError, "has no CRS"),
    ("resampling", InputError, "guide resampling must be one of"),
])
def test_open_guide_says_what_is_wrong(tmp_path: Path, case: str, error: type, message: str) -> None:
    path = tmp_path / f"{case}.tif"
    kwargs: dict = {}
    if case == "text":
        path.write_text("not a raster\n")
    elif case == "band":
        path, kwargs = ARG25_FEB, {"bands": [1, 4]}
    elif case in ("far", "no_crs"):
        with rasterio.open(ARG25_FEB) as src:
            profile = {**src.profile, "transform": src.transform * rasterio.Affine.translation(20000, 0)}
            if case == "no_crs":  # and 30 m pixels: not on the target lattice
                profile.update(crs=None, transform=src.transform * rasterio.Affine.scale(1.2))
            data = src.read()
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    elif case == "resampling":
        path, kwargs = ARG25_FEB, {"resampling": "mode"}
    with pytest.raises(error) as exc:
        open_guide(str(path), grid_of(ARG25_JAN), **kwargs)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert case == "resampling" or path.name in str(exc.value)


# ---------------------------------------------------------------------------- engines
def test_check_batch_validates_guides_and_classical_engines_ignore_them() -> None:
    rng = np.random.default_rng(0)
    patches = rng.random((2, 3, 16, 16)).astype(np.float32)
    observed = rng.random((2, 3, 16, 16)) > 0.3
    guides = rng.random((2, 4, 16, 16)).astype(np.float32)
    gobs = np.ones((2, 4, 16, 16), bool)
    check_batch(patches, observed, [1, 2], guides=guides, guide_observed=gobs, guide_bands=[3, 1])
    for kwargs, message in [
        (dict(guides=guides[:, :, :8]), "guides must be"),
        (dict(guides=guides), "without guide_observed"),
        (dict(guides=guides, guide_observed=gobs[:, :3]), "differs from guides shape"),
        (dict(guides=guides, guide_observed=gobs, guide_bands=[3, 2]), "summing to the 4 guide channels"),
        (dict(guide_observed=gobs), "without guides"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_batch(patches, observed, [1, 2], **kwargs)
    engine = FillnodataEngine()
    assert engine.uses_guides is False
    plain = engine.fill(patches, observed, seeds=[1, 2]).values
    guided = engine.fill(patches, observed, seeds=[1, 2], guides=guides, guide_observed=gobs, guide_bands=[4]).values
    np.testing.assert_array_equal(plain, guided)


@dataclass(frozen=True)
class ArraySource:
    """What a SceneSource offers an engine worker, from arrays in memory."""

    data: np.ndarray
    valid: np.ndarray

    def read_pixels(self, window):
        (r0, r1), (c0, c1) = window
        return self.data[:, r0:r1, c0:c1], self.valid[:, r0:r1, c0:c1]


class RecordingEngine:
    """A guide-using engine that records what it was given and fills with fillnodata."""

    name = "recording"
    uses_guides = True

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def fill(self, patches, observed, *, seeds, **guides):
        self.calls.append({"patches": patches.copy(), **guides})
        return FillnodataEngine().fill(patches, observed, seeds=seeds)


def test_the_engine_receives_the_guide_windows(tmp_path: Path, guide_4326: Path, monkeypatch) -> None:
    """Through `dipfill fill`, a guide-using engine gets, per window, exactly read_guides of
    that window (guides in order, guide_bands per guide), and nothing is passed to an
    engine that ignores guides (the fallback here)."""
    import dipfill.pipeline.fill as fill_module
    from dipfill.pipeline.plan import plan_fill

    recorder, fallback = RecordingEngine(), RecordingEngine()
    fallback.uses_guides = False
    monkeypatch.setattr(fill_module, "make_engine", lambda name, **kw: recorder if name == "fillnodata" else fallback)
    out = tmp_path / "out"
    args = ["--engine", "fillnodata", "--fallback", "telea", "--footprint", "all", "--patch", "128", "--overlap", "16",
            "--batch-size", "3", "--min-observed", "0.74"]
    rc = main(["fill", str(ARG25_JAN), "--out", str(out), *args, "--guide", str(guide_4326),
               "--guide", str(ARG25_FEB), "--guide-bands", "3,1"])
    assert rc == 0
    grid = grid_of(ARG25_JAN)
    guides = [open_guide(str(guide_4326), grid, bands=[3, 1]), open_guide(str(ARG25_FEB), grid, bands=[3, 1])]
    with rasterio.open(ARG25_JAN) as ds:
        valid = data_validity(ds.read(), ds.nodata)
    options = FillOptions(engine="fillnodata", fallback="telea", footprint="all", patch=128, overlap=16, batch_size=3,
                          min_observed_fraction=0.74)
    plan = plan_fill(valid, np.ones((512, 512), bool), options)
    primary = [b for b in plan.batches if not b.fallback]
    assert len(recorder.calls) == len(primary) > 1 and fallback.calls  # both engines ran
    for batch, call in zip(primary, recorder.calls):
        assert call["guide_bands"] == [2, 2]
        for i, w in enumerate(batch.windows):
            values, ok = read_guides(guides, w.slices)
            np.testing.assert_array_equal(call["guides"][i], values)
            np.testing.assert_array_equal(call["guide_observed"][i], ok)
    assert all(set(call) == {"patches"} for call in fallback.calls)


def test_engine_worker_reads_guide_windows_with_the_target(tmp_path: Path, guide_4326: Path, monkeypatch) -> None:
    """A FitTask names its guides; EngineWorker.fit reads them with the same union reads as
    the target and gives the engine read_guides of each window."""
    import dipfill.pipeline.executor as executor
    from dipfill.pipeline.executor import EngineWorker, FitTask
    from dipfill.pipeline.patchstore import PatchStore
    from dipfill.pipeline.plan import patch_seed, plan_fill

    recorder = RecordingEngine()
    monkeypatch.setattr(executor, "make_engine", lambda name, **kw: recorder)
    with rasterio.open(ARG25_JAN) as ds:
        data = ds.read()
    valid = data != -999

    opts = FillOptions(engine="fillnodata", patch=128, overlap=16, batch_size=6)
    plan = plan_fill(valid, np.ones((512, 512), bool), opts, with_fallback=False)
    batch = next(b for b in plan.batches if len({w.row_off for w in b.windows}) == 2)  # spans two rows
    guide = open_guide(str(guide_4326), grid_of(ARG25_JAN))
    store = PatchStore.open(tmp_path / "p.zarr", len(batch.windows), 3, opts.patch, "x")
    task = FitTask("s", ArraySource(data, valid), store.path, batch.index, False, batch.windows,
                   tuple(range(len(batch.windows))), tuple(patch_seed(0, w) for w in batch.windows), guides=(guide,))
    EngineWorker("fillnodata", {}, "none", None).fit(pickle.loads(pickle.dumps(task)))  # as a Ray actor gets it
    (call,) = recorder.calls
    assert call["guide_bands"] == [3]
    for i, w in enumerate(batch.windows):
        values, ok = read_guides([guide], w.slices)
        np.testing.assert_array_equal(call["guides"][i], values)
        np.testing.assert_array_equal(call["guide_observed"][i], ok)
        np.testing.assert_array_equal(call["patches"][i], np.where(valid[:, w.slices[0], w.slices[1]],
                                                                    data[:, w.slices[0], w.slices[1]], 0))


# --------------------------------------------------------------------------------- CLI
def collar_input(tmp_path: Path) -> Path:
    """The January crop with a tilted no-data collar (pixels outside the footprint)."""
    with rasterio.open(ARG25_JAN) as src:
        data, profile = src.read(), src.profile
    rows, cols = np.mgrid[0:512, 0:512]
    data[:, rows > 2 * cols + 200] = -999
    path = tmp_path / "LS7_ETM_095_082_20100116_collar.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def item_of(out: Path) -> dict:
    return json.loads(next(p for p in out.glob("*-dipfill.json")).read_text())


def test_fill_with_a_guide_end_to_end(tmp_path: Path, guide_4326: Path, caplog) -> None:
    """`dipfill fill --guide` with fillnodata (which ignores guides, and says so once):
    observed pixels bit-exact, outside pixels nodata, the same bytes as without the guide;
    the item lists the guide and its config hash is not the unguided one, which is unchanged."""
    source = collar_input(tmp_path)
    common = ["fill", str(source), "--engine", "fillnodata", "--patch", "256", "--overlap", "32"]
    with caplog.at_level(logging.WARNING):
        assert main([*common, "--out", str(tmp_path / "guided"), "--guide", str(guide_4326),
                     "--guide-bands", "1,2"]) == 0
    warnings = [r.getMessage() for r in caplog.records if "ignores guides" in r.getMessage()]
    assert len(warnings) == 1 and "'fillnodata'" in warnings[0]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0

    with rasterio.open(source) as src:
        before = src.read()
    valid = before != -999
    filled = {}
    for name in ("guided", "plain"):
        with rasterio.open(next((tmp_path / name).glob("*_filled.vrt"))) as ds:
            filled[name] = ds.read()
        with rasterio.open(next((tmp_path / name).glob("*_qa.tif"))) as ds:
            outside = ds.read(1) == 0
        assert outside.any() and (filled[name][:, outside] == -999).all()
    np.testing.assert_array_equal(filled["guided"][valid], before[valid])
    np.testing.assert_array_equal(filled["guided"], filled["plain"])

    guided, plain = item_of(tmp_path / "guided"), item_of(tmp_path / "plain")
    links = [ln for ln in guided["links"] if ln["rel"] == "derived_from"]
    assert [ln["href"] for ln in links] == [str(guide_4326)]
    assert guided["properties"]["dipfill:guides"] == [
        {"href": str(guide_4326), "datetime": "2010-02-01", "bands": [1, 2], "resampling": "bilinear"}]
    config = guided["properties"]["dipfill:config"]
    assert config["guides"] == [str(guide_4326)] and config["guide_bands"] == [1, 2]
    assert config["guide_resampling"] == "bilinear"
    assert guided["properties"]["dipfill:config_hash"] != plain["properties"]["dipfill:config_hash"]
    assert "dipfill:guides" not in plain["properties"] and "guides" not in plain["properties"]["dipfill:config"]
    assert not [ln for ln in plain["links"] if ln["rel"] == "derived_from"]
    unguided = FillOptions(engine="fillnodata")
    assert plain["properties"]["dipfill:config_hash"] == config_hash(unguided.hashable_dict())


def test_configs_without_guides_keep_their_hash() -> None:
    """FillOptions grew guide fields; a config without guides hashes exactly as before them."""
    before = {"engine": "dip", "engine_options": {}, "fallback": "fillnodata", "min_observed_fraction": 0.05,
              "patch": 256, "overlap": 32, "seed": 0, "batch_size": 4, "footprint": "auto", "collar_closing": 31}
    assert FillOptions().hashable_dict() == before
    assert config_hash(FillOptions().hashable_dict()) == (
        "70ae18a7a4364220f31ba873328785bbafa065b7645c2e0281be7b04430c71d8")
    assert config_hash(FillOptions(engine="fillnodata").hashable_dict()) == (
        "0137d8486870577fbb97e3d6a442070b1af4a573e783dfca8f405b37be21bb34")
    guided = FillOptions(guides=["b.tif"])
    assert config_hash(guided.hashable_dict()) != config_hash(FillOptions().hashable_dict())
    assert config_hash(FillOptions(guides=["b.tif"], guide_bands="1").hashable_dict()) != config_hash(
        guided.hashable_dict())
    assert FillOptions(guides="b.tif", guide_bands=[2, "3"]).guide_bands == (2, 3)
    with pytest.raises(InputError, match="--guide-bands must be 1-based"):
        FillOptions(guide_bands="0,1")
    with pytest.raises(InputError, match="--guide-resampling must be one of"):
        FillOptions(guide_resampling="mode")


@pytest.mark.parametrize("case, message", [
    ("missing", "no_such_guide.tif: no such file"),
    ("band", "band 7 does not exist"),
    ("far", "does not overlap the target"),
])
def test_bad_guide_is_one_line_exit_1_and_no_output(tmp_path: Path, case: str, message: str, capsys) -> None:
    guide, extra = str(tmp_path / "no_such_guide.tif"), []
    if case == "band":
        guide, extra = str(ARG25_FEB), ["--guide-bands", "1,7"]
    elif case == "far":
        with rasterio.open(ARG25_FEB) as src:
            profile = {**src.profile, "transform": src.transform * rasterio.Affine.translation(0, 9000)}
            data = src.read()
        guide = str(tmp_path / "elsewhere.tif")
        with rasterio.open(guide, "w", **profile) as dst:
            dst.write(data)
    out = tmp_path / "out"
    rc = main(["fill", str(ARG25_JAN), "--out", str(out), "--engine", "fillnodata", "--guide", guide, *extra])
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_a_stac_guide_item_never_gives_its_clouds_as_evidence() -> None:
    """A guide found through STAC is read with its own cloud mask: the real Landsat 8 scene
    whose QA_PIXEL flags every valid pixel as cloud (cloud cover 99.94 %) gives no guide
    pixel at all, although its bands have data almost everywhere inside the scene."""
    import json

    from dipfill.raster.guides import open_item_guide
    from dipfill.raster.scene import open_scene
    from dipfill.stac.profiles import LANDSAT_C2_L2
    from tests._data import shared_file

    prefix = "LC08_L2SP_001062_20201031_20201106_02_T2_"
    item_path = shared_file("stac/LC08_L2SP_001062_20201031_20201106_02_T2_SR_stac.json")
    folder = shared_file(f"landsat8_clouds/riotilerpds_LC08_L2SP_001062_20201031_600m_cloudy/{prefix}QA_PIXEL.TIF").parent
    item = json.loads(item_path.read_text())
    for key in item["assets"]:
        if key.endswith(".TIF"):
            item["assets"][key]["href"] = str(folder / f"{prefix}{key}")
    item["collection"] = LANDSAT_C2_L2.collections[0]
    bands = ["SR_B4.TIF", "SR_B5.TIF"]
    target = open_scene(item, bands=bands)  # stands in for a target scene on the same grid
    guide = open_item_guide(item, target.grid, bands=bands)
    assert guide.scene.mask == "clouds" and guide.count == 2
    values, valid = read_guides([guide], ((0, target.grid.height), (0, target.grid.width)))
    data, data_valid = open_scene(item, bands=bands, mask="fill").read_pixels()
    assert data_valid.mean() > 0.5  # the bands have data ...
    assert not valid.any() and not values.any()  # ... and all of it is cloud: no evidence


# ------------------------------------------------------------------------- guide masks
#: The mask's pieces in lon/lat: the file covers the west of the target only; a block of
#: gaps (1 in its north half, 7 in its south: any non-zero marks a gap) with a nodata strip
#: across it (nodata leaves the guide as it is).
MASK_WEST, MASK_EAST, MASK_SOUTH, MASK_NORTH = 142.02, 142.12, -32.41, -32.26
BLOCK_LON, BLOCK_LAT, NODATA_LAT = (142.06, 142.09), (-32.345, -32.305), (-32.332, -32.322)


def write_guide_mask(path: Path, *, west: float = MASK_WEST, east: float = MASK_EAST) -> Path:
    """A uint8 cloud mask in EPSG:4326 at 0.0005° (~47 × 55 m, vs the target's 25 m Albers)."""
    res = 0.0005
    width, height = round((east - west) / res), round((MASK_NORTH - MASK_SOUTH) / res)
    transform = rasterio.Affine(res, 0, west, 0, -res, MASK_NORTH)
    lon = west + (np.arange(width) + 0.5) * res
    lat = MASK_NORTH - (np.arange(height) + 0.5) * res
    data = np.zeros((height, width), np.uint8)
    inside = ((BLOCK_LAT[0] < lat) & (lat < BLOCK_LAT[1]))[:, None] & ((BLOCK_LON[0] < lon) & (lon < BLOCK_LON[1]))
    data[inside] = np.where(lat < sum(BLOCK_LAT) / 2, 7, 1)[:, None].repeat(width, 1)[inside]
    data[((NODATA_LAT[0] < lat) & (lat < NODATA_LAT[1]))[:, None] & inside] = 255
    with rasterio.open(path, "w", driver="GTiff", dtype="uint8", count=1, width=width, height=height,
                       crs="EPSG:4326", transform=transform, nodata=255) as dst:
        dst.write(data, 1)
    return path


def mask_on(raster: Path, mask: Path) -> np.ndarray:
    """The mask's gaps on ``raster``'s own grid: non-zero where the mask is valid (read as a
    one-band nearest guide of that grid)."""
    with rasterio.open(raster) as ds:
        shape = ds.shape
    flags, flagged = read_guides([open_guide(str(mask), grid_of(raster), bands=[1], resampling="nearest")],
                                 ((0, shape[0]), (0, shape[1])))
    return flagged[0] & (flags[0] != 0)


def with_holes(raster: Path, holes: np.ndarray, path: Path) -> Path:
    """A copy of ``raster`` whose pixels under ``holes`` are its nodata: the guide absent there."""
    with rasterio.open(raster) as src:
        data, profile, tags, descriptions = src.read(), src.profile, src.tags(), src.descriptions
    data[:, holes] = profile["nodata"]
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**tags)
        dst.descriptions = descriptions
    return path


@pytest.fixture(scope="module")
def guide_mask(tmp_path_factory) -> Path:
    return write_guide_mask(tmp_path_factory.mktemp("mask") / "feb_clouds_4326.tif")


def test_a_guide_mask_on_another_crs_makes_its_pixels_gaps(guide_mask: Path) -> None:
    """February (on January's lattice) with a lon/lat cloud mask of another resolution: the
    block's guide pixels are not valid and read as 0; the mask's nodata strip, the pixels
    outside the mask file and the mask's zeros leave the guide exactly as it is. Checked
    against the mask warped independently (rasterio, nearest), away from its edges."""
    from scipy import ndimage

    grid = grid_of(ARG25_JAN)
    plain = open_guide(str(ARG25_FEB), grid)
    masked = open_guide(str(ARG25_FEB), grid, mask=str(guide_mask))
    assert masked.record() == {**plain.record(), "mask": str(guide_mask)}
    assert masked.mask.bands == (1,) and masked.mask.resampling == "nearest"
    values, valid = read_guides([masked], FULL)
    before, before_valid = read_guides([plain], FULL)

    with rasterio.open(guide_mask) as src:
        flags = np.full((512, 512), 254, np.uint8)  # 254: outside the mask file
        reproject(src.read(1), flags, src_transform=src.transform, src_crs=src.crs, dst_transform=grid.transform,
                  dst_crs=grid.crs, src_nodata=253, dst_nodata=254, resampling=Resampling.nearest)
    gap, kept = np.isin(flags, (1, 7)), np.isin(flags, (0, 254, 255))
    assert gap.mean() > 0.05 and (flags == 254).mean() > 0.2 and (flags == 255).mean() > 0.01
    assert (flags == 7).any() and (flags == 1).any()
    inner = ndimage.binary_erosion(gap, iterations=2)
    clear = ndimage.binary_erosion(kept, iterations=2)
    assert not valid[:, inner].any() and not values[:, inner].any() and before_valid[:, inner].mean() > 0.5
    np.testing.assert_array_equal(valid[:, clear], before_valid[:, clear])
    np.testing.assert_array_equal(values[:, clear], before[:, clear])
    # exactly: the guide pixels the mask covers are gaps, as if the guide had nodata there
    np.testing.assert_array_equal(valid, before_valid & ~mask_on(ARG25_FEB, guide_mask)[None])
    np.testing.assert_array_equal(values, np.where(valid, before, 0))


def test_a_guide_mask_is_applied_on_the_guides_own_grid(tmp_path: Path, guide_4326: Path, guide_mask: Path) -> None:
    """A warped guide (lon/lat, ~40 m) with its mask: the same bytes as the guide with nodata
    under the mask's gaps on its own grid, so a target pixel whose kernel reaches a masked
    guide pixel is not valid either (the mask is not a second, nearest cut on the target
    grid, which would let a bilinear kernel average cloud into the pixels beside it)."""
    grid = grid_of(ARG25_JAN)
    holes = mask_on(guide_4326, guide_mask)
    assert holes.mean() > 0.03
    holed = with_holes(guide_4326, holes, tmp_path / "feb_4326_holed.tif")
    masked = read_guides([open_guide(str(guide_4326), grid, mask=str(guide_mask))], FULL)
    absent = read_guides([open_guide(str(holed), grid)], FULL)
    np.testing.assert_array_equal(masked[1], absent[1])
    np.testing.assert_array_equal(masked[0], absent[0])
    plain_valid = read_guides([open_guide(str(guide_4326), grid)], FULL)[1]
    assert (plain_valid & ~masked[1]).mean() > 0.03


@pytest.mark.parametrize("case, error, message", [
    ("text", SceneReadError, "guide mask: {path}: not a raster GDAL can read"),
    ("far", InputError, "guide mask {path}: does not overlap the target"),
    ("no_crs", InputError, "guide mask {path}: it has no CRS and is not on the pixel grid of guide"),
    ("missing", SceneReadError, "guide mask: {path}: no such file"),
])
def test_open_guide_says_what_is_wrong_with_its_mask(tmp_path: Path, guide_4326: Path, case: str, error: type,
                                                     message: str) -> None:
    path = tmp_path / f"mask_{case}.tif"
    if case == "text":
        path.write_text("clouds: none\n")
    elif case == "far":
        write_guide_mask(path, west=143.0, east=143.1)
    elif case == "no_crs":  # on the target's lattice (so placeable there) but not on the warped guide's
        with rasterio.open(ARG25_JAN) as src:
            profile = {**src.profile, "crs": None, "count": 1, "dtype": "uint8", "nodata": None}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.zeros((1, 512, 512), np.uint8))
    with pytest.raises(error) as exc:
        open_guide(str(guide_4326), grid_of(ARG25_JAN), mask=str(path))
    assert message.format(path=path) in str(exc.value) and "\n" not in str(exc.value)


def test_guide_masks_enter_the_config_hash_only_when_given() -> None:
    guided = FillOptions(guides=["a.tif", "b.tif"])
    assert "guide_masks" not in guided.hashable_dict() and "guide_masks" not in FillOptions().hashable_dict()
    assert config_hash(FillOptions(guides=["a.tif", "b.tif"], guide_masks=()).hashable_dict()) == config_hash(
        guided.hashable_dict())
    masked = FillOptions(guides=["a.tif", "b.tif"], guide_masks="m.tif")
    assert masked.guide_masks == ("m.tif",) and masked.hashable_dict()["guide_masks"] == ["m.tif"]
    assert config_hash(masked.hashable_dict()) != config_hash(guided.hashable_dict())
    with pytest.raises(InputError, match=r"--guide-mask n.tif: more --guide-mask \(2\) than --guide \(1\)"):
        FillOptions(guides=["a.tif"], guide_masks=["m.tif", "n.tif"])


def test_fill_with_a_guide_mask_end_to_end(tmp_path: Path, guide_mask: Path) -> None:
    """`dipfill fill --engine llhm --guide FEB --guide-mask CLOUDS`: the same bytes as the
    guide with nodata under its clouds (so the target's gaps under the block get llhm's
    no-guide fallback, fillnodata), not those of the unmasked guide there, and the unmasked
    guide's fill far from the block, beyond fillnodata's reach (the guide is still used
    elsewhere). The item records the mask; the config hashes it."""
    from scipy import ndimage

    holed = with_holes(ARG25_FEB, mask_on(ARG25_FEB, guide_mask), tmp_path / "LS7_ETM_095_082_20100201_holed.tif")
    common = ["fill", str(ARG25_JAN), "--engine", "llhm", "--patch", "256", "--overlap", "32"]
    runs = {"masked": ["--guide", str(ARG25_FEB), "--guide-mask", str(guide_mask)],
            "holed": ["--guide", str(holed)], "plain": ["--guide", str(ARG25_FEB)],
            "none": ["--engine", "fillnodata"]}
    filled = {}
    for name, extra in runs.items():
        assert main([*common, "--out", str(tmp_path / name), *extra]) == 0
        with rasterio.open(next((tmp_path / name).glob("*_filled.vrt"))) as ds:
            filled[name] = ds.read()
    with rasterio.open(ARG25_JAN) as src:
        gaps = src.read() == -999
    np.testing.assert_array_equal(filled["masked"], filled["holed"])

    under = mask_on(ARG25_FEB, guide_mask)[None] & gaps & feb()[1]  # target gaps under the guide's clouds
    far = ~ndimage.binary_dilation(mask_on(ARG25_FEB, guide_mask), iterations=160)[None] & gaps
    assert under.sum() > 1000 and far.sum() > 1000
    assert (filled["masked"][under] != filled["plain"][under]).mean() > 0.9
    np.testing.assert_array_equal(filled["masked"][far], filled["plain"][far])
    seen = far & feb()[1]  # where the guide observes the target's gaps, far from its clouds: it is used
    assert (filled["masked"][seen] != filled["none"][seen]).mean() > 0.9

    item = item_of(tmp_path / "masked")
    assert item["properties"]["dipfill:guides"] == [
        {"href": str(ARG25_FEB), "datetime": "2010-02-01", "bands": [1, 2, 3], "resampling": "bilinear",
         "mask": str(guide_mask)}]
    assert item["properties"]["dipfill:config"]["guide_masks"] == [str(guide_mask)]
    plain = item_of(tmp_path / "plain")
    assert "guide_masks" not in plain["properties"]["dipfill:config"]
    assert item["properties"]["dipfill:config_hash"] != plain["properties"]["dipfill:config_hash"]


@pytest.mark.parametrize("case, message", [
    ("more_masks", "--guide-mask {mask2}: more --guide-mask (2) than --guide (1)"),
    ("no_guide", "--guide-mask {mask}: more --guide-mask (1) than --guide (0)"),
    ("text", "guide mask: {text}: not a raster GDAL can read"),
])
def test_bad_guide_mask_is_one_line_exit_1_and_no_output(tmp_path: Path, guide_mask: Path, case: str, message: str,
                                                         capsys) -> None:
    text = tmp_path / "clouds.txt"
    text.write_text("0 0 1 1\n")
    mask2 = tmp_path / "second_mask.tif"
    extra = {"more_masks": ["--guide", str(ARG25_FEB), "--guide-mask", str(guide_mask), "--guide-mask", str(mask2)],
             "no_guide": ["--guide-mask", str(guide_mask)],
             "text": ["--guide", str(ARG25_FEB), "--guide-mask", str(text)]}[case]
    out = tmp_path / "out"
    rc = main(["fill", str(ARG25_JAN), "--out", str(out), "--engine", "llhm", *extra])
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert message.format(mask=guide_mask, mask2=mask2, text=text) in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_eval_guides_take_their_masks(tmp_path: Path, guide_mask: Path, capsys) -> None:
    """`dipfill eval --guide ... --guide-mask ...` opens the guides with the same checks:
    the mask reaches the guide (and the report's guide record); one mask too many is one line."""
    from types import SimpleNamespace

    from dipfill.eval.experiments import EvalOptions, _open_guides

    truth = SimpleNamespace(scene=SimpleNamespace(grid=grid_of(ARG25_JAN)), path=str(ARG25_JAN))
    (guide,) = _open_guides(EvalOptions(guides=(str(ARG25_FEB),), guide_masks=(str(guide_mask),)), truth)
    assert guide.record()["mask"] == str(guide_mask)
    out = tmp_path / "eval"
    rc = main(["eval", str(ARG25_JAN), str(ARG25_FEB), "--out", str(out), "--method", "fillnodata",
               "--guide", str(ARG25_FEB), "--guide-mask", str(guide_mask), "--guide-mask", str(guide_mask)])
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists() and "more --guide-mask (2) than --guide (1)" in err
    assert len(err.strip().splitlines()) == 1, err
