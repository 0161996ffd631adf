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
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from dipfill.engines.base import EngineResult, PatchDiagnostics, check_batch
from dipfill.engines.normalize import NormParams, denormalize, normalize
from dipfill.errors import InputError

__all__ = ["DIPConfig", "DIPEngine", "PRESETS", "preset", "Monitor"]

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
    "stopping": ("fixed", "holdout", "emv"),
    "strategy": ("auto", "loop", "packed"),
    "compile": ("auto", "on", "off"),
    "precision": ("auto", "fp32", "bf16"),
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
    # When to stop and which iterate to keep (dipfill.engines.stopping): "fixed" runs all
    # steps and keeps the last; "holdout" scores gap-shaped held-out observed pixels every
    # check_every steps and stops a patch after `patience` checks without improvement;
    # "emv" does the same on the output's exponential moving variance (ES-EMV).
    stopping: str = "fixed"
    check_every: int = 25
    patience: int = 8
    holdout_fraction: float = 0.05
    emv_alpha: float = 0.1
    # Observed pixels whose value is <= this stay out of the loss. Paper 001 fits NDVI on
    # vegetation only (NDVI <= 0 excluded): loss_min_value=0 on NDVI. None: all observed.
    loss_min_value: float | None = None
    # How to run, not what to compute (dipfill.engines.strategy): "auto" measures once per
    # device and caches. Results agree to float rounding across choices, not bit for bit:
    # pin them for byte-identical reruns on other machines.
    strategy: str = "auto"
    compile: str = "auto"
    precision: str = "auto"

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
        if self.check_every < 1 or self.patience < 1:
            raise InputError("dip check_every and patience must be >= 1")
        if not 0 < self.holdout_fraction < 0.5:
            raise InputError(f"dip holdout_fraction must be in (0, 0.5), got {self.holdout_fraction}")
        if not 0 < self.emv_alpha < 1:
            raise InputError(f"dip emv_alpha must be in (0, 1), got {self.emv_alpha}")

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
    # Paper 001 (DIP for cloud-gapped MODIS NDVI): 64 channels, input-noise injection and
    # early stopping (here on gap-shaped held-out pixels). Its vegetation-only loss is
    # `loss_min_value=0` on NDVI input (not set here: it is meaningless on reflectance).
    "ndvi2024": {
        "channels_down": (64,) * 5,
        "channels_up": (64,) * 5,
        "channels_skip": (64,) * 5,
        "reg_noise_std": 0.03,
        "stopping": "holdout",
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


def make_input(config: DIPConfig, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
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




# monitor(step, values[B, C, H, W] in data units, held-out RMSE[B] in normalised units):
# called every check_every steps; patches not being fitted at that moment are NaN.
Monitor = Callable[[int, NDArray[np.float32], NDArray[np.float64]], None]


@dataclass(frozen=True)
class _Prepared:
    """One patch ready to fit: normalised, padded targets and masks."""

    index: int
    seed: int
    params: NormParams
    has_obs: NDArray[np.bool_]
    target: NDArray[np.float32]  # [C, PH, PW]
    train: NDArray[np.float32]
    holdout: NDArray[np.float32] | None


@dataclass(frozen=True)
class DIPEngine:
    """Fit one DIP network per patch and return its prediction for every pixel.

    Seeds are per patch: initial weights, input noise, per-step input perturbation and the
    held-out pixels all come from the patch's seed, so a patch's result does not depend on
    its batch neighbours (bit for bit with the ``loop`` strategy; to float rounding when
    packed, where kernels see other shapes).
    """

    config: DIPConfig = field(default_factory=DIPConfig)

    name: ClassVar[str] = "dip"

    def fill(
        self,
        patches: NDArray[np.float32],
        observed: NDArray[np.bool_],
        *,
        seeds: Sequence[int],
        monitor: Monitor | None = None,
    ) -> EngineResult:
        from dipfill.engines.strategy import describe, resolve_plan

        check_batch(patches, observed, seeds)
        cfg = self.config
        count, bands, height, width = patches.shape
        out = np.full(patches.shape, np.nan, dtype=np.float32)
        diagnostics = [PatchDiagnostics(engine=self.name, extra={"reason": "no observed pixels"})] * count
        todo = [p for p in (self._prepare(b, patches[b], observed[b], int(seeds[b])) for b in range(count)) if p]
        if not todo:
            return EngineResult(out, diagnostics)
        device = torch.device(resolve_device(cfg.device))
        plan = resolve_plan(cfg, device, (bands, height, width), len(todo))
        groups = [[p] for p in todo] if plan.strategy == "loop" else [todo]
        for group in groups:
            start = time.perf_counter()
            fit = self._fit_group(group, device, plan, (count, bands, height, width), monitor)
            seconds = (time.perf_counter() - start) / len(group)
            for j, p in enumerate(group):
                pred = fit.prediction[j, :, :height, :width].double().cpu().numpy()
                out[p.index][p.has_obs] = denormalize(pred, p.params)[p.has_obs].astype(np.float32)
                diagnostics[p.index] = PatchDiagnostics(
                    engine=self.name,
                    steps=int(fit.steps[j]),
                    final_loss=float(fit.final_loss[j]),
                    seconds=seconds,
                    extra={
                        "best_step": int(fit.best_step[j]),
                        "best_holdout_rmse": float(fit.best_score[j]) if cfg.stopping == "holdout" else None,
                        "stopped_by": fit.stopped_by[j],
                        "device": device.type,
                        "plan": {k: v for k, v in describe(plan).items() if k != "seconds_per_patch_step"},
                    },
                )
        return EngineResult(out, diagnostics)

    def _prepare(self, index: int, values: NDArray, observed: NDArray[np.bool_], seed: int) -> _Prepared | None:
        """Normalise one ``[C, H, W]`` patch, pad it and build its loss and held-out masks."""
        from dipfill.engines.stopping import stripe_holdout

        cfg = self.config
        vals = np.asarray(values, dtype=np.float64)
        obs = np.asarray(observed, dtype=bool) & np.isfinite(vals)
        has_obs = obs.any(axis=(1, 2))
        if not has_obs.any():
            return None
        norm, params = normalize(np.where(obs, vals, 0.0), obs, percentiles=cfg.percentiles, target=cfg.target_range)
        train = obs if cfg.loss_min_value is None else obs & (vals > cfg.loss_min_value)
        holdout = None
        if cfg.stopping == "holdout":
            rng = np.random.default_rng(seed)
            held = stripe_holdout(obs.any(axis=0), cfg.holdout_fraction, rng)[None] & obs
            train = train & ~held
            holdout = self._pad(held)
        return _Prepared(index, seed, params, has_obs, self._pad(np.where(obs, norm, 0.0)), self._pad(train), holdout)

    def _pad(self, a: NDArray) -> NDArray[np.float32]:
        """Zero-pad ``[C, H, W]`` to sizes the network can halve ``depth`` times."""
        c, h, w = a.shape
        depth = self.config.depth
        out = np.zeros((c, padded_size(h, depth), padded_size(w, depth)), dtype=np.float32)
        out[:, :h, :w] = a
        return out

    def _fit_group(self, group: list[_Prepared], device: torch.device, plan, shape: tuple[int, ...],
                   monitor: Monitor | None):
        from dipfill.engines.dipnet import pack_members
        from dipfill.engines.fit import fit_members
        from dipfill.engines.strategy import prepare_net

        cfg = self.config
        count, bands, height, width = shape
        seeds = [p.seed for p in group]
        _, ph, pw = group[0].target.shape
        z = torch.cat([make_input(cfg, ph, pw, torch.Generator().manual_seed(s)) for s in seeds]).to(device)
        noise = [torch.Generator(device=device).manual_seed(s ^ 0x5EED) for s in seeds]
        net = prepare_net(pack_members(cfg, bands, seeds), device, plan)

        def tensor(arrays: list[NDArray]) -> torch.Tensor:
            return torch.from_numpy(np.stack(arrays)).to(device)

        holdout = tensor([p.holdout for p in group]) if cfg.stopping == "holdout" else None
        relay = None
        if monitor is not None:
            def relay(step: int, pred: torch.Tensor, score: NDArray[np.float64]) -> None:
                values = np.full(shape, np.nan, dtype=np.float32)
                rmse = np.full(count, np.nan)
                for j, p in enumerate(group):
                    filled = denormalize(pred[j, :, :height, :width].double().cpu().numpy(), p.params)
                    values[p.index][p.has_obs] = filled[p.has_obs]
                    rmse[p.index] = score[j]
                monitor(step, values, rmse)

        return fit_members(
            cfg, net, z, tensor([p.target for p in group]), tensor([p.train for p in group]), holdout, noise,
            bf16=plan.bf16, fused_adam=plan.fused_adam, monitor=relay,
        )
