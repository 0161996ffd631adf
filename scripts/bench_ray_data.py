"""make bench (Ray Data): EnginePool (bounded in-flight actor pool) vs Ray Data ``map_batches``.

The same FitTasks, built as ``dipfill run`` builds them (the committed demo catalog: two
512x512 ARG25 Landsat-7 SLC-off crops, 18 patches of 256x256 in batches of 4), go through

* ``pool``: :class:`dipfill.pipeline.ray_executor.EnginePool` (one batch in flight per actor,
  ``ray.wait``), and
* ``data``: ``ray.data.from_items([{"task_id": i, "task": FitTask}, ...])`` (one block per
  task) ``.map_batches(FitBatch, compute=ActorPoolStrategy(size=2), batch_size=1,
  num_cpus=1)`` (``FitBatch`` wraps ``EngineWorker``; ``concurrency=`` is deprecated in
  Ray 2.60 in favour of ``compute=``), consumed with ``iter_rows()``,

for engine ``fillnodata`` (cheap, so overhead shows; the task list is replicated
BENCH_RAY_DATA_REPLICAS times, default 8, into separate patch stores so there are enough
tasks to measure) and ``dip`` (mcpn-core, BENCH_RAY_DATA_DIP_STEPS steps, default 30,
strategy loop). BENCH_RAY_DATA_REPEATS (default 2) pairs of runs, order alternated, the
table shows medians; BENCH_RAY_DATA_ENGINES picks engines; BENCH_RAY_DATA_IN_FLIGHT sets
Ray Data's ``max_tasks_in_flight_per_actor`` (default: Ray Data's own).

Each (path, engine) run is a child process with its own new local Ray (``address="local"``,
2 CPUs, 127.0.0.1, no dashboard), so driver imports (Ray Data pulls in pyarrow) and workers
of one case cannot inflate another's memory. The child samples its whole process tree
(driver, GCS, raylet, workers, actors) every 0.1 s: resident memory with
``bench_run_scale.tree_rss_mb``, and CPU time by process. Start-up (actors constructed: a
process importing torch and building the engine) is reported apart: EnginePool waits for
its actors before the timed run; Ray Data creates its actors inside each execution, so its
start-up runs until the first fit call began in an actor (the UDF reports it), "fit s" is
the rest. The parent then checks that both paths wrote byte-identical patch stores and
the same per-patch diagnostics (same seeds, one torch thread per actor).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_run_scale import tree_rss_mb  # noqa: E402

CATALOG = REPO / "data" / "arg25_menindee" / "stac" / "catalog.json"
ACTORS = 2


def engines() -> dict[str, dict[str, Any]]:
    steps = int(os.environ.get("BENCH_RAY_DATA_DIP_STEPS", "30"))
    cases = {
        "fillnodata": {"engine": "fillnodata"},
        "dip": {"engine": "dip", "preset": "mcpn-core", "steps": steps, "strategy": "loop"},
    }
    chosen = os.environ.get("BENCH_RAY_DATA_ENGINES", "fillnodata,dip").split(",")
    return {name: values for name, values in cases.items() if name in chosen}


def replicas(engine: str) -> int:
    return int(os.environ.get("BENCH_RAY_DATA_REPLICAS", "8")) if engine == "fillnodata" else 1


# ----------------------------------------------------------------------------- child side


def build_tasks(values: dict[str, Any], out: Path, copies: int) -> tuple[list, Any]:
    """FitTasks for every scene of the demo catalog, as ``run._process_scene`` builds them,
    each scene ``copies`` times into its own patch store (distinct stores: one writer per chunk)."""
    from dipfill.cli.run import build_request
    from dipfill.pipeline.plan import patch_seed, plan_fill
    from dipfill.pipeline.patchstore import PatchStore
    from dipfill.pipeline.executor import FitTask
    from dipfill.raster.scene import open_scene
    from dipfill.stac.item import config_hash, sanitize_id
    from dipfill.stac.search import SearchQuery, search

    req = build_request({"stac": str(CATALOG), "out": str(out), "force": True, **values})
    opts = req.options
    chash = config_hash(req.config())
    tasks = []
    for record in search(req.stac, SearchQuery()):
        source = open_scene(dict(record), bands=req.bands, mask=req.mask)
        scene = source.read()
        plan = plan_fill(scene.valid, scene.footprint, opts, with_fallback=opts.fallback != "none")
        index = {w.id: i for i, w in enumerate(plan.windows)}
        item_id = sanitize_id(str(record["id"])) + "-dipfill"
        for copy in range(copies):
            store = PatchStore.open(out / f"r{copy}" / item_id / "patches.zarr", len(plan.windows),
                                    scene.data.shape[0], opts.patch, chash)
            tasks += [FitTask(item_id, source, store.path, b.index, b.fallback, b.windows,
                              tuple(index[w.id] for w in b.windows),
                              tuple(patch_seed(opts.seed, w) for w in b.windows))
                      for b in plan.batches]
    return tasks, opts


class FitBatch:
    """Ray Data UDF: one :class:`EngineWorker` per actor, as EnginePool's actors hold one."""

    def __init__(self, engine: str, engine_options: dict[str, Any], fallback: str, threads: int | None) -> None:
        from dipfill.pipeline.executor import EngineWorker

        self.worker = EngineWorker(engine, engine_options, fallback, threads)
        self.ready_at = time.time()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        started = time.time()
        diags = [json.dumps(self.worker.fit(task)) for task in batch["task"]]
        return {"task_id": np.asarray(batch["task_id"]), "diags": np.asarray(diags, dtype=object),
                "ready_at": np.full(len(diags), self.ready_at), "started": np.full(len(diags), started),
                "pid": np.full(len(diags), os.getpid())}


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of ``pid`` and of each of its descendants, by process."""
    out, todo, tick = {}, [pid], os.sysconf("SC_CLK_TCK")
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[p] = (int(fields[11]) + int(fields[12])) / tick
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError, IndexError):
            continue
    return out


class Sampler:
    """Peak resident memory of this process's tree (``tree_rss_mb``) and the CPU time its
    processes used from now on, sampled every ``period`` s: a process that exits (an actor
    of the pool) counts with its last sample. Unlike wall time, CPU time hardly depends on
    what else runs on the machine (Ray workers run at nice 15, so they yield to it)."""

    def __init__(self, period: float = 0.1) -> None:
        self.period, self.peak, self._stop = period, 0.0, threading.Event()
        self.base = tree_cpu(os.getpid())
        self.last: dict[int, float] = dict(self.base)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def sample(self) -> None:
        self.peak = max(self.peak, tree_rss_mb(os.getpid()))
        for p, sec in tree_cpu(os.getpid()).items():
            self.last[p] = max(sec, self.last.get(p, 0.0))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)

    def cpu_s(self) -> float:
        return sum(sec - self.base.get(p, 0.0) for p, sec in self.last.items())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.peak


def child(case: str, engine: str, out: Path) -> dict[str, Any]:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    from dipfill.pipeline.ray_executor import EnginePool

    t = time.perf_counter()
    # As start_ray(num_cpus=2), but address="local": always a new cluster of our own, never one
    # that another process on this machine started (ray.init() joins /tmp/ray's current one).
    ray.init(address="local", num_cpus=ACTORS, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)
    ray_start = time.perf_counter() - t
    tasks, opts = build_tasks(engines()[engine], out, replicas(engine))

    res: dict[str, Any] = {"case": case, "engine": engine, "tasks": len(tasks),
                           "patches": sum(len(t.windows) for t in tasks), "ray_start_s": ray_start,
                           "ray": ray.__version__}
    time.sleep(1.0)  # let Ray's prestarted idle workers settle before the baseline
    res["baseline_mib"] = tree_rss_mb(os.getpid())
    sampler = Sampler()
    diagnostics: dict[str, dict] = {}
    engine_options = dict(opts.engine_options)
    if case == "pool":
        t0 = time.perf_counter()
        pool = EnginePool(opts.engine, engine_options, opts.fallback, size=ACTORS, gpus=False)
        ray.get([a.__ray_ready__.remote() for a in pool.actors])
        t1 = time.perf_counter()

        def on_done(task, diags):
            diagnostics.update({(task.store_path, wid): d for wid, d in diags})

        pool.run(tasks, on_done)
        t2 = time.perf_counter()
        pool.close()
        res.update(startup_s=t1 - t0, fit_s=t2 - t1, wall_s=t2 - t0)
    else:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        if os.environ.get("BENCH_RAY_DATA_IN_FLIGHT"):
            in_flight = int(os.environ["BENCH_RAY_DATA_IN_FLIGHT"])
        else:
            in_flight = None  # Ray Data's default
        t0 = time.perf_counter()
        wall0 = time.time()
        ds = ray.data.from_items([{"task_id": i, "task": task} for i, task in enumerate(tasks)],
                                 override_num_blocks=len(tasks))  # one task per block: no head-of-line batching
        ds = ds.map_batches(
            FitBatch,
            fn_constructor_args=(opts.engine, engine_options, opts.fallback, 1),  # one torch thread, as EnginePool
            compute=ray.data.ActorPoolStrategy(size=ACTORS, max_tasks_in_flight_per_actor=in_flight),
            batch_size=1,
            num_cpus=1,
        )
        ready: dict[int, float] = {}
        first = float("inf")
        for row in ds.iter_rows():
            task = tasks[int(row["task_id"])]
            diagnostics.update({(task.store_path, wid): d for wid, d in json.loads(row["diags"])})
            ready[int(row["pid"])] = float(row["ready_at"])
            first = min(first, float(row["started"]))
        t2 = time.perf_counter()
        # Start-up: until the first fit call began in an actor (the pool's timed run starts
        # with every actor ready; here a second actor may still be starting: ready_skew_s).
        startup = first - wall0
        res.update(startup_s=startup, fit_s=(t2 - t0) - startup, wall_s=t2 - t0, actors_seen=len(ready),
                   ready_skew_s=max(ready.values()) - min(ready.values()), in_flight_per_actor=in_flight or "default")
    res["peak_mib"] = sampler.stop()
    res["cpu_s"] = sampler.cpu_s()
    res["driver_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["engine_s"] = sum(d["seconds"] for d in diagnostics.values())  # inside engine.fill, all actors
    # What must match between the paths: engine, steps and loss per patch (not seconds).
    res["diagnostics"] = sorted([os.path.relpath(store, out), wid, d["engine"], d["steps"], repr(d["final_loss"])]
                                for (store, wid), d in diagnostics.items())
    ray.shutdown()
    return res


# ---------------------------------------------------------------------------- parent side


def run_case(case: str, engine: str, out: Path) -> dict[str, Any]:
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as err:
        proc = subprocess.run([sys.executable, __file__, "--child", case, "--engine", engine, "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
    if proc.returncode:
        sys.stderr.write(log.read_text()[-4000:])
        raise SystemExit(f"case {case}/{engine} failed ({proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def same_stores(a: Path, b: Path) -> tuple[bool, int]:
    """Byte-compare every patch store under ``a`` with its twin under ``b``."""
    import zarr

    stores = sorted(p.relative_to(a) for p in a.glob("r*/*/patches.zarr"))
    if not stores or stores != sorted(p.relative_to(b) for p in b.glob("r*/*/patches.zarr")):
        return False, 0
    for rel in stores:
        x, y = zarr.open_group(str(a / rel), mode="r"), zarr.open_group(str(b / rel), mode="r")
        if not x["done"][...].all() or not y["done"][...].all():
            return False, len(stores)
        if x["values"][...].tobytes() != y["values"][...].tobytes():
            return False, len(stores)
    return True, len(stores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["pool", "data"])
    parser.add_argument("--engine", choices=list(engines()))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.engine, args.out)), flush=True)
        return

    repeats = int(os.environ.get("BENCH_RAY_DATA_REPEATS", "2"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine in engines():
            runs: dict[str, list[dict[str, Any]]] = {"pool": [], "data": []}
            same, n = True, 0
            for rep in range(repeats):  # alternate the order: the first case of a pair is not favoured
                outs = {case: Path(tmp) / f"{engine}_{case}_{rep}" for case in ("pool", "data")}
                for case in (("pool", "data") if rep % 2 == 0 else ("data", "pool")):
                    load = os.getloadavg()[0]
                    runs[case].append({**run_case(case, engine, outs[case]), "load": load})
                ok, n = same_stores(outs["pool"], outs["data"])
                same = same and ok and runs["pool"][-1]["diagnostics"] == runs["data"][-1]["diagnostics"]
            rows.append((engine, runs, same, n))
            print(f"{engine}: done (identical patch stores and diagnostics: {same})", file=sys.stderr, flush=True)
    pool0 = rows[0][1]["pool"][0]
    steps = engines().get("dip", {}).get("steps")
    print(f"Ray {pool0['ray']}, local, {ACTORS} CPU actors (one torch thread each); {os.cpu_count()} CPUs; "
          f"patches of 256x256 from the demo catalog (2 ARG25 scenes), batches of <= 4 patches per FitTask; "
          f"median of {repeats} run(s) per row, order alternated")
    print(f"fillnodata: task list x{replicas('fillnodata')} (separate patch stores)"
          + (f"; dip: mcpn-core, {steps} steps, strategy loop" if steps else ""))
    head = (f"{'engine':<11} {'path':<22} {'tasks':>5} {'patches':>7} {'start-up s':>10} {'fit s':>7} "
            f"{'wall s':>7} {'patches/s':>9} {'engine s':>8} {'CPU s':>6} {'base MiB':>9} {'peak MiB':>9} "
            f"{'driver MiB':>10} {'load':>5} {'identical':>9}")
    print(head)
    print("-" * len(head))

    def med(rs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rs)

    for engine, runs, same, n in rows:
        for case, label in (("pool", "EnginePool (ray.wait)"), ("data", "Ray Data map_batches")):
            rs = runs[case]
            rate = statistics.median(r["patches"] / r["fit_s"] for r in rs)
            print(f"{engine:<11} {label:<22} {rs[0]['tasks']:>5} {rs[0]['patches']:>7} "
                  f"{med(rs, 'startup_s'):>10.2f} {med(rs, 'fit_s'):>7.2f} {med(rs, 'wall_s'):>7.2f} "
                  f"{rate:>9.2f} {med(rs, 'engine_s'):>8.1f} {med(rs, 'cpu_s'):>6.1f} "
                  f"{med(rs, 'baseline_mib'):>9.0f} {med(rs, 'peak_mib'):>9.0f} {med(rs, 'driver_peak_mib'):>10.0f} "
                  f"{max(r['load'] for r in rs):>5.1f} {('yes' if same else 'NO') + f' ({n})':>9}")
    print("start-up: EnginePool from construction until every actor is ready; Ray Data from from_items until "
          "the first fit call began in an actor (its actors are created inside each execution). fit s = wall s - "
          "start-up; patches/s over fit s; engine s: time inside engine.fill summed over patches (all actors); CPU s: "
          "CPU time of the whole process tree over start-up + fit (independent of other load, unlike wall times). "
          "base MiB: tree RSS after ray.init and planning, before any engine actor; peak MiB: tree RSS peak from "
          "then to the end (driver + GCS + raylet + workers + actors; RSS counts shared pages in every process "
          "that maps them); driver MiB: the driver's own peak RSS. load: highest 1-min load average at the start "
          "of a run (other work on the machine makes times noisy). identical: byte-equal patch stores and equal "
          "per-patch diagnostics (engine, steps, final loss) in every pair of runs (stores per run).")
    for engine, runs, _, _ in rows:
        d = runs["data"][0]
        print(f"{engine}: fit s per run: pool {[round(r['fit_s'], 2) for r in runs['pool']]}, "
              f"data {[round(r['fit_s'], 2) for r in runs['data']]}; Ray Data in-flight tasks per actor "
              f"{d['in_flight_per_actor']}, actor ready skew {d['ready_skew_s']:.2f} s")

if __name__ == "__main__":
    main()
