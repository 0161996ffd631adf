"""A run plans from a one-byte-per-pixel mask read in strips and blends in chunk-aligned
strips; both must equal the whole-scene computation they replace, on real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from dipfill.engines import make_engine
from dipfill.masks import QA_ENGINE
from dipfill.pipeline.fill import FillOptions, assemble, batch_inputs, plan_fill, plan_from_mask
from dipfill.pipeline.patchstore import PatchStore
from dipfill.pipeline.read import data_validity
from dipfill.pipeline.scene import open_scene, read_item, scene_mask
from dipfill.pipeline.strips import blend_strip, merge_counts, strip_tasks
from dipfill.pipeline.write import Preview, create_zarr_mosaic, write_mosaic_rows
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
    source = open_scene(item, mask="clouds")
    whole = source.read()
    mask = scene_mask(source, rows=300)
    np.testing.assert_array_equal(mask.state, whole.state)
    np.testing.assert_array_equal(mask.nvalid, whole.valid.sum(axis=0))


def test_plan_from_mask_equals_plan_from_validity() -> None:
    scene = read_item(arg25_item("20100201"))
    opts = FillOptions(patch=128, overlap=16, min_observed_fraction=0.4, batch_size=3)
    a = plan_fill(scene.valid, scene.footprint, opts)
    b = plan_from_mask(scene.state, scene.valid.sum(axis=0, dtype=np.uint8), 3, opts)
    assert a.batches == b.batches and any(x.fallback for x in a.batches) and any(not x.fallback for x in a.batches)


def test_strips_blend_to_the_same_bytes_as_the_whole_scene(tmp_path: Path) -> None:
    """Windows of 128 px crossing 96-row strips: the mosaic written strip by strip (one
    writer per chunk row) equals one whole-scene ``assemble``, QA and counts included."""
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
    tasks = strip_tasks("s", source, plan, store.path, str(mosaic), nodata, 96)
    assert len(tasks) == 6 and all(len(t.windows) < len(windows) for t in tasks)
    parts = [blend_strip(t) for t in reversed(tasks)]  # order of completion does not matter
    root = zarr.open_group(str(mosaic), mode="r")
    np.testing.assert_array_equal(root["bands"][...], want)
    np.testing.assert_array_equal(root["qa"][...], want_qa)
    assert (want != nodata).sum() > scene.valid.sum()  # something was filled
    counts = merge_counts([p.counts for p in parts])
    assert counts["filled"] == int((want_qa == QA_ENGINE).sum()) > 0

    # preview rows from strips of 96 rows, every 11th row: offsets carry across strips
    tasks = strip_tasks("s", source, plan, store.path, str(mosaic), nodata, 96, max_preview=50)
    assert tasks[0].preview_step == 11
    got = Preview.concat([blend_strip(t).preview for t in tasks])
    full = Preview.of_rows(scene.data, want, scene.valid, data_validity(want, nodata), 0, 11)
    for field in ("before", "after", "before_valid", "after_valid"):
        np.testing.assert_array_equal(getattr(got, field), getattr(full, field))
    assert got.before.shape == (3, 47, 47)


def test_mosaic_rows_must_start_a_chunk(tmp_path: Path) -> None:
    source = open_scene(arg25_item())
    create_zarr_mosaic(tmp_path / "m.zarr", (3, 512, 512), np.int16, source.grid, nodata=-999,
                       band_names=["a", "b", "c"], attrs={}, chunk=128)
    with pytest.raises(ValueError, match="chunk boundary"):
        write_mosaic_rows(tmp_path / "m.zarr", 100, np.zeros((3, 28, 512), np.int16), np.zeros((28, 512), np.uint8))
