"""make bench: fill quality and cost of each engine on real SLC-off stripes with known truth.

Two 256x256 tiles of the committed ARG25 Menindee crops (rows/cols 128:384), both
directions: February with January's real SLC-off gaps transplanted onto it, and January with
February's gaps (stripes plus cloud shadows). Scores are per band (B3 red, B4 NIR, B5 SWIR1)
over the hidden pixels only. DIP runs the demo configuration (mcpn-core, 250 steps, input
noise 0.03); set BENCH_DIP_STEPS / BENCH_DIP_PRESET to try others.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dipfill.engines import make_engine  # noqa: E402
from dipfill.eval.cases import score_engine  # noqa: E402
from dipfill.eval.metrics import mean_fill, r2, rmse  # noqa: E402
from dipfill.storage import JsonFileCache, default_strategy_cache_path  # noqa: E402
from tests._data import arg25_transplant  # noqa: E402

BANDS = ("B3", "B4", "B5")


def main() -> None:
    steps = int(os.environ.get("BENCH_DIP_STEPS", "250"))
    preset = os.environ.get("BENCH_DIP_PRESET", "mcpn-core")
    methods = {
        f"dip {preset} {steps} steps": make_engine("dip", preset=preset, steps=steps, reg_noise_std=0.03,
                                                   strategy_cache=JsonFileCache(default_strategy_cache_path())),
        "fillnodata": make_engine("fillnodata"),
        "telea": make_engine("telea"),
        "ns": make_engine("ns"),
    }
    print(f"{'case':<42} {'method':<28} " + " ".join(f"{'rmse ' + b:>8} {'r2 ' + b:>7}" for b in BANDS) + f" {'r2 mean':>8} {'s':>7}")
    for label, reverse in (("Feb truth, Jan gaps", False), ("Jan truth, Feb gaps+shadows", True)):
        case = arg25_transplant(reverse=reverse)
        pred = mean_fill(case.values, case.observed)
        rows = [("mean fill", rmse(case.truth, pred, case.hidden), r2(case.truth, pred, case.hidden), 0.0)]
        for name, engine in methods.items():
            s = score_engine(name, engine, case, seed=0)
            rows.append((name, s.rmse, s.r2, s.seconds))
        hidden = case.hidden.any(axis=0).mean()
        for name, e, q, sec in rows:
            cells = " ".join(f"{a:8.1f} {b:7.3f}" for a, b in zip(e, q))
            print(f"{label + f' ({hidden:.0%} hidden)':<42} {name:<28} {cells} {np.mean(q):8.3f} {sec:7.1f}", flush=True)


if __name__ == "__main__":
    main()
