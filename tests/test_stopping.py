"""Early stopping: gap-shaped hold-out on real SLC-off masks, ES-EMV, and the engine's use of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from dipfill.engines import make_engine
from dipfill.engines.stopping import MovingVariance, stripe_holdout
from tests._data import arg25_transplant


@pytest.fixture(scope="module")
def jan_observed() -> np.ndarray:
    """January's real observed mask on a 256x256 tile (SLC-off stripes ~7-12 px wide)."""
    import rasterio

    from tests._data import ARG25_JAN

    with rasterio.open(ARG25_JAN) as src:
        return src.read(1, window=((128, 384), (128, 384))) != src.nodata


def test_stripe_holdout_takes_five_percent_of_observed_pixels_shaped_like_the_gaps(jan_observed):
    obs = jan_observed
    held = stripe_holdout(obs, 0.05, np.random.default_rng(0))
    assert not (held & ~obs).any()  # only observed pixels are held out
    frac = held.sum() / obs.sum()
    assert 0.05 <= frac < 0.08
    # Stripe-shaped: pieces are long (like the gaps), not scattered pixels or round blobs.
    labels, n = ndimage.label(held)
    sizes = ndimage.sum(held, labels, range(1, n + 1))
    assert np.median(sizes) > 40
    # Same stripe width as the real gaps: the thinnest direction of the held-out pieces
    # matches the gaps' (erosion by the gap half-width removes both about equally).
    gap = ~obs
    for name, mask in (("gap", gap), ("held", held)):
        assert ndimage.binary_erosion(mask, iterations=6).sum() < 0.2 * mask.sum(), name
    # Deterministic per seed, different across seeds.
    assert np.array_equal(held, stripe_holdout(obs, 0.05, np.random.default_rng(0)))
    assert not np.array_equal(held, stripe_holdout(obs, 0.05, np.random.default_rng(1)))


def test_stripe_holdout_without_gaps_falls_back_to_blobs():
    obs = np.ones((64, 64), dtype=bool)
    held = stripe_holdout(obs, 0.05, np.random.default_rng(0))
    assert 0.05 <= held.mean() < 0.1
    # blobs: whole 8x8 squares (half the 16-px piece) on the 8-px grid, not scattered pixels
    cells = held.reshape(8, 8, 8, 8).transpose(0, 2, 1, 3).reshape(64, 64)  # one row per 8x8 cell
    assert np.isin(cells.sum(axis=1), (0, 64)).all() and cells.any()
    assert not stripe_holdout(np.zeros((8, 8), dtype=bool), 0.05, np.random.default_rng(0)).any()


def test_moving_variance_tracks_a_settling_signal():
    mv = MovingVariance(alpha=0.2)
    g = torch.Generator().manual_seed(0)
    values = []
    for step in range(200):
        noise = 1.0 if step < 100 else 0.01  # a noisy phase, then a settled one
        mv.update(torch.randn((2, 1, 4, 4), generator=g) * noise)
        values.append(float(mv.value[0]))
    assert values[99] > 0.3 and values[-1] < 1e-3


@pytest.mark.parametrize("stopping", ["holdout", "emv"])
def test_engine_stops_early_and_keeps_the_best_iterate(stopping):
    t = arg25_transplant(slice(200, 328), slice(150, 278))
    eng = make_engine("dip", preset="mcpn-core", steps=400, stopping=stopping, check_every=10, patience=2,
                      strategy="loop", reg_noise_std=0.03, blend="none")  # the kept iterate as it is
    seen = []
    snapshots = {}

    def monitor(step, values, rmse):
        seen.append((step, rmse[0]))
        snapshots[step] = values.copy()

    result = eng.fill(t.values[None], t.observed[None], seeds=[4], monitor=monitor)
    d = result.diagnostics[0]
    assert d.extra["stopped_by"] == stopping and d.steps < 400
    assert 0 < d.extra["best_step"] <= d.steps
    assert [s for s, _ in seen] == list(range(10, d.steps + 1, 10))
    # patience counts *consecutive* checks without improvement: it stops exactly 2 checks
    # after the kept iterate (unless the step budget ran out first)
    assert d.steps == min(d.extra["best_step"] + 2 * 10, 400)
    # the engine returns the kept (best) iterate, not the last one it computed
    assert d.extra["best_step"] < d.steps
    np.testing.assert_array_equal(result.values, snapshots[d.extra["best_step"]])
    assert not np.array_equal(result.values, snapshots[d.steps])
    rmses = [r for _, r in seen]
    if stopping == "holdout":
        # the kept iterate is the one with the smallest held-out error
        best = min(rmses)
        assert d.extra["best_holdout_rmse"] == pytest.approx(best)
        assert dict(seen)[d.extra["best_step"]] == pytest.approx(best)
    else:
        # ES-EMV holds nothing out: there is no held-out error to report
        assert stopping == "emv" and d.extra["best_holdout_rmse"] is None and np.isnan(rmses).all()
    assert np.isfinite(result.values).all()
    # the kept iterate is a real fill: under the transplanted gaps it is much closer to the
    # truth than each band's observed mean (measured: 0.46 and 0.52 of the mean's error)
    hidden = t.hidden
    band_mean = np.stack([np.full(t.truth.shape[1:], t.truth[b][t.observed[b]].mean()) for b in range(3)])
    baseline = np.abs(band_mean[hidden] - t.truth[hidden]).mean()
    assert np.abs(result.values[0][hidden] - t.truth[hidden]).mean() < 0.75 * baseline
