"""The engine protocol: arrays in, filled arrays and diagnostics out. No I/O, no Ray.

An engine receives a batch of patches ``float32[B, C, H, W]`` and a per-band observed mask
``bool[B, C, H, W]`` and returns values for every pixel. Pixels it could not fill are NaN
(the blender gives them zero weight and the QA layer marks them unfilled). Engines may
return anything at observed pixels: the pipeline always composites observed pixels back
from the input, so known values pass through bit-exact whatever the engine does.

Seeds are per patch (derived by the caller from the run seed and the patch location), so
a patch's result does not depend on which batch it landed in: resumed runs give the same
bytes.

Guides (other rasters of the same ground, already on the patches' grid) come as
``guides float32[B, G, H, W]``, 0 where not observed, with ``guide_observed bool[B, G, H, W]``
(a guide pixel that is itself a gap is never evidence) and ``guide_bands``: how many of
the G channels each guide holds, in rank order (best first; None: one guide of G bands).
Every engine accepts them; an engine that ignores them says so with ``uses_guides = False``
(the pipeline then reads none and tells the user once). The pipeline passes guides only
when there are some, so an engine is always called without them on an unguided fill.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from dipfill.errors import InputError

__all__ = ["Engine", "EngineResult", "PatchDiagnostics", "check_batch", "uses_guides"]


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
    """Fill a batch of patches. Implementations are cheap to construct and picklable.

    ``uses_guides`` is a class attribute: False for engines that accept guides and ignore
    them (the classical single-image fillers, single-image DIP).
    """

    name: str
    uses_guides: bool

    def fill(
        self,
        patches: NDArray[np.float32],
        observed: NDArray[np.bool_],
        *,
        seeds: Sequence[int],
        guides: NDArray[np.float32] | None = None,
        guide_observed: NDArray[np.bool_] | None = None,
        guide_bands: Sequence[int] | None = None,
    ) -> EngineResult: ...


def uses_guides(engine: Any) -> bool:
    """Whether ``engine`` wants guides: its ``uses_guides``; an engine that does not say is
    given them."""
    return bool(getattr(engine, "uses_guides", True))


def check_batch(
    patches: np.ndarray,
    observed: np.ndarray,
    seeds: Sequence[int],
    *,
    guides: np.ndarray | None = None,
    guide_observed: np.ndarray | None = None,
    guide_bands: Sequence[int] | None = None,
) -> None:
    """Validate the protocol's input shapes once, with messages that say what was given
    (:class:`~dipfill.errors.InputError`, a ``ValueError``)."""
    if patches.ndim != 4:
        raise InputError(f"patches must be [B, C, H, W], got shape {patches.shape}")
    if observed.shape != patches.shape:
        raise InputError(
            f"observed mask shape {observed.shape} differs from patches shape {patches.shape}"
        )
    if len(seeds) != patches.shape[0]:
        raise InputError(f"need one seed per patch: {len(seeds)} seeds for {patches.shape[0]} patches")
    if guides is None:
        if guide_observed is not None or guide_bands is not None:
            raise InputError("guide_observed / guide_bands given without guides")
        return
    b, _, h, w = patches.shape
    if guides.ndim != 4 or guides.shape[0] != b or guides.shape[2:] != (h, w) or guides.shape[1] < 1:
        raise InputError(f"guides must be [B, G, H, W] = [{b}, G>=1, {h}, {w}] like the patches, "
                         f"got shape {guides.shape}")
    if guide_observed is None:
        raise InputError("guides given without guide_observed: a guide's own gaps must be known")
    if guide_observed.shape != guides.shape:
        raise InputError(f"guide_observed shape {guide_observed.shape} differs from guides shape {guides.shape}")
    if guide_bands is not None:
        counts = [int(n) for n in guide_bands]
        if not counts or min(counts) < 1 or sum(counts) != guides.shape[1]:
            raise InputError(f"guide_bands {counts} must be positive band counts, one per guide, summing to the "
                             f"{guides.shape[1]} guide channels")
