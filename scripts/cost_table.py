"""GPU-hours per 7000×7000 scene, and a year over a region on a 64-GPU cluster (issue 14 item 5).

Each DIP row is ``measured ms per patch-step × steps per patch × patches per scene``; the
patch count is dipfill's own tiling of a 7000² scene (256² patches, 32 px overlap), every
patch assumed to hold a gap (true of SLC-off, whose stripes cross every patch). Figures come
with where they were measured; a row whose step cost or step count was not measured on the
device it names says ``projection``. Amortised and classical engines are per-patch or
per-scene wall times. ``--gpu-json gpu_check.json`` replaces the H100 step costs with those
of a newer ``scripts/gpu_check.py`` run (its best packed width, bf16).

The goal the issue sets: <= 0.05 GPU-h per scene (a year of Landsat-7 over a region, about
1,000 scenes, in under an hour on 64 GPUs).

    .venv/bin/python scripts/cost_table.py [--gpu-json PATH] [--scenes 1000] [--gpus 64]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dipfill.tiling.grid import plan_windows  # noqa: E402

SCENE = 7000


@dataclass(frozen=True)
class Row:
    label: str
    device: str
    ms_per_patch_step: float | None  # DIP rows
    steps: float | None
    seconds_per_patch: float | None = None  # amortised rows
    seconds_per_scene: float | None = None  # rows measured on a whole 7000² scene
    measured: str = ""  # what was measured, where
    projection: bool = False


# Step costs: docs/benchmarks/README.md "DIP cost per 256×256 patch" (H100 80GB HBM3, torch
# 2.11, packed ×8, 2026-11-26; CPU: 2 cores, torch 2.13, idle figure where there is one).
# Step counts: fixed = the preset's; hold-out early stopping = mean over the H100 quality
# tiles (landsat2020: 375, 1250, 925, 300) and the CPU wide/thin stripe tiles (mcpn-core:
# 488 and 850, scripts/bench_dip_defaults.py).
ROWS = [
    Row("paper network (landsat2020), fixed 1500", "H100", 5.4, 1500,
        measured="step: H100 packed×8 bf16; steps: fixed"),
    Row("paper network (landsat2020), hold-out early stopping", "H100", 5.4, 712,
        measured="step and steps: H100 (4 tile fits)"),
    Row("light preset (mcpn-core), fixed 1500", "H100", 4.3, 1500,
        measured="step: H100 packed×8 fp32; steps: fixed"),
    Row("light preset (mcpn-core), hold-out early stopping", "H100", 4.3, 669,
        measured="step: H100; steps: CPU bench (same code)", projection=True),
    Row("light preset at the roofline floor (bf16, 0.13 ms), hold-out", "H100 (floor)", 0.13, 669,
        measured="counted floor (engines/roofline.py), not achieved", projection=True),
    Row("paper network (landsat2020), fixed 1500", "CPU 2 cores", 1220.0, 1500,
        measured="CPU loop, idle machine"),
    Row("light preset (mcpn-core), fixed 1500", "CPU 2 cores", 115.0, 1500,
        measured="CPU loop"),
    # Warm starts (scripts/bench_warm_start.py, 2026-12-03) reached cold's quality *later*,
    # not sooner: no row until one saves steps.
    Row("ConvNP (paper 002), one forward pass", "CPU 2 cores", None, None, seconds_per_patch=1.0,
        measured="0.1-0.4 s per 128² tile (bench_convnp.py) x4 pixels", projection=True),
    Row("guided (judged LLHM/regression), another date as guide", "CPU 2 cores", None, None,
        seconds_per_patch=0.45, measured="0.45 s per 256² patch (bench_guided.py)"),
    Row("fillnodata (GDAL), whole scene", "CPU 2 cores", None, None, seconds_per_scene=48.3,
        measured="engine seconds of dipfill run on a 7000² scene (bench_full_scene.py, 755 patches)"),
]


def from_gpu_json(path: Path) -> list[Row]:
    """H100 rows with the step costs of a newer gpu_check.py run (best width, bf16)."""
    data = json.loads(path.read_text())
    device = data.get("device", "GPU")
    sat = data.get("saturation", {})
    best = data.get("best_width", {})
    out = []
    for row in ROWS:
        name = "landsat2020" if "landsat2020" in row.label else "mcpn-core"
        entry = sat.get(f"{name} x{best.get(name)}")
        if row.device == "H100" and isinstance(entry, dict):
            row = replace(row, device=device, ms_per_patch_step=entry["s_per_patch_step"] * 1e3,
                          measured=f"step: {device} packed×{best[name]} bf16 (gpu_check); " + row.measured.split("; ")[-1])
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu-json", type=Path, help="a scripts/gpu_check.py result to take step costs from")
    parser.add_argument("--scenes", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--extra", type=Path, help="JSON list of extra rows (Row fields), e.g. ConvNP's")
    args = parser.parse_args()
    patches = len(plan_windows(SCENE, SCENE))
    rows = from_gpu_json(args.gpu_json) if args.gpu_json else list(ROWS)
    if args.extra:
        rows += [Row(**r) for r in json.loads(args.extra.read_text())]
    print(f"{SCENE}² scene = {patches} patches of 256² (32 px overlap); goal <= 0.05 GPU-h per scene; "
          f"{args.scenes} scenes on {args.gpus} devices\n")
    print("| engine, configuration | device | ms / patch-step | steps | device-h / scene | "
          f"{args.scenes} scenes on {args.gpus} devices (h) | × goal | what was measured |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if r.seconds_per_scene is not None:
            hours = r.seconds_per_scene / 3600
        else:
            seconds = r.ms_per_patch_step / 1e3 * r.steps if r.seconds_per_patch is None else r.seconds_per_patch
            hours = seconds * patches / 3600
        step = f"{r.ms_per_patch_step:g}" if r.ms_per_patch_step is not None else "–"
        steps = f"{r.steps:g}" if r.steps is not None else "one pass"
        tag = " (projection)" if r.projection else ""
        print(f"| {r.label} | {r.device} | {step} | {steps} | {hours:.3g} | {hours * args.scenes / args.gpus:.3g} | "
              f"{hours / 0.05:.3g} | {r.measured}{tag} |")


if __name__ == "__main__":
    main()
