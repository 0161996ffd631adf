"""make bench (Ray path): what the Ray pipeline costs on top of the engine.

The committed demo catalog's two scenes (18 patches of 256x256), engine ``fillnodata``
(cheap, so overhead shows) and ``dip`` (mcpn-core, BENCH_RUN_DIP_STEPS steps): the same
run (search, read, plan, fit, blend, write) with the engine worker called in process
(``LocalPool``) and on warm local Ray actors (second run, ``--force``). Prints both wall
times and the overhead; Ray start-up is reported apart. On 2 cores Ray runs two one-thread
actors against one two-thread torch in process, so DIP numbers compare throughput too.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dipfill.cli.run import build_request  # noqa: E402
from dipfill.pipeline import run as run_mod  # noqa: E402
from dipfill.pipeline.executor import LocalPool  # noqa: E402
from dipfill.pipeline.ray_executor import start_ray, stop_ray  # noqa: E402

CATALOG = REPO / "data" / "arg25_menindee" / "stac" / "catalog.json"


def in_process(values: dict, out: Path) -> float:
    req = build_request({"stac": str(CATALOG), "out": str(out), "force": True, **values})
    opts = req.options
    pool = LocalPool(opts.engine, dict(opts.engine_options), opts.fallback)
    start = time.perf_counter()
    run_mod.run(req, pool=pool)
    return time.perf_counter() - start


def with_ray(values: dict, out: Path) -> float:
    run_mod.run(build_request({"stac": str(CATALOG), "out": str(out), **values}))  # warms the actors
    start = time.perf_counter()
    run_mod.run(build_request({"stac": str(CATALOG), "out": str(out), "force": True, **values}))
    return time.perf_counter() - start


def main() -> None:
    t = time.perf_counter()
    resources = start_ray()
    print(f"local Ray start: {time.perf_counter() - t:.1f} s, resources {resources}")
    steps = int(os.environ.get("BENCH_RUN_DIP_STEPS", "20"))
    cases = {
        "fillnodata": {"engine": "fillnodata"},
        f"dip mcpn-core {steps} steps": {"engine": "dip", "preset": "mcpn-core", "steps": steps, "strategy": "loop"},
    }
    print(f"{'engine':<26} {'in process s':>13} {'ray run s':>10} {'overhead':>9}   (2 scenes, 18 patches; "
          "both read, blend and write every scene)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, values in cases.items():
            local = in_process(values, Path(tmp) / f"local_{len(name)}")
            ray_s = with_ray(values, Path(tmp) / name.replace(" ", "_"))
            print(f"{name:<26} {local:>13.2f} {ray_s:>10.2f} {100 * (ray_s - local) / local:>8.0f}%", flush=True)
    stop_ray()


if __name__ == "__main__":
    main()
