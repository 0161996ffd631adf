"""make bench: what one DIP Adam step costs per 256x256 patch, per preset and strategy.

Seconds per patch per Adam step on the machine at hand (synthetic 3-band 256x256 data; the
cost does not depend on the values), for the loop strategy (one network at a time) and the
packed one (BENCH_MEMBERS networks as one grouped model). Multiply by steps x patches for a
run: a 7000x7000 scene is ~1,000 patches at stride 224. BENCH_PRESETS limits the presets
(the paper network costs ~1 s per step here, so the full table takes a few minutes).

Each row also gives the step's counted work (dipfill.engines.roofline: FLOPs and an unfused
upper bound of the bytes moved, per patch-step) and the rate the faster strategy achieved,
so CPU and GPU figures compare as fractions of a machine rather than as seconds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dipfill.engines.dip import preset, resolve_device  # noqa: E402
from dipfill.engines.dipnet import build_skip_net  # noqa: E402
from dipfill.engines.roofline import count_step, utilisation  # noqa: E402
from dipfill.engines.strategy import Plan, _time_candidate  # noqa: E402


def main() -> None:
    device = torch.device(resolve_device(os.environ.get("BENCH_DEVICE", "auto")))
    members = int(os.environ.get("BENCH_MEMBERS", "4"))
    names = os.environ.get("BENCH_PRESETS", "mcpn-core,ndvi2024,sar2023,landsat2020").split(",")
    cuda = device.type == "cuda"
    print(f"device {device} ({torch.get_num_threads()} threads), 3 bands, 256x256, packed = {members} members")
    print(f"{'preset':<12} {'params':>9} {'loop s/step':>12} {'packed s/step':>14} {'1500 steps, loop':>17} "
          f"{'GFLOP/step':>11} {'GB/step':>8} {'achieved':>22}")
    for name in names:
        cfg = preset(name)
        base = Plan("loop", False, bf16=cuda, channels_last=cuda, fused_adam=cuda)
        params = sum(p.numel() for p in build_skip_net(cfg, 3).parameters())
        loop = _time_candidate(cfg, device, (3, 256, 256), members, base, "loop", False)
        packed = _time_candidate(cfg, device, (3, 256, 256), members, base, "packed", False)
        cost = count_step(cfg, (3, 256, 256), bf16=base.bf16)
        rate = utilisation(cost, min(loop, packed))
        print(f"{name:<12} {params:>9,} {loop:>12.3f} {packed:>14.3f} {loop * 1500 / 60:>14.1f} min "
              f"{cost.flops / 1e9:>11.1f} {cost.bytes / 1e9:>8.2f} "
              f"{rate['tflops'] * 1e3:>7.1f} GFLOP/s {rate['gbytes_per_s']:>5.1f} GB/s", flush=True)


if __name__ == "__main__":
    main()
