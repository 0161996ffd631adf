"""The engine protocol: arrays in, filled arrays and diagnostics out. No I/O, no Ray.

An engine receives a batch of patches ``float32[B, C, H, W]`` and a per-band observed mask
``bool[B, C, H, W]`` and returns values for every pixel. Pixels it could not fill are NaN
(the blender gives them zero weight and the QA layer marks them unfilled). Engines may
return anything at observed pixels: the pipeline always composites observed pixels back
from the input, so known values pass through bit-exact whatever the engine does.

Seeds are per patch (derived by the caller from the run seed and the patch location), so
a patch's result does not depend on which batch it landed in: resumed runs give the same
bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
from numpy.typing import NDArray

__all__ = ["Engine", "EngineResult", "PatchDiagnostics", "check_batch"]


@dataclass(frozen=True)
class PatchDiagnostics:
    """What an engine reports per patch; stored with the run so outputs explain themselves."""

    engine: str
    steps: int = 0
    final_loss: float = float("nan")
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineResult:
    values: NDArray[np.float32]  # [B, C, H, W], NaN where not filled
    diagnostics: list[PatchDiagnostics]


@runtime_checkable
class Engine(Protocol):
    """Fill a batch of patches. Implementations are cheap to construct and picklable."""

    name: str

    def fill(
        self,
        patches: NDArray[np.float32],
        observed: NDArray[np.bool_],
        *,
        seeds: Sequence[int],
    ) -> EngineResult: ...


def check_batch(patches: np.ndarray, observed: np.ndarray, seeds: Sequence[int]) -> None:
    """Validate the protocol's input shapes once, with messages that say what was given."""
    if patches.ndim != 4:
        raise ValueError(f"patches must be [B, C, H, W], got shape {patches.shape}")
    if observed.shape != patches.shape:
        raise ValueError(
            f"observed mask shape {observed.shape} differs from patches shape {patches.shape}"
        )
    if len(seeds) != patches.shape[0]:
        raise ValueError(f"need one seed per patch: {len(seeds)} seeds for {patches.shape[0]} patches")
