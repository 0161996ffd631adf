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

Every option the papers vary is a field of :class:`~dipfill.engines.config.DIPConfig`
(padding, up/down sampling, activation, input kind and distribution, loss);
:data:`~dipfill.engines.config.PRESETS` names the papers' configurations. This module wires
the pieces: normalise and pad each patch, build the members (:mod:`~dipfill.engines.dipnet`),
pick how to run them (:mod:`~dipfill.engines.strategy`), fit (:mod:`~dipfill.engines.fit`),
map the prediction back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from dipfill.engines.base import EngineResult, PatchDiagnostics, check_batch
from dipfill.engines.blend import judged_blend
from dipfill.engines.cache import MemoryStrategyCache, StrategyCache
from dipfill.engines.config import PRESETS, DIPConfig, Monitor, padded_size, preset
from dipfill.engines.dipnet import load_member_state, pack_members
from dipfill.engines.fit import FitOutcome, fit_members
from dipfill.engines.normalize import NormParams, denormalize, normalize
from dipfill.engines.holdout import stripe_holdout
from dipfill.engines.strategy import Plan, describe, prepare_net, resolve_plan
from dipfill.errors import InputError

# DIPConfig, PRESETS, preset, padded_size and Monitor live in dipfill.engines.config (so the
# modules below the engine can read them without importing it); they are re-exported here
# because callers have always imported them from this module.
__all__ = [
    "DIPConfig", "DIPEngine", "Monitor", "PRESETS", "make_input", "padded_size", "preset", "resolve_device",
]

log = logging.getLogger(__name__)


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without one is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("dip device 'cuda' requested but torch sees no CUDA device")
    return name


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
    values: NDArray[np.float64]  # [C, H, W] as given (for the blend's interpolation)
    observed: NDArray[np.bool_]  # [C, H, W] usable pixels
    held: NDArray[np.bool_] | None  # [C, H, W] observed pixels kept out of the loss


