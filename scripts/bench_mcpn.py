"""Guided DIP (paper 003's MCPN variants) against single-image DIP and classical fills, on CPU.

Case: a 128² tile of the committed ARG25 Menindee crops. February is the truth; its gaps are
January's real SLC-off stripes shifted 20 rows down (so they fall on ground January
observes: a guide must not share the gaps it is meant to fill), and January, 16 days
earlier, is the guide. Scored: r² per band over the hidden pixels the guide observes (here
all of them), and wall seconds.

Methods: every ``MCPNEngine`` variant at the same steps (the paper's stopping for its three:
known-region RMSE for Emergent, fixed steps for Direct and Stacked; fixed for the others),
single-image DIP with the same core and steps, GDAL ``fillnodata``, and two classical guided
fills from :func:`dipfill.engines.mcpn.guided_prior`: the local regression on the guide
alone, and regression plus the fillnodata-interpolated residual.

    BENCH_MCPN_STEPS=300 BENCH_MCPN_TILES=200,150 BENCH_THREADS=1 python scripts/bench_mcpn.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dipfill.engines import make_engine  # noqa: E402
from dipfill.engines.config import preset  # noqa: E402
from dipfill.engines.mcpn import MCPNConfig, MCPNEngine, guided_prior, spatial_fill  # noqa: E402
from dipfill.engines.normalize import denormalize, normalize  # noqa: E402
from dipfill.eval.cases import Transplant, transplant_gaps  # noqa: E402
from dipfill.eval.metrics import r2  # noqa: E402
from tests._data import ARG25_FEB, ARG25_JAN  # noqa: E402

SHIFT = 20  # rows: about half the SLC-off stripe period on these crops
SIZE = 128


def load_case(row: int, col: int) -> tuple[Transplant, np.ndarray, np.ndarray]:
    stacks = []
    for path in (ARG25_JAN, ARG25_FEB):
        with rasterio.open(path) as src:
            data = src.read()
            stacks.append((data.astype(np.float32), data != src.nodata))
    (jan, jan_valid), (feb, feb_valid) = stacks
    shifted = np.ones_like(jan_valid)
    shifted[:, SHIFT:] = jan_valid[:, :-SHIFT]
    win = (slice(None), slice(row, row + SIZE), slice(col, col + SIZE))
    case = transplant_gaps(feb[win], feb_valid[win], shifted[win])
    return case, np.where(jan_valid, jan, 0)[win].astype(np.float32), jan_valid[win]


def classical_guided(case: Transplant, guide: np.ndarray, guide_valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local regression on the guide (fillnodata where the guide is missing), and the same
    plus the interpolated residual; in the engine's normalised units, mapped back."""
    obs = case.observed
    norm, params = normalize(np.where(obs, case.values, 0.0), obs)
    norm = np.where(obs, norm, 0.0)
    gnorm, _ = normalize(np.where(guide_valid, guide, 0.0), guide_valid)
    prior, defined = guided_prior(norm, obs, [(np.where(guide_valid, gnorm, 0.0), guide_valid)])
    prior = np.where(defined, prior, spatial_fill(norm, obs))
    residual = spatial_fill(np.where(obs, norm - prior, 0.0), obs)
    return denormalize(prior, params), denormalize(prior + residual, params)


def main() -> None:
    steps = int(os.environ.get("BENCH_MCPN_STEPS", "300"))
    threads = int(os.environ.get("BENCH_THREADS", str(torch.get_num_threads())))
    torch.set_num_threads(threads)
    tiles = [tuple(int(v) for v in t.split(",")) for t in os.environ.get("BENCH_MCPN_TILES", "200,150").split(";")]
    cfg = preset("mcpn-core", steps=steps, strategy="loop")
    engines = {
        "mcpn emergent (known-rmse)": MCPNEngine(cfg, MCPNConfig.paper("emergent")),
        "mcpn direct": MCPNEngine(cfg, MCPNConfig.paper("direct")),
        "mcpn stacked": MCPNEngine(cfg, MCPNConfig.paper("stacked")),
        "guide as input": MCPNEngine(cfg, MCPNConfig(variant="input", stopping="fixed")),
        "residual of regression": MCPNEngine(cfg, MCPNConfig(variant="residual", stopping="fixed")),
    }
    print(f"torch {torch.__version__}, {threads} thread(s), {steps} steps, core mcpn-core, {SIZE}x{SIZE} tiles")
    print(f"{'tile':<10} {'method':<28} {'r2 B3':>6} {'r2 B4':>6} {'r2 B5':>6} {'mean':>6} {'steps':>6} {'s':>7}")
    for row, col in tiles:
        case, guide, guide_valid = load_case(row, col)
        scored = case.hidden & guide_valid
        label = f"{row},{col}"
        rows = []

        def report(name: str, values: np.ndarray, seconds: float, used: int | str = "") -> None:
            q = r2(case.truth, values, scored)
            rows.append((name, q))
            print(f"{label:<10} {name:<28} {q[0]:6.3f} {q[1]:6.3f} {q[2]:6.3f} {q.mean():6.3f} {used!s:>6} "
                  f"{seconds:7.1f}", flush=True)

        start = time.perf_counter()
        idw = make_engine("fillnodata").fill(case.values[None], case.observed[None], seeds=[0]).values[0]
        report("fillnodata", idw, time.perf_counter() - start)
        start = time.perf_counter()
        regression, regression_residual = classical_guided(case, guide, guide_valid)
        seconds = time.perf_counter() - start
        report("regression on guide", regression, seconds)
        report("regression + interp. resid.", regression_residual, seconds)
        start = time.perf_counter()
        single = MCPNEngine(cfg).fill(case.values[None], case.observed[None], seeds=[0])
        report("single-image DIP", single.values[0], time.perf_counter() - start, single.diagnostics[0].steps)
        for name, engine in engines.items():
            start = time.perf_counter()
            result = engine.fill(case.values[None], case.observed[None], seeds=[0], guides=guide[None],
                                 guide_observed=guide_valid[None])
            d = result.diagnostics[0]
            used = d.steps if d.extra.get("best_step", d.steps) == d.steps else f"{d.extra['best_step']}/{d.steps}"
            report(name, result.values[0], time.perf_counter() - start, used)
        print(f"{label:<10} hidden {case.hidden.any(axis=0).mean():.0%} of the tile, "
              f"scored {scored.any(axis=0).mean():.0%} (hidden and observed by the guide)", flush=True)


if __name__ == "__main__":
    main()
