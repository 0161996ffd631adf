"""What a run reports: progress events, per-scene status, stage timings, the run record.

Everything here goes to logs or to ``OUT/runs/<run-id>.json``, so every message passes
:func:`~dipfill.raster.hrefs.redact_text` (signed-URL secrets never reach either).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import resource
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dipfill import __version__
from dipfill.raster.hrefs import redact_text
from dipfill.specs import RunRequest
from dipfill.storage import write_json

__all__ = ["SceneStatus", "RunSummary", "Progress", "StageClock", "STAGES", "SCENE_STATES", "request_record",
           "write_summary", "failure_line", "failure_details"]

#: The stages of a scene, in order, as timed in a scene's ``timings`` (``guides`` only for
#: an engine that uses guides, ``publish`` only with ``--publish``).
STAGES = ("open", "mask", "plan", "guides", "fit", "merge", "write", "describe", "publish")

#: A scene's state in a run record: ``pending`` until the run gets to it (a run killed
#: before that leaves it so), then ``done``, ``current`` (output already up to date) or ``failed``.
SCENE_STATES = ("pending", "done", "current", "failed")

# Events are records of the run logger, which `dipfill run` shows at INFO whatever -v says.
log = logging.getLogger("dipfill.pipeline.run")


_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def failure_line(exc: BaseException) -> str:
    """A failed scene's line in the summary and the run record: the exception's type and
    the first line of its message, terminal colour codes stripped, URL secrets redacted.
    Tracebacks (a Ray worker's included) belong in the log, not here."""
    text = _ANSI.sub("", str(exc))
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    name = type(exc).__name__
    return redact_text(f"{name}: {first}" if first else name)


def failure_details(exc: BaseException) -> str:
    """The failure's traceback for the log (a Ray worker's remote one is in its notes),
    colour codes stripped, URL secrets redacted."""
    return redact_text(_ANSI.sub("", "".join(traceback.format_exception(exc))).rstrip())


@dataclass
class SceneStatus:
    id: str
    status: str  # pending | done | current | failed (SCENE_STATES)
    output: str | None = None
    message: str = ""
    patches: int = 0
    patches_fitted: int = 0
    patches_resumed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # this scene's work, after the engine pool is up
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (STAGES) that ran
    driver_peak_mib: dict[str, float] = field(default_factory=dict)  # the driver's peak RSS after each stage
    guides: dict[str, Any] = field(default_factory=dict)  # the guide search's choice (engines that use guides)
    bbox: list[float] | None = None  # the source item's lon/lat bbox: where a failed scene lies on a map


@dataclass
class RunSummary:
    run_id: str
    request: dict[str, Any]
    config_hash: str
    scenes: list[SceneStatus]
    seconds: float
    record: str = ""
    error: str = ""  # why the whole run stopped (the cluster), when it did
    state: str = "finished"  # running | finished | stopped (the cluster) | interrupted (signal, Ctrl-C)
    started: str = ""  # ISO 8601 UTC, microseconds: orders runs started within one second

    @property
    def failed(self) -> list[SceneStatus]:
        return [s for s in self.scenes if s.status == "failed"]


class Progress:
    """Progress events of one run: logged at INFO with their fields (``extra={"fields":
    ...}``, which ``dipfill --log-format json`` prints as JSON lines) and passed to the
    caller's callback. Every event has ``event``, ``run_id``, ``msg``, ``scenes_done``
    and ``scenes_total``; ``patches`` events add the scene's ``patches_done`` /
    ``patches_total`` / ``patches_per_s`` / ``eta_s`` and ``eta_run_s`` (this scene's ETA
    plus the mean time of the scenes done so far for each scene still to come); ``steps``
    events, while batches of an engine that counts its steps (DIP) are fitted, add
    ``patches_done`` / ``patches_total``, ``batches_fitting`` and ``steps_done`` /
    ``steps_total`` (Adam steps of the batches being fitted, summed)."""

    def __init__(self, run_id: str, scenes_total: int, callback: Callable[[dict[str, Any]], None] | None) -> None:
        self.run_id, self.scenes_total, self.callback = run_id, scenes_total, callback
        self.scenes_done = 0
        self.scene_seconds: list[float] = []

    def __call__(self, event: str, msg: str, **fields: Any) -> None:
        doc = {"event": event, "run_id": self.run_id, "msg": redact_text(msg), "scenes_done": self.scenes_done,
               "scenes_total": self.scenes_total, **fields}
        if event == "patches" and self.scene_seconds:
            left = self.scenes_total - self.scenes_done - 1
            doc["eta_run_s"] = round(fields.get("eta_s", 0.0) + left * float(np.mean(self.scene_seconds)), 1)
        if event in ("patches", "steps"):
            # what an operator watching a terminal needs on the line itself: which scene of
            # how many, and (once one scene has finished) when the whole run should end
            doc["msg"] = f"scene {self.scenes_done + 1}/{self.scenes_total} {doc['msg'].strip()}" + (
                f", run ETA {doc['eta_run_s']:.0f} s" if "eta_run_s" in doc else "")
        doc = json.loads(redact_text(json.dumps(doc, default=str)))
        log.info("%s", doc["msg"], extra={"fields": doc})
        if self.callback:
            self.callback(doc)

    def scene_finished(self, status: "SceneStatus", msg: str) -> None:
        self.scenes_done += 1
        if status.status == "done":
            self.scene_seconds.append(status.seconds)
        self("scene_done", msg, scene=status.id, status=status.status, seconds=status.seconds,
             timings=status.timings, message=status.message)


class StageClock:
    """Seconds spent per stage of a scene (:data:`STAGES`), and the driver's peak resident
    memory at the end of each (MiB, since the process started), for the run record, the
    report and ``make bench``. A stage lapped twice (``describe``: before and after the
    files are written) adds up."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.peaks: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self._t, 3)
        self.peaks[name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        self._t = now


def request_record(request: RunRequest) -> dict[str, Any]:
    d = asdict(request)
    d["options"] = request.options.hashable_dict()
    return json.loads(redact_text(json.dumps(d, default=str)))


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def write_summary(out: Path, summary: RunSummary) -> Path:
    """Write the run record ``OUT/runs/<run-id>.json`` (atomically). A run writes it when it
    starts (every scene ``pending``), after each scene and when it ends, so ``dipfill
    status`` finds what a killed run left undone; ``host`` and ``pid`` tell whether a
    ``running`` record's driver still runs."""
    path = out / "runs" / f"{summary.run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "run_id": summary.run_id,
        "dipfill": __version__,
        "state": summary.state,
        "started": summary.started,
        "updated": now_iso(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "request": summary.request,
        "config_hash": summary.config_hash,
        "seconds": summary.seconds,
        **({"error": summary.error} if summary.error else {}),
        "scenes": [asdict(s) for s in summary.scenes],
        "failures": [{"id": s.id, "message": s.message} for s in summary.failed],
        "counts": {k: sum(1 for s in summary.scenes if s.status == k) for k in SCENE_STATES},
    }
    write_json(path, doc)
    return path
