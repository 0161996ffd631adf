"""Training the ConvNP (paper 002) on arrays: real gap masks transplanted onto observed ground.

Paper 002 builds its tasks by taking the scan-line masks of post-2003 (SLC-off) Landsat 7
images and laying them over pre-2003 images, whose pixels are known there. We do the same
with what a run has: the *ground* is windows of the training scenes' observed pixels, and
the *gap masks* are validity masks of other windows and other dates of the same scenes
(real SLC-off stripes, real cloud blobs, real collars). One task is

- a ``size``² window of a ground scene (at least ``min_valid`` of it valid in every band);
- the validity of a random window of a random mask scene laid over it: pixels valid in
  both are the context, pixels valid on the ground but invalid in the mask are hidden;
- kept when the hidden share lies in [``min_hidden``, ``max_hidden``] and every band keeps
  some context.

The loss is the Gaussian negative log-likelihood of the hidden pixels under the model's
per-pixel mean and standard deviation (paper 002 and Gordon et al. 2020 train by maximum
likelihood), in the per-patch normalised units the engine works in. Adam with the paper's
exponential decay (the rate falls by a factor 5 over the run).

Deterministic for a seed: the tasks come from a NumPy generator seeded with it and the
weights are initialised under ``torch.manual_seed``; on one machine and thread count
the same seed gives the same weight bytes (tested). A fixed set of validation tasks (drawn
from ``seed + 1``) is scored at the end: NLL, and r² of the mean against fillnodata's on the
same hidden pixels, so the model item says whether the model beats the baseline.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from dipfill.engines.convnp import ConvCNP, ConvNPConfig, model_to_bytes, parameter_count
from dipfill.engines.convnp_config import TrainConfig
from dipfill.engines.normalize import normalize
from dipfill.errors import InputError

__all__ = ["TrainConfig", "Ground", "Task", "TrainResult", "draw_task", "draw_tasks", "train_convnp", "gaussian_nll"]


@dataclass(frozen=True)
class Ground:
    """One training scene (or part of one) as arrays: ``values [C, H, W]`` and per-band
    ``valid [C, H, W]``; ``name`` says where it came from (the item records it)."""

    values: NDArray
    valid: NDArray[np.bool_]
    name: str = ""


@dataclass(frozen=True)
class Task:
    """One transplanted window, all ``[C, s, s]``: what the model sees and what it is scored on."""

    truth: NDArray[np.float64]
    observed: NDArray[np.bool_]
    hidden: NDArray[np.bool_]


@dataclass(frozen=True)
class TrainResult:
    model: ConvCNP
    model_bytes: bytes
    losses: list[float]
    metrics: dict[str, float]
    seconds: float


def _window(shape: tuple[int, int], size: int, rng: np.random.Generator) -> tuple[slice, slice]:
    r = int(rng.integers(0, shape[0] - size + 1))
    c = int(rng.integers(0, shape[1] - size + 1))
    return slice(r, r + size), slice(c, c + size)


def draw_task(rng: np.random.Generator, grounds: Sequence[Ground], masks: Sequence[NDArray[np.bool_]],
              config: TrainConfig, *, tries: int = 200) -> Task:
    """One task: a ground window with a real mask window laid over it (module docstring)."""
    s = config.size
    for _ in range(tries):
        g = grounds[int(rng.integers(len(grounds)))]
        win = _window(g.valid.shape[-2:], s, rng)
        tv = g.valid[(slice(None), *win)]
        if tv.all(axis=0).mean() < config.min_valid:
            continue
        mask = masks[int(rng.integers(len(masks)))]
        dv = mask[_window(mask.shape, s, rng)]
        hidden = tv & ~dv[None]
        share = hidden.any(axis=0).mean()
        if not config.min_hidden <= share <= config.max_hidden:
            continue
        observed = tv & dv[None]
        if observed.reshape(len(observed), -1).mean(axis=1).min() < 0.05:
            continue
        return Task(truth=np.asarray(g.values[(slice(None), *win)], dtype=np.float64), observed=observed, hidden=hidden)
    raise InputError(f"no training task found in {tries} draws: the scenes need {s}² windows at least "
                     f"{config.min_valid:.0%} valid, and masks that hide {config.min_hidden:.0%}-"
                     f"{config.max_hidden:.0%} of one (smaller --size, or more/larger scenes)")


def draw_tasks(rng: np.random.Generator, grounds: Sequence[Ground], masks: Sequence[NDArray[np.bool_]],
               config: TrainConfig, n: int) -> list[Task]:
    return [draw_task(rng, grounds, masks, config) for _ in range(n)]


def _tensors(tasks: Sequence[Task]) -> tuple[torch.Tensor, ...]:
    """Normalised context, context mask, normalised truth and hidden mask of a batch."""
    truth = np.stack([t.truth for t in tasks])
    obs = np.stack([t.observed for t in tasks])
    hid = np.stack([t.hidden for t in tasks])
    norm, _ = normalize(np.where(obs | hid, truth, 0.0), obs)  # parameters from the context only
    y = np.where(obs, norm, 0.0).astype(np.float32)
    target = np.where(hid, norm, 0.0).astype(np.float32)
    return (torch.from_numpy(y), torch.from_numpy(obs.astype(np.float32)), torch.from_numpy(target),
            torch.from_numpy(hid.astype(np.float32)))


def gaussian_nll(mean: torch.Tensor, std: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood of ``target`` over the pixels where ``weight`` is 1."""
    z = (target - mean) / std
    nll = 0.5 * math.log(2 * math.pi) + torch.log(std) + 0.5 * z * z
    return (nll * weight).sum() / weight.sum().clamp_min(1.0)


