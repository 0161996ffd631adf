"""Guided engines (dipfill.engines.guided, guided_judge): hand-checkable LLHM and
regression cases, guide nodata, rank order, another sensor's guide, and a real ARG25 pair.

The real pair: January's 256² tile (rows/cols 128:384 of the committed crop) as truth, its
own SLC-off stripes shifted down 20 rows (half a stripe period) as the hidden pixels, and
February (16 days later, stripes elsewhere) as the guide, so the guide observes what it
must fill. A poor guide is February misregistered by (10, 20) px, or upside down (another
ground): the judged engine must then stay within 0.01 r² of fillnodata.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dipfill.engines.classical import FillnodataEngine
from dipfill.engines.guided import LLHMEngine, RegressionEngine, guide_slices
from dipfill.engines.guided_judge import GuidedEngine, blend_weight
from dipfill.errors import InputError
from dipfill.eval.metrics import r2
from tests._data import ARG25_FEB, ARG25_JAN

ENGINES = (LLHMEngine(), RegressionEngine(), GuidedEngine())


def smooth_field(shape: tuple[int, int], seed: int, sigma: float = 3.0) -> np.ndarray:
    """A textured positive field (smoothed noise), the kind of ground a guide helps with."""
    rng = np.random.default_rng(seed)
    return (1000 + 400 * ndimage.gaussian_filter(rng.standard_normal(shape), sigma) / 0.1).astype(np.float64)


def run(engine, target, observed, guide=None, guide_obs=None, guide_bands=None):
    """One patch through ``engine``: target/observed ``[C, H, W]``, guide ``[G, H, W]``."""
    kw = {}
    if guide is not None:
        kw = {"guides": np.asarray(guide, np.float32)[None], "guide_observed": np.asarray(guide_obs, bool)[None],
              "guide_bands": guide_bands}
    values = np.where(observed, target, 0).astype(np.float32)
    res = engine.fill(values[None], np.asarray(observed, bool)[None], seeds=[3], **kw)
    return res.values[0].astype(np.float64), res.diagnostics[0].extra


def window_fill(t, g, gap, y, x, gain_range, half=10):
    """LLHM by hand at one pixel: common-pixel statistics of the 21×21 window, clamped gain."""
    win = (slice(max(y - half, 0), y + half + 1), slice(max(x - half, 0), x + half + 1))
    keep = ~gap[win]
    tw, gw = t[win][keep], g[win][keep]
    gain = np.clip(tw.std() / gw.std(), *gain_range)
    return tw.mean() + gain * (g[y, x] - gw.mean())


# ---------------------------------------------------------------------------------------
# LLHM by hand


def test_llhm_is_exact_when_the_guide_is_a_linear_map_of_the_target() -> None:
    t = smooth_field((30, 30), 0)
    obs = np.ones((1, 30, 30), bool)
    obs[0, 12:18, 10:20] = False
    out, extra = run(LLHMEngine(), t[None], obs, 2 * t[None] + 5, np.ones((1, 30, 30), bool))
    np.testing.assert_allclose(out[0][~obs[0]], t[~obs[0]], rtol=0, atol=0.05)
    assert extra["filled_guide"] == 60 and extra["filled_fallback"] == 0 and extra["unfilled_pixels"] == 0


@pytest.mark.parametrize("scale, gain", [(0.1, 3.0), (10.0, 1 / 3)])
def test_llhm_clamps_the_gain_to_one_third_and_three(scale: float, gain: float) -> None:
    t = smooth_field((30, 30), 1)
    g = scale * t + 7
    gap = np.zeros((30, 30), bool)
    gap[15, 15] = gap[5, 22] = True
    out, _ = run(LLHMEngine(), t[None], ~gap[None], g[None], np.ones((1, 30, 30), bool))
    for y, x in zip(*np.nonzero(gap)):
        assert out[0, y, x] == pytest.approx(window_fill(t, g, gap, y, x, (gain, gain)), abs=1e-3)
        # unclamped, the fill would be exact: the clamp is what moved it
        assert abs(out[0, y, x] - t[y, x]) > 1.0


def test_llhm_grows_its_window_until_144_common_pixels() -> None:
    t = smooth_field((64, 64), 2)
    gobs = np.zeros((1, 64, 64), bool)
    gobs[0, ::4, ::4] = True  # 1 in 16: ~28 common pixels in 21×21, ~170 in 51×51
    gobs[0, 30:34, 30:34] = True
    obs = np.ones((1, 64, 64), bool)
    obs[0, 30:34, 30:34] = False
    out, extra = run(LLHMEngine(), t[None], obs, 2 * t[None] + 5, gobs)
    np.testing.assert_allclose(out[0, 30:34, 30:34], t[30:34, 30:34], atol=0.05)
    assert extra["filled_guide"] == 16
    # a limit below the needed window: nothing has 144 common pixels -> all fillnodata
    out, extra = run(LLHMEngine(windows=(21, 31)), t[None], obs, 2 * t[None] + 5, gobs)
    spatial, _ = run(FillnodataEngine(), t[None], obs)
    np.testing.assert_array_equal(out, spatial)
    assert extra["filled_guide"] == 0 and extra["filled_fallback"] == 16


def test_fewer_than_144_common_pixels_fall_back_to_fillnodata() -> None:
    t = smooth_field((40, 40), 3)
    obs = np.ones((1, 40, 40), bool)
    obs[0, 18:22, :] = False
    gobs = np.zeros((1, 40, 40), bool)
    gobs[0, 10:30, 10:15] = True  # 100 pixels, 80 of them common: never 144
    for engine in (LLHMEngine(), RegressionEngine()):
        out, extra = run(engine, t[None], obs, 2 * t[None] + 5, gobs)
        spatial, _ = run(FillnodataEngine(), t[None], obs)
        np.testing.assert_array_equal(out, spatial)
        assert extra["filled_fallback"] == 160 and extra[f"filled_{engine.path}"] == 0


@pytest.mark.parametrize("engine", [LLHMEngine(), RegressionEngine()], ids=lambda e: e.name)
def test_guide_nodata_is_never_evidence(engine) -> None:
    t = smooth_field((40, 40), 4)
    obs = np.ones((1, 40, 40), bool)
    obs[0, 15:25, 15:25] = False
    g = 2 * t + 5
    gobs = np.ones((1, 40, 40), bool)
    bad = np.zeros((40, 40), bool)
    bad[::3, ::2] = True  # scattered guide gaps, inside and around the target's gap
    gobs[0][bad] = False
    g[bad] = 1e7  # a value no valid pixel could have
    out, extra = run(engine, t[None], obs, g[None], gobs)
    guided = ~obs[0] & ~bad
    np.testing.assert_allclose(out[0][guided], t[guided], atol=0.05)
    assert np.all(np.abs(out[0][~obs[0]]) < 1e4)  # the unobserved guide values went nowhere
    assert extra[f"filled_{engine.path}"] == guided.sum()
    assert extra["filled_fallback"] == (~obs[0] & bad).sum()


def test_guides_are_tried_in_rank_order() -> None:
    t = smooth_field((40, 40), 5)
    obs = np.ones((1, 40, 40), bool)
    obs[0, 15:25, 10:30] = False
    first, second = 2 * t + 5, 0.5 * t - 3
    fobs = np.ones((1, 40, 40), bool)
    fobs[0, :, :20] = False  # the best guide misses the left half of the gap
    guides = np.stack([first, second])
    gobs = np.concatenate([fobs, np.ones((1, 40, 40), bool)])
    out, extra = run(LLHMEngine(), t[None], obs, guides, gobs, guide_bands=[1, 1])
    np.testing.assert_allclose(out[0][~obs[0]], t[~obs[0]], atol=0.05)
    assert extra["guides"] == 2 and extra["filled_guide"] == 200
    assert guide_slices(6, [3, 3]) == [slice(0, 3), slice(3, 6)]


def test_another_sensors_bands_are_all_predictors() -> None:
    """A two-band guide (SAR-like) for a three-band target: the regression uses both bands,
    LLHM the more correlated one with its sign."""
    shape = (48, 48)
    vv, vh, noise = smooth_field(shape, 6), smooth_field(shape, 7), smooth_field(shape, 8)
    target = np.stack([0.5 * vv - 0.8 * vh + 2000, 2 * vv + 30, -2 * vh + 4000])
    obs = np.ones((3, *shape), bool)
    obs[:, 20:28, :] = False
    guide, gobs = np.stack([vv, vh]), np.ones((2, *shape), bool)
    out, extra = run(RegressionEngine(ridge=0.0), target, obs, guide, gobs)
    np.testing.assert_allclose(out[~obs], target[~obs], atol=0.05)
    assert extra["filled_regression"] == (~obs).sum()
    out, _ = run(LLHMEngine(), target[1:], obs[1:], np.stack([noise, vv, vh]), np.ones((3, *shape), bool))
    np.testing.assert_allclose(out[~obs[1:]], target[1:][~obs[1:]], atol=0.05)  # +vv, then -vh


# ---------------------------------------------------------------------------------------
# Without guides, and the judge on synthetic guides


def test_without_guides_every_engine_is_fillnodata() -> None:
    rng = np.random.default_rng(9)
    values = rng.normal(1000, 50, (2, 3, 32, 32)).astype(np.float32)
    obs = rng.random((2, 3, 32, 32)) > 0.3
    want = FillnodataEngine().fill(values, obs, seeds=[0, 1])
    for engine in ENGINES:
        got = engine.fill(values, obs, seeds=[0, 1])
        np.testing.assert_array_equal(got.values, want.values)
        assert all(d.engine == engine.name for d in got.diagnostics)
        assert got.diagnostics[0].extra["behaved_as"] == "fillnodata (no guide)"


def test_the_judge_trusts_a_good_guide_and_ignores_noise() -> None:
    t = smooth_field((96, 96), 10, sigma=1.5)
    obs = np.ones((1, 96, 96), bool)
    for r in range(4, 96, 16):
        obs[0, r : r + 5, :] = False  # stripes
    gobs = np.ones((1, 96, 96), bool)
    judge = GuidedEngine(min_holdout=50)
    out, extra = run(judge, t[None], obs, 2 * t[None] + 5, gobs)
    assert extra["guide_weights"][0][0] > 0.9 and extra["filled_guide"] == (~obs).sum()
    np.testing.assert_allclose(out[0][~obs[0]], t[~obs[0]], atol=1.0)
    noise = np.random.default_rng(11).normal(0, 300, (1, 96, 96))
    out, extra = run(judge, t[None], obs, noise, gobs)
    spatial, _ = run(FillnodataEngine(), t[None], obs)
    assert extra["guide_weights"][0][0] == 0.0 and extra["filled_guide"] == 0
    np.testing.assert_array_equal(out, spatial)


def test_the_judge_prefers_the_guide_that_measures_better_over_rank() -> None:
    t = smooth_field((96, 96), 13, sigma=1.5)
    obs = np.ones((1, 96, 96), bool)
    for r in range(4, 96, 16):
        obs[0, r : r + 5, :] = False
    noise = np.random.default_rng(14).normal(0, 300, (96, 96))
    guides, gobs = np.stack([noise, 2 * t + 5]), np.ones((2, 96, 96), bool)
    out, extra = run(GuidedEngine(min_holdout=50), t[None], obs, guides, gobs, guide_bands=[1, 1])
    assert extra["guide_weights"][0][0] == 0.0 and extra["guide_weights"][1][0] > 0.9
    np.testing.assert_allclose(out[0][~obs[0]], t[~obs[0]], atol=1.0)


def test_blend_weight_is_the_least_squares_weight() -> None:
    rng = np.random.default_rng(12)
    truth = rng.normal(size=500)
    spatial, guided = truth + rng.normal(size=500), truth + rng.normal(size=500)
    w, se = blend_weight(truth, guided, spatial)
    grid = np.linspace(0, 1, 1001)
    sse = [np.sum((truth - a * guided - (1 - a) * spatial) ** 2) for a in grid]
    assert w == pytest.approx(grid[int(np.argmin(sse))], abs=1e-3) and 0 < se < 0.2
    assert blend_weight(truth, spatial, spatial) == (0.0, 0.0)


def test_bad_guide_arguments_say_what_is_wrong() -> None:
    values, obs = np.zeros((1, 1, 8, 8), np.float32), np.ones((1, 1, 8, 8), bool)
    g = np.zeros((1, 4, 8, 8), np.float32)
    for engine in ENGINES:
        with pytest.raises(InputError, match="summing to the 4"):
            engine.fill(values, obs, seeds=[0], guides=g, guide_observed=g > 0, guide_bands=[3, 3])
        with pytest.raises(InputError, match="without guide_observed"):
            engine.fill(values, obs, seeds=[0], guides=g)
    with pytest.raises(InputError, match="gain_range"):
        LLHMEngine(gain_range=(3.0, 1.0))
    with pytest.raises(InputError, match="method"):
        GuidedEngine(method="nspi")


# ---------------------------------------------------------------------------------------
# A real pair: ARG25 Menindee, 16 days apart


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(a)
    h, w = a.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = a[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


@pytest.fixture(scope="module")
def arg25_pair():
    rasterio = pytest.importorskip("rasterio")
    out = []
    for path in (ARG25_JAN, ARG25_FEB):
        with rasterio.open(path) as src:
            a = src.read().astype(np.float64)
            out.append((a, a != src.nodata))
    (jan, jan_ok), (feb, feb_ok) = out
    hidden_full = _shift(~jan_ok, 20, 0) & jan_ok  # January's own stripes, half a period down
    win = (slice(None), slice(128, 384), slice(128, 384))
    return {
        "truth": jan[win], "observed": jan_ok[win] & ~hidden_full[win], "hidden": hidden_full[win],
        "close": (feb[win], feb_ok[win]),
        "misregistered": (_shift(feb, 10, 20)[win], _shift(feb_ok, 10, 20)[win]),
        "other ground": (feb[win][:, ::-1, ::-1].copy(), feb_ok[win][:, ::-1, ::-1].copy()),
    }


def _mean_r2(pair, engine, guide: str | None) -> float:
    g = pair[guide] if guide else (None, None)
    out, _ = run(engine, pair["truth"], pair["observed"], *g)
    return float(np.mean(r2(pair["truth"], out, pair["hidden"])))


def test_real_pair_every_guided_method_beats_fillnodata_with_a_close_guide(arg25_pair) -> None:
    assert (arg25_pair["hidden"] & arg25_pair["close"][1]).sum() > 0.9 * arg25_pair["hidden"].sum()
    base = _mean_r2(arg25_pair, FillnodataEngine(), None)
    scores = {e.name: _mean_r2(arg25_pair, e, "close") for e in ENGINES}
    assert all(s > base + 0.05 for s in scores.values()), (base, scores)
    assert scores["guided"] > scores["llhm"] + 0.02, scores


@pytest.mark.parametrize("guide", ["misregistered", "other ground"])
def test_real_pair_the_judge_never_loses_to_fillnodata_with_a_poor_guide(arg25_pair, guide: str) -> None:
    base = _mean_r2(arg25_pair, FillnodataEngine(), None)
    judged = _mean_r2(arg25_pair, GuidedEngine(), guide)
    llhm = _mean_r2(arg25_pair, LLHMEngine(), guide)
    assert judged > base - 0.01, (judged, base)
    assert llhm < base - 0.1, "the poor guide must really be poor, or this test proves nothing"
