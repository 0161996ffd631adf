"""The DIP fitting loop for M member networks at once (M = 1 is the plain per-patch loop).

Loss = sum of the members' own losses, so one Adam over the packed parameters equals M
Adams (Adam is elementwise and each member's gradient is that of its own loss). A member
that has stopped must not move: Adam's momentum would keep moving it on zero gradients, so
its parameter rows are restored after every optimiser step, not only its gradient zeroed.

Output EMA (``exp_weight``, the DIP reference's ``out_avg``): the kept prediction is the
exponential moving average of the outputs the loop computes anyway (with the per-step input
perturbation), ``ema = w·ema + (1 − w)·out``. Each step's output jitters with the input
noise and the optimiser's steps; averaging the last ~1/(1 − w) of them is a free ensemble.
The weight ramps up as ``min(exp_weight, (1 + step)/(10 + step))`` (TensorFlow's
ExponentialMovingAverage with ``num_updates``): a flat 0.99 would still hold 55 % of the
first, untrained output after 60 steps, and runs of a few hundred steps are common here.
Early stopping scores and keeps the average too, so what is judged is what is written.
``exp_weight = 0`` keeps the plain output of the unperturbed input.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from dipfill.engines.config import DIPConfig
from dipfill.engines.dipnet import SkipNet, restore_members
from dipfill.engines.losses import masked_loss
from dipfill.engines.stopping import MovingVariance

__all__ = ["FitMonitor", "FitOutcome", "fit_members"]

# monitor(step, prediction[M, C, H, W] in the normalised space, held-out RMSE per member).
# The engine's relay turns it into config.Monitor (data units, one row per patch).
FitMonitor = Callable[[int, torch.Tensor, np.ndarray], None]


@dataclass
class FitOutcome:
    """Per member: the kept prediction (normalised, padded) and how the fit went."""

    prediction: torch.Tensor  # [M, C, H, W] float32 on the fitting device
    steps: np.ndarray  # steps actually taken
    best_step: np.ndarray  # step of the kept iterate
    best_score: np.ndarray  # held-out RMSE (holdout) or moving variance (emv) there; NaN for fixed
    final_loss: np.ndarray
    stopped_by: list[str]  # "steps" | "holdout" | "emv"


def fit_members(
    config: DIPConfig,
    net: SkipNet,
    z: torch.Tensor,
    target: torch.Tensor,
    train_mask: torch.Tensor,
    holdout_mask: torch.Tensor | None,
    noise_generators: Sequence[torch.Generator],
    *,
    bf16: bool = False,
    fused_adam: bool = False,
    monitor: FitMonitor | None = None,
) -> FitOutcome:
    """Fit ``net`` (M members) so that ``net(z)`` matches ``target`` on ``train_mask``.

    All tensors are ``[M, ...]`` on one device. ``noise_generators[j]`` draws member j's
    per-step input perturbation (``reg_noise_std``), so a member's trajectory does not depend
    on its neighbours. ``holdout_mask`` (``config.stopping == "holdout"``) marks observed
    pixels kept out of the loss and used for scoring.
    """
    cfg = config
    m = z.shape[0]
    device = z.device
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, fused=fused_adam or None)
    params = [p for p in net.parameters()]
    active = torch.ones(m, dtype=torch.bool)
    steps = np.zeros(m, dtype=np.int64)
    best_step = np.zeros(m, dtype=np.int64)
    best_score = np.full(m, np.inf)
    since_best = np.zeros(m, dtype=np.int64)
    stopped_by = ["steps"] * m
    final_loss = np.full(m, np.nan)
    kept: torch.Tensor | None = None
    emv = MovingVariance(cfg.emv_alpha) if cfg.stopping == "emv" else None
    emv_warmup = int(np.ceil(3 / cfg.emv_alpha)) if emv else 0
    checking = cfg.stopping != "fixed" or monitor is not None
    ema: torch.Tensor | None = None
    live_rows = torch.ones(m, 1, 1, 1, dtype=torch.bool, device=device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )
    net.train()

    def predict() -> torch.Tensor:
        if ema is not None:
            return ema.clone()
        with torch.no_grad(), autocast:
            return net(z).to(target.dtype)

    for step in range(1, cfg.steps + 1):
        inp = z
        if cfg.reg_noise_std > 0:
            noise = torch.cat(
                [torch.randn(z.shape[1:], generator=g, device=device, dtype=z.dtype)[None] for g in noise_generators]
            )
            inp = z + noise * cfg.reg_noise_std
        opt.zero_grad(set_to_none=True)
        with autocast:
            out = net(inp)
        losses = masked_loss(cfg.loss, out.to(target.dtype), target, train_mask, data_range=cfg.ssim_data_range)
        losses.sum().backward()
        frozen = ~active
        saved = [p.detach().clone() for p in params] if frozen.any() else None
        opt.step()
        if saved is not None:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    restore_members(p, s, frozen)
        live = active.numpy()
        steps[live] = step
        last_losses = losses.detach()  # copied to the host only at checks: no sync per step
        if emv is not None:
            emv.update(out)
        if cfg.exp_weight > 0:
            now = out.detach().to(target.dtype)
            # stopped members keep their average (their output still moves with the noise)
            w = min(cfg.exp_weight, (1 + step) / (10 + step))
            ema = now if ema is None else torch.where(live_rows, w * ema + (1 - w) * now, ema)
        if not checking or (step % cfg.check_every and step != cfg.steps):
            continue
        final_loss[live] = last_losses.cpu().double().numpy()[live]
        pred = predict()
        score = _holdout_rmse(pred, target, holdout_mask) if holdout_mask is not None else np.full(m, np.nan)
        if monitor is not None:
            monitor(step, pred, score)
        if cfg.stopping == "fixed":
            continue
        if emv is not None:
            if step < emv_warmup:
                continue
            score = emv.value.cpu().double().numpy()
        kept = pred.clone() if kept is None else kept
        # A member without held-out pixels (NaN score) cannot be judged: keep its latest
        # iterate and let it run its steps.
        unjudged = np.isnan(score)
        better = live & ((score < best_score) | unjudged)
        if better.any():
            idx = torch.from_numpy(better)
            kept[idx] = pred[idx]
            best_score[better & ~unjudged] = score[better & ~unjudged]
            best_step[better] = step
        since_best[better] = 0  # patience counts consecutive checks without improvement
        since_best[live & ~better] += 1
        done = live & (since_best >= cfg.patience)
        for j in np.flatnonzero(done):
            stopped_by[j] = cfg.stopping
        active &= torch.from_numpy(~done)
        live_rows = active.to(device).view(m, 1, 1, 1)
        if not active.any():
            break

    live = active.numpy()
    final_loss[live] = last_losses.cpu().double().numpy()[live]
    if cfg.stopping == "fixed" or kept is None:
        prediction = predict()
        best_step[:] = steps
        best_score[:] = np.nan
    else:
        prediction = kept
        best_score[~np.isfinite(best_score)] = np.nan
    return FitOutcome(prediction, steps, best_step, best_score, final_loss, stopped_by)


def _holdout_rmse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """RMSE per member over the held-out pixels (normalised units); NaN without any."""
    dims = (1, 2, 3)
    n = mask.sum(dim=dims)
    sse = (((pred - target) * mask) ** 2).sum(dim=dims)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(sse.double().cpu().numpy() / n.double().cpu().numpy())
