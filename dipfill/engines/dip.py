"""Deep Image Prior gap filling: one skip encoder–decoder fitted per patch. Torch only, no I/O.

The network is the "skip" hourglass of Ulyanov et al. (2018) as used by paper 000 (DIP for
Landsat-7 SLC-off gaps, Appendix A): at every level a 1×1 skip branch and a deeper branch
(stride-2 conv, conv, next level, upsample), concatenated, then conv + 1×1 conv; BatchNorm
and LeakyReLU(0.2) after every conv; reflection padding; a 1×1 conv and a sigmoid head. The
input is fixed noise (32 channels of U(0, 0.1)) or a 2-channel meshgrid, optionally
perturbed by fresh Gaussian noise every step (``reg_noise_std``, σp in the papers). The loss
is computed on observed pixels only, so the network reproduces what is known and its
structural prior decides what is not.

Why all bands in one network: paper 000 found a multi-band composite fit better than per
band fits (the bands share edges). Each band is normalised per patch from its own observed
pixels (:mod:`dipfill.engines.normalize`) and the inverse is applied to the output.

Every option the papers vary is a field of :class:`DIPConfig` (padding, up/down sampling,
activation, input kind and distribution, loss); :data:`PRESETS` names the papers'
configurations.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from dipfill.engines.base import EngineResult, PatchDiagnostics, check_batch
from dipfill.engines.normalize import denormalize, normalize
from dipfill.errors import InputError

__all__ = ["DIPConfig", "DIPEngine", "PRESETS", "build_skip_net", "preset"]

log = logging.getLogger(__name__)

_CHOICES: dict[str, tuple[str, ...]] = {
    "padding": ("reflection", "zero"),
    "upsample": ("nearest", "bilinear", "transposed"),
    "downsample": ("stride", "maxpool"),
    "activation": ("leakyrelu", "relu", "tanh"),
    "input_kind": ("noise", "meshgrid"),
    "input_noise": ("uniform", "gaussian", "rayleigh"),
    "loss": ("mse", "ssim", "mse+ssim"),
    "device": ("auto", "cpu", "cuda"),
}


@dataclass(frozen=True)
class DIPConfig:
    """Everything that defines a DIP fit. Defaults are paper 000's (preset ``landsat2020``).

    Per-level tuples run from the finest level (full resolution) to the coarsest; their
    common length is the depth. A skip width of 0 drops that level's skip connection.
    """

    channels_down: tuple[int, ...] = (128,) * 5
    channels_up: tuple[int, ...] = (128,) * 5
    channels_skip: tuple[int, ...] = (128,) * 5
    kernel_down: int = 3
    kernel_up: int = 3
    kernel_skip: int = 1
    padding: str = "reflection"
    downsample: str = "stride"
    upsample: str = "nearest"
    activation: str = "leakyrelu"
    # Paper 004 (SAR) leaves the last up layer without activation so the output is not
    # squeezed; with a sigmoid head that layer's activation hardly matters.
    last_activation: bool = True
    sigmoid: bool = True
    batchnorm_running_stats: bool = False
    input_kind: str = "noise"
    input_channels: int = 32
    input_noise: str = "uniform"
    input_noise_scale: float = 0.1
    reg_noise_std: float = 0.1  # paper 000 Appendix A: sigma_p = 1/10
    loss: str = "mse"
    lr: float = 0.01
    steps: int = 1500
    device: str = "auto"
    # Normalisation: observed percentiles -> target range; the headroom keeps gap values
    # brighter/darker than the observed percentiles reachable through the sigmoid.
    percentiles: tuple[float, float] = (1.0, 99.0)
    target_range: tuple[float, float] = (0.1, 0.9)

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise InputError(f"dip {name} must be one of {', '.join(allowed)}; got {value!r}")
        for name in ("channels_down", "channels_up", "channels_skip"):
            object.__setattr__(self, name, tuple(int(c) for c in getattr(self, name)))
        depth = len(self.channels_down)
        if depth < 1 or len(self.channels_up) != depth or len(self.channels_skip) != depth:
            raise InputError(
                "dip channels_down, channels_up and channels_skip need one entry per level "
                f"(same length >= 1); got {len(self.channels_down)}, {len(self.channels_up)}, "
                f"{len(self.channels_skip)}"
            )
        if min(self.channels_down + self.channels_up) < 1 or min(self.channels_skip) < 0:
            raise InputError("dip channel counts must be >= 1 (skip channels >= 0)")
        for name in ("kernel_down", "kernel_up", "kernel_skip"):
            k = getattr(self, name)
            if k < 1 or k % 2 == 0:
                raise InputError(f"dip {name} must be an odd size >= 1, got {k}")
        if self.steps < 1:
            raise InputError(f"dip steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise InputError(f"dip lr must be > 0, got {self.lr}")
        if self.input_channels < 1:
            raise InputError(f"dip input_channels must be >= 1, got {self.input_channels}")
        if self.reg_noise_std < 0 or self.input_noise_scale < 0:
            raise InputError("dip reg_noise_std and input_noise_scale must be >= 0")

    @property
    def depth(self) -> int:
        return len(self.channels_down)

    @property
    def net_input_channels(self) -> int:
        return 2 if self.input_kind == "meshgrid" else self.input_channels

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples as lists), for run records and config hashes."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


PRESETS: dict[str, dict[str, Any]] = {
    # Paper 000 (DIP for Landsat-7 SLC-off, ICLR 2020 workshop), Appendix A.
    "landsat2020": {},
    # Paper 004 (DIP inpainting of SAR amplitude): reflection padding, deconvolution up,
    # SSIM loss, uniform input noise, 3000 iterations, no activation on the last up
    # layer and no squashing head ("match the dynamic of the input samples").
    "sar2023": {
        "upsample": "transposed",
        "downsample": "maxpool",
        "activation": "leakyrelu",
        "last_activation": False,
        "sigmoid": False,
        "loss": "ssim",
        "steps": 3000,
    },
    # Paper 001 (DIP for cloud-gapped MODIS NDVI): 64 channels, input-noise injection.
    "ndvi2024": {
        "channels_down": (64,) * 5,
        "channels_up": (64,) * 5,
        "channels_skip": (64,) * 5,
        "reg_noise_std": 0.03,
    },
    # Paper 003 (MCPN) shared core: light encoder-decoder with 4-channel skips.
    "mcpn-core": {
        "channels_down": (16, 32, 64, 128, 128, 128),
        "channels_up": (16, 32, 64, 128, 128, 128),
        "channels_skip": (4,) * 6,
    },
}


def preset(name: str, **overrides: Any) -> DIPConfig:
    """The named paper configuration with explicit overrides applied on top."""
    if name not in PRESETS:
        raise InputError(f"unknown dip preset {name!r}; choose one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(DIPConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(f"unknown dip option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return DIPConfig(**{**PRESETS[name], **overrides})


# ---------------------------------------------------------------------------------------
# Network


def build_skip_net(config: DIPConfig, out_channels: int) -> nn.Module:
    """The skip encoder–decoder for ``config`` mapping ``net_input_channels`` to ``out_channels``.

    Built with the global torch RNG: seed it (or fork it) before calling for reproducible
    initial weights.
    """

    def act(last: bool = False) -> nn.Module:
        if last and not config.last_activation:
            return nn.Identity()
        return {
            "leakyrelu": lambda: nn.LeakyReLU(0.2),
            "relu": nn.ReLU,
            "tanh": nn.Tanh,
        }[config.activation]()

    def bn(ch: int) -> nn.Module:
        return nn.BatchNorm2d(ch, track_running_stats=config.batchnorm_running_stats)

    def conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
        pad = (k - 1) // 2
        layers: list[nn.Module] = []
        if pad and config.padding == "reflection":
            layers.append(nn.ReflectionPad2d(pad))
            pad = 0
        layers.append(nn.Conv2d(cin, cout, k, stride=stride, padding=pad))
        return nn.Sequential(*layers)

    def down(cin: int, cout: int) -> nn.Sequential:
        if config.downsample == "maxpool":
            return nn.Sequential(nn.MaxPool2d(2), *conv(cin, cout, config.kernel_down))
        return conv(cin, cout, config.kernel_down, stride=2)

    def up(ch: int) -> nn.Module:
        if config.upsample == "transposed":
            return nn.ConvTranspose2d(ch, ch, 2, stride=2)
        if config.upsample == "bilinear":
            return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        return nn.Upsample(scale_factor=2, mode="nearest")

    def level(i: int, cin: int) -> nn.Module:
        nd, nu, ns = config.channels_down[i], config.channels_up[i], config.channels_skip[i]
        last = i == 0  # the level whose output feeds the head
        deeper: list[nn.Module] = [
            down(cin, nd), bn(nd), act(),
            conv(nd, nd, config.kernel_down), bn(nd), act(),
        ]
        if i + 1 < config.depth:
            deeper.append(level(i + 1, nd))
            k = config.channels_up[i + 1]
        else:
            k = nd
        deeper.append(up(k))
        skip = (
            nn.Sequential(conv(cin, ns, config.kernel_skip), bn(ns), act()) if ns else None
        )
        return _Level(
            skip,
            nn.Sequential(*deeper),
            nn.Sequential(
                bn(ns + k),
                conv(ns + k, nu, config.kernel_up), bn(nu), act(),
                conv(nu, nu, 1), bn(nu), act(last),
            ),
        )

    head: list[nn.Module] = [level(0, config.net_input_channels), conv(config.channels_up[0], out_channels, 1)]
    if config.sigmoid:
        head.append(nn.Sigmoid())
    return nn.Sequential(*head)


class _Level(nn.Module):
    """One hourglass level: ``merge(cat(skip(x), deeper(x)))``."""

    def __init__(self, skip: nn.Module | None, deeper: nn.Module, merge: nn.Module) -> None:
        super().__init__()
        self.skip, self.deeper, self.merge = skip, deeper, merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.deeper(x)
        if self.skip is not None:
            y = torch.cat([self.skip(x), y], dim=1)
        return self.merge(y)


# ---------------------------------------------------------------------------------------
# Losses


def _gaussian_window(size: int = 11, sigma: float = 1.5):
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(a, b, *, data_range: float = 1.0, window: int = 11, sigma: float = 1.5):
    """Per-pixel SSIM (Wang et al. 2004, Gaussian 11×11, σ 1.5) of ``[N, C, H, W]`` tensors.

    Reflect-padded so the map has the input's size (patches are small; 'valid' SSIM would
    drop 10 of 256 rows). Windows wider than the image shrink to fit.
    """
    size = min(window, a.shape[-2] - (a.shape[-2] + 1) % 2, a.shape[-1] - (a.shape[-1] + 1) % 2)
    size = max(size, 1)
    ch = a.shape[1]
    w = _gaussian_window(size, sigma).to(a.dtype).to(a.device).expand(ch, 1, size, size)
    pad = (size - 1) // 2

    def filt(x):
        if pad:
            x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        return F.conv2d(x, w, groups=ch)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = filt(a), filt(b)
    saa = filt(a * a) - mu_a * mu_a
    sbb = filt(b * b) - mu_b * mu_b
    sab = filt(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))


def masked_loss(kind: str, out, target, mask):
    """Loss of ``out`` against ``target`` on ``mask`` only (all ``[N, C, H, W]``).

    MSE averages squared error over masked pixels. SSIM follows paper 004: both images are
    multiplied by the mask (so gap content cannot influence it) and ``-mean SSIM`` over the
    masked pixels is minimised; ``mse+ssim`` adds the two (``1 - SSIM`` keeps it >= 0).
    """
    n = mask.sum().clamp_min(1)
    mse = (((out - target) * mask) ** 2).sum() / n
    if kind == "mse":
        return mse
    ssim = (ssim_map(out * mask, target * mask) * mask).sum() / n
    if kind == "ssim":
        return -ssim
    return mse + (1 - ssim)


# ---------------------------------------------------------------------------------------
# Engine


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without one is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("dip device 'cuda' requested but torch sees no CUDA device")
    return name


def padded_size(n: int, depth: int) -> int:
    """Smallest size >= n that survives ``depth`` halvings with >= 2 pixels left.

    Reflection padding needs at least 2 pixels at the coarsest level, and every level must
    halve exactly so the decoder's upsampled map matches its skip branch.
    """
    unit = 2 ** depth
    return max(unit * math.ceil(n / unit), 2 * unit)


def make_input(config: DIPConfig, height: int, width: int, generator) -> Any:
    """The fixed network input ``[1, C, H, W]`` drawn from ``generator``."""
    if config.input_kind == "meshgrid":
        ys = torch.linspace(0, 1, height, dtype=torch.float32)
        xs = torch.linspace(0, 1, width, dtype=torch.float32)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([gx, gy])[None]
    shape = (1, config.input_channels, height, width)
    if config.input_noise == "uniform":
        z = torch.rand(shape, generator=generator)
    elif config.input_noise == "gaussian":
        z = torch.randn(shape, generator=generator)
    else:  # rayleigh with unit scale: sqrt(-2 ln U)
        z = torch.sqrt(-2.0 * torch.log1p(-torch.rand(shape, generator=generator)))
    return z * config.input_noise_scale


@dataclass(frozen=True)
class DIPEngine:
    """Fit one DIP network per patch (a plain per-patch loop) and return its output.

    Seeds are per patch: the initial weights, the input noise and the per-step input
    perturbations are all drawn from the patch's seed, so a patch's result does not depend
    on the batch it arrived in.
    """

    config: DIPConfig = field(default_factory=DIPConfig)

    name: ClassVar[str] = "dip"

    def fill(
        self,
        patches: NDArray[np.float32],
        observed: NDArray[np.bool_],
        *,
        seeds: Sequence[int],
    ) -> EngineResult:
        check_batch(patches, observed, seeds)
        out = np.full(patches.shape, np.nan, dtype=np.float32)
        diagnostics = []
        for b in range(patches.shape[0]):
            out[b], diag = self.fit_patch(patches[b], observed[b], int(seeds[b]))
            diagnostics.append(diag)
        return EngineResult(values=out, diagnostics=diagnostics)

    def fit_patch(
        self, values: NDArray[np.float32], observed: NDArray[np.bool_], seed: int
    ) -> tuple[NDArray[np.float32], PatchDiagnostics]:
        """Fit one ``[C, H, W]`` patch; bands with no observed pixel come back all NaN."""
        cfg = self.config
        start = time.perf_counter()
        vals = np.asarray(values, dtype=np.float64)
        obs = np.asarray(observed, dtype=bool) & np.isfinite(vals)
        has_obs = obs.any(axis=(1, 2))
        result = np.full(vals.shape, np.nan, dtype=np.float32)
        if not has_obs.any():
            return result, PatchDiagnostics(engine=self.name, extra={"reason": "no observed pixels"})

        norm, params = normalize(
            np.where(obs, vals, 0.0), obs, percentiles=cfg.percentiles, target=cfg.target_range
        )
        bands, height, width = vals.shape
        ph, pw = padded_size(height, cfg.depth), padded_size(width, cfg.depth)
        target = np.zeros((1, bands, ph, pw), dtype=np.float32)
        mask = np.zeros((1, bands, ph, pw), dtype=np.float32)
        target[0, :, :height, :width] = np.where(obs, norm, 0.0)
        mask[0, :, :height, :width] = obs

        device = torch.device(resolve_device(cfg.device))
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_skip_net(cfg, bands).to(device)
        z = make_input(cfg, ph, pw, gen).to(device)
        t_target = torch.from_numpy(target).to(device)
        t_mask = torch.from_numpy(mask).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        net.train()
        loss_value = float("nan")
        for _ in range(cfg.steps):
            inp = z
            if cfg.reg_noise_std > 0:
                noise = torch.randn(z.shape, generator=gen).to(device)
                inp = z + noise * cfg.reg_noise_std
            opt.zero_grad(set_to_none=True)
            loss = masked_loss(cfg.loss, net(inp), t_target, t_mask)
            loss.backward()
            opt.step()
            loss_value = float(loss.detach())
        with torch.no_grad():
            # The unperturbed input: the network's estimate without the training jitter.
            pred = net(z)[0, :, :height, :width].double().cpu().numpy()
        filled = denormalize(pred, params)
        result[has_obs] = filled[has_obs].astype(np.float32)
        return result, PatchDiagnostics(
            engine=self.name,
            steps=cfg.steps,
            final_loss=loss_value,
            seconds=time.perf_counter() - start,
            extra={"device": device.type},
        )
