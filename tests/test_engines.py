"""Engines on real data: classical fillers and DIP against the mean-fill floor, protocol edges.

The scoring case is the February crop with January's real SLC-off stripes transplanted onto
it (tests/_data.py): the truth under the hidden stripes is known.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dipfill.engines import make_engine
from dipfill.engines.base import EngineResult
from dipfill.errors import InputError
from dipfill.metrics import mean_fill, r2, rmse
from tests._data import arg25_transplant


@pytest.fixture(scope="module")
def case():
    return arg25_transplant()


@pytest.fixture(scope="module")
def small_case():
    return arg25_transplant(slice(200, 328), slice(150, 278))


def run(engine, t, seed: int = 0) -> np.ndarray:
    result = engine.fill(t.values[None], t.observed[None], seeds=[seed])
    assert isinstance(result, EngineResult) and len(result.diagnostics) == 1
    return result.values[0]


@pytest.mark.parametrize("name", ["fillnodata", "telea", "ns"])
def test_classical_engines_beat_mean_fill_on_real_stripes(case, name):
    out = run(make_engine(name), case)
    assert np.isfinite(out[case.hidden]).all()
    floor = r2(case.truth, mean_fill(case.values, case.observed), case.hidden)
    score = r2(case.truth, out, case.hidden)
    assert (score > floor + 0.5).all(), (name, score, floor)
    assert (rmse(case.truth, out, case.hidden) < 150).all()
    np.testing.assert_array_equal(out[case.observed], case.values[case.observed])


@pytest.mark.parametrize("name", ["telea", "ns"])
def test_opencv_engines_are_scale_invariant(small_case, name):
    """The per-band working range makes the fill independent of the data's units."""
    t = small_case
    eng = make_engine(name)
    base = eng.fill(t.values[None], t.observed[None], seeds=[0]).values[0]
    scaled = eng.fill(t.values[None] * 1e-4 + 3.0, t.observed[None], seeds=[0]).values[0]
    np.testing.assert_allclose((scaled[t.hidden] - 3.0) * 1e4, base[t.hidden], atol=0.05)


@pytest.mark.parametrize("name", ["fillnodata", "telea", "ns", "dip"])
def test_band_without_observed_pixels_is_unfilled(small_case, name):
    opts = {"preset": "mcpn-core", "steps": 2} if name == "dip" else {}
    obs = small_case.observed.copy()
    obs[1] = False
    out = make_engine(name, **opts).fill(small_case.values[None], obs[None], seeds=[0]).values[0]
    assert np.isnan(out[1]).all()
    assert np.isfinite(out[[0, 2]]).all()


def test_dip_beats_mean_fill_on_real_stripes(small_case):
    t = small_case
    out = run(make_engine("dip", preset="mcpn-core", steps=200), t, seed=3)
    assert np.isfinite(out).all()
    floor = r2(t.truth, mean_fill(t.values, t.observed), t.hidden)
    score = r2(t.truth, out, t.hidden)
    assert (score > floor + 0.3).all(), (score, floor)


def test_dip_is_deterministic_per_seed_and_independent_of_batch(small_case):
    """With the loop strategy a patch's bytes depend on its seed only, not on its batch."""
    t = small_case
    eng = make_engine("dip", preset="mcpn-core", steps=4, strategy="loop")
    a = run(eng, t, seed=11)
    b = run(eng, t, seed=11)
    c = run(eng, t, seed=12)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)
    batch = eng.fill(np.stack([t.values, t.values]), np.stack([t.observed] * 2), seeds=[12, 11])
    assert batch.values[1].tobytes() == a.tobytes()
    assert batch.values[0].tobytes() == c.tobytes()


@pytest.mark.parametrize("shape", [(1, 1), (37, 53), (256, 200)])
def test_dip_handles_odd_patch_sizes(small_case, shape):
    h, w = shape
    values = np.resize(small_case.values, (3, h, w)).astype(np.float32)
    observed = np.ones((3, h, w), dtype=bool)
    observed[:, ::3] = False
    observed[:, 0, 0] = True
    out = make_engine("dip", preset="mcpn-core", steps=2).fill(values[None], observed[None], seeds=[0])
    assert out.values.shape == (1, 3, h, w)
    assert np.isfinite(out.values).all()
    assert out.diagnostics[0].steps == 2


def test_make_engine_rejects_unknown_names_and_options():
    with pytest.raises(InputError, match="unknown engine 'kriging'"):
        make_engine("kriging")
    with pytest.raises(InputError, match="bad options for engine 'telea'"):
        make_engine("telea", steps=3)
    with pytest.raises(InputError, match="unknown dip preset"):
        make_engine("dip", preset="nope")
    with pytest.raises(InputError, match="unknown dip option"):
        make_engine("dip", chanels=4)
    with pytest.raises(InputError, match="padding must be one of"):
        make_engine("dip", padding="circular")
    with pytest.raises(InputError, match="radius must be > 0"):
        make_engine("ns", radius=0)


def test_auto_strategy_is_measured_once_and_cached(small_case, monkeypatch, tmp_path):
    from dipfill.engines import strategy

    monkeypatch.setenv("DIPFILL_CACHE_DIR", str(tmp_path))
    calls = []
    real = strategy._time_candidate
    monkeypatch.setattr(strategy, "_time_candidate", lambda *a: calls.append(a[5]) or real(*a))
    t = small_case
    eng = make_engine("dip", preset="mcpn-core", steps=2)  # strategy and compile "auto"
    values, observed = np.stack([t.values] * 2), np.stack([t.observed] * 2)
    first = eng.fill(values, observed, seeds=[1, 2])
    assert sorted(calls) == ["loop", "packed"]  # compile is not a CPU candidate
    cached = json.loads((tmp_path / "strategy.json").read_text())
    (entry,) = cached.values()
    assert entry["strategy"] in ("loop", "packed") and set(entry["seconds_per_patch_step"]) == {"loop", "packed"}
    second = eng.fill(values, observed, seeds=[1, 2])
    assert len(calls) == 2  # read from the cache, not measured again
    assert first.values.tobytes() == second.values.tobytes()
    assert first.diagnostics[0].extra["plan"]["strategy"] == entry["strategy"]


def test_gpu_path_options_run_on_cpu(small_case):
    """bf16 autocast and channels_last are the CUDA defaults; the same code runs on CPU."""
    from dipfill.engines.dip import preset
    from dipfill.engines.strategy import Plan, prepare_net
    from dipfill.engines.dipnet import pack_members

    t = small_case
    out = make_engine("dip", preset="mcpn-core", steps=3, precision="bf16", strategy="packed").fill(
        np.stack([t.values] * 2), np.stack([t.observed] * 2), seeds=[1, 2])
    assert np.isfinite(out.values).all() and out.diagnostics[0].extra["plan"]["bf16"] is True
    net = prepare_net(pack_members(preset("mcpn-core"), 3, [0]), torch.device("cpu"),
                      Plan("loop", False, False, channels_last=True, fused_adam=False))
    z = torch.rand(1, 32, 128, 128)
    assert net(z).shape == (1, 3, 128, 128)
    assert next(net.parameters()).is_contiguous(memory_format=torch.channels_last)
