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
Guides travel the same way: a task names them (:class:`~dipfill.raster.guides.GuideSource`)
and the worker reads their windows with the target's.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.engines import make_engine, set_threads
from dipfill.engines.base import Engine, EngineResult, uses_guides
from dipfill.pipeline.blocks import blend_block
from dipfill.pipeline.models import read_model
from dipfill.pipeline.outputs import write_cog_task
from dipfill.pipeline.patchstore import PatchStore
from dipfill.pipeline.plan import batch_inputs, row_unions
from dipfill.pipeline.sr_patch import SREngines, upsample_patch
from dipfill.raster.guides import GuideSource, ItemGuide, guide_band_counts, read_guides
from dipfill.storage import JsonFileCache, default_strategy_cache_path
from dipfill.tiling import PatchWindow, crop

__all__ = ["Executor", "FitTask", "ArrayTask", "BatchProgress", "StepCounter", "EngineWorker", "LocalPool", "FAULT_ENV",
           "read_batch", "fill_batch", "reports_progress"]

# Fault injection for tests of the restart and failure paths: "exit-once:<marker file>" makes
# the first actor call that finds no marker create it and kill its own process;
# "error:<message>" makes every fit raise OSError(message), as a failed remote read does.
FAULT_ENV = "DIPFILL_FAULT_INJECT"


class Executor(Protocol):
    """Runs worker calls for tasks: one small interface for in-process and Ray execution.

    An executor that can say how far a running batch is takes ``on_progress`` too (both of
    dipfill's do; :func:`reports_progress`): ``on_progress(task, BatchProgress)`` on the
    driver while the task's fit runs, every few seconds at most."""

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
    guides: tuple[GuideSource | ItemGuide, ...] = ()  # on the scene's grid; read with the target's windows


@dataclass(frozen=True)
class ArrayTask:
    """A batch whose pixels travel with it: the rows and columns its windows span, cut out of
    arrays the driver holds (``dipfill run --mode anonymise``: the scene in dB, in memory, no
    patch store). The worker returns the engine's result instead of writing it."""

    windows: tuple[PatchWindow, ...]
    seeds: tuple[int, ...]
    fallback: bool
    origin: tuple[int, int]  # (row, col) of data[:, 0, 0]
    data: NDArray
    valid: NDArray[np.bool_]

    def read_pixels(self, span: tuple[tuple[int, int], tuple[int, int]]) -> tuple[NDArray, NDArray[np.bool_]]:
        (r0, r1), (c0, c1) = span
        rows, cols = slice(r0 - self.origin[0], r1 - self.origin[0]), slice(c0 - self.origin[1], c1 - self.origin[1])
        return self.data[:, rows, cols], self.valid[:, rows, cols]


@dataclass(frozen=True)
class BatchProgress:
    """How far the fit of one batch is: Adam steps done, summed over its patches, and the
    most it can take (steps per patch times patches; early stopping may end it sooner)."""

    steps_done: int
    steps_total: int


def reports_progress(executor: Any) -> bool:
    """Whether ``executor.run`` takes ``on_progress`` (progress within a batch)."""
    try:
        return "on_progress" in inspect.signature(executor.run).parameters
    except (TypeError, ValueError):
        return False


def takes_monitor(engine: Any) -> bool:
    """Whether ``engine.fill`` takes a ``monitor`` (DIP: called every ``check_every`` steps)."""
    try:
        return "monitor" in inspect.signature(engine.fill).parameters
    except (TypeError, ValueError):
        return False


class StepCounter:
    """The monitor given to an engine that takes one: counts the steps of each patch of a
    batch (a patch is being fitted where the monitor's values are finite) and passes the
    batch's :class:`BatchProgress` to ``report`` at every check."""

    def __init__(self, count: int, steps_per_patch: int, report: Callable[[BatchProgress], None]) -> None:
        self.steps = np.zeros(count, dtype=np.int64)
        self.steps_per_patch = int(steps_per_patch)
        self.report = report

    def __call__(self, step: int, values: NDArray[np.float32], holdout_rmse: NDArray[np.float64]) -> None:
        fitting = np.isfinite(values.reshape(len(values), -1)).any(axis=1)
        self.steps[fitting] = np.maximum(self.steps[fitting], int(step))
        total = max(self.steps_per_patch * len(self.steps), int(self.steps.sum()))
        self.report(BatchProgress(int(self.steps.sum()), total))


#: Reads ``((row0, row1), (col0, col1))`` of the target: ``(data[band, y, x], valid[band, y, x])``.
PixelReader = Callable[[tuple[tuple[int, int], tuple[int, int]]], tuple[NDArray, NDArray[np.bool_]]]


def read_batch(read_pixels: PixelReader, windows: Sequence[PatchWindow], guides: Sequence[GuideSource] = ()):
    """An engine's arrays for ``windows``: ``(patches, observed, guide_patches,
    guide_observed)``, the last two None without ``guides``. One read per row of windows
    (their union), of the target through ``read_pixels`` and of the guides through
    :func:`~dipfill.raster.guides.read_guides`."""
    parts: dict[str, tuple[NDArray, ...]] = {}
    for union, row in row_unions(windows):
        span = ((union.row_off, union.row_off + union.height), (union.col_off, union.col_off + union.width))
        data, valid = read_pixels(span)
        local = [crop(w, union).target for w in row]  # type: ignore[union-attr]
        if guides:
            p, o, _, gp, go = batch_inputs(data, valid, local, 0, guides=read_guides(guides, span))
            parts.update({w.id: (p[i], o[i], gp[i], go[i]) for i, w in enumerate(row)})
        else:
            p, o, _ = batch_inputs(data, valid, local, 0)
            parts.update({w.id: (p[i], o[i]) for i, w in enumerate(row)})
    arrays = [np.stack([parts[w.id][k] for w in windows]) for k in range(4 if guides else 2)]
    return tuple(arrays) if guides else (arrays[0], arrays[1], None, None)


