"""DIP fitting losses on observed pixels only, one value per packed member. Torch only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ssim_map", "masked_loss"]


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(
    a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004, Gaussian 11×11, σ 1.5) of ``[N, C, H, W]`` tensors.

    Reflect-padded so the map has the input's size (patches are small; 'valid' SSIM would
    drop 10 of 256 rows). Windows wider than the image shrink to the largest odd size that fits.
    """
    size = min(window, a.shape[-2] - (a.shape[-2] + 1) % 2, a.shape[-1] - (a.shape[-1] + 1) % 2)
    size = max(size, 1)
    ch = a.shape[1]
    w = _gaussian_window(size, sigma).to(dtype=a.dtype, device=a.device).expand(ch, 1, size, size)
    pad = (size - 1) // 2

    def filt(x: torch.Tensor) -> torch.Tensor:
        if pad:
            x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        return F.conv2d(x, w, groups=ch)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = filt(a), filt(b)
    saa = filt(a * a) - mu_a * mu_a
    sbb = filt(b * b) - mu_b * mu_b
    sab = filt(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))


def masked_loss(
    kind: str, out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, data_range: float = 1.0
) -> torch.Tensor:
    """Loss per member (``[N]``) of ``out`` against ``target`` on ``mask`` (all ``[N, C, H, W]``).

    MSE averages squared error over each member's masked pixels. SSIM follows paper 004:
    both images are multiplied by the mask (gap content cannot influence it) and
    ``-mean SSIM`` over the masked pixels is minimised; ``mse+ssim`` adds MSE and
    ``1 - SSIM``. ``data_range`` is SSIM's L (its constants are ``(0.01 L)²`` and
    ``(0.03 L)²``): the span the normalised values can take (:attr:`DIPConfig.ssim_data_range`),
    so the constants keep their intended size relative to the data whatever the target range.
    Per-member values are what packing needs: the fitter sums them, so each member's
    gradient is exactly that of its own loss.
    """
    dims = (1, 2, 3)
    n = mask.sum(dim=dims).clamp_min(1)
    mse = (((out - target) * mask) ** 2).sum(dim=dims) / n
    if kind == "mse":
        return mse
    ssim = (ssim_map(out * mask, target * mask, data_range=data_range) * mask).sum(dim=dims) / n
    if kind == "ssim":
        return -ssim
    return mse + (1 - ssim)
