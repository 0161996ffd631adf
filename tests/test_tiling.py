"""Window planning and blending: pure geometry, tiny arrays and a real raster's shape."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dipfill.tiling import (
    InMemoryMerger,
    PatchWindow,
    ZarrMerger,
    axis_starts,
    cast_to_dtype,
    crop,
    hann_ramp,
    plan_windows,
    window_weights,
    windows_with_gaps,
)


def coverage(height: int, width: int, windows: list[PatchWindow]) -> np.ndarray:
    cov = np.zeros((height, width), dtype=int)
    for w in windows:
        cov[w.slices] += 1
    return cov


@pytest.mark.parametrize(
    "height,width",
    [(1, 1), (255, 255), (256, 256), (257, 300), (1000, 2700), (2700, 1000), (7, 513), (600, 40)],
)
def test_windows_cover_every_pixel_inside_raster(height: int, width: int) -> None:
    size, overlap = 256, 32
    windows = plan_windows(height, width, size=size, overlap=overlap)
    cov = coverage(height, width, windows)
    assert cov.min() >= 1, "a pixel is not covered"
    for w in windows:
        assert w.row_off >= 0 and w.col_off >= 0
        assert w.row_off + w.height <= height and w.col_off + w.width <= width
        assert w.height == min(size, height) and w.width == min(size, width)
    assert len(set(windows)) == len(windows)


@pytest.mark.parametrize("length", [257, 300, 480, 481, 500, 1000, 2700])
def test_neighbouring_windows_overlap_by_at_least_overlap(length: int) -> None:
    starts = axis_starts(length, 256, 32)
    assert starts[0] == 0 and starts[-1] == length - 256
    gaps = np.diff(starts)
    assert (gaps <= 256 - 32).all()
    assert (gaps > 0).all()


def test_windows_are_minimal_for_a_round_size() -> None:
    # 2700 columns, stride 224: origins 0, 224, ..., 2240 and the snapped 2444.
    assert axis_starts(2700, 256, 32) == [*range(0, 2241, 224), 2444]
    assert len(plan_windows(1000, 2700)) == 5 * 12


@pytest.mark.parametrize("bad", [dict(size=0, overlap=0), dict(size=16, overlap=16), dict(size=16, overlap=-1)])
def test_axis_starts_rejects_bad_geometry(bad: dict) -> None:
    with pytest.raises(ValueError):
        axis_starts(100, **bad)


def test_only_windows_with_gaps_are_selected() -> None:
    gap = np.zeros((600, 600), dtype=bool)
    gap[10, 10] = True  # only in the first window
    gap[599, 599] = True  # only in the last window
    windows = plan_windows(600, 600)
    selected = list(windows_with_gaps(windows, gap))
    assert selected == [w for w in windows if gap[w.slices].any()]
    assert selected[0] == windows[0] and selected[-1] == windows[-1]
    assert len(selected) == 2
    assert list(windows_with_gaps(windows, np.zeros_like(gap))) == []


def test_hann_ramp_is_a_partition_of_unity_and_positive() -> None:
    for n in (1, 2, 32, 255):
        r = hann_ramp(n)
        assert (r > 0).all() and (r < 1).all()
        np.testing.assert_allclose(r + r[::-1], 1.0, atol=1e-15)


def test_weights_sum_to_one_where_two_windows_overlap() -> None:
    height, width = 256, 700
    windows = plan_windows(height, width)
    rows, cols = axis_starts(height, 256, 32), axis_starts(width, 256, 32)
    total = np.zeros((height, width))
    for w in windows:
        wt = window_weights(w, rows, cols)
        assert (wt > 0).all()
        total[w.slices] += wt
    cov = coverage(height, width, windows)
    np.testing.assert_allclose(total[cov <= 2], 1.0, atol=1e-12)


def blend_tiles(field: np.ndarray, per_tile) -> np.ndarray:
    bands, height, width = field.shape
    windows = plan_windows(height, width, size=64, overlap=16)
    rows, cols = axis_starts(height, 64, 16), axis_starts(width, 64, 16)
    merger = InMemoryMerger(bands, PatchWindow(0, 0, height, width), rows=rows, cols=cols)
    for i, w in enumerate(windows):
        merger.aggregate(per_tile(i, field[(slice(None), *w.slices)]), w)
    merged = merger.finalize()
    assert merged.covered.all()
    return merged.values


def test_constant_field_stays_exactly_constant() -> None:
    field = np.full((2, 150, 190), 1234.0)
    out = blend_tiles(field, lambda i, tile: tile.copy())
    for dtype in (np.int16, np.uint16, np.float32):
        assert np.array_equal(cast_to_dtype(out, np.dtype(dtype), nodata=None), field.astype(dtype))


def test_ramp_in_tiles_equals_the_ramp() -> None:
    yy, xx = np.mgrid[0:150, 0:190].astype(np.float64)
    field = (3.0 * yy + 0.5 * xx + 100.0)[None]
    out = blend_tiles(field, lambda i, tile: tile.copy())
    np.testing.assert_allclose(out, field, rtol=0, atol=1e-9)


def test_feathering_leaves_no_seam_step_between_disagreeing_tiles() -> None:
    # Each tile returns the ramp plus its own offset (as independent engine fits would);
    # a hard seam would jump by the offset difference between adjacent pixels, a feathered
    # one spreads it over the overlap.
    yy, xx = np.mgrid[0:150, 0:190].astype(np.float64)
    field = (0.5 * xx)[None]
    offsets = np.random.default_rng(0).uniform(-4, 4, size=100)
    out = blend_tiles(field, lambda i, tile: tile + offsets[i])
    step = np.abs(np.diff(out[0] - field[0], axis=1)).max()
    jump = np.abs(np.diff(offsets)).max()
    assert step < 0.25 * jump


def test_merger_gives_nan_results_no_weight_and_refuses_after_finalize() -> None:
    w = PatchWindow(0, 0, 4, 4)
    merger = InMemoryMerger(1, w, rows=[0], cols=[0])
    vals = np.full((1, 4, 4), 5.0)
    vals[0, 0, 0] = np.nan
    merger.aggregate(vals, w)
    merged = merger.finalize()
    assert not merged.covered[0, 0, 0] and np.isnan(merged.values[0, 0, 0])
    assert merged.covered.sum() == 15 and (merged.values[merged.covered] == 5.0).all()
    # the taper weight is counted per source whether or not the value was finite
    assert (merged.weight[0] == 1.0).all()
    with pytest.raises(RuntimeError):
        merger.aggregate(vals, w)
    with pytest.raises(ValueError, match="does not match window"):
        InMemoryMerger(2, w, rows=[0], cols=[0]).aggregate(vals, w)


def test_crop_clips_a_window_onto_a_region() -> None:
    region = PatchWindow(100, 200, 50, 60)
    assert crop(PatchWindow(0, 0, 100, 200), region) is None  # touches the corner only
    part = crop(PatchWindow(90, 250, 20, 20), region)
    assert part is not None
    assert part.source == (slice(10, 20), slice(0, 10))
    assert part.target == PatchWindow(0, 50, 10, 10)
    inside = PatchWindow(110, 210, 5, 5)
    assert crop(inside, region).target == PatchWindow(10, 10, 5, 5)
    assert crop(inside, region).source == (slice(0, 5), slice(0, 5))
    assert inside.intersects(region) and not PatchWindow(0, 0, 100, 200).intersects(region)


def test_blocks_merge_to_the_same_bytes_as_one_region() -> None:
    # Merging a scene block by block (each merger crops the windows onto its block) gives
    # exactly the whole-scene merge: what lets a run blend blocks in separate tasks.
    rng = np.random.default_rng(3)
    height, width = 150, 190
    windows = plan_windows(height, width, size=64, overlap=16)
    rows, cols = axis_starts(height, 64, 16), axis_starts(width, 64, 16)
    values = {w: rng.normal(size=(2, 64, 64)) for w in windows}
    values[windows[0]][:, :5, :5] = np.nan  # the scene corner: no other window covers it
    whole = InMemoryMerger(2, PatchWindow(0, 0, height, width), rows=rows, cols=cols, sources=2)
    for i, w in enumerate(windows):
        whole.aggregate(values[w], w, source=i % 2)
    want = whole.finalize()
    got = np.full((2, height, width), -1.0)
    tally = np.zeros((2, height, width))
    for r0 in range(0, height, 40):
        for c0 in range(0, width, 50):
            block = PatchWindow(r0, c0, min(40, height - r0), min(50, width - c0))
            m = InMemoryMerger(2, block, rows=rows, cols=cols, sources=2)
            for i, w in enumerate(windows):
                m.aggregate(values[w], w, source=i % 2)
            part = m.finalize()
            got[(slice(None), *block.slices)] = part.values
            tally[(slice(None), *block.slices)] = part.weight
    assert np.array_equal(got, want.values, equal_nan=True)
    assert np.array_equal(tally, want.weight)
    assert np.isnan(want.values).sum() == 2 * 25


def test_zarr_merger_gives_the_same_bytes_as_the_in_memory_one(tmp_path) -> None:
    rng = np.random.default_rng(4)
    height, width = 150, 190
    windows = plan_windows(height, width, size=64, overlap=16)
    rows, cols = axis_starts(height, 64, 16), axis_starts(width, 64, 16)
    region = PatchWindow(0, 0, height, width)
    mem = InMemoryMerger(3, region, rows=rows, cols=cols)
    disk = ZarrMerger(tmp_path / "merge.zarr", 3, region, rows=rows, cols=cols, chunk=64)
    for w in reversed(windows):  # any order
        vals = rng.normal(size=(3, 64, 64))
        vals[1, 10:12, :] = np.nan
        mem.aggregate(vals, w)
        disk.aggregate(vals, w)
    a, b = mem.finalize(), disk.finalize()
    assert np.array_equal(a.values, b.values[:], equal_nan=True)
    assert np.array_equal(a.covered, b.covered[:])
    assert np.array_equal(a.weight, b.weight[:])
    with pytest.raises(RuntimeError):
        disk.aggregate(np.zeros((3, 64, 64)), windows[0])


def test_tiling_imports_neither_torch_nor_ray() -> None:
    code = "import sys, dipfill.tiling; print(any(m in sys.modules for m in ('torch', 'ray')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cast_rounds_clips_and_never_lands_on_nodata() -> None:
    vals = np.array([-999.4, -1000.6, 40000.0, 12.5, 13.5, -0.2])
    out = cast_to_dtype(vals, np.dtype(np.int16), nodata=-999)
    assert out.dtype == np.int16
    assert out.tolist() == [-998, -1001, 32767, 12, 14, 0]
    f = cast_to_dtype(np.array([0.0, 1.0]), np.dtype(np.float32), nodata=0.0)
    assert f[0] != 0.0 and f[1] == 1.0
    u = cast_to_dtype(np.array([0.2, 65535.0]), np.dtype(np.uint8), nodata=255)
    assert u.tolist() == [0, 254]
