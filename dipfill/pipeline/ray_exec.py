"""Engine actors on Ray: the only module of dipfill that imports Ray.

Why an actor pool with bounded in-flight work rather than Ray Data ``map_batches``: a scene
is a few hundred to a thousand patch batches whose inputs are *read by the workers* from
the source assets (a window descriptor is a few hundred bytes), and whose outputs go
straight into the per-scene patch store; nothing flows through an object-store dataset.
Ray Data would add pyarrow blocks, a streaming executor and its own retry semantics for
no gain here, and ~0.6 GB more per worker; one task per actor at a time keeps memory
bounded by the batch, not the scene, and an actor keeps its engine (and, on GPUs, its
compiled kernels and strategy cache) warm across batches. Measured overhead vs calling the
engine in process: see ``make bench``.

Fault tolerance: actors restart when their process dies (``max_restarts``) and Ray retries
the call that was running (``max_task_retries``); patch writes are idempotent, so
at-least-once execution is safe.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from dipfill.tiling import PatchWindow

__all__ = ["FitTask", "start_ray", "stop_ray", "EnginePool", "LocalPool", "engine_pool", "FAULT_ENV"]

log = logging.getLogger(__name__)

# Fault injection for tests of the restart path: "exit-once:<marker file>" makes the first
# actor call that finds no marker create it and kill its own process.
FAULT_ENV = "DIPFILL_FAULT_INJECT"


@dataclass(frozen=True)
class FitTask:
    """One batch of one scene, described, not materialised: workers read the pixels."""

    scene_key: str
    source: Any  # dipfill.pipeline.scene.SceneSource (picklable, no open dataset)
    store_path: str
    batch_index: int
    fallback: bool
    windows: tuple[PatchWindow, ...]
    indices: tuple[int, ...]  # positions of the windows in the patch store
    seeds: tuple[int, ...]


def start_ray(address: str | None = None, *, num_cpus: int | None = None) -> dict[str, Any]:
    """Join the cluster at ``address``, or start a local one on 127.0.0.1 without dashboard."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                     log_to_driver=False, configure_logging=False)
    return dict(ray.cluster_resources())


def stop_ray() -> None:
    import ray

    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()
    if ray.is_initialized():
        ray.shutdown()


_POOLS: dict[str, "EnginePool"] = {}


def engine_pool(engine: str, engine_options: dict[str, Any], fallback: str) -> "EnginePool":
    """A pool for this engine configuration, reused across runs in one driver process:
    starting an actor (a Python process importing torch) costs seconds, a batch may not."""
    import json

    key = json.dumps([engine, engine_options, fallback, os.environ.get(FAULT_ENV, "")], sort_keys=True, default=str)
    if key not in _POOLS:
        # One pool at a time: actors of another configuration hold the cluster's CPUs/GPUs,
        # and new actors would wait for them forever.
        for old in _POOLS.values():
            old.close()
        _POOLS.clear()
        _POOLS[key] = EnginePool(engine, engine_options, fallback)
    return _POOLS[key]


class _EngineWorker:
    """Holds one primary and one fallback engine; fits batches into the patch store."""

    def __init__(self, engine: str, engine_options: dict[str, Any], fallback: str, threads: int | None) -> None:
        from dipfill.engines import make_engine

        if threads:
            import torch

            torch.set_num_threads(threads)
        self.engine = make_engine(engine, **engine_options)
        self.fallback = make_engine(fallback) if fallback != "none" else None

    def fit(self, task: FitTask) -> list[tuple[str, dict[str, Any]]]:
        from dataclasses import asdict

        from dipfill.pipeline.fill import batch_inputs
        from dipfill.pipeline.patchstore import PatchStore

        _maybe_fail()
        patches, observed, _ = [], [], None
        for w in task.windows:
            part = task.source.read(((w.row_off, w.row_off + w.height), (w.col_off, w.col_off + w.width)))
            local = PatchWindow(0, 0, w.height, w.width)
            p, o, _ = batch_inputs(part.data, part.valid, [local], 0)
            patches.append(p[0])
            observed.append(o[0])
        engine = self.fallback if task.fallback else self.engine
        result = engine.fill(np.stack(patches), np.stack(observed), seeds=list(task.seeds))
        store = PatchStore(task.store_path)
        for index, values in zip(task.indices, result.values):
            store.write(index, values)
        return [(w.id, asdict(d)) for w, d in zip(task.windows, result.diagnostics)]


def _maybe_fail() -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if spec.startswith("exit-once:"):
        marker = spec.split(":", 1)[1]
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)


class LocalPool:
    """The same worker called in this process, one batch at a time: the baseline that
    measures what Ray adds (``make bench``), and a way to run without a cluster."""

    def __init__(self, engine: str, engine_options: dict[str, Any], fallback: str) -> None:
        self.worker = _EngineWorker(engine, dict(engine_options), fallback, None)

    def run(self, tasks: Iterable[FitTask], on_done: Callable[[FitTask, list[tuple[str, dict]]], None]) -> None:
        for task in tasks:
            on_done(task, self.worker.fit(task))

    def close(self) -> None:
        pass


class EnginePool:
    """``size`` engine actors, one batch in flight per actor."""

    def __init__(self, engine: str, engine_options: dict[str, Any], fallback: str, *, size: int | None = None,
                 gpus: bool | None = None) -> None:
        import ray

        resources = ray.cluster_resources()
        gpus = bool(resources.get("GPU", 0)) if gpus is None else gpus
        if size is None:
            size = int(resources.get("GPU", 0)) if gpus else max(1, int(resources.get("CPU", 1)))
        opts: dict[str, Any] = {"max_restarts": -1, "max_task_retries": 3}
        opts.update({"num_gpus": 1} if gpus else {"num_cpus": 1})
        env = {FAULT_ENV: os.environ[FAULT_ENV]} if os.environ.get(FAULT_ENV) else {}
        if env:
            opts["runtime_env"] = {"env_vars": env}
        actor_cls = ray.remote(_EngineWorker)
        threads = None if gpus else 1  # CPU actors share the cores: one torch thread each
        self.actors = [actor_cls.options(**opts).remote(engine, dict(engine_options), fallback, threads)
                       for _ in range(size)]
        self.gpus = gpus

    def run(self, tasks: Iterable[FitTask], on_done: Callable[[FitTask, list[tuple[str, dict]]], None]) -> None:
        """Fit every task; ``on_done`` is called on the driver as each finishes."""
        import ray

        queue = list(tasks)
        pending: dict[Any, tuple[FitTask, Any]] = {}
        free = list(self.actors)
        while queue or pending:
            while queue and free:
                actor = free.pop()
                task = queue.pop(0)
                pending[actor.fit.remote(task)] = (task, actor)
            ready, _ = ray.wait(list(pending), num_returns=1)
            task, actor = pending.pop(ready[0])
            on_done(task, ray.get(ready[0]))
            free.append(actor)

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
