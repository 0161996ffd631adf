"""Single-image DIP judged against interpolation (blend) and its output EMA, on real ARG25 gaps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dipfill.engines import make_engine
from dipfill.engines.blend import MIN_BLEND_PIXELS, judged_blend
from dipfill.engines.classical import spatial_fill
from dipfill.engines.config import preset
from dipfill.engines.dip import make_input
from dipfill.engines.dipnet import pack_members
from dipfill.engines.fit import fit_members
from dipfill.engines.holdout import stripe_holdout
from dipfill.errors import InputError
from dipfill.eval.metrics import r2
from tests._data import arg25_transplant

TINY = dict(channels_down=(8, 8, 8), channels_up=(8, 8, 8), channels_skip=(4, 4, 4), input_channels=4,
            strategy="loop")


@pytest.fixture(scope="module")
def case():
    return arg25_transplant(slice(200, 328), slice(150, 278))


def _held(case, seed=3):
    obs = case.observed
    return stripe_holdout(obs.any(axis=0), 0.1, np.random.default_rng(seed))[None] & obs


def test_a_prediction_that_knows_the_truth_wins_the_gaps_and_one_that_does_not_loses_them(case):
    """The judge reads the held-out pixels, not the gaps: an oracle (the truth) gets weight
    ~1 everywhere, a flat guess (each band's observed mean) weight 0 — its gaps become
    fillnodata's from the pixels it had."""
    held = _held(case)
    v = np.where(case.observed, case.truth, 0).astype(np.float64)
    oracle, rec = judged_blend(v, case.observed, held, case.truth.astype(np.float64))
    assert min(rec["blend_weight"]) > 0.9
    flat = np.stack([np.full(v.shape[1:], v[c][case.observed[c]].mean()) for c in range(v.shape[0])])
    blended, rec_flat = judged_blend(v, case.observed, held, flat)
    assert rec_flat["blend_weight"] == [0.0, 0.0, 0.0]
    gaps = ~case.observed
    interp = spatial_fill(v, case.observed)
    np.testing.assert_array_equal(blended[gaps & np.isfinite(interp)], interp[gaps & np.isfinite(interp)])
    # the held-out errors say why: the flat guess is far worse than interpolation there
    assert all(n > f for n, f in zip(rec_flat["holdout_rmse_net"], rec_flat["holdout_rmse_fillnodata"]))
    # observed pixels of the prediction are returned as they were
    np.testing.assert_array_equal(blended[case.observed], flat[case.observed])
    assert r2(case.truth, oracle, case.hidden).min() > 0.9


def test_without_enough_held_out_pixels_the_network_keeps_its_output(case):
    held = np.zeros_like(case.observed)
    held[:, :5, :5] = case.observed[:, :5, :5]  # far fewer than MIN_BLEND_PIXELS
    assert held.sum() < MIN_BLEND_PIXELS
    v = np.where(case.observed, case.truth, 0).astype(np.float64)
    pred = np.full(v.shape, 1234.0)
    out, rec = judged_blend(v, case.observed, held, pred)
    assert rec["blend_weight"] == [None, None, None]
    np.testing.assert_array_equal(out, pred)


def test_a_dip_fit_too_short_to_learn_is_judged_away_and_never_far_below_fillnodata(case):
    """10 steps teach the network nothing: alone it is far below fillnodata; judged, the fill
    is within 0.01 r² of fillnodata on every band and the diagnostics say why."""
    alone = make_engine("dip", preset="mcpn-core", steps=10, blend="none", **TINY)
    judged = make_engine("dip", preset="mcpn-core", steps=10, **TINY)
    idw = make_engine("fillnodata").fill(case.values[None], case.observed[None], seeds=[0]).values[0]
    raw = alone.fill(case.values[None], case.observed[None], seeds=[5])
    res = judged.fill(case.values[None], case.observed[None], seeds=[5])
    r_idw, r_raw, r_judged = (r2(case.truth, p, case.hidden) for p in (idw, raw.values[0], res.values[0]))
    assert (r_raw < r_idw - 0.1).all(), (r_raw, r_idw)
    assert (r_judged > r_idw - 0.01).all(), (r_judged, r_idw)
    extra = res.diagnostics[0].extra
    assert len(extra["blend_weight"]) == 3 and max(extra["blend_weight"]) < 0.3
    assert all(n > f for n, f in zip(extra["holdout_rmse_net"], extra["holdout_rmse_fillnodata"]))
    assert "blend_weight" not in raw.diagnostics[0].extra


def test_the_fit_keeps_the_ramped_average_of_its_outputs():
    """The kept prediction is the EMA of the outputs the training steps computed (with their
    input perturbation), its weight ramping as min(exp_weight, (1 + t)/(10 + t)); with
    exp_weight 0 it is the output of the unperturbed input."""
    cfg = preset("mcpn-core", steps=30, **{k: v for k, v in TINY.items() if k != "strategy"})
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 32, 32, generator=gen)
    mask = (torch.rand(1, 3, 32, 32, generator=gen) > 0.3).float()
    z = make_input(cfg, 32, 32, torch.Generator().manual_seed(1))

    def run(exp_weight):
        net = pack_members(cfg, 3, [7]).double()
        outs = []
        net.register_forward_hook(lambda m, i, o: outs.append(o.detach().clone()))
        c = dataclasses.replace(cfg, exp_weight=exp_weight)
        fit = fit_members(c, net, z.double(), target.double(), mask.double(), None, [torch.Generator().manual_seed(2)])
        return fit.prediction, outs, net

    kept, outs, _ = run(0.99)
    assert len(outs) == cfg.steps  # one forward per step, none extra
    ema = outs[0]
    for step, out in enumerate(outs[1:], start=2):
        w = min(0.99, (1 + step) / (10 + step))
        ema = w * ema + (1 - w) * out
    torch.testing.assert_close(kept, ema)
    last, outs0, net0 = run(0.0)
    assert len(outs0) == cfg.steps + 1  # the steps, then the clean prediction
    torch.testing.assert_close(last, outs0[-1])
    assert not torch.allclose(last, kept)


def test_blend_and_ema_options_are_checked():
    with pytest.raises(InputError, match="blend"):
        preset("mcpn-core", blend="idw")
    with pytest.raises(InputError, match="exp_weight"):
        preset("mcpn-core", exp_weight=1.0)
    with pytest.raises(InputError, match="blend_z"):
        preset("mcpn-core", blend_z=-1)
    assert preset("landsat2020").holds_out and not preset("landsat2020", blend="none").holds_out
