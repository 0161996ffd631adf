"""A run plans from a one-byte-per-pixel mask read in strips and blends in chunk-sized
blocks; both must equal the whole-scene computation they replace, on real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from dipfill.engines import make_engine
from dipfill.raster.masks import QA_ENGINE
from dipfill.pipeline.compose import assemble
from dipfill.pipeline.plan import batch_inputs, plan_fill, plan_from_mask
from dipfill.specs import FillOptions
from dipfill.pipeline.patchstore import PatchStore
from dipfill.raster.read import data_validity
from dipfill.raster.scene import open_scene, read_item
from dipfill.raster.scene_mask import scene_mask
from dipfill.pipeline.blocks import blend_block, block_tasks, merge_counts, preview_mosaic
from dipfill.pipeline.outputs import SceneProduct, cog_tasks, write_cog_task, write_outputs
from dipfill.raster.write import Preview, create_zarr_mosaic, write_mosaic_block
from tests._data import DATA
from tests.test_profiles import s2_item_with_local_hrefs

ITEMS = DATA / "arg25_menindee" / "stac" / "ga-arg25-nbar"


def arg25_item(date: str = "20100116") -> dict:
    path = next(ITEMS.glob(f"*{date}*/*.json"))
    item = json.loads(path.read_text())
    item["links"] = [{"rel": "self", "href": str(path)}]
    return item


@pytest.mark.parametrize("rows", [64, 100, 512])
def test_strip_mask_equals_whole_scene_state_footprint_from_data(rows: int) -> None:
    source = open_scene(arg25_item())
    whole = source.read()
    mask = scene_mask(source, rows=rows)
    np.testing.assert_array_equal(mask.state, whole.state)
    np.testing.assert_array_equal(mask.nvalid, whole.valid.sum(axis=0))
    assert mask.dtype == whole.data.dtype and mask.bands == 3
    assert (mask.state == 2).any() and (mask.state == 1).any()  # gaps and observed: not trivial


def test_strip_mask_equals_whole_scene_state_footprint_from_qa(tmp_path: Path) -> None:
    """Sentinel-2 SCL decides the footprint per pixel (needs ../shared/data)."""
    item = json.loads(s2_item_with_local_hrefs(tmp_path, relative=False).read_text())
    source = open_scene(item, bands=["red", "nir", "swir16"], mask="clouds")  # the bands with local files
    whole = source.read()
    mask = scene_mask(source, rows=300)
    np.testing.assert_array_equal(mask.state, whole.state)
    np.testing.assert_array_equal(mask.nvalid, whole.valid.sum(axis=0))
    # not trivial: the SCL clouds are gaps (4 % of the scene), the rest observed
    assert 0.03 < (mask.state == 2).mean() < 0.05 and (mask.state == 1).any()


def test_the_mask_pass_copy_reads_as_the_source_and_is_dropped_without_room(tmp_path: Path, monkeypatch) -> None:
    """The pixel copy a run's mask pass keeps (raster.pixel_cache): every window read from
    it equals the source's (bands and per-band validity, QA-decoded for Sentinel-2's SCL);
    a copy of another run (other token) is never read; and with too little free disk the
    mask is made without a copy and nothing is left behind. Needs ../shared/data."""
    import shutil
    from collections import namedtuple

    from dipfill.raster import pixel_cache
    from dipfill.raster.pixel_cache import CachedScene, PixelCache

    item = json.loads(s2_item_with_local_hrefs(tmp_path, relative=False).read_text())
    source = open_scene(item, bands=["red", "nir", "swir16"], mask="clouds")
    mask = scene_mask(source, rows=300, cache=tmp_path / "copy")
    assert mask.pixels is not None and mask.pixels.usable()
    np.testing.assert_array_equal(mask.state, scene_mask(source, rows=512).state)
    cached = CachedScene(source, mask.pixels)
    rng = np.random.default_rng(0)
    height, width = source.shape
    gaps = np.argwhere(mask.state == 2)
    for y, x in gaps[rng.choice(len(gaps), 4, replace=False)]:  # windows around cloud pixels
        r0, c0 = int(min(max(y - 100, 0), height - 200)), int(min(max(x - 75, 0), width - 150))
        span = ((r0, r0 + 200), (c0, c0 + 150))
        (d1, v1), (d2, v2) = cached.read_pixels(span), source.read_pixels(span)
        assert d1.dtype == d2.dtype and np.array_equal(d1, d2) and np.array_equal(v1, v2)
        assert 0 < v1.mean() < 1  # QA-masked pixels in the windows: not trivial
    other = PixelCache(mask.pixels.path, "another run", mask.pixels.shape, mask.pixels.dtype)
    assert not other.usable()
    mask.pixels.remove()
    assert not (tmp_path / "copy").exists() and not mask.pixels.usable()

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(pixel_cache.shutil, "disk_usage", lambda path: Usage(1, 1, 1024))
    small = scene_mask(source, rows=300, cache=tmp_path / "copy")
    assert small.pixels is None and not (tmp_path / "copy").exists()
    np.testing.assert_array_equal(small.state, mask.state)


def test_plan_from_mask_equals_plan_from_validity() -> None:
    scene = read_item(arg25_item("20100201"))
    opts = FillOptions(patch=128, overlap=16, min_observed_fraction=0.4, batch_size=3)
    a = plan_fill(scene.valid, scene.footprint, opts)
    b = plan_from_mask(scene.state, scene.valid.sum(axis=0, dtype=np.uint8), 3, opts)
    assert a.batches == b.batches and any(x.fallback for x in a.batches) and any(not x.fallback for x in a.batches)


def test_blocks_blend_to_the_same_bytes_as_the_whole_scene(tmp_path: Path) -> None:
    """Windows of 128 px crossing 96-px blocks: the mosaic written block by block (one
    writer per chunk) equals one whole-scene ``assemble``, QA, counts and preview included."""
    item = arg25_item()
    source = open_scene(item)
    scene = source.read()
    nodata = source.nodata[0]
    opts = FillOptions(engine="fillnodata", patch=128, overlap=24, batch_size=4)
    plan = plan_fill(scene.valid, scene.footprint, opts)
    windows = plan.windows
    store = PatchStore.open(tmp_path / "patches.zarr", len(windows), 3, opts.patch, "x")
    engine = make_engine("fillnodata")
    results = {}
    for i, w in enumerate(windows):
        patches, observed, seeds = batch_inputs(scene.data, scene.valid, [w], 0)
        values = engine.fill(patches, observed, seeds=seeds).values[0]
        store.write(i, values)
        results[w.id] = (values, False)
    want, want_qa = assemble(scene.data, scene.valid, plan, results, nodata)

    mosaic = tmp_path / "mosaic.zarr"
    create_zarr_mosaic(mosaic, plan.shape, scene.data.dtype, source.grid, nodata=nodata,
                       band_names=list(source.band_names), attrs={}, chunk=96)
    # previews of every 11th pixel: 96 is no multiple of 11, so offsets carry across blocks
    tasks = block_tasks("s", source, plan, store.path, str(mosaic), nodata, 96, max_preview=50)
    assert len(tasks) == 36 and all(len(t.windows) < len(windows) for t in tasks)
    assert tasks[0].preview_step == 11
    parts = [blend_block(t) for t in reversed(tasks)]  # order of completion does not matter
    root = zarr.open_group(str(mosaic), mode="r")
    np.testing.assert_array_equal(root["bands"][...], want)
    np.testing.assert_array_equal(root["qa"][...], want_qa)
    assert (want != nodata).sum() > scene.valid.sum()  # something was filled
    counts = merge_counts([p.counts for p in parts])
    assert counts["filled"] == int((want_qa == QA_ENGINE).sum()) > 0
    got = preview_mosaic(parts)
    full = Preview.of_block(scene.data, want, scene.valid, data_validity(want, nodata), (0, 0), 11)
    for field in ("before", "after", "before_valid", "after_valid"):
        np.testing.assert_array_equal(getattr(got, field), getattr(full, field))
    assert got.before.shape == (3, 47, 47)

    # the band and QA COGs, written by workers from the mosaic (cog_tasks), are the files the
    # driver writes from the scene in memory (write_outputs), byte for byte
    product = SceneProduct(grid=source.grid, band_names=list(source.band_names), dtype=want.dtype, nodata=nodata,
                           sources=["s"], bands=want, qa=want_qa, footprint=scene.footprint, preview=got,
                           counts=counts, diagnostics={})
    driver = write_outputs(tmp_path / "driver", "s", product, opts, None, (0, 1, 2))
    (tmp_path / "workers").mkdir()
    cogs = cog_tasks(tmp_path / "workers", "s", product, opts, str(mosaic))
    assert [write_cog_task(t) for t in reversed(cogs)]
    assert sorted(Path(t.path).name for t in cogs) == sorted(Path(driver[k]).name for k in (*source.band_names, "qa"))
    for task in cogs:
        assert Path(task.path).read_bytes() == (tmp_path / "driver" / Path(task.path).name).read_bytes()


def test_mosaic_blocks_must_start_on_a_chunk(tmp_path: Path) -> None:
    source = open_scene(arg25_item())
    create_zarr_mosaic(tmp_path / "m.zarr", (3, 512, 512), np.int16, source.grid, nodata=-999,
                       band_names=["a", "b", "c"], attrs={}, chunk=128)
    with pytest.raises(ValueError, match="chunk boundary"):
        write_mosaic_block(tmp_path / "m.zarr", (0, 100), np.zeros((3, 28, 128), np.int16),
                           np.zeros((28, 128), np.uint8))


def test_worker_reads_of_a_batch_equal_the_whole_scene_windows(tmp_path: Path) -> None:
    """An engine worker reads each row of a batch's windows once (their union) and cuts the
    windows from it: the patches it fits equal those cut from the whole scene."""
    from dipfill.pipeline.plan import patch_seed
    from dipfill.pipeline.executor import EngineWorker, FitTask

    source = open_scene(arg25_item("20100201"))
    scene = source.read()
    opts = FillOptions(engine="fillnodata", patch=128, overlap=16, batch_size=6)
    plan = plan_fill(scene.valid, scene.footprint, opts, with_fallback=False)
    batch = next(b for b in plan.batches if len({w.row_off for w in b.windows}) == 2)  # spans two rows
    store = PatchStore.open(tmp_path / "p.zarr", len(batch.windows), 3, opts.patch, "x")
    worker = EngineWorker("fillnodata", {}, "none", None)
    task = FitTask("s", source, store.path, batch.index, False, batch.windows, tuple(range(len(batch.windows))),
                   tuple(patch_seed(0, w) for w in batch.windows))
    worker.fit(task)
    patches, observed, seeds = batch_inputs(scene.data, scene.valid, batch.windows, 0)
    want = make_engine("fillnodata").fill(patches, observed, seeds=seeds).values
    assert np.isfinite(want).all() and (~observed).any()  # gaps, and all of them filled
    for i, w in enumerate(batch.windows):
        np.testing.assert_array_equal(store.read(i, w.height, w.width), want[i])