def _validate(model: ConvCNP, tasks: Sequence[Task]) -> dict[str, float]:
    """NLL, and r² of the mean and of fillnodata, over the hidden pixels of ``tasks``
    (pooled: 1 - ΣSSE/ΣSST with each task-band's SST about its own hidden mean)."""
    from dipfill.engines.classical import FillnodataEngine

    y, m, target, hid = _tensors(tasks)
    with torch.no_grad():
        mean, std = model(y, m)
        nll = float(gaussian_nll(mean, std, target, hid))
    h = hid.numpy().astype(bool)
    t = target.numpy().astype(np.float64)
    fills = FillnodataEngine().fill(y.numpy(), m.numpy().astype(bool), seeds=[0] * len(tasks)).values

    def r2(pred: NDArray) -> float:
        sse = sst = 0.0
        for b in range(len(t)):
            for c in range(t.shape[1]):
                sel = h[b, c] & np.isfinite(pred[b, c])
                if sel.sum() < 2:
                    continue
                tv = t[b, c][sel]
                sse += float(((tv - pred[b, c][sel]) ** 2).sum())
                sst += float(((tv - tv.mean()) ** 2).sum())
        return 1.0 - sse / sst if sst > 0 else float("nan")

    return {"validation_nll": nll, "validation_r2": r2(mean.numpy().astype(np.float64)),
            "validation_r2_fillnodata": r2(np.asarray(fills, dtype=np.float64)), "validation_tasks": len(tasks)}


def train_convnp(
    grounds: Sequence[Ground],
    masks: Sequence[NDArray[np.bool_]],
    model_config: ConvNPConfig,
    config: TrainConfig,
    *,
    meta: dict[str, Any] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train a :class:`ConvCNP` on tasks drawn from ``grounds`` and ``masks`` (``bool [H, W]``
    validity rasters: True where a pixel was observed). ``progress(step, steps, loss)`` is
    called every 10 steps and at the end. ``meta`` is stored in the model bytes."""
    if not grounds or not masks:
        raise InputError("training needs at least one scene (ground) and one gap mask")
    bands = {g.values.shape[0] for g in grounds}
    if bands != {model_config.bands}:
        raise InputError(f"training scenes have {sorted(bands)} band(s); the model is configured for "
                         f"{model_config.bands}: give scenes with the same bands")
    s = config.size
    grounds = [g for g in grounds if min(g.valid.shape[-2:]) >= s]
    masks = [m for m in masks if min(m.shape) >= s]
    if not grounds or not masks:
        raise InputError(f"no training scene is at least {s}x{s} pixels: give a smaller --size")
    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    validation = draw_tasks(np.random.default_rng(config.seed + 1), grounds, masks, config, config.validation_tasks)
    torch.manual_seed(config.seed)
    model = ConvCNP(model_config)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma=(1.0 / config.decay) ** (1.0 / config.steps))
    losses: list[float] = []
    model.train()
    for step in range(1, config.steps + 1):
        y, m, target, hid = _tensors(draw_tasks(rng, grounds, masks, config, config.batch))
        mean, std = model(y, m)
        loss = gaussian_nll(mean, std, target, hid)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if progress and (step % 10 == 0 or step == config.steps):
            progress(step, config.steps, float(np.mean(losses[-10:])))
    model.eval()
    metrics = {
        "train_nll_first": float(np.mean(losses[: min(10, len(losses))])),
        "train_nll_last": float(np.mean(losses[-min(10, len(losses)):])),
        **_validate(model, validation),
        "parameters": parameter_count(model),
    }
    data = model_to_bytes(model, {**(meta or {}), "train": config.to_dict()})
    return TrainResult(model=model, model_bytes=data, losses=losses, metrics=metrics,
                       seconds=time.perf_counter() - start)
