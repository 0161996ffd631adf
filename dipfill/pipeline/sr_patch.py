"""One patch of guided super-resolution as a self-contained task: its inputs cut out by the
driver (:func:`~dipfill.pipeline.sr.sr_arrays`), its output computed here by whoever holds
the task — the driver itself, or an engine actor of ``dipfill run --mode sr``
(:meth:`~dipfill.pipeline.executor.EngineWorker.upsample`).

A task carries arrays (a 256² patch's guide and LR windows and its operator blocks: about
1 MB), not file names: the LR input and the guide are already in the driver's memory, and
a patch's operator blocks are cheaper to send than to rebuild. The result depends on the
task alone (its seed included), so a patch computed on an actor is the same bytes as in the
driver.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from dipfill.engines.base import PatchDiagnostics
from dipfill.tiling.grid import PatchWindow
from dipfill.tiling.resample import project_consistent

if TYPE_CHECKING:  # torch is imported by whoever computes a patch, not by whoever imports this module
    from dipfill.engines.sr import SREngine

__all__ = ["SRPatch", "SREngines", "upsample_patch"]


@dataclass(frozen=True)
class SRPatch:
    """One HR patch's inputs. ``owned``/``owned_valid``/``ay``/``ax``: the LR pixels the patch
    owns (their whole kernel inside it) and the downsampling blocks between them and the
    patch (the networks' input and the consistency projection's); ``low``/``low_valid``/
    ``uy``/``ux``: the LR pixels the baselines' bicubic kernels touch and the upsampling
    blocks (None for the networks)."""

    window: PatchWindow
    method: str
    guides: NDArray
    guide_valid: NDArray[np.bool_]
    owned: NDArray[np.float64]
    owned_valid: NDArray[np.bool_]
    ay: NDArray[np.float64]
    ax: NDArray[np.float64]
    seed: int
    consistency: bool
    scale: float
    engine_options: dict[str, Any] = field(default_factory=dict)
    low: NDArray[np.float64] | None = None
    low_valid: NDArray[np.bool_] | None = None
    uy: NDArray[np.float64] | None = None
    ux: NDArray[np.float64] | None = None


class SREngines:
    """The network of each (method, options) a worker has been asked for, built once."""

    def __init__(self) -> None:
        self._built: dict[str, "SREngine"] = {}

    def get(self, method: str, options: dict[str, Any]) -> "SREngine | None":
        if not method.startswith("mcpn"):
            return None
        from dipfill.engines.sr import make_sr_engine

        key = json.dumps([method, options], sort_keys=True, default=str)
        if key not in self._built:
            self._built[key] = make_sr_engine(method.split("-", 1)[1], **dict(options))
        return self._built[key]


def upsample_patch(task: SRPatch, engine: "SREngine | None") -> tuple[NDArray[np.float64], PatchDiagnostics]:
    """The patch by its method (``engine``: the network of an ``mcpn-*`` method), projected
    onto the LR pixels it owns when ``task.consistency``."""
    from dipfill.engines.sr import bicubic, guided_filter_upsample

    if engine is not None:
        values, diag = engine.upsample(task.owned, task.owned_valid, task.ay, task.ax, task.guides, task.guide_valid,
                                       seed=task.seed)
    else:
        assert task.low is not None and task.low_valid is not None and task.uy is not None and task.ux is not None
        start = time.perf_counter()
        args = (task.low, task.low_valid, task.uy, task.ux)
        if task.method == "bicubic":
            values = bicubic(*args)
        else:
            eps = {k: v for k, v in task.engine_options.items() if k == "eps"}
            values = guided_filter_upsample(*args, task.guides, task.guide_valid, scale=task.scale, **eps)
        diag = PatchDiagnostics(engine=task.method, seconds=time.perf_counter() - start)
    if task.consistency and task.owned.shape[1] and task.owned.shape[2]:
        values = project_consistent(values, task.owned, task.owned_valid, task.ay, task.ax)
    return values, diag