@dataclass(frozen=True)
class DIPEngine:
    """Fit one DIP network per patch and return its prediction for every pixel.

    Seeds are per patch: initial weights, input noise, per-step input perturbation and the
    held-out pixels all come from the patch's seed, so a patch's result does not depend on
    its batch neighbours (bit for bit with the ``loop`` strategy; to float rounding when
    packed, where kernels see other shapes).

    ``strategy_cache`` keeps the measured execution plans (strategy ``auto``); it is the
    caller's, because keeping them across runs means a file and engines open none. The
    default keeps them in memory for this engine's lifetime. It is not part of the
    engine's identity: two engines with equal configs compare equal whatever they cache.
    """

    config: DIPConfig = field(default_factory=DIPConfig)
    strategy_cache: StrategyCache = field(default_factory=MemoryStrategyCache, compare=False, repr=False)
    # Warm start (issue 14 item 3, measured in scripts/bench_warm_start.py): the weights of
    # one fitted member (:meth:`fit_state`) every patch starts from instead of its seed's
    # initialisation; the input noise and perturbations still come from the patch's seed.
    init_state: dict[str, torch.Tensor] | None = field(default=None, compare=False, repr=False)

    name: ClassVar[str] = "dip"
    uses_guides: ClassVar[bool] = False  # single-image DIP: guides are accepted and ignored

    def fill(
        self,
        patches: NDArray[np.float32],
        observed: NDArray[np.bool_],
        *,
        seeds: Sequence[int],
        guides: NDArray[np.float32] | None = None,
        guide_observed: NDArray[np.bool_] | None = None,
        guide_bands: Sequence[int] | None = None,
        monitor: Monitor | None = None,
    ) -> EngineResult:
        """Fill every patch that has an observed pixel; see :class:`~dipfill.engines.base.Engine`.

        Guides are checked and ignored (``uses_guides`` is False: this network sees the
        target alone). ``monitor`` (see :data:`~dipfill.engines.config.Monitor`) watches the
        fits every ``check_every`` steps, in data units: how the convergence plots of
        ``dipfill eval`` are drawn without a second fitting loop.
        """
        check_batch(patches, observed, seeds, guides=guides, guide_observed=guide_observed, guide_bands=guide_bands)
        cfg = self.config
        count, bands, height, width = patches.shape
        out = np.full(patches.shape, np.nan, dtype=np.float32)
        diagnostics = [PatchDiagnostics(engine=self.name, extra={"reason": "no observed pixels"})] * count
        todo = [p for p in (self._prepare(b, patches[b], observed[b], int(seeds[b])) for b in range(count)) if p]
        if not todo:
            return EngineResult(out, diagnostics)
        device = torch.device(resolve_device(cfg.device))
        plan = resolve_plan(cfg, device, (bands, height, width), len(todo), cache=self.strategy_cache)
        groups = [[p] for p in todo] if plan.strategy == "loop" else [todo]
        for group in groups:
            start = time.perf_counter()
            fit, _ = self._fit_group(group, device, plan, (count, bands, height, width), monitor)
            seconds = (time.perf_counter() - start) / len(group)
            for j, p in enumerate(group):
                pred = denormalize(fit.prediction[j, :, :height, :width].double().cpu().numpy(), p.params)
                blend: dict = {}
                if cfg.blend != "none" and p.held is not None:
                    pred, blend = judged_blend(p.values, p.observed, p.held, pred, z=cfg.blend_z)
                out[p.index][p.has_obs] = pred[p.has_obs].astype(np.float32)
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
                        **blend,
                    },
                )
        return EngineResult(out, diagnostics)

    def fit_state(self, patch: NDArray[np.float32], observed: NDArray[np.bool_], *, seed: int
                  ) -> dict[str, torch.Tensor]:
        """Fit one ``[C, H, W]`` patch as :meth:`fill` does and return the network's weights
        (on the CPU): what :attr:`init_state` takes to start other patches from."""
        prepared = self._prepare(0, patch, observed, seed)
        if prepared is None:
            raise InputError("fit_state: the patch has no observed pixel to fit")
        device = torch.device(resolve_device(self.config.device))
        plan = Plan("loop", False, False, channels_last=False, fused_adam=device.type == "cuda")
        _, net = self._fit_group([prepared], device, plan, (1, *patch.shape), None)
        return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}

    def _prepare(self, index: int, values: NDArray, observed: NDArray[np.bool_], seed: int) -> _Prepared | None:
        """Normalise one ``[C, H, W]`` patch, pad it and build its loss and held-out masks."""
        cfg = self.config
        vals = np.asarray(values, dtype=np.float64)
        obs = np.asarray(observed, dtype=bool) & np.isfinite(vals)
        has_obs = obs.any(axis=(1, 2))
        if not has_obs.any():
            return None
        # vegetation only (paper 001, loss_min_value): pixels at or below the threshold stay out
        # of the loss, the held-out scoring and the normalisation, so nothing the fit sees
        # depends on them (a band without such pixels keeps all its observed ones)
        train = obs if cfg.loss_min_value is None else obs & (vals > cfg.loss_min_value)
        train = np.where(train.any(axis=(1, 2), keepdims=True), train, obs)
        norm, params = normalize(np.where(obs, vals, 0.0), train, percentiles=cfg.percentiles, target=cfg.target_range)
        holdout = held = None
        if cfg.holds_out:
            rng = np.random.default_rng(seed)
            held = stripe_holdout(obs.any(axis=0), cfg.holdout_fraction, rng)[None] & train
            train = train & ~held
            holdout = self._pad(held)
        return _Prepared(index, seed, params, has_obs, self._pad(np.where(obs, norm, 0.0)), self._pad(train), holdout,
                         vals, obs, held)

    def _pad(self, a: NDArray) -> NDArray[np.float32]:
        """Zero-pad ``[C, H, W]`` to sizes the network can halve ``depth`` times."""
        c, h, w = a.shape
        depth = self.config.depth
        out = np.zeros((c, padded_size(h, depth), padded_size(w, depth)), dtype=np.float32)
        out[:, :h, :w] = a
        return out

    def _fit_group(self, group: list[_Prepared], device: torch.device, plan: Plan, shape: tuple[int, ...],
                   monitor: Monitor | None) -> tuple[FitOutcome, torch.nn.Module]:
        """Fit ``group`` as one model of ``len(group)`` members (one member for ``loop``);
        returns how the fit went and the fitted network."""
        cfg = self.config
        count, bands, height, width = shape
        seeds = [p.seed for p in group]
        _, ph, pw = group[0].target.shape
        z = torch.cat([make_input(cfg, ph, pw, torch.Generator().manual_seed(s)) for s in seeds]).to(device)
        noise = [torch.Generator(device=device).manual_seed(s ^ 0x5EED) for s in seeds]
        members = pack_members(cfg, bands, seeds)
        if self.init_state is not None:
            load_member_state(members, self.init_state)
        net = prepare_net(members, device, plan)

        def tensor(arrays: list[NDArray]) -> torch.Tensor:
            return torch.from_numpy(np.stack(arrays)).to(device)

        holdout = tensor([p.holdout for p in group]) if cfg.holds_out else None
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

        fit = fit_members(
            cfg, net, z, tensor([p.target for p in group]), tensor([p.train for p in group]), holdout, noise,
            bf16=plan.bf16, fused_adam=plan.fused_adam, monitor=relay,
        )
        return fit, net