def fill_batch(engine: Engine, read_pixels: PixelReader, windows: Sequence[PatchWindow], seeds: Sequence[int],
               guides: Sequence[GuideSource] = (), *,
               on_steps: Callable[[BatchProgress], None] | None = None) -> EngineResult:
    """Read ``windows`` and fill them with ``engine``: with the guides' windows when there
    are guides and the engine uses them (:func:`~dipfill.engines.base.uses_guides`), without
    any guide argument otherwise.

    ``on_steps`` is called with the batch's :class:`BatchProgress` while it is fitted, by an
    engine that takes a monitor (DIP, every ``check_every`` steps; it costs a copy of the
    batch's current output per check, not a change of its result); others say nothing
    until the batch is done."""
    guides = tuple(guides) if guides and uses_guides(engine) else ()
    patches, observed, gpatches, gobserved = read_batch(read_pixels, windows, guides)
    extra: dict[str, Any] = {}
    if on_steps is not None and takes_monitor(engine):
        steps = getattr(getattr(engine, "config", None), "steps", 0)
        extra["monitor"] = StepCounter(len(windows), steps, on_steps)
    if not guides:
        return engine.fill(patches, observed, seeds=list(seeds), **extra)
    return engine.fill(patches, observed, seeds=list(seeds), guides=gpatches, guide_observed=gobserved,
                       guide_bands=list(guide_band_counts(guides)), **extra)


class EngineWorker:
    """Holds one primary and one fallback engine; fits batches into the patch store.

    While a batch is fitted, :meth:`progress` says how far it is (a Ray driver asks it from
    another thread of the actor; in process, ``fit``'s ``on_steps`` is called instead)."""

    def __init__(self, engine: str, engine_options: dict[str, Any], fallback: str, threads: int | None) -> None:
        if threads:
            set_threads(threads)
        # the cache path comes from the worker's own environment ($DIPFILL_CACHE_DIR)
        self.engine = make_engine(engine, strategy_cache=JsonFileCache(default_strategy_cache_path()),
                                  model_reader=read_model, **engine_options)
        self.fallback = make_engine(fallback) if fallback != "none" else None
        self._progress: BatchProgress | None = None
        self._sr = SREngines()

    def fit(self, task: FitTask, on_steps: Callable[[BatchProgress], None] | None = None
            ) -> list[tuple[str, dict[str, Any]]]:
        _maybe_fail()
        engine = self.fallback if task.fallback else self.engine

        def steps(progress: BatchProgress) -> None:
            self._progress = progress
            if on_steps is not None:
                on_steps(progress)

        self._progress = None
        try:
            result = fill_batch(engine, task.source.read_pixels, task.windows, task.seeds,  # type: ignore[arg-type]
                                task.guides, on_steps=steps)
        finally:
            self._progress = None  # never a finished batch's progress for the next one
        records = [(w.id, asdict(d)) for w, d in zip(task.windows, result.diagnostics)]
        PatchStore(task.store_path).write_many(task.indices, list(result.values), [r for _, r in records])
        return records

    def ready(self) -> bool:
        """Answers once the engines are built (torch imported): the pool's start-up is done."""
        return True

    def progress(self) -> BatchProgress | None:
        """How far the batch being fitted is; None between batches and for engines that do
        not report steps (they finish a batch without a word)."""
        return self._progress

    def blend(self, task: Any) -> Any:
        """Blend and write one block of a scene (:mod:`dipfill.pipeline.blocks`). On the
        engine actors because they hold the cluster's CPU slots: tasks asking for more
        would wait for them forever; and a block is CPU work a GPU node has to spare."""
        return blend_block(task)

    def fill_arrays(self, task: ArrayTask) -> EngineResult:
        """One batch of an :class:`ArrayTask`: filled and returned, not stored."""
        _maybe_fail()
        return fill_batch(self.fallback if task.fallback else self.engine,  # type: ignore[arg-type]
                          task.read_pixels, task.windows, task.seeds)

    def upsample(self, task: Any) -> Any:
        """One patch of guided super-resolution (``dipfill run --mode sr``): the task carries
        its arrays and its method (:mod:`dipfill.pipeline.sr_patch`); the method's network is
        built once per worker and kept, whatever engine the worker was made for."""
        _maybe_fail()
        return upsample_patch(task, self._sr.get(task.method, task.engine_options))

    def write_cog(self, task: Any) -> str:
        """Write one COG of a scene's product from its mosaic (:mod:`dipfill.pipeline.outputs`):
        a scene's band and QA COGs are written side by side, on the actors for the reason
        :meth:`blend` runs there."""
        return write_cog_task(task)


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
    if spec.startswith("error:"):
        raise OSError(spec.split(":", 1)[1].replace("\\n", "\n"))


class LocalPool:
    """The same worker called in this process, one batch at a time: the baseline that
    measures what Ray adds (``make bench``), and a way to run without a cluster."""

    def __init__(self, engine: str, engine_options: dict[str, Any], fallback: str) -> None:
        self.worker = EngineWorker(engine, dict(engine_options), fallback, None)

    def run(self, tasks: Iterable[Any], on_done: Callable[[Any, Any], None], method: str = "fit",
            on_progress: Callable[[Any, BatchProgress], None] | None = None) -> None:
        call = getattr(self.worker, method)
        for task in tasks:
            if method == "fit" and on_progress is not None:
                result = call(task, lambda progress, task=task: on_progress(task, progress))
            else:
                result = call(task)
            on_done(task, result)

    def close(self) -> None:
        pass
