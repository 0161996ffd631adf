"""How to run DIP fits on the device at hand, chosen by measurement and cached.

Why measure instead of assuming: on this project's 2-core CPUs, packing patches into
grouped convolutions was measured *slower* than fitting them one by one (oneDNN's grouped
convolutions run at about half the speed of dense ones), while on a GPU one patch of the
light presets leaves most of the device idle and packing is the point. ``torch.compile`` is
off unless asked for (:data:`COMPILE_AUTO` has the figures). So the engine times the
candidates once per (device, network, patch shape, batch size) on a few steps of synthetic
data and keeps the winner in the :class:`~dipfill.engines.cache.StrategyCache` the caller
passes: the pipeline's is the file ``$DIPFILL_CACHE_DIR/strategy.json`` (default
``~/.cache/dipfill``, :class:`dipfill.storage.JsonFileCache`), so later runs on the same
machine skip the measurement. This module only asks the cache; it opens no file.

On CUDA, fp32 vs bf16 autocast is measured too; channels_last and fused Adam are always on
there. All of it runs unchanged on CPU when forced, which is how the tests cover it.
Measured on an H100 (torch 2.11, 256x256, 3 bands; ms per patch per Adam step, loop /
packed x8): mcpn-core 21.6 / 4.3, ndvi2024 19.4 / 3.5, sar2023 28.5 / 7.0, landsat2020
19.4 / 6.2 in fp32; bf16 27.1 / 6.7, 26.1 / 4.6, 24.0 / 7.0, 25.4 / 5.4. One patch at a
time costs the same ~20 ms whatever the network: the GPU waits on kernel launches, and
packing is what fills it (3-6x).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from dipfill.engines.cache import MemoryStrategyCache, StrategyCache
from dipfill.engines.config import DIPConfig, padded_size
from dipfill.engines.dipnet import pack_members
from dipfill.engines.fit import fit_members

__all__ = ["COMPILE_AUTO", "Plan", "describe", "prepare_net", "resolve_plan"]

log = logging.getLogger(__name__)

MEASURE_WARMUP = 2
MEASURE_STEPS = {"cpu": 3, "cuda": 20}  # a CPU step of a paper net is ~1 s, a GPU step ~ms


@dataclass(frozen=True)
class Plan:
    """Resolved execution choices for one engine call."""

    strategy: str  # "loop" (one member at a time) or "packed" (all members at once)
    compiled: bool
    bf16: bool
    channels_last: bool
    fused_adam: bool
    seconds_per_patch_step: dict[str, float] = field(default_factory=dict)  # what was measured


def _device_name(device: torch.device) -> str:
    """The part of the cache key that names the hardware (and, on CPU, the torch build and threads)."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{os.cpu_count()}cores:torch{torch.__version__}:threads{torch.get_num_threads()}"


# torch.compile is not an "auto" candidate (measured):
# CPU, 2 cores, torch 2.13, mcpn-core 256x256: 93 s to compile, then 1.6 s/step against
# 0.096 eager. H100, torch 2.11, bf16: mcpn-core packed x8 5.81 ms/patch-step compiled vs
# 6.67 eager (1.15x, after 86 s), loop 28.4 vs 27.1 ms (slower, after 96 s). A 1.15x gain
# does not pay 90 s per network and patch shape on short-lived workers: "on" forces it.
COMPILE_AUTO = False


def _label(strategy: str, compiled: bool, bf16: bool) -> str:
    return strategy + ("+compile" if compiled else "") + ("+bf16" if bf16 else "")


