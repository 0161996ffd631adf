"""What one DIP step costs in arithmetic and memory traffic, and how close a device gets.

Why: "ms per patch-step" alone cannot say whether a faster step is still possible. The
roofline can: a step needs ``flops`` operations and moves at least ``bytes`` through
device memory, so on a device with peak ``P`` FLOP/s and bandwidth ``B`` B/s it cannot
take less than ``max(flops / P, bytes / B)``. Measured time against that floor says how
much of the device a configuration uses, and which wall (compute or bandwidth) it would
hit first (issue 14: the goal is >= 35 % of dense bf16 peak or >= 60 % of bandwidth,
whichever bounds the step).

Counting, not profiling, so it runs anywhere and needs no device: the network of one
member is built on PyTorch's ``meta`` device and one training step (forward, loss,
backward) runs under :class:`torch.utils.flop_counter.FlopCounterMode` and a dispatch
mode that adds up the bytes of every tensor each ATen operator reads and writes.

* FLOPs are counted for one member and multiplied: packing M members into grouped
  convolutions does the same arithmetic (torch's counter over-counts grouped
  ``convolution_backward`` by ignoring ``groups``; one member has no groups).
* Bytes are an upper bound of the traffic of unfused eager execution (every operator
  reads its inputs and writes its outputs once, no cache reuse) plus Adam's pass over
  the parameters (read parameter, gradient and both moments, write three of them, in
  float32). Fusion (torch.compile, CUDA graphs do not fuse) lowers the real figure, so
  "fraction of bandwidth" computed from it can exceed what the hardware counters show
  but not the other way round: a small fraction is a real shortfall.
* Peaks are vendor datasheet figures (dense, no sparsity) for the devices this project
  deploys to; :func:`device_peak` returns None for others, and callers print the
  achieved rates alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from dipfill.engines.config import DIPConfig, padded_size
from dipfill.engines.dipnet import pack_members
from dipfill.engines.losses import masked_loss

__all__ = ["StepCost", "DevicePeak", "count_step", "device_peak", "utilisation", "PEAKS"]

#: Adam per parameter (float32): reads param, grad, exp_avg, exp_avg_sq; writes the
#: param and both moments: 7 accesses of 4 bytes, ~10 FLOPs.
_ADAM_BYTES_PER_PARAM = 7 * 4
_ADAM_FLOPS_PER_PARAM = 10


@dataclass(frozen=True)
class StepCost:
    """Work of one Adam step of one member (one patch), counted."""

    flops: float
    bytes: float  # upper bound on device-memory traffic, unfused (see module doc)
    params: int
    operators: int  # ATen operators dispatched: the kernel launches an eager step makes

    @property
    def intensity(self) -> float:
        """FLOPs per byte: below a device's ``peak_flops / bandwidth`` it is bandwidth-bound."""
        return self.flops / self.bytes


@dataclass(frozen=True)
class DevicePeak:
    """Datasheet peaks of one accelerator: dense bf16 tensor FLOP/s, fp32 FLOP/s, memory B/s."""

    name: str
    bf16_flops: float
    fp32_flops: float
    bandwidth: float


#: Vendor datasheets, dense (no 2:4 sparsity), SXM parts where there are several.
PEAKS: tuple[DevicePeak, ...] = (
    DevicePeak("H200", 989.4e12, 66.9e12, 4.8e12),
    DevicePeak("H100", 989.4e12, 66.9e12, 3.35e12),
    DevicePeak("A100", 312e12, 19.5e12, 2.039e12),
    DevicePeak("L4", 121e12, 30.3e12, 0.3e12),
    DevicePeak("A10", 125e12, 31.2e12, 0.6e12),  # AWS g5's A10G is an A10 variant
)


def device_peak(device_name: str) -> DevicePeak | None:
    """The datasheet peak for a CUDA device name (``torch.cuda.get_device_name``), or None."""
    upper = device_name.upper()
    return next((p for p in PEAKS if p.name in upper), None)


class _ByteCounter(TorchDispatchMode):
    """Adds up the bytes of every tensor each ATen operator takes or returns."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.operators = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten((args, kwargs or {}, out))[0]:
            if isinstance(t, torch.Tensor):
                self.bytes += t.numel() * t.element_size()
        self.operators += 1
        return out


def count_step(config: DIPConfig, shape: tuple[int, int, int], *, bf16: bool = False) -> StepCost:
    """Counted work of one training step of one member fitting a ``shape`` (C, H, W) patch.

    The patch is padded as the engine pads it. ``bf16`` counts activations in bfloat16
    (autocast halves the bytes of what it casts; parameters and Adam stay float32)."""
    c, h, w = shape
    ph, pw = padded_size(h, config.depth), padded_size(w, config.depth)
    cfg = replace(config, steps=1)
    dtype = torch.bfloat16 if bf16 else torch.float32
    with torch.device("meta"):
        net = pack_members(cfg, c, [0]).to(dtype)
        z = torch.empty((1, cfg.net_input_channels, ph, pw), dtype=dtype)
        target = torch.empty((1, c, ph, pw), dtype=dtype)
        mask = torch.empty((1, c, ph, pw), dtype=dtype)
    flops, counted = FlopCounterMode(display=False), _ByteCounter()
    with flops, counted:
        masked_loss(cfg.loss, net(z), target, mask).sum().backward()
    params = sum(p.numel() for p in net.parameters())
    return StepCost(
        flops=float(flops.get_total_flops() + _ADAM_FLOPS_PER_PARAM * params),
        bytes=float(counted.bytes + _ADAM_BYTES_PER_PARAM * params),
        params=int(params),
        operators=counted.operators,
    )


def utilisation(cost: StepCost, seconds_per_patch_step: float, peak: DevicePeak | None = None,
                *, bf16: bool = False) -> dict[str, float]:
    """Achieved FLOP/s and B/s of a measured step; with ``peak``, the fractions of it, the
    roofline floor and which wall bounds the step (``bound``: 1 compute, 0 bandwidth)."""
    achieved = {
        "tflops": cost.flops / seconds_per_patch_step / 1e12,
        "gbytes_per_s": cost.bytes / seconds_per_patch_step / 1e9,
    }
    if peak is None:
        return achieved
    flops_peak = peak.bf16_flops if bf16 else peak.fp32_flops
    t_compute, t_memory = cost.flops / flops_peak, cost.bytes / peak.bandwidth
    return {
        **achieved,
        "fraction_of_flops_peak": cost.flops / seconds_per_patch_step / flops_peak,
        "fraction_of_bandwidth": cost.bytes / seconds_per_patch_step / peak.bandwidth,
        "floor_ms": max(t_compute, t_memory) * 1e3,
        "bound": 1.0 if t_compute >= t_memory else 0.0,
    }
