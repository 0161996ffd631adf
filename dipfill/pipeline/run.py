"""`dipfill run`: search scenes, skip the current ones, process the rest, record the run.

Per scene, :func:`~dipfill.pipeline.stages.process_scene` runs the stages (open → mask →
plan → fit → merge → write → describe → publish) on an executor: engine actors on Ray
(:mod:`~dipfill.pipeline.ray_executor`, joined or started only when some scene needs
work) or the in-process :class:`~dipfill.pipeline.executor.LocalPool`.

Idempotent and resumable: a scene whose item records the same source version and config
hash is skipped without engine work; a scene with a patch store resumes from its done
flags, refitting only whole unfinished batches, so the bytes equal an uninterrupted run.
A scene that fails is recorded and the run goes on; a cluster that cannot be joined
stops the run once (:class:`~dipfill.errors.ClusterError`), blaming no scene.

Runs may overlap in one ``--out`` (cron): a scene is processed under a lock
(``<scene dir>/.dipfill.lock``, released by the kernel if its run dies), so a second run
waits for it and then finds it current; temporaries are each process's own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from dipfill.errors import ClusterError, DipfillError, InputError, RunInterrupted
from dipfill.pipeline.executor import Executor
from dipfill.pipeline.progress import (Progress, RunSummary, SceneStatus, failure_details, failure_line, now_iso,
                                       request_record, write_summary)
from dipfill.pipeline.stages import SCENE_LOCK, current_status, process_scene, run_config, scene_dir
from dipfill.raster.hrefs import redact_href, redact_text, signer
from dipfill.specs import RunRequest
from dipfill.stac.item import config_hash
from dipfill.stac.search import SearchQuery, open_source, search
from dipfill.storage import check_output_dir, exclusive

__all__ = ["RunRequest", "RunSummary", "run", "run_config", "parse_since", "RunInterrupted", "signer"]

log = logging.getLogger(__name__)

#: Seconds between two writes of a running run's record while it only skips current scenes.
RECORD_EVERY = 5.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_since(text: str) -> dt.timedelta:
    """``7d``, ``12h``, ``30m``, ``2w``, ``45s`` → timedelta."""
    m = _DURATION.match(text or "")
    if not m:
        raise InputError(f"--since must look like 7d, 12h, 30m, 2w or 45s, got {text!r}")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
    return dt.timedelta(**{unit: float(m.group(1))})


def find_scenes(request: RunRequest) -> list[dict[str, Any]]:
    """The source items the request selects, in search order. ``--since`` goes to the server
    as a CQL2 filter where the API supports filters (else it is applied to each item), and
    ``--max-scenes`` cuts the list."""
    since = dt.datetime.now(dt.timezone.utc) - parse_since(request.since) if request.since else None
    query = SearchQuery(collections=request.collections, bbox=request.bbox, datetime=request.datetime,
                        max_cloud=request.max_cloud, filter=request.filter, updated_since=since)
    source = open_source(request.stac)
    # collection ids checked before any work: a misspelt one is an error, not an empty run
    source.check_collections(request.collections)
    if request.guides == "auto" and request.guide_collection:
        source.check_collections((request.guide_collection,))
    records = list(search(source, query))
    if request.max_scenes is not None:
        records = records[: request.max_scenes]
    return records


def run(
    request: RunRequest,
    *,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    stop_after_batches: int | None = None,
    pool: Executor | None = None,
) -> RunSummary:
    """Run ``request``; returns the summary (also written to ``OUT/runs/<run-id>.json``).

    ``pool``: an executor to use instead of Ray actors (e.g. ``LocalPool``).
    ``progress``: called with each progress event (the dict also logged, at INFO, as the
    ``fields`` extra of the record: see :class:`~dipfill.pipeline.progress.Progress`).
    ``stop_after_batches``: raise :class:`RunInterrupted` after that many fitted batches
    (simulates a driver killed mid-run, for resume tests).
    """
    t0 = time.perf_counter()
    out = check_output_dir(request.out)  # before the search: a run that cannot write must not start
    chash = config_hash(run_config(request))
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    records = find_scenes(request)
    say = Progress(run_id, len(records), progress)
    stac = redact_href(request.stac)
    say("run_start", f"run {run_id}: {len(records)} scene(s) from {stac}", stac=stac)

    statuses: list[SceneStatus] = []
    budget = [stop_after_batches]
    started = now_iso()

    saved = [0.0]

    def save(state: str, error: str = "") -> RunSummary:
        """The run record as it stands: scenes not reached yet are ``pending`` (what
        ``dipfill status`` shows of a run that was killed before it got to them)."""
        saved[0] = time.perf_counter()
        pending = [SceneStatus(str(r.get("id")), "pending", bbox=_bbox(r)) for r in records[len(statuses):]]
        summary = RunSummary(run_id, request_record(request), chash, statuses + pending,
                             round(time.perf_counter() - t0, 3), error=error, state=state, started=started)
        summary.record = str(write_summary(out, summary))
        return summary

    save("running")
    # Actors stay up for this driver's next run (tests, notebooks); stop_ray() or exit ends them.
    try:
        for n, record in enumerate(records, start=1):
            start = time.perf_counter()
            try:
                status = current_status(record, out, chash, request)
                if status is None:
                    # One run per scene at a time (two cron runs into one --out): the other
                    # waits, then finds the scene current instead of sharing its patch store.
                    with exclusive(scene_dir(out, record) / SCENE_LOCK,
                                   on_wait=lambda holder, rid=record.get("id"): log.info(
                                       "scene %s is being processed by another run (%s): waiting", rid, holder)):
                        start = time.perf_counter()
                        status = None if request.force else current_status(record, out, chash, request)
                        if status is None:
                            if pool is None:
                                pool = _engine_pool(request, ray_address, num_cpus)  # ClusterError: the run stops
                                start = time.perf_counter()
                            status = process_scene(record, request, out, chash, pool, say, budget)
            except (RunInterrupted, ClusterError):
                raise
            except (DipfillError, OSError, ValueError, KeyError) as exc:
                status = SceneStatus(str(record.get("id")), "failed", message=failure_line(exc))
                # One line here and in the summary; the traceback (a worker's remote one
                # included, as a note) in the log: at ERROR when the failure is unexpected,
                # at DEBUG for dipfill's own errors, whose message says what is wrong.
                log.error("scene %s failed: %s", record.get("id"), status.message)
                log.log(logging.DEBUG if isinstance(exc, DipfillError) else logging.ERROR,
                        "scene %s failed: details:\n%s", record.get("id"), failure_details(exc))
            status.seconds = round(time.perf_counter() - start, 3)
            status.bbox = _bbox(record)
            statuses.append(status)
            # after every scene that did work or failed; a stretch of current scenes (a cron
            # rerun over thousands) is recorded every RECORD_EVERY s, not rewritten per scene
            if status.status != "current" or time.perf_counter() - saved[0] >= RECORD_EVERY:
                save("running")
            say.scene_finished(status, f"scene {n}/{len(records)} {record.get('id')}: {status.status}"
                               + (f" ({status.message})" if status.message else ""))
    except ClusterError as exc:
        summary = save("stopped", redact_text(str(exc)))
        say("run_failed", f"run {run_id}: stopped: {summary.error}", error=summary.error, record=summary.record)
        raise
    except BaseException as exc:  # SIGTERM/SIGINT, a simulated kill: the record says the run did not finish
        with contextlib.suppress(OSError):  # never hide why the run stopped
            save("interrupted", redact_text(failure_line(exc)))
        raise
    summary = save("finished")
    counts = {k: sum(1 for st in statuses if st.status == k) for k in ("done", "current", "failed")}
    say("run_done", f"run {run_id}: {counts['done']} done, {counts['current']} current, {counts['failed']} failed "
        f"in {summary.seconds:.1f} s", counts=counts, seconds=summary.seconds, record=summary.record)
    return summary


def _bbox(item: dict[str, Any]) -> list[float] | None:
    """The source item's bbox (lon/lat), for the report's map; None when it has none."""
    bbox = item.get("bbox")
    try:
        return [float(v) for v in bbox] if bbox and len(bbox) in (4, 6) else None
    except (TypeError, ValueError):
        return None


def _engine_pool(request: RunRequest, ray_address: str | None, num_cpus: int | None) -> Executor:
    """Join or start Ray and get the engine actors: only when some scene needs work, so a
    rerun over current outputs costs no cluster at all."""
    from dipfill.pipeline.ray_executor import engine_pool, start_ray

    start_ray(ray_address, num_cpus=num_cpus)
    opts = request.options
    if request.mode == "sr":  # SR tasks carry their method; the actors' own engine is the cheapest
        return engine_pool("fillnodata", {}, "none")
    return engine_pool(opts.engine, dict(opts.engine_options), opts.fallback)
