"""Guided super-resolution (paper 003 §3.2) and its classical baselines. Torch and numpy, no I/O.

Paper 003 turns its multi-modal networks into a super-resolver by one change: "employing a
downsampling operation to the output of the target domain head and backpropagating
gradients from a low-resolution source through it"; the guide heads still fit the guides at
full resolution. :class:`SREngine` does exactly that with the networks of
:mod:`~dipfill.engines.mcpn_net` (``direct``: the core outputs the high-resolution target,
one head per guide maps it to that guide; ``stacked``: one network outputs target and
guides as channels) and the fitting loop of :mod:`~dipfill.engines.fit`, unchanged:

* :class:`_Downsampled` wraps the network. Its output is ``[D(target) on an HR-sized canvas,
  target, guides]``: ``D`` is the exact separable operator the caller built for this patch
  (``lr = Ay @ hr @ Ax.T``, :mod:`dipfill.tiling.resample`: antialiased bilinear as the
  paper, any non-integer factor and sub-pixel offset), written into the top-left
  ``h × w`` corner of a zero canvas so that one tensor carries every modality.
* The loss mask weighs the canvas's ``h × w`` LR pixels (where the LR input is observed)
  and each guide's observed pixels with :func:`~dipfill.engines.mcpn.modality_weights`
  (the paper's sum of per-modality MSEs); the HR target channels have mask 0: they are not
  fitted directly, but the output EMA of :func:`~dipfill.engines.fit.fit_members` averages
  them with the rest, so the kept HR prediction is the averaged one.
* Normalisation: the target's percentiles come from the LR pixels and are inverted on the
  HR output (the same radiometry); each guide is normalised on its own.

Stopping is ``fixed`` (the paper's rule for Direct and Stacked: 4000 steps, preset ``mcpn``)
and there is no judged blend: there are no held-out HR pixels to judge on.

Baselines (numpy/scipy): :func:`bicubic` (Keys' cubic convolution through the caller's
upsampling matrices) and :func:`guided_filter_upsample` (bicubic, then He et al.'s guided
filter with the HR guide: each output pixel a local linear function of the guide's bands,
fitted in a box window by ridge regression and averaged over the windows that hold it).
OpenCV's ``cv2.ximgproc.guidedFilter`` is in opencv-contrib only; dipfill declares the
plain ``opencv-python-headless`` (one cv2 package), and the filter is a few box filters
(``scipy.ndimage.uniform_filter``), also for guides of more than three bands.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.ndimage import uniform_filter
from torch import nn

from dipfill.engines.base import PatchDiagnostics
from dipfill.engines.config import DIPConfig, padded_size
from dipfill.engines.config import preset as dip_preset
from dipfill.engines.dip import make_input, resolve_device
from dipfill.engines.fit import fit_members
from dipfill.engines.mcpn import MCPNConfig, modality_weights
from dipfill.engines.mcpn_net import MCPNNet, build_mcpn
from dipfill.engines.normalize import denormalize, normalize
from dipfill.errors import InputError

__all__ = ["SR_VARIANTS", "SREngine", "make_sr_engine", "bicubic", "guided_filter", "guided_filter_upsample"]

#: The MCPN variants with a full-resolution target output (paper 003 §3.2 measured Direct best).
SR_VARIANTS = ("direct", "stacked")


def make_sr_engine(variant: str = "direct", *, preset: str = "mcpn", **options: Any) -> "SREngine":
    """An :class:`SREngine` from flat options: :class:`MCPNConfig` fields (heads,
    ``guide_weight``) go there, the rest override the :class:`DIPConfig` preset ``preset``
    (default ``mcpn``: paper 003's core and 4000 fixed steps)."""
    guided = {k: options.pop(k) for k in list(options) if k in MCPNConfig.__dataclass_fields__}
    guided.pop("variant", None)
    options = {"stopping": "fixed", "blend": "none", **options}
    return SREngine(dip_preset(preset, **options), MCPNConfig(variant=variant, **guided))


class _Downsampled(nn.Module):
    """``net``'s output with the target's downsample in front: ``[canvas, target, rest]``."""

    def __init__(self, net: MCPNNet, ay: torch.Tensor, ax: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("ay", ay, persistent=False)
        self.register_buffer("ax", ax, persistent=False)
        self.bands = net.bands[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        target = out[:, : self.bands]
        low = self.ay.to(out.dtype) @ target @ self.ax.to(out.dtype).T
        canvas = torch.zeros_like(target)
        canvas[:, :, : low.shape[2], : low.shape[3]] = low
        return torch.cat([canvas, out], dim=1)


@dataclass(frozen=True)
class SREngine:
    """Paper 003's guided super-resolution: fit a ``direct`` or ``stacked`` MCPN network whose
    downsampled target matches the LR input and whose guide outputs match the guides.

    Deterministic for a seed on one device: weights, input noise and the per-step
    perturbation all come from it (as the gap-filling engines)."""

    config: DIPConfig = field(default_factory=lambda: dip_preset("mcpn", stopping="fixed", blend="none"))
    mcpn: MCPNConfig = field(default_factory=lambda: MCPNConfig(variant="direct"))

    name: ClassVar[str] = "mcpn-sr"

    def __post_init__(self) -> None:
        if self.mcpn.variant not in SR_VARIANTS:
            raise InputError(f"super-resolution variant must be one of {', '.join(SR_VARIANTS)}; "
                             f"got {self.mcpn.variant!r}")
        if self.config.loss != "mse":
            raise InputError(f"super-resolution fits paper 003's MSE losses; dip loss {self.config.loss!r} "
                             "is not supported")

    def upsample(
        self,
        lowres: NDArray,
        lowres_observed: NDArray[np.bool_],
        ay: NDArray[np.float64],
        ax: NDArray[np.float64],
        guides: NDArray,
        guide_observed: NDArray[np.bool_],
        *,
        seed: int,
        guide_bands: Sequence[int] | None = None,
    ) -> tuple[NDArray[np.float32], PatchDiagnostics]:
        """The HR target ``[C, H, W]`` of one patch (NaN where it cannot be made).

        ``lowres [C, h, w]`` with ``lowres_observed``; ``ay [h, H]``, ``ax [w, W]`` the
        downsampling operator of this patch; ``guides [G, H, W]`` with ``guide_observed``,
        split into modalities of ``guide_bands`` bands (None: one guide of G bands).
        """
        cfg, mc = self.config, self.mcpn
        low = np.asarray(lowres, dtype=np.float64)
        c, h, w = low.shape
        gvals = np.asarray(guides, dtype=np.float64)
        g, hh, ww = gvals.shape
        if ay.shape != (h, hh) or ax.shape != (w, ww):
            raise InputError(f"operators {ay.shape}, {ax.shape} do not map the {hh}x{ww} patch to the {h}x{w} "
                             "low-resolution window")
        per_guide = (g,) if guide_bands is None else tuple(int(n) for n in guide_bands)
        if sum(per_guide) != g or min(per_guide) < 1:
            raise InputError(f"guide_bands {list(per_guide)} must be >= 1 each and sum to the {g} guide bands")
        obs = np.asarray(lowres_observed, dtype=bool) & np.isfinite(low)
        if not obs.any(axis=(1, 2)).all():
            empty = np.full((c, hh, ww), np.nan, dtype=np.float32)
            return empty, PatchDiagnostics(engine=self.name, extra={"reason": "a band has no observed LR pixel"})
        start = time.perf_counter()
        norm, params = normalize(np.where(obs, low, 0.0), obs, percentiles=cfg.percentiles, target=cfg.target_range)
        gobs = np.asarray(guide_observed, dtype=bool) & np.isfinite(gvals)
        gnorm, _ = normalize(np.where(gobs, gvals, 0.0), gobs, percentiles=cfg.percentiles, target=cfg.target_range)
        edges = np.cumsum((0,) + per_guide)
        masks = [obs] + [gobs[a:b] for a, b in zip(edges[:-1], edges[1:])]
        weights = modality_weights([float(m.sum()) for m in masks], [1.0] + [mc.guide_weight] * len(per_guide))

        canvas = np.zeros((c, hh, ww))
        canvas_mask = np.zeros((c, hh, ww))
        canvas[:, :h, :w] = np.where(obs, norm, 0.0)
        canvas_mask[:, :h, :w] = obs * weights[0]
        target = np.concatenate([canvas, np.zeros((c, hh, ww)), np.where(gobs, gnorm, 0.0)])
        train = np.concatenate([canvas_mask, np.zeros((c, hh, ww)),
                                *[m * wt for m, wt in zip(masks[1:], weights[1:])]])

        device = torch.device(resolve_device(cfg.device))
        ph, pw = padded_size(hh, cfg.depth), padded_size(ww, cfg.depth)
        z = make_input(cfg, ph, pw, torch.Generator().manual_seed(seed)).to(device)
        noise = [torch.Generator(device=device).manual_seed(seed ^ 0x5EED)]
        net = build_mcpn(mc.variant, cfg, (c, *per_guide), [seed], core_channels=mc.core_channels, head=mc.head,
                         cycle=False, crop=(hh, ww))
        model = _Downsampled(net, torch.from_numpy(ay).float(), torch.from_numpy(ax).float()).to(device)

        def tensor(a: NDArray) -> torch.Tensor:
            return torch.from_numpy(a.astype(np.float32))[None].to(device)

        fit = fit_members(cfg, model, z, tensor(target), tensor(train), None, noise,
                          bf16=cfg.precision == "bf16", fused_adam=device.type == "cuda")
        pred = fit.prediction[0].double().cpu().numpy()
        hr = denormalize(pred[c:2 * c], params)
        low_fit = pred[:c, :h, :w]
        lr_rmse = float(np.sqrt(((low_fit - norm)[obs] ** 2).mean()))
        return hr.astype(np.float32), PatchDiagnostics(
            engine=self.name,
            steps=int(fit.steps[0]),
            final_loss=float(fit.final_loss[0]),
            seconds=time.perf_counter() - start,
            extra={"variant": mc.variant, "lowres_window": [h, w], "lowres_rmse_normalised": lr_rmse,
                   "guide_bands": list(per_guide), "device": device.type},
        )


def bicubic(lowres: NDArray, lowres_observed: NDArray[np.bool_], uy: NDArray[np.float64],
            ux: NDArray[np.float64]) -> NDArray[np.float64]:
    """Bicubic upsampling ``uy @ lr @ ux.T`` per band (:func:`~dipfill.tiling.resample.upsample_operator`),
    normalised over the observed LR pixels; NaN where the observed ones carry less than half
    of the kernel's weight."""
    low = np.asarray(lowres, dtype=np.float64)
    obs = np.asarray(lowres_observed, dtype=bool) & np.isfinite(low)
    num = uy @ np.where(obs, low, 0.0) @ ux.T
    den = uy @ obs.astype(np.float64) @ ux.T
    return np.where(den > 0.5, num / np.where(den > 0.5, den, 1.0), np.nan)


def guided_filter(guide: NDArray, src: NDArray, radius: int, eps: float) -> NDArray[np.float64]:
    """He et al.'s guided filter of each band of ``src [C, H, W]`` with ``guide [G, H, W]``.

    In every ``(2r+1)²`` box: ``src ≈ aᵀ·guide + b`` by ridge regression (``eps`` on the
    slopes, in the guide's units squared); ``a``, ``b`` are then averaged over the boxes
    holding a pixel and applied to the guide there (the paper's eqs. for a colour guide,
    any number of guide bands). Box means are ``scipy.ndimage.uniform_filter`` with
    reflected edges."""
    gd = np.asarray(guide, dtype=np.float64)
    p = np.asarray(src, dtype=np.float64)
    size = 2 * int(radius) + 1

    def box(a: NDArray) -> NDArray:
        return uniform_filter(a, size=size, mode="reflect")

    n = gd.shape[0]
    mean_i = np.stack([box(b) for b in gd])
    cov = np.empty((n, n) + gd.shape[1:])
    for i in range(n):
        for j in range(i, n):
            cov[i, j] = cov[j, i] = box(gd[i] * gd[j]) - mean_i[i] * mean_i[j]
    sigma = np.moveaxis(cov, (0, 1), (-2, -1)) + eps * np.eye(n)
    out = np.empty(p.shape)
    for band in range(p.shape[0]):
        mean_p = box(p[band])
        cov_ip = np.stack([box(gd[i] * p[band]) - mean_i[i] * mean_p for i in range(n)], axis=-1)
        a = np.linalg.solve(sigma, cov_ip[..., None])[..., 0]  # [H, W, n]
        b = mean_p - (a * np.moveaxis(mean_i, 0, -1)).sum(axis=-1)
        mean_a = np.stack([box(a[..., i]) for i in range(n)])
        out[band] = (mean_a * gd).sum(axis=0) + box(b)
    return out


def guided_filter_upsample(lowres: NDArray, lowres_observed: NDArray[np.bool_], uy: NDArray[np.float64],
                           ux: NDArray[np.float64], guides: NDArray, guide_observed: NDArray[np.bool_], *,
                           scale: float, eps: float = 1e-3) -> NDArray[np.float64]:
    """The guided-filter baseline: :func:`bicubic`, then :func:`guided_filter` with the guides
    (each band scaled to [0, 1] by its observed 1st-99th percentiles, so ``eps`` is relative)
    and a radius of ``max(2, round(scale))`` HR pixels, about one LR pixel: the scale at which
    the bicubic image lacks the guide's detail. Guide nodata is filled with the band's median
    and NaN in the bicubic image stays NaN."""
    up = bicubic(lowres, lowres_observed, uy, ux)
    gd = np.asarray(guides, dtype=np.float64)
    gobs = np.asarray(guide_observed, dtype=bool) & np.isfinite(gd)
    scaled = np.empty(gd.shape)
    for k in range(gd.shape[0]):
        vals = gd[k][gobs[k]]
        lo, hi = (np.percentile(vals, [1, 99]) if vals.size else (0.0, 1.0))
        fill = np.median(vals) if vals.size else 0.0
        scaled[k] = (np.where(gobs[k], gd[k], fill) - lo) / max(hi - lo, 1e-12)
    missing = ~np.isfinite(up)
    base = np.where(missing, np.nanmean(up) if np.isfinite(up).any() else 0.0, up)
    out = guided_filter(scaled, base, max(2, int(round(scale))), eps)
    return np.where(missing, np.nan, out)
