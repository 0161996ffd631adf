"""Guided DIP (paper 003, MCPN): the variants' networks, their masked losses, determinism,
the single-image fallback, and a real guided fill beating single-image DIP.

Networks are built with the paper's configuration and only run forward; fits use a light
core on 32² patches and a handful of steps, except the real-data test (paper core, 64²).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dipfill.engines.config import preset
from dipfill.engines.dip import DIPEngine
from dipfill.engines.fit import fit_members
from dipfill.engines.losses import masked_loss
from dipfill.engines.mcpn import MCPNConfig, MCPNEngine, guided_prior, make_mcpn_engine, modality_weights
from dipfill.engines.mcpn_net import VARIANTS, build_mcpn
from dipfill.errors import InputError
from tests._data import ARG25_FEB, ARG25_JAN

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The 2 CPUs are shared: with two threads against other processes these fits ran ~5×
    slower than with one (measured); the thread count is restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# A light core for the fitting tests: 3 levels, so a 32² patch needs no padding.
LIGHT = dict(channels_down=(8, 16, 16), channels_up=(8, 16, 16), channels_skip=(4, 4, 4), input_channels=8)


def convs(net: nn.Module) -> list[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


def strided(net: nn.Module) -> list[int]:
    return [c.out_channels for c in convs(net) if c.stride == (2, 2)]


def skip_widths(net: nn.Module) -> list[int]:
    """Output widths of the 1×1 skip convolutions: a level's input -> its skip branch."""
    from dipfill.engines.dipnet import _Level

    return [convs(m.skip)[0].out_channels for m in net.modules() if isinstance(m, _Level) and m.skip is not None]


def assert_paper_head(head: nn.Module, out: int, *, resample: bool) -> None:
    """Paper 003's head: two levels of [32, 32] channels, [32, 32] skips, 3×3 kernels."""
    cs = convs(head)
    three = [c for c in cs if c.kernel_size == (3, 3)]
    assert {c.out_channels for c in three} == {32} and len(three) == 6  # 2 levels × (down, conv, merge)
    assert skip_widths(head) == [32, 32]
    assert cs[-1].out_channels == out and cs[-1].kernel_size == (1, 1)
    if resample:
        assert strided(head) == [32, 32] and len([m for m in head.modules() if isinstance(m, nn.Upsample)]) == 2
    else:
        assert strided(head) == [] and not any(isinstance(m, nn.Upsample) for m in head.modules())


def assert_paper_core(core: nn.Module, out: int, inputs: int = 32) -> None:
    assert strided(core) == [16, 32, 64, 128, 128, 128]
    assert skip_widths(core) == [4] * 6
    assert convs(core)[0].in_channels == inputs
    assert convs(core)[-1].out_channels == out


# -- the networks ---------------------------------------------------------------------------


def test_emergent_core_has_the_papers_core_heads_and_cycle_heads():
    net = build_mcpn("emergent", preset("mcpn-core"), bands=(3, 2, 1), seeds=[0], crop=(64, 64))
    assert_paper_core(net.core, out=8)  # the 8-channel shared core signal
    assert len(net.heads) == 3 and len(net.cycles) == 3  # one head and one cycle head per modality
    for head, bands in zip(net.heads, (3, 2, 1)):
        assert convs(head)[0].in_channels == 8
        assert_paper_head(head, bands, resample=True)
    for cycle, bands in zip(net.cycles, (3, 2, 1)):
        assert convs(cycle)[0].in_channels == bands
        assert_paper_head(cycle, 8, resample=True)
    with torch.no_grad():
        out = net(torch.rand(1, 32, 128, 128) * 0.1)  # core input padded for 6 halvings, then cropped
    assert out.shape == (1, 3 + 2 + 1 + 3 * 8, 64, 64)
    assert [m.shape for m in net.split(out)] == [(1, 3, 64, 64), (1, 2, 64, 64), (1, 1, 64, 64)]
    assert net.cycle_channels == 24


