"""How a scene's work is executed: the executor interface, the engine worker, in process.

The pipeline hands an executor a list of task *descriptions* (:class:`FitTask`: a batch of
windows to fit; :class:`~dipfill.pipeline.blocks.BlockTask`: a block to merge) and a
callback; the executor calls the :class:`EngineWorker` method named for each task
somewhere and the callback on the driver as each finishes. Two executors satisfy the
:class:`Executor` protocol: :class:`LocalPool` (this process, one task at a time: the
baseline ``make bench`` measures Ray against, and a way to run without a cluster) and
:class:`~dipfill.pipeline.ray_executor.EnginePool` (engine actors on Ray; that module is
the only one that imports Ray). Workers read their own pixels and write their results
into the scene's patch store or mosaic, so a task is a few hundred bytes whatever the batch.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np

from dipfill.engines import make_engine, set_threads
from dipfill.pipeline.blocks import blend_block
from dipfill.pipeline.patchstore import PatchStore
from dipfill.pipeline.plan import batch_inputs
from dipfill.storage import JsonFileCache, default_strategy_cache_path
from dipfill.tiling import PatchWindow, crop

__all__ = ["Executor", "FitTask", "EngineWorker", "LocalPool", "FAULT_ENV"]

# Fault injection for tests of the restart path: "exit-once:<marker file>" makes the first
# actor call that finds no marker create it and kill its own process.
FAULT_ENV = "DIPFILL_FAULT_INJECT"


class Executor(Protocol):
    """Runs worker calls for tasks: one small interface for in-process and Ray execution."""

    def run(self, tasks: Iterable[Any], on_done: Callable[[Any, Any], None], method: str = "fit") -> None:
        """Call ``EngineWorker.<method>(task)`` for every task; ``on_done(task, result)`` on
        the driver as each finishes (in completion order)."""

    def close(self) -> None:
        """Release the workers."""


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


class EngineWorker:
    """Holds one primary and one fallback engine; fits batches into the patch store."""

    def __init__(self, engine: str, engine_options: dict[str, Any], fallback: str, threads: int | None) -> None:
        if threads:
            set_threads(threads)
        # the cache path comes from the worker's own environment ($DIPFILL_CACHE_DIR)
        self.engine = make_engine(engine, strategy_cache=JsonFileCache(default_strategy_cache_path()),
                                  **engine_options)
        self.fallback = make_engine(fallback) if fallback != "none" else None

    def fit(self, task: FitTask) -> list[tuple[str, dict[str, Any]]]:
        _maybe_fail()
        inputs: dict[str, tuple[Any, Any]] = {}
        for row_windows in _rows_of(task.windows):
            # One read per row of windows in the batch: neighbours overlap, so their union
            # is read (and decoded) once instead of once per window.
            top, bottom = row_windows[0].row_off, max(w.row_off + w.height for w in row_windows)
            left, right = min(w.col_off for w in row_windows), max(w.col_off + w.width for w in row_windows)
            union = PatchWindow(top, left, bottom - top, right - left)
            data, valid = task.source.read_pixels(((top, bottom), (left, right)))
            local = [crop(w, union).target for w in row_windows]  # type: ignore[union-attr]
            p, o, _ = batch_inputs(data, valid, local, 0)
            inputs.update({w.id: (p[i], o[i]) for i, w in enumerate(row_windows)})
        patches = np.stack([inputs[w.id][0] for w in task.windows])
        observed = np.stack([inputs[w.id][1] for w in task.windows])
        engine = self.fallback if task.fallback else self.engine
        result = engine.fill(patches, observed, seeds=list(task.seeds))
        store = PatchStore(task.store_path)
        records = [(w.id, asdict(d)) for w, d in zip(task.windows, result.diagnostics)]
        for index, values, (_, record) in zip(task.indices, result.values, records):
            store.write(index, values, record)
        return records

    def ready(self) -> bool:
        """Answers once the engines are built (torch imported): the pool's start-up is done."""
        return True

    def blend(self, task: Any) -> Any:
        """Blend and write one block of a scene (:mod:`dipfill.pipeline.blocks`). On the
        engine actors because they hold the cluster's CPU slots: tasks asking for more
        would wait for them forever; and a block is CPU work a GPU node has to spare."""
        return blend_block(task)


def _rows_of(windows: Sequence[PatchWindow]) -> list[list[PatchWindow]]:
    """Windows grouped by their first row (plan order kept within a group)."""
    groups: dict[int, list[PatchWindow]] = {}
    for w in windows:
        groups.setdefault(w.row_off, []).append(w)
    return list(groups.values())


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
        self.worker = EngineWorker(engine, dict(engine_options), fallback, None)

    def run(self, tasks: Iterable[Any], on_done: Callable[[Any, Any], None], method: str = "fit") -> None:
        call = getattr(self.worker, method)
        for task in tasks:
            on_done(task, call(task))

    def close(self) -> None:
        pass