def resolve_plan(
    config: DIPConfig,
    device: torch.device,
    shape: tuple[int, int, int],
    members: int,
    *,
    cache: StrategyCache | None = None,
) -> Plan:
    """The execution plan for fitting ``members`` patches of ``shape`` (C, H, W) on ``device``.

    Measured candidates: loop vs packed (when more than one patch), and on CUDA fp32 vs bf16
    autocast (H100: bf16 was no faster, because these fits are bound by kernel launches,
    not arithmetic, and its quality matched fp32 within the seed spread; so it is chosen
    only where a device shows it faster). A measured winner is looked up in and stored to
    ``cache`` (None: a fresh in-memory one, i.e. measure every time there is a choice).
    """
    cuda = device.type == "cuda"
    base = Plan("loop", False, False, channels_last=cuda, fused_adam=cuda)
    strategies = ["loop", "packed"] if config.strategy == "auto" else [config.strategy]
    if members <= 1:
        strategies = ["loop"]
    compiles = [COMPILE_AUTO] if config.compile == "auto" else [config.compile == "on"]
    precisions = ([False, True] if cuda else [False]) if config.precision == "auto" else [config.precision == "bf16"]
    candidates = [(s, c, b) for s in strategies for c in compiles for b in precisions]
    if len(candidates) == 1:
        s, c, b = candidates[0]
        return replace(base, strategy=s, compiled=c, bf16=b)

    cache = MemoryStrategyCache() if cache is None else cache
    key = _cache_key(config, device, shape, members, base)
    cached = _cached_plan(base, cache.get(key))
    if cached is not None:
        return cached
    timings = {_label(s, c, b): _time_candidate(config, device, shape, members, replace(base, bf16=b), s, c)
               for s, c, b in candidates}
    best = min(timings, key=timings.__getitem__)
    strategy, compiled, bf16 = next(x for x in candidates if _label(*x) == best)
    log.info("dip strategy for %s: %s (seconds per patch-step: %s)", key, best,
             {k: round(v, 4) for k, v in timings.items()})
    try:
        cache.put(key, {"strategy": strategy, "compiled": compiled, "bf16": bf16,
                        "seconds_per_patch_step": dict(timings)})
    except OSError as exc:  # e.g. a read-only home: the plan is still good for this run
        log.warning("could not cache the dip strategy for %s: %s", key, exc)
    return replace(base, strategy=strategy, compiled=compiled, bf16=bf16, seconds_per_patch_step=timings)


def _cache_key(config: DIPConfig, device: torch.device, shape: tuple[int, int, int], members: int, base: Plan) -> str:
    # Only what changes the cost: the network and loss, not steps/lr/stopping/seeds.
    net = {k: v for k, v in config.to_dict().items()
           if k not in {"steps", "lr", "stopping", "check_every", "patience", "holdout_fraction",
                        "emv_alpha", "device", "strategy", "compile", "reg_noise_std",
                        "loss_min_value", "percentiles", "target_range", "input_noise_scale"}}
    digest = hashlib.sha256(json.dumps(net, sort_keys=True).encode()).hexdigest()[:12]
    c, h, w = shape
    return f"{_device_name(device)}|net-{digest}|{c}x{h}x{w}|members{members}|{config.precision}|{config.compile}"


def _cached_plan(base: Plan, entry: dict[str, Any] | None) -> Plan | None:
    """``base`` with a cached winner applied; None when there is none or it is malformed
    (an entry written by another version must cost a measurement, not the run)."""
    if not entry:
        return None
    try:
        return replace(base, strategy=entry["strategy"], compiled=entry["compiled"], bf16=entry["bf16"],
                       seconds_per_patch_step=dict(entry["seconds_per_patch_step"]))
    except (KeyError, TypeError, ValueError):
        log.warning("ignoring a malformed cached dip strategy: %r", entry)
        return None


def _time_candidate(config: DIPConfig, device: torch.device, shape: tuple[int, int, int], members: int,
                    base: Plan, strategy: str, compiled: bool) -> float:
    """Seconds per patch per Adam step for one candidate, on synthetic data of ``shape``."""
    c, h, w = shape
    ph, pw = padded_size(h, config.depth), padded_size(w, config.depth)
    m = members if strategy == "packed" else 1
    cfg = replace(config, steps=MEASURE_WARMUP, stopping="fixed")
    gen = torch.Generator().manual_seed(0)
    z = torch.rand((m, config.net_input_channels, ph, pw), generator=gen).to(device)
    target = torch.rand((m, c, ph, pw), generator=gen).to(device)
    mask = (torch.rand((m, c, ph, pw), generator=gen) > 0.3).float().to(device)
    noise = [torch.Generator(device=device).manual_seed(j) for j in range(m)]
    net = prepare_net(pack_members(cfg, c, range(m)), device, replace(base, strategy=strategy, compiled=compiled))
    fit_members(cfg, net, z, target, mask, None, noise, bf16=base.bf16, fused_adam=base.fused_adam)
    _sync(device)
    start = time.perf_counter()
    steps = MEASURE_STEPS.get(device.type, 3)
    fit_members(replace(cfg, steps=steps), net, z, target, mask, None, noise,
                bf16=base.bf16, fused_adam=base.fused_adam)
    _sync(device)
    return (time.perf_counter() - start) / (steps * m)


def prepare_net(net: torch.nn.Module, device: torch.device, plan: Plan) -> torch.nn.Module:
    """Move ``net`` to ``device`` in the plan's memory format, compiled if the plan says so."""
    net = net.to(device)
    if plan.channels_last:
        net = net.to(memory_format=torch.channels_last)
        net.channels_last = True
    if plan.compiled:
        net = torch.compile(net)
    return net


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(plan: Plan) -> dict[str, Any]:
    """Plan as plain values, for diagnostics."""
    return asdict(plan)
