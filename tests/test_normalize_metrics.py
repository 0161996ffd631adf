"""Per-patch normalisation, quality metrics and the transplanted-gap experiment, on real data."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from dipfill.engines.normalize import denormalize, normalize
from dipfill.eval.cases import transplant_gaps
from dipfill.eval.metrics import mean_fill, psnr, r2, rmse
from tests._data import ARG25_FEB, ARG25_JAN, arg25_transplant


@pytest.fixture(scope="module")
def case():
    return arg25_transplant()


def test_normalize_maps_observed_percentiles_to_target_and_inverts(case):
    y, params = normalize(case.values, case.observed)
    for c in range(3):
        obs = y[c][case.observed[c]]
        lo, hi = np.percentile(obs, [1, 99])
        assert lo == pytest.approx(0.1, abs=1e-9) and hi == pytest.approx(0.9, abs=1e-9)
    back = denormalize(y, params)
    np.testing.assert_allclose(back, case.values, rtol=0, atol=1e-9)
    # int16 data survives a round trip exactly after rounding
    assert np.array_equal(np.rint(back).astype(np.int16), case.values.astype(np.int16))


def test_normalize_ignores_gap_values_and_handles_degenerate_slices(case):
    junk = np.where(case.observed, case.values, 1e9)
    _, a = normalize(case.values, case.observed)
    _, b = normalize(junk, case.observed)
    np.testing.assert_array_equal(a.scale, b.scale)
    flat = np.full((2, 8, 8), 5.0)
    obs = np.ones_like(flat, dtype=bool)
    obs[1] = False
    y, p = normalize(flat, obs)
    assert p.degenerate.all() and np.isfinite(y).all()
    assert y[0, 0, 0] == pytest.approx(0.5) and np.array_equal(denormalize(y, p), flat)


def test_metrics_match_their_definitions(case):
    t, m = case.truth.astype(np.float64), case.hidden
    pred = mean_fill(case.values, case.observed)
    for c in range(3):
        tt, pp = t[c][m[c]], pred[c][m[c]].astype(np.float64)
        err = tt - pp
        assert rmse(t, pred, m)[c] == pytest.approx(np.sqrt(np.mean(err**2)))
        assert r2(t, pred, m)[c] == pytest.approx(1 - np.sum(err**2) / np.sum((tt - tt.mean()) ** 2))
        assert psnr(t, pred, m, data_range=10000)[c] == pytest.approx(
            10 * np.log10(10000**2 / np.mean(err**2))
        )
    assert (r2(t, t, m) == 1).all() and (rmse(t, t, m) == 0).all()
    # a prediction of the hidden truth's own mean scores r2 = 0 exactly
    means = np.array([t[c][m[c]].mean() for c in range(3)])[:, None, None]
    assert r2(t, np.broadcast_to(means, t.shape), m) == pytest.approx(np.zeros(3), abs=1e-12)
    empty = np.zeros_like(m)
    assert np.isnan(rmse(t, pred, empty)).all() and np.isnan(r2(t, pred, empty)).all()


def _valid(path):
    with rasterio.open(path) as src:
        data = src.read(window=((128, 384), (128, 384)))
        return data, data != src.nodata


def test_transplant_hides_real_gap_pixels_only(case):
    feb, feb_valid = _valid(ARG25_FEB)
    jan, jan_valid = _valid(ARG25_JAN)
    # hidden = observed in February, missing in January; seen = observed on both dates
    np.testing.assert_array_equal(case.hidden, feb_valid & ~jan_valid)
    np.testing.assert_array_equal(case.observed, feb_valid & jan_valid)
    np.testing.assert_array_equal(case.truth, feb)
    assert case.hidden.mean() > 0.1  # January's stripes over observed February pixels
    assert np.array_equal(case.values[case.observed], case.truth[case.observed])
    assert (case.values[~case.observed] == 0).all() and case.values.dtype == np.float32
    with pytest.raises(ValueError, match="differ in shape"):
        transplant_gaps(case.truth, case.observed[0], case.observed)
    # reversed: January is the truth, February's gaps and cloud shadows are hidden
    reverse = arg25_transplant(reverse=True)
    np.testing.assert_array_equal(reverse.hidden, jan_valid & ~feb_valid)
    np.testing.assert_array_equal(reverse.truth, jan)
