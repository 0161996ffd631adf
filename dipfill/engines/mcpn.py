"""Guided DIP: fill a target with other acquisitions as guides (paper 003, MCPN). Torch only, no I/O.

A guide is another image of the same ground on the same grid: another date, another sensor
(SAR), a composite. Single-image DIP can only interpolate across a gap; a guide observed
there carries the structure that is missing. Paper 003 parameterises all modalities with
one network so that they share a signal (:mod:`~dipfill.engines.mcpn_net` has the
networks); the variants are ``emergent`` (its Emergent Core MCPN: core → 8-channel core
signal → a [32, 32] head per modality, cycle heads and a cycle-consistency loss),
``direct`` (Direct Core: the core outputs the target, heads map it to the guides),
``stacked`` (the paper's baseline: guides as extra output channels of one network),
``input`` (guides concatenated to the network input, as DIP's flash/no-flash) and
``residual`` (a hybrid, not from the paper: the ``input`` network fits the residual of a
classical guided prediction, a local linear regression of the target on the guide,
:func:`guided_prior`, with GDAL's interpolation where no guide observes).

What is reused, not rewritten: the core is dipnet's skip network (preset ``mcpn-core``),
the heads are the same network with the paper's widths, and the fit is
:func:`~dipfill.engines.fit.fit_members` with its stopping rules. Paper 003's loss is a sum
of per-modality MSEs (each on that modality's own observed pixels) plus the cycle terms;
``fit_members`` minimises ``masked_loss("mse", out, target, mask)`` = Σ((out − t)·m)² / Σm
over all output channels, so :func:`modality_weights` chooses a constant mask value per
modality that makes that one expression equal the paper's sum exactly. A gap pixel of the
target or a nodata pixel of a guide has mask 0: its value never reaches the loss (and, for
``input``, a guide's nodata pixels are set to 0 with a validity channel before they reach
the network).

Stopping: ``fixed``, ``holdout`` (gap-shaped hold-out, as DIP) and ``emv`` as configured in
:class:`~dipfill.engines.config.DIPConfig`, plus paper 003's ``known-rmse`` (Section 2.2:
the RMSE between the target and the output on the known region, checked every
``check_every`` steps; the iterate with the lowest is kept, and a member stops after
``patience`` checks without a new minimum). The paper found it best for the Emergent
variant and fixed steps (4000) best for Direct and Stacked.

Without guides (or for a patch whose guides observe nothing) the engine is single-image
DIP: it hands those patches to :class:`~dipfill.engines.dip.DIPEngine` with the same config
(``known-rmse``, which DIPEngine does not have, becomes ``fixed`` there) and says so in the
diagnostics (``variant: "single"``, ``guided: False``, ``why_unguided``).

Judging the guide: MCPN trusts whatever the guide says (measured: 0.837 r² against
``fillnodata``'s 0.884 with a guide of other ground). With ``blend="fillnodata"`` (the
DIPConfig default) the target's gaps are :func:`~dipfill.engines.blend.judged_blend`-ed
with ``fillnodata`` by a weight measured on held-out target pixels, so a guide that misleads
the network costs its weight, not the fill.

What it costs (scripts/bench_mcpn.py, one CPU thread, 128² tile, 300 steps): Stacked,
``input`` and ``residual`` ~45 s (single-image DIP 34 s); Direct ~120 s and Emergent ~145 s
(its four full-resolution heads cost ~2.5× the core). At such CPU budgets (hundreds of
steps, not the paper's thousands) ``emergent``/``direct``/``stacked`` did not beat GDAL's
fill; ``input`` and ``residual`` did, by fitting only the target from an input that
already holds the guide. ``residual`` is the default: it starts from the classical guided
fill, so the network only has to learn what the regression misses, and is the best and
the safest variant measured (docs/benchmarks, "Guided DIP").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from dipfill.engines import classical
from dipfill.engines.blend import judged_blend
from dipfill.engines.base import EngineResult, PatchDiagnostics, check_batch
from dipfill.engines.cache import MemoryStrategyCache, StrategyCache
from dipfill.engines.config import DIPConfig, coerce_field_types, padded_size
from dipfill.engines.config import preset as dip_preset
from dipfill.engines.dip import DIPEngine, make_input, resolve_device
from dipfill.engines.fit import fit_members
from dipfill.engines.mcpn_net import VARIANTS, HeadSpec, MCPNNet, build_mcpn
from dipfill.engines.normalize import NormParams, denormalize, normalize
from dipfill.engines.stopping import stripe_holdout
from dipfill.errors import InputError

__all__ = [
    "MCPNConfig", "MCPNEngine", "VARIANTS", "guided_prior", "make_mcpn_engine", "modality_weights", "spatial_fill",
]

log = logging.getLogger(__name__)

STOPPING = ("fixed", "holdout", "emv", "known-rmse")


@dataclass(frozen=True)
class MCPNConfig:
    """What guided DIP adds to a :class:`DIPConfig` (which configures the core and the fit).

    The head fields are paper 003's (Section 2.1): an 8-channel core signal for Emergent,
    heads of two levels of [32, 32] channels with [32, 32] skips and 3×3 kernels, cycle
    heads. ``guide_weight`` scales each guide's loss against the target's and
    ``cycle_weight`` each cycle term (the paper sums them unweighted: 1). ``stopping`` None
    uses the DIP config's rule; ``known-rmse`` is paper 003's. ``prior_window`` is the
    ``residual`` variant's regression window (px).

    The default variant is the one that measured best on CPU budgets (``residual``, the
    hybrid: on ARG25 with a 16-day guide, 300 steps, r² 0.826 / 0.788 on thin / wide
    stripes against ``input`` 0.815 / 0.616 and the classical ``guided`` 0.795 / 0.734; with
    a guide of other ground −0.004 / −0.001 from fillnodata against ``input`` 0.000 /
    −0.059; scripts/bench_mcpn.py); :meth:`paper` gives the paper's own setting of each of
    its variants.
    """

    variant: str = "residual"
    core_channels: int = 8
    head_channels: tuple[int, ...] = (32, 32)
    head_skip: tuple[int, ...] = (32, 32)
    head_kernel: int = 3
    cycle: bool = True
    guide_weight: float = 1.0
    cycle_weight: float = 1.0
    stopping: str | None = None
    prior_window: int = 31

    @classmethod
    def paper(cls, variant: str = "emergent", **overrides: Any) -> "MCPNConfig":
        """Paper 003's choice for ``variant``: known-region RMSE stopping for Emergent, fixed
        steps for Direct and Stacked (its Section 3.1; the steps, 4000, are the DIP
        config's, preset ``mcpn``). The other variants are not the paper's: as configured."""
        stopping = {"emergent": "known-rmse", "direct": "fixed", "stacked": "fixed"}.get(variant)
        return cls(**{"variant": variant, "stopping": stopping, **overrides})

    def __post_init__(self) -> None:
        coerce_field_types(self, "mcpn")
        if self.variant not in VARIANTS:
            raise InputError(f"mcpn variant must be one of {', '.join(VARIANTS)}; got {self.variant!r}")
        if self.stopping is not None and self.stopping not in STOPPING:
            raise InputError(f"mcpn stopping must be one of {', '.join(STOPPING)}; got {self.stopping!r}")
        if not self.head_channels or len(self.head_skip) != len(self.head_channels):
            raise InputError("mcpn head_channels and head_skip need one entry per head level (same length >= 1)")
        if min(self.head_channels) < 1 or min(self.head_skip) < 0 or self.core_channels < 1:
            raise InputError("mcpn channel counts must be >= 1 (skips >= 0)")
        if self.head_kernel < 1 or self.head_kernel % 2 == 0:
            raise InputError(f"mcpn head_kernel must be an odd size >= 1, got {self.head_kernel}")
        if self.guide_weight < 0 or self.cycle_weight < 0:
            raise InputError("mcpn guide_weight and cycle_weight must be >= 0")
        if self.prior_window < 3:
            raise InputError(f"mcpn prior_window must be >= 3 px, got {self.prior_window}")

    @property
    def head(self) -> HeadSpec:
        return HeadSpec(self.head_channels, self.head_skip, self.head_kernel)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def make_mcpn_engine(*, preset: str = "mcpn-core", strategy_cache: StrategyCache | None = None,
                     **options: Any) -> "MCPNEngine":
    """An :class:`MCPNEngine` from flat options (what ``make_engine("mcpn", ...)`` passes):
    :class:`MCPNConfig` fields go there, the rest override the :class:`DIPConfig` preset
    ``preset`` (unknown names are errors that list the known ones)."""
    guided = {k: options.pop(k) for k in list(options) if k in MCPNConfig.__dataclass_fields__}
    config = dip_preset(preset, **options)
    engine = MCPNEngine(config, MCPNConfig(**guided))
    return engine if strategy_cache is None else replace(engine, strategy_cache=strategy_cache)


def modality_weights(counts: Sequence[float], weights: Sequence[float]) -> list[float]:
    """Mask values ``m_k`` that turn ``Σ((out−t)·m)² / Σm`` into ``Σ_k w_k · MSE_k``.

    ``counts[k]`` is the number of masked elements of modality k (n_k). With
    ``m_k = c·sqrt(w_k / n_k)`` and ``c = Σ_j sqrt(w_j · n_j)``: Σm = c², so each modality's
    squared errors are weighted by ``m_k² / c² = w_k / n_k``. Modalities without elements or
    weight get 0.
    """
    c = sum(np.sqrt(w * n) for n, w in zip(counts, weights) if n > 0 and w > 0)
    return [float(c * np.sqrt(w / n)) if n > 0 and w > 0 else 0.0 for n, w in zip(counts, weights)]


def _box_sum(a: NDArray[np.float64], radius: int) -> NDArray[np.float64]:
    """Sum of ``a[..., H, W]`` over the (2r+1)² window around each pixel, cut at the edges."""
    h, w = a.shape[-2:]
    s = np.zeros(a.shape[:-2] + (h + 1, w + 1))
    s[..., 1:, 1:] = a.cumsum(-2).cumsum(-1)
    y0 = np.clip(np.arange(h) - radius, 0, h)
    y1 = np.clip(np.arange(h) + radius + 1, 0, h)
    x0 = np.clip(np.arange(w) - radius, 0, w)
    x1 = np.clip(np.arange(w) + radius + 1, 0, w)
    return (s[..., y1[:, None], x1[None, :]] - s[..., y0[:, None], x1[None, :]]
            - s[..., y1[:, None], x0[None, :]] + s[..., y0[:, None], x0[None, :]])


def guided_prior(
    target: NDArray[np.float64],
    observed: NDArray[np.bool_],
    guides: Sequence[tuple[NDArray[np.float64], NDArray[np.bool_]]],
    *,
    window: int = 31,
    ridge: float = 1e-4,
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """A classical guided prediction of ``target [C, H, W]``: local linear regression on a guide.

    For each target band and each guide in rank order (``(values [G, H, W], observed)``),
    the band is regressed on all the guide's bands plus an intercept over the pixels both
    observe within a ``window``-px square around each pixel (ridge ``ridge`` on the slopes,
    in the caller's units); a window with fewer than a quarter of its pixels in common uses
    the whole patch's regression. The first guide that observes a pixel (all its bands)
    predicts it. Returns the prediction and where it is defined; elsewhere it is 0.
    """
    c, h, w = target.shape
    radius = window // 2
    prior = np.zeros((c, h, w))
    defined = np.zeros((c, h, w), dtype=bool)
    for values, gobs in guides:
        g_ok = gobs.all(axis=0)
        g = np.where(g_ok, values, 0.0)
        gb = g.shape[0]
        for band in range(c):
            todo = g_ok & ~defined[band]
            common = (observed[band] & g_ok).astype(np.float64)
            total = common.sum()
            if not todo.any() or total < gb + 2:
                continue
            t = np.where(common > 0, target[band], 0.0)
            feats = np.concatenate([g * common, np.ones((1, h, w)) * common])  # [gb+1, H, W]
            outer = feats[:, None] * feats[None, :]  # x xᵀ with the intercept, on common pixels
            xtx = _box_sum(outer, radius)
            xty = _box_sum(feats * t, radius)
            n = xtx[-1, -1]
            local = n >= 0.25 * window * window
            whole_xtx, whole_xty = outer.sum(axis=(-2, -1)), (feats * t).sum(axis=(-2, -1))
            xtx = np.where(local, xtx, whole_xtx[:, :, None, None])
            xty = np.where(local, xty, whole_xty[:, None, None])
            n = xtx[-1, -1]
            reg = np.zeros((gb + 1, gb + 1))
            reg[np.arange(gb), np.arange(gb)] = ridge
            a = np.moveaxis(xtx, (0, 1), (-2, -1)) + reg * n[..., None, None]
            coef = np.linalg.solve(a, np.moveaxis(xty, 0, -1)[..., None])[..., 0]  # [H, W, gb+1]
            pred = (np.moveaxis(coef[..., :gb], -1, 0) * g).sum(axis=0) + coef[..., gb]
            prior[band][todo] = pred[todo]
            defined[band] |= todo
    return prior, defined


@dataclass(frozen=True)
class _Prepared:
    """One guided patch ready to fit (all arrays padded, normalised)."""

    index: int
    seed: int
    params: NormParams
    has_obs: NDArray[np.bool_]
    target: NDArray[np.float32]  # [K, PH, PW]: what the network output is compared with
    train: NDArray[np.float32]  # [K, PH, PW]: loss mask with the modality weights
    score: NDArray[np.float32] | None  # [K, PH, PW] binary: held-out or known pixels
    modality_masks: list[NDArray[np.bool_]]  # per modality, its training pixels [Ck, PH, PW]
    guide_input: NDArray[np.float32] | None
    offset: NDArray[np.float32] | None  # residual: target = net - 0.5 + offset
    extra: dict[str, Any]
    values: NDArray[np.float64]  # [C, H, W] target as given (for the judged blend)
    observed: NDArray[np.bool_]  # [C, H, W] its usable pixels
    held: NDArray[np.bool_] | None  # [C, H, W] observed target pixels kept out of the loss


@dataclass(frozen=True)
class MCPNEngine:
    """Guided DIP (paper 003's MCPN variants) behind the engine protocol.

    ``config`` configures the core network and the fit (preset ``mcpn-core``: [16, 32, 64,
    128, 128, 128], skips 4; Adam, steps, reg noise, stopping); ``mcpn`` the variant, heads
    and losses. Deterministic per patch seed with one device and strategy: weights, input
    noise, per-step perturbation and held-out pixels all come from the patch's seed.
    Strategy ``auto`` fits patches one by one on CPU and packed on CUDA (what dip's
    measurements found for the light core); ``loop``/``packed`` force it.
    """

    config: DIPConfig = field(default_factory=lambda: dip_preset("mcpn-core"))
    mcpn: MCPNConfig = field(default_factory=MCPNConfig)
    strategy_cache: StrategyCache = field(default_factory=MemoryStrategyCache, compare=False, repr=False)

    name: ClassVar[str] = "mcpn"

    def __post_init__(self) -> None:
        if self.config.loss != "mse":
            raise InputError(f"mcpn fits paper 003's MSE losses; dip loss {self.config.loss!r} is not supported")

    @property
    def stopping(self) -> str:
        return self.mcpn.stopping or self.config.stopping

    def fill(
        self,
        patches: NDArray[np.float32],
        observed: NDArray[np.bool_],
        *,
        seeds: Sequence[int],
        guides: NDArray[np.float32] | None = None,
        guide_observed: NDArray[np.bool_] | None = None,
        guide_bands: Sequence[int] | None = None,
    ) -> EngineResult:
        """Fill every patch; see :class:`~dipfill.engines.base.Engine`.

        ``guides [B, G, H, W]`` hold the guides' bands in rank order (``guide_bands`` bands
        each, summing to G; None: one guide of G bands), 0 where ``guide_observed`` is False
        (None: every finite guide pixel is observed).
        """
        check_batch(patches, observed, seeds)
        count = patches.shape[0]
        if guides is None:
            return self._single(patches, observed, seeds, range(count), "no guides given")
        guides, guide_observed, bands = _check_guides(patches, guides, guide_observed, guide_bands)
        out = np.full(patches.shape, np.nan, dtype=np.float32)
        diagnostics = [PatchDiagnostics(engine=self.name, extra={"reason": "no observed pixels"})] * count
        unguided = [b for b in range(count) if not guide_observed[b].any()]
        if unguided:
            single = self._single(patches, observed, seeds, unguided, "guides observe nothing in this patch")
            for b in unguided:
                out[b], diagnostics[b] = single.values[b], single.diagnostics[b]
        todo = []
        for b in range(count):
            if b in unguided:
                continue
            p = self._prepare(b, patches[b], observed[b], guides[b], guide_observed[b], bands, int(seeds[b]))
            if p is not None:
                todo.append(p)
        if not todo:
            return EngineResult(out, diagnostics)
        device = torch.device(resolve_device(self.config.device))
        packed = self.config.strategy == "packed" or (self.config.strategy == "auto" and device.type == "cuda")
        groups = [todo] if packed and len(todo) > 1 else [[p] for p in todo]
        _, _, height, width = patches.shape
        for group in groups:
            start = time.perf_counter()
            net, fit = self._fit_group(group, bands, device, (height, width))
            seconds = (time.perf_counter() - start) / len(group)
            for j, p in enumerate(group):
                pred = fit.prediction[j].float()
                target_pred = net.split(pred[None])[0][0, :, :height, :width].double().cpu().numpy()
                if p.offset is not None:
                    target_pred = target_pred - 0.5 + p.offset[:, :height, :width]
                filled = denormalize(target_pred, p.params)
                blend: dict[str, Any] = {}
                if self.config.blend != "none" and p.held is not None:
                    filled, blend = judged_blend(p.values, p.observed, p.held, filled, z=self.config.blend_z)
                out[p.index][p.has_obs] = filled[p.has_obs].astype(np.float32)
                diagnostics[p.index] = PatchDiagnostics(
                    engine=self.name,
                    steps=int(fit.steps[j]),
                    final_loss=float(fit.final_loss[j]),
                    seconds=seconds,
                    extra={
                        **p.extra,
                        "variant": self.mcpn.variant,
                        "guided": True,
                        "losses": _modality_losses(net, pred, p, device),
                        "best_step": int(fit.best_step[j]),
                        "best_score": None if np.isnan(fit.best_score[j]) else float(fit.best_score[j]),
                        "stopping": self.stopping,
                        "stopped_by": "known-rmse" if fit.stopped_by[j] == "holdout" and self.stopping == "known-rmse"
                        else fit.stopped_by[j],
                        "device": device.type,
                        "strategy": "packed" if len(group) > 1 else "loop",
                        **blend,
                    },
                )
        return EngineResult(out, diagnostics)

    def _single(self, patches: NDArray, observed: NDArray, seeds: Sequence[int], which: Sequence[int],
                reason: str) -> EngineResult:
        """Single-image DIP (same config) for the patches ``which``; the others stay NaN."""
        which = list(which)
        stopping = self.stopping if self.stopping != "known-rmse" else "fixed"
        engine = DIPEngine(replace(self.config, stopping=stopping), strategy_cache=self.strategy_cache)
        result = engine.fill(patches[which], observed[which], seeds=[seeds[b] for b in which])
        out = np.full(patches.shape, np.nan, dtype=np.float32)
        diagnostics = [PatchDiagnostics(engine=self.name, extra={"reason": "not filled"})] * patches.shape[0]
        for j, b in enumerate(which):
            out[b] = result.values[j]
            d = result.diagnostics[j]
            diagnostics[b] = replace(d, engine=self.name,
                                     extra={**d.extra, "variant": "single", "guided": False, "why_unguided": reason})
        return EngineResult(out, diagnostics)

    def _prepare(self, index: int, values: NDArray, observed: NDArray[np.bool_], guides: NDArray,
                 guide_observed: NDArray[np.bool_], bands: tuple[int, ...], seed: int) -> _Prepared | None:
        """Normalise one patch and its guides, pad them and build the weighted loss masks."""
        cfg, mc = self.config, self.mcpn
        vals = np.asarray(values, dtype=np.float64)
        obs = np.asarray(observed, dtype=bool) & np.isfinite(vals)
        has_obs = obs.any(axis=(1, 2))
        if not has_obs.any():
            return None
        # vegetation only (paper 001, loss_min_value), as the dip engine: out of the loss, the
        # normalisation and the held-out scoring
        veg = obs if cfg.loss_min_value is None else obs & (vals > cfg.loss_min_value)
        veg = np.where(veg.any(axis=(1, 2), keepdims=True), veg, obs)
        norm, params = normalize(np.where(obs, vals, 0.0), veg, percentiles=cfg.percentiles, target=cfg.target_range)
        norm = np.where(obs, norm, 0.0)
        gvals = np.asarray(guides, dtype=np.float64)
        gobs = np.asarray(guide_observed, dtype=bool) & np.isfinite(gvals)
        gnorm, _ = normalize(np.where(gobs, gvals, 0.0), gobs, percentiles=cfg.percentiles, target=cfg.target_range)
        gnorm = np.where(gobs, gnorm, 0.0)
        edges = np.cumsum((0,) + bands[1:])
        guide_parts = [(gnorm[a:b], gobs[a:b]) for a, b in zip(edges[:-1], edges[1:])]

        train = veg
        score = held = None
        if self.stopping == "holdout" or cfg.blend != "none":
            held = stripe_holdout(obs.any(axis=0), cfg.holdout_fraction, np.random.default_rng(seed))[None] & veg
            train = train & ~held
            score = held if self.stopping == "holdout" else None
        if self.stopping == "known-rmse":
            score = train

        variant = mc.variant
        offset = None
        target_img = norm
        if variant == "residual":
            prior, defined = guided_prior(norm, obs, guide_parts, window=mc.prior_window)
            prior = np.where(defined, prior, spatial_fill(norm, obs))
            offset = prior
            target_img = np.where(obs, norm - prior + 0.5, 0.0)

        gap = ~obs.any(axis=0)
        any_guide = gobs.any(axis=0)
        extra: dict[str, Any] = {
            "guide_bands": list(bands[1:]),
            "guide_coverage": float((gap & any_guide).sum() / gap.sum()) if gap.any() else None,
        }
        h, w = vals.shape[-2:]
        outputs = variant in ("emergent", "direct", "stacked")
        images = [target_img] + ([g for g, _ in guide_parts] if outputs else [])
        masks = [train] + ([m for _, m in guide_parts] if outputs else [])
        counts = [float(m.sum()) for m in masks]
        weights = [1.0] + [mc.guide_weight] * (len(masks) - 1)
        net_cycles = variant == "emergent" and mc.cycle
        if net_cycles:
            cycle_mask = np.ones((mc.core_channels, h, w), dtype=bool)  # every pixel of the patch
            for _ in bands:
                images.append(np.zeros((mc.core_channels, h, w)))
                masks.append(cycle_mask)
                counts.append(float(cycle_mask.sum()))
                weights.append(mc.cycle_weight)
        m_values = modality_weights(counts, weights)
        target = np.concatenate(images)
        weighted = np.concatenate([m * v for m, v in zip(masks, m_values)])
        score_full = None
        if score is not None:
            score_full = np.zeros(target.shape, dtype=bool)
            score_full[: vals.shape[0]] = score
        guide_input = None
        if variant in ("input", "residual"):
            valid = [m.all(axis=0, keepdims=True) for _, m in guide_parts]
            guide_input = self._pad(np.concatenate([gnorm] + valid).astype(np.float32), net_input=True)
        return _Prepared(
            index, seed, params, has_obs, self._pad(target), self._pad(weighted),
            None if score_full is None else self._pad(score_full),
            [self._pad(m).astype(bool) for m in masks[: len(masks) - (len(bands) if net_cycles else 0)]],
            guide_input, None if offset is None else self._pad(offset), extra, vals, obs, held,
        )

    def _pad(self, a: NDArray, *, net_input: bool = False) -> NDArray[np.float32]:
        """Zero-pad ``[C, H, W]``: to what the core can halve ``depth`` times (its input), or
        to what the network outputs after the crop (:meth:`_output_size`)."""
        c, h, w = a.shape
        size = (padded_size(h, self.config.depth), padded_size(w, self.config.depth)) if net_input \
            else self._output_size(h, w)
        out = np.zeros((c,) + size, dtype=np.float32)
        out[:, :h, :w] = a
        return out

    def _output_size(self, h: int, w: int) -> tuple[int, int]:
        """The network's output size for an ``h × w`` patch: the patch itself, or for
        Emergent heads (which halve ``len(head_channels)`` times) the next size they can halve."""
        if self.mcpn.variant == "emergent":
            depth = len(self.mcpn.head_channels)
            return padded_size(h, depth), padded_size(w, depth)
        return h, w

    def _fit_group(self, group: list[_Prepared], bands: tuple[int, ...], device: torch.device,
                   shape: tuple[int, int]):
        cfg, mc = self.config, self.mcpn
        seeds = [p.seed for p in group]
        ph, pw = padded_size(shape[0], cfg.depth), padded_size(shape[1], cfg.depth)
        z = torch.cat([make_input(cfg, ph, pw, torch.Generator().manual_seed(s)) for s in seeds]).to(device)
        noise = [torch.Generator(device=device).manual_seed(s ^ 0x5EED) for s in seeds]

        def tensor(arrays: list[NDArray]) -> torch.Tensor:
            return torch.from_numpy(np.stack(arrays)).to(device)

        guide_input = tensor([p.guide_input for p in group]) if group[0].guide_input is not None else None
        net = build_mcpn(mc.variant, cfg, bands, seeds, core_channels=mc.core_channels, head=mc.head,
                         cycle=mc.cycle, guide_input=guide_input, crop=group[0].target.shape[1:]).to(device)
        score = tensor([p.score for p in group]) if group[0].score is not None else None
        fit_cfg = replace(cfg, stopping="holdout" if self.stopping == "known-rmse" else self.stopping)
        fit = fit_members(
            fit_cfg, net, z, tensor([p.target for p in group]), tensor([p.train for p in group]), score, noise,
            bf16=cfg.precision == "bf16", fused_adam=device.type == "cuda",
        )
        return net, fit


def _modality_losses(net: MCPNNet, pred: torch.Tensor, p: _Prepared, device: torch.device) -> dict[str, float]:
    """Each modality's MSE on its own training pixels (normalised units) and the cycle terms,
    for the kept iterate (evaluated without the per-step input perturbation)."""
    target = torch.from_numpy(p.target).to(device)
    names = ["target"] + [f"guide{k}" for k in range(len(p.modality_masks) - 1)]
    losses: dict[str, float] = {}
    edges = np.cumsum([0] + [m.shape[0] for m in p.modality_masks])
    for k, (name, mask) in enumerate(zip(names, p.modality_masks)):
        m = torch.from_numpy(mask).to(device)
        sl = slice(int(edges[k]), int(edges[k + 1]))
        n = int(m.sum())
        losses[name] = float(((pred[sl] - target[sl])[m] ** 2).mean()) if n else float("nan")
    if net.cycle_channels:  # cycle residuals over the patch's own (unpadded) pixels
        c = net.core_channels
        valid = torch.from_numpy(p.train[-net.cycle_channels:] > 0).to(device)
        cyc = pred[-net.cycle_channels:]
        for k in range(len(net.cycles)):
            part = slice(k * c, (k + 1) * c)
            losses[f"cycle{k}"] = float((cyc[part][valid[part]] ** 2).mean())
    return losses


def spatial_fill(norm: NDArray[np.float64], obs: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Each band's gaps filled by GDAL's inverse-distance interpolation (the residual
    variant's prior where no guide observes); the band's observed mean where even that
    cannot reach."""
    filled = classical.spatial_fill(norm, obs)
    means = np.array([norm[c][obs[c]].mean() if obs[c].any() else 0.5 for c in range(norm.shape[0])])
    return np.where(np.isfinite(filled), filled, means[:, None, None])


def _check_guides(patches: NDArray, guides: NDArray, guide_observed: NDArray | None,
                  guide_bands: Sequence[int] | None) -> tuple[NDArray, NDArray[np.bool_], tuple[int, ...]]:
    """Validate the guide arrays; returns them and the modalities' band counts (target first)."""
    guides = np.asarray(guides)
    b, c, h, w = patches.shape
    if guides.ndim != 4 or guides.shape[0] != b or guides.shape[2:] != (h, w):
        raise InputError(f"guides must be [B, G, H, W] with B, H, W of the patches {patches.shape}; got {guides.shape}")
    if guide_observed is None:
        guide_observed = np.isfinite(guides)
    guide_observed = np.asarray(guide_observed, dtype=bool)
    if guide_observed.shape != guides.shape:
        raise InputError(f"guide_observed shape {guide_observed.shape} differs from guides shape {guides.shape}")
    g = guides.shape[1]
    per_guide = (g,) if guide_bands is None else tuple(int(n) for n in guide_bands)
    if g < 1 or min(per_guide, default=0) < 1 or sum(per_guide) != g:
        raise InputError(f"guide_bands {list(per_guide)} must be >= 1 each and sum to the {g} guide bands")
    return guides, guide_observed, (c,) + per_guide