def test_direct_core_outputs_the_target_and_heads_run_at_stride_one():
    net = build_mcpn("direct", preset("mcpn-core"), bands=(3, 2), seeds=[0], crop=(64, 64))
    assert_paper_core(net.core, out=3)  # the core signal is the target itself
    assert len(net.heads) == 1 and len(net.cycles) == 0  # a head per guide, no cycle heads
    assert convs(net.heads[0])[0].in_channels == 3
    assert_paper_head(net.heads[0], 2, resample=False)
    with torch.no_grad():
        out = net(torch.rand(1, 32, 128, 128) * 0.1)  # a 64² patch's core input is padded to 128²
    assert out.shape == (1, 5, 64, 64)
    assert [m.shape for m in net.split(out)] == [(1, 3, 64, 64), (1, 2, 64, 64)]


def test_stacked_is_the_core_alone_with_guides_as_output_channels():
    net = build_mcpn("stacked", preset("mcpn-core"), bands=(3, 3, 2), seeds=[0], crop=(64, 64))
    assert_paper_core(net.core, out=8)
    assert len(net.heads) == 0 and len(net.cycles) == 0
    with torch.no_grad():
        out = net(torch.rand(1, 32, 128, 128) * 0.1)
    assert [m.shape[1] for m in net.split(out)] == [3, 3, 2]


@pytest.mark.parametrize("variant", ["input", "residual"])
def test_input_variants_read_the_guides_beside_the_noise(variant):
    guides = torch.rand(1, 3 + 1, 128, 128)  # one 3-band guide and its validity channel
    net = build_mcpn(variant, preset("mcpn-core"), bands=(3, 3), seeds=[0], guide_input=guides, crop=(64, 64))
    assert_paper_core(net.core, out=3, inputs=32 + 4)
    z = torch.rand(1, 32, 128, 128) * 0.1
    with torch.no_grad():
        out = net(z)
        changed = net(z + 0.01)  # the fitter's perturbation reaches the noise channels only
    assert out.shape == (1, 3, 64, 64) and len(net.split(out)) == 1
    assert torch.equal(net.guide_input, guides) and not torch.equal(out, changed)


def test_unknown_variant_and_bad_options_are_refused():
    with pytest.raises(ValueError, match="variant"):
        build_mcpn("nope", preset("mcpn-core"), bands=(3,), seeds=[0])
    with pytest.raises(InputError, match="variant"):
        MCPNConfig(variant="nope")
    with pytest.raises(InputError, match="stopping"):
        MCPNConfig(stopping="never")
    with pytest.raises(InputError, match="MSE"):
        MCPNEngine(preset("mcpn-core", loss="ssim"))
    with pytest.raises(InputError, match="unknown dip option"):
        make_mcpn_engine(steps=5, variantt="input")
    engine = make_mcpn_engine(variant="direct", steps=7, cycle_weight=0.5)
    assert (engine.mcpn.variant, engine.mcpn.cycle_weight, engine.config.steps) == ("direct", 0.5, 7)
    assert engine.config.channels_down == (16, 32, 64, 128, 128, 128)
    assert MCPNConfig.paper("emergent").stopping == "known-rmse" and MCPNConfig.paper("direct").stopping == "fixed"


# -- the losses -----------------------------------------------------------------------------


def test_modality_weights_turn_one_masked_mse_into_the_sum_of_modality_losses():
    g = torch.Generator().manual_seed(0)
    out, target = torch.rand(1, 6, 16, 16, generator=g), torch.rand(1, 6, 16, 16, generator=g)
    masks = [torch.rand(1, c, 16, 16, generator=g) > p for c, p in ((3, 0.3), (2, 0.8), (1, 0.0))]
    weights = [1.0, 0.5, 2.0]
    m = modality_weights([float(k.sum()) for k in masks], weights)
    mask = torch.cat([k.float() * v for k, v in zip(masks, m)], dim=1)
    edges = [0, 3, 5, 6]
    expected = sum(
        w * float(((out[:, a:b] - target[:, a:b])[k] ** 2).mean())
        for w, k, a, b in zip(weights, masks, edges[:-1], edges[1:])
    )
    assert float(masked_loss("mse", out, target, mask)) == pytest.approx(expected, rel=1e-5)
    assert modality_weights([10.0, 0.0, 5.0], [1.0, 1.0, 0.0])[1:] == [0.0, 0.0]  # empty or unweighted


