"""The DIP network and losses: the papers' architectures by name, SSIM, masked losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dipfill.engines.config import DIPConfig, padded_size, preset
from dipfill.engines.dipnet import build_skip_net
from dipfill.engines.losses import masked_loss, ssim_map


def modules(net: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, kind)]


def test_landsat2020_is_paper_000_appendix_a():
    cfg = preset("landsat2020")
    assert cfg == DIPConfig()
    net = build_skip_net(cfg, out_channels=4)
    convs = modules(net, nn.Conv2d)
    strided = [c for c in convs if c.stride == (2, 2)]
    assert len(strided) == 5 and all(c.out_channels == 128 and c.kernel_size == (3, 3) for c in strided)
    skips = [c for c in convs if c.kernel_size == (1, 1) and c.in_channels != c.out_channels]
    assert {c.out_channels for c in skips[:-1]} == {128}  # 1x1 skips, then the 1x1 head
    assert convs[-1].out_channels == 4 and convs[-1].kernel_size == (1, 1)
    assert len(modules(net, nn.ReflectionPad2d)) > 0 and not any(c.padding != (0, 0) for c in convs)
    ups = modules(net, nn.Upsample)
    assert len(ups) == 5 and all(u.mode == "nearest" for u in ups)
    assert all(a.negative_slope == 0.2 for a in modules(net, nn.LeakyReLU))
    assert isinstance(net.body[-1], nn.Sigmoid)
    assert all(not b.track_running_stats for b in modules(net, nn.BatchNorm2d))
    assert (cfg.input_kind, cfg.input_channels, cfg.input_noise_scale) == ("noise", 32, 0.1)
    assert (cfg.lr, cfg.steps, cfg.loss) == (0.01, 1500, "mse")
    out = net(torch.rand(1, 32, 64, 64) * 0.1)  # [members, C, H, W]
    assert out.shape == (1, 4, 64, 64) and float(out.detach().min()) > 0 and float(out.detach().max()) < 1


def test_presets_build_what_their_papers_describe():
    sar = build_skip_net(preset("sar2023"), 2)
    assert len(modules(sar, nn.ConvTranspose2d)) == 5 and len(modules(sar, nn.MaxPool2d)) == 5
    assert not isinstance(sar.body[-1], nn.Sigmoid) and preset("sar2023").loss == "ssim"
    assert preset("sar2023").steps == 3000
    mcpn = build_skip_net(preset("mcpn-core"), 3)
    strided = [c.out_channels for c in modules(mcpn, nn.Conv2d) if c.stride == (2, 2)]
    assert strided == [16, 32, 64, 128, 128, 128]
    ndvi = preset("ndvi2024")
    assert ndvi.channels_down == (64,) * 5 and ndvi.reg_noise_std > 0
    meshgrid = build_skip_net(preset("landsat2020", input_kind="meshgrid"), 3)
    assert modules(meshgrid, nn.Conv2d)[0].in_channels == 2
    tanh = build_skip_net(preset("landsat2020", activation="tanh", channels_skip=(0,) * 5), 3)
    assert len(modules(tanh, nn.Tanh)) > 0 and len(modules(tanh, nn.LeakyReLU)) == 0


def test_padded_size_halves_cleanly_and_keeps_two_pixels():
    for n in (1, 7, 64, 65, 200, 256, 257):
        for depth in (1, 5, 6):
            p = padded_size(n, depth)
            assert p >= n and p % 2**depth == 0 and p // 2**depth >= 2


def test_ssim_is_one_for_identical_images_and_lower_for_noise():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 2, 40, 40, generator=g, dtype=torch.float64)
    assert torch.allclose(ssim_map(a, a), torch.ones_like(a))
    noisy = (a + 0.2 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    assert float(ssim_map(a, noisy).mean()) < 0.9


@pytest.mark.parametrize("kind", ["mse", "ssim", "mse+ssim"])
def test_masked_losses_ignore_what_the_mask_hides(kind):
    g = torch.Generator().manual_seed(1)
    out = torch.rand(1, 3, 32, 32, generator=g)
    target = torch.rand(1, 3, 32, 32, generator=g)
    mask = (torch.rand(1, 3, 32, 32, generator=g) > 0.3).float()
    other = torch.where(mask > 0, target, torch.rand(1, 3, 32, 32, generator=g))
    loss = masked_loss(kind, out, target, mask)
    assert loss.shape == (1,)  # one value per member
    assert torch.equal(loss, masked_loss(kind, out, other, mask))
    perfect = torch.where(mask > 0, target, out)
    assert float(masked_loss(kind, perfect, target, mask)) < float(loss)
    # the value, written out: MSE over the masked pixels; paper 004's SSIM term is the masked
    # mean of the SSIM map of both images multiplied by the mask
    mse = float((((out - target) ** 2) * mask).sum() / mask.sum())
    ssim = float((ssim_map(out * mask, target * mask) * mask).sum() / mask.sum())
    expected = {"mse": mse, "ssim": -ssim, "mse+ssim": mse + 1 - ssim}[kind]
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # a perfect fit on the mask reaches each loss's minimum
    best = {"mse": 0.0, "ssim": -1.0, "mse+ssim": 0.0}[kind]
    on_mask = masked_loss(kind, target * mask, target, mask)
    assert float(on_mask) == pytest.approx(best, abs=1e-5)


def test_ssim_loss_constants_follow_the_target_range(monkeypatch):
    """SSIM's L is the span the normalised values can take: 1 under a sigmoid head, 2 for
    sar2023's [-1, 1] (paper 004). With L scaled with the data the loss is scale-invariant,
    so fitting [-1, 1] data is the same problem as fitting it halved with L = 1."""
    assert preset("landsat2020").ssim_data_range == 1.0 and preset("sar2023").ssim_data_range == 2.0
    assert preset("sar2023").target_range == (-1.0, 1.0)
    g = torch.Generator().manual_seed(2)
    out = torch.rand(1, 2, 32, 32, generator=g, dtype=torch.float64) * 2 - 1
    target = torch.rand(1, 2, 32, 32, generator=g, dtype=torch.float64) * 2 - 1
    mask = (torch.rand(1, 2, 32, 32, generator=g) > 0.3).double()
    wide = masked_loss("ssim", out, target, mask, data_range=2.0)
    assert torch.allclose(wide, masked_loss("ssim", out / 2, target / 2, mask, data_range=1.0))
    assert not torch.allclose(wide, masked_loss("ssim", out, target, mask))  # L = 1 is another loss
    # and the fitting loop hands the config's L to the loss
    import numpy as np

    from dipfill.engines import fit as fit_module
    from dipfill.engines import make_engine

    seen: list[float] = []
    real = fit_module.masked_loss

    def spy(*args, **kwargs):
        seen.append(kwargs["data_range"])
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_module, "masked_loss", spy)
    engine = make_engine("dip", preset="sar2023", steps=1, strategy="loop", compile="off", precision="fp32",
                         device="cpu", channels_down=(8,) * 5, channels_up=(8,) * 5, channels_skip=(4,) * 5)
    values = np.random.default_rng(0).normal(-12, 3, (1, 2, 32, 32)).astype(np.float32)
    observed = np.ones(values.shape, dtype=bool)
    observed[..., 8:24, 8:24] = False
    engine.fill(values, observed, seeds=[0])
    assert seen == [2.0]

