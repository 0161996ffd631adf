"""One error root for dipfill.

Every error a user can cause derives from :class:`DipfillError`; subclasses also derive
from the builtin they refine, so callers may catch either (``except OSError`` still sees a
raster that cannot be read). Messages name the file or value at fault and, where there is
one, the fix.
"""

from __future__ import annotations

__all__ = [
    "DipfillError",
    "InputError",
    "SceneReadError",
    "GridMismatchError",
    "EngineError",
    "StacError",
    "ClusterError",
    "WorkerError",
    "RunInterrupted",
]


class DipfillError(Exception):
    """Root of all dipfill errors."""


class InputError(DipfillError, ValueError):
    """An input is readable but unusable (all nodata, wrong shape, bad option value)."""


class SceneReadError(DipfillError, OSError):
    """An input file is missing or is not a raster GDAL can open."""


class GridMismatchError(InputError):
    """Several inputs that must share one pixel grid do not."""


class EngineError(DipfillError, RuntimeError):
    """An engine could not fill a batch (bad configuration, device unavailable)."""


class StacError(DipfillError, OSError):
    """A STAC API or catalog could not be reached, or answered with an error (after retries).

    ``status`` is the HTTP status of the last answer, or None when there was none (no
    connection, a timeout, a file that cannot be read).
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ClusterError(DipfillError, RuntimeError):
    """The Ray cluster cannot be joined or started: the whole run stops (no scene is to blame)."""


class WorkerError(DipfillError, RuntimeError):
    """A worker process failed a task for good: it died on every retry, or its error could
    not be sent back. The scene is failed; the run goes on."""


class RunInterrupted(DipfillError, RuntimeError):
    """A run stopped on purpose mid-scene (the ``stop_after_batches`` hook simulates a driver
    killed there); rerunning the same request resumes it."""