def _tiny_case(seed: int = 0, size: int = 32):
    """A 3-band target with a horizontal gap stripe and two guides (3 + 1 bands) related to it,
    each with nodata of its own."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(4 * x + b) + np.cos(3 * y - b) for b in range(3)])
    target = (1000 + 300 * base + 20 * rng.standard_normal(base.shape)).astype(np.float32)
    observed = np.ones(target.shape, dtype=bool)
    observed[:, 12:18] = False
    observed[1, 3:6, 20:25] = False  # one band's own gap
    guides = np.concatenate([0.5 * target + 100, target[:1] * 2]).astype(np.float32)
    guide_observed = np.ones(guides.shape, dtype=bool)
    guide_observed[:3, 20:24, :10] = False
    guide_observed[3, :, 25:] = False
    return (np.where(observed, target, 0)[None], observed[None],
            np.where(guide_observed, guides, 0)[None], guide_observed[None])


def _engine(variant: str, **opts) -> MCPNEngine:
    stopping = opts.pop("stopping", "known-rmse")
    return MCPNEngine(preset("mcpn-core", **LIGHT, steps=6, check_every=2),
                      MCPNConfig(variant=variant, stopping=stopping, **opts))


@pytest.mark.parametrize("variant", VARIANTS)
def test_gap_pixels_of_target_and_guides_never_reach_the_fit(variant):
    values, observed, guides, guide_observed = _tiny_case()
    engine = _engine(variant)
    kwargs = dict(seeds=[7], guide_bands=[3, 1])
    first = engine.fill(values, observed, guides=guides, guide_observed=guide_observed, **kwargs)
    rng = np.random.default_rng(1)
    values2 = np.where(observed, values, rng.normal(5000, 3000, values.shape)).astype(np.float32)
    guides2 = np.where(guide_observed, guides, rng.normal(-2000, 500, guides.shape)).astype(np.float32)
    second = engine.fill(values2, observed, guides=guides2, guide_observed=guide_observed, **kwargs)
    assert first.values.tobytes() == second.values.tobytes()
    same = [(d.steps, d.final_loss, d.extra["losses"], d.extra["best_score"]) for d in first.diagnostics]
    assert same == [(d.steps, d.final_loss, d.extra["losses"], d.extra["best_score"]) for d in second.diagnostics]
    d = first.diagnostics[0]
    assert first.values.dtype == np.float32 and np.isfinite(first.values).all()
    assert d.engine == "mcpn" and d.steps >= 1 and np.isfinite(d.final_loss)
    assert d.extra["variant"] == variant and d.extra["guided"] and d.extra["guide_bands"] == [3, 1]
    assert d.extra["stopping"] == "known-rmse" and d.extra["best_score"] is not None
    modalities = {"emergent": 3, "direct": 3, "stacked": 3}.get(variant, 1)
    assert len([k for k in d.extra["losses"] if not k.startswith("cycle")]) == modalities
    assert len([k for k in d.extra["losses"] if k.startswith("cycle")]) == (3 if variant == "emergent" else 0)
    # ...while an observed guide pixel is evidence: changing one changes the fit
    guides3 = guides.copy()
    guides3[0, 0, 5, 5] += 400
    third = engine.fill(values, observed, guides=guides3, guide_observed=guide_observed, **kwargs)
    assert third.values.tobytes() != first.values.tobytes()


@pytest.mark.parametrize("variant", ["emergent", "input"])
def test_same_seed_same_bytes_and_patches_do_not_depend_on_their_batch(variant):
    values, observed, guides, guide_observed = _tiny_case()
    v2, o2, g2, go2 = _tiny_case(seed=3)
    batch = dict(guides=np.concatenate([guides, g2]), guide_observed=np.concatenate([guide_observed, go2]),
                 guide_bands=[3, 1])
    engine = _engine(variant, stopping="fixed")
    a = engine.fill(np.concatenate([values, v2]), np.concatenate([observed, o2]), seeds=[11, 12], **batch)
    b = engine.fill(np.concatenate([values, v2]), np.concatenate([observed, o2]), seeds=[11, 12], **batch)
    alone = engine.fill(values, observed, seeds=[11], guides=guides, guide_observed=guide_observed, guide_bands=[3, 1])
    other = engine.fill(values, observed, seeds=[13], guides=guides, guide_observed=guide_observed, guide_bands=[3, 1])
    assert a.values.tobytes() == b.values.tobytes()
    assert a.values[0].tobytes() == alone.values[0].tobytes()
    assert other.values.tobytes() != alone.values.tobytes()


@pytest.mark.parametrize("variant", ["emergent", "direct", "input"])
def test_packed_members_equal_separate_networks_in_float64(variant):
    """M packed members (grouped convolutions in core, heads and cycle heads) fit exactly
    what M separate networks fit: the engine's ``packed`` strategy changes speed, not results
    (in float32 they agree to rounding, which Adam's first sign-like steps amplify)."""
    cfg = preset("mcpn-core", **LIGHT, steps=3, reg_noise_std=0.05)
    seeds, bands = [5, 17], (3, 2)
    g = torch.Generator().manual_seed(0)
    z = torch.rand((2, 8, 32, 32), generator=g, dtype=torch.float64) * 0.1
    guide = torch.rand((2, 3, 32, 32), generator=g, dtype=torch.float64) if variant == "input" else None
    packed = build_mcpn(variant, cfg, bands, seeds, guide_input=guide).double()
    with torch.no_grad():
        channels = packed(z).shape[1]
    target = torch.rand((2, channels, 32, 32), generator=g, dtype=torch.float64)
    mask = (torch.rand((2, channels, 32, 32), generator=g) > 0.3).double()
    fit_members(cfg, packed, z, target, mask, None, [torch.Generator().manual_seed(s) for s in seeds])
    with torch.no_grad():
        out = packed(z)
    for j, s in enumerate(seeds):
        one = slice(j, j + 1)
        net = build_mcpn(variant, cfg, bands, [s], guide_input=None if guide is None else guide[one]).double()
        fit_members(cfg, net, z[one], target[one], mask[one], None, [torch.Generator().manual_seed(s)])
        with torch.no_grad():
            assert torch.max(torch.abs(out[j] - net(z[one])[0])) <= 1e-9
    if variant == "emergent":  # and the engine runs it
        values, observed, guides, guide_observed = _tiny_case()
        result = MCPNEngine(preset("mcpn-core", **LIGHT, steps=2, strategy="packed"), MCPNConfig(variant=variant)).fill(
            np.concatenate([values, values]), np.concatenate([observed, observed]), seeds=[1, 2],
            guides=np.concatenate([guides, guides]), guide_observed=np.concatenate([guide_observed, guide_observed]),
            guide_bands=[3, 1])
        assert [d.extra["strategy"] for d in result.diagnostics] == ["packed"] * 2
        assert np.isfinite(result.values).all()


def test_without_guides_it_is_single_image_dip_and_says_so():
    values, observed, guides, guide_observed = _tiny_case()
    cfg = preset("mcpn-core", **LIGHT, steps=5)
    result = MCPNEngine(cfg).fill(values, observed, seeds=[4])
    plain = DIPEngine(cfg).fill(values, observed, seeds=[4])
    assert result.values.tobytes() == plain.values.tobytes()
    d = result.diagnostics[0]
    assert d.engine == "mcpn" and d.extra["variant"] == "single" and not d.extra["guided"]
    assert d.extra["why_unguided"] == "no guides given" and d.steps == 5
    # a patch whose guides observe nothing is filled without them, and says why
    blind = MCPNEngine(cfg).fill(values, observed, seeds=[4], guides=guides,
                                 guide_observed=np.zeros_like(guide_observed))
    assert blind.values.tobytes() == plain.values.tobytes()
    assert "observe nothing" in blind.diagnostics[0].extra["why_unguided"]


def test_guide_arrays_are_checked():
    values, observed, guides, guide_observed = _tiny_case()
    engine = _engine("input")
    with pytest.raises(InputError, match="sum to the 4 guide bands"):
        engine.fill(values, observed, seeds=[0], guides=guides, guide_observed=guide_observed, guide_bands=[3, 2])
    with pytest.raises(InputError, match="guides must be"):
        engine.fill(values, observed, seeds=[0], guides=guides[:, :, :10])
    with pytest.raises(InputError, match="guide_observed shape"):
        engine.fill(values, observed, seeds=[0], guides=guides, guide_observed=guide_observed[:, :2])


def test_guided_prior_recovers_a_linear_relation_inside_the_gap():
    rng = np.random.default_rng(0)
    guide = rng.random((2, 40, 40))
    target = np.stack([0.7 * guide[0] - 0.2 * guide[1] + 0.1, 1.5 * guide[1]])
    observed = np.ones(target.shape, dtype=bool)
    observed[:, 15:25] = False
    gobs = np.ones(guide.shape, dtype=bool)
    gobs[:, 30:, 30:] = False  # the guide's own nodata: no prediction there
    prior, defined = guided_prior(np.where(observed, target, 0), observed, [(np.where(gobs, guide, 0), gobs)],
                                  window=11, ridge=0.0)
    assert defined.sum() == 2 * gobs[0].sum()
    np.testing.assert_allclose(prior[defined], target[defined], atol=1e-9)


# -- real data: a guide 16 days away --------------------------------------------------------


def test_guided_fill_beats_single_image_dip_on_real_arg25_stripes():
    """February is the truth; the gaps are January's real SLC-off stripes shifted 20 rows
    (onto ground January observes), and January is the guide. Same core, steps and seed."""
    import rasterio

    from dipfill.eval.cases import transplant_gaps
    from dipfill.eval.metrics import r2

    rows, cols = slice(200, 264), slice(150, 214)
    stacks = []
    for path in (ARG25_JAN, ARG25_FEB):
        with rasterio.open(path) as src:
            data = src.read()
            stacks.append((data.astype(np.float32), data != src.nodata))
    (jan, jan_valid), (feb, feb_valid) = stacks
    shifted = np.ones_like(jan_valid)
    shifted[:, 20:] = jan_valid[:, :-20]
    case = transplant_gaps(feb[:, rows, cols], feb_valid[:, rows, cols], shifted[:, rows, cols])
    guide, guide_valid = np.where(jan_valid, jan, 0)[:, rows, cols], jan_valid[:, rows, cols]
    scored = case.hidden & guide_valid  # hidden pixels the guide observes
    assert scored.any(axis=0).mean() > 0.15

    cfg = preset("mcpn-core", steps=60)
    guided = MCPNEngine(cfg, MCPNConfig(variant="input", stopping="fixed")).fill(
        case.values[None], case.observed[None], seeds=[0], guides=guide[None], guide_observed=guide_valid[None])
    single = MCPNEngine(cfg).fill(case.values[None], case.observed[None], seeds=[0])
    from dipfill.engines import make_engine

    idw = make_engine("fillnodata").fill(case.values[None], case.observed[None], seeds=[0])
    r2_guided = r2(case.truth, guided.values[0], scored).mean()
    r2_single = r2(case.truth, single.values[0], scored).mean()
    r2_idw = r2(case.truth, idw.values[0], scored).mean()
    assert guided.diagnostics[0].steps == single.diagnostics[0].steps == 60
    assert r2_guided > r2_single + 0.2, (r2_guided, r2_single, r2_idw)
    assert r2_guided > r2_idw + 0.1, (r2_guided, r2_single, r2_idw)  # and, here, interpolation too
