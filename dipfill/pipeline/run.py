"""`dipfill run`: search scenes, fit their gap patches on engine actors, write outputs per scene.

Per scene (DESIGN.md's one-way flow), with memory bounded by blocks and batches, not by
the scene:

1. the driver reads the scene in strips for its one-byte-per-pixel masks (three-state
   mask, observed bands per pixel) and plans windows and batches (the same
   :func:`~dipfill.pipeline.fill.plan_from_mask` as ``dipfill fill``);
2. engine actors get *descriptions* of the batches, read their own windows, fit them and
   write the results into the scene's patch store (the checkpoint);
3. the same actors blend chunk-sized blocks from the store and write them into the Zarr
   mosaic (:mod:`~dipfill.pipeline.blocks`: one writer per chunk);
4. the driver streams the mosaic into the COG and QA COG, writes the quicklook from the
   blocks' preview pixels, and, last, the STAC item.

Idempotent and resumable: a scene whose item records the same source version and config
hash is skipped without engine work; a scene with a patch store resumes from its done
flags, refitting only whole unfinished batches, so the bytes equal an uninterrupted run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dipfill import __version__
from dipfill.engines.base import PatchDiagnostics
from dipfill.errors import ClusterError, DipfillError, InputError
from dipfill.masks import OUTSIDE
from dipfill.pipeline.fill import FillOptions, ItemExtras, patch_seed, plan_from_mask
from dipfill.pipeline.read import redact_href

__all__ = ["RunRequest", "RunSummary", "run", "parse_since", "RunInterrupted"]

log = logging.getLogger(__name__)


class RunInterrupted(RuntimeError):
    """Raised by the ``stop_after_batches`` hook: simulates a driver killed mid-run."""


@dataclass(frozen=True)
class RunRequest:
    """Everything `dipfill run` was asked, as recorded in ``runs/<run-id>.json``."""

    stac: str
    out: str
    collections: tuple[str, ...] = ()
    bbox: tuple[float, float, float, float] | None = None
    datetime: str | None = None
    max_cloud: float | None = None
    filter: dict[str, Any] | None = None
    mask: str = "fill"
    bands: tuple[str, ...] | None = None
    options: FillOptions = field(default_factory=FillOptions)
    publish: str | None = None
    max_scenes: int | None = None
    since: str | None = None
    force: bool = False
    sign: str | None = None  # "planetary-computer": sign asset hrefs (needs the planetary-computer package)

    def config(self) -> dict[str, Any]:
        """What decides the output bytes: fill options, mask mode, bands."""
        return {**self.options.hashable_dict(), "mask": self.mask, "bands": list(self.bands or [])}


@dataclass
class SceneStatus:
    id: str
    status: str  # done | current | failed
    output: str | None = None
    message: str = ""
    patches: int = 0
    patches_fitted: int = 0
    patches_resumed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # this scene's work, after the engine pool is up
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage: mask, fit, blend, write
    driver_peak_mib: dict[str, float] = field(default_factory=dict)  # the driver's peak RSS after each stage


@dataclass
class RunSummary:
    run_id: str
    request: dict[str, Any]
    config_hash: str
    scenes: list[SceneStatus]
    seconds: float
    record: str = ""
    error: str = ""  # why the whole run stopped (the cluster), when it did

    @property
    def failed(self) -> list[SceneStatus]:
        return [s for s in self.scenes if s.status == "failed"]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_since(text: str) -> dt.timedelta:
    """``7d``, ``12h``, ``30m``, ``2w``, ``45s`` → timedelta."""
    m = _DURATION.match(text or "")
    if not m:
        raise InputError(f"--since must look like 7d, 12h, 30m, 2w or 45s, got {text!r}")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
    return dt.timedelta(**{unit: float(m.group(1))})


def _updated(item: Mapping[str, Any]) -> str | None:
    props = item.get("properties") or {}
    return props.get("updated") or props.get("datetime") or props.get("start_datetime")


def _parse_time(text: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


class Progress:
    """Progress events of one run: logged at INFO with their fields (``extra={"fields":
    ...}``, which ``dipfill --log-format json`` prints as JSON lines) and passed to the
    caller's callback. Every event has ``event``, ``run_id``, ``msg``, ``scenes_done``
    and ``scenes_total``; ``patches`` events add the scene's ``patches_done`` /
    ``patches_total`` / ``patches_per_s`` / ``eta_s`` and ``eta_run_s`` (this scene's ETA
    plus the mean time of the scenes done so far for each scene still to come)."""

    def __init__(self, run_id: str, scenes_total: int, callback: Callable[[dict[str, Any]], None] | None) -> None:
        self.run_id, self.scenes_total, self.callback = run_id, scenes_total, callback
        self.scenes_done = 0
        self.scene_seconds: list[float] = []

    def __call__(self, event: str, msg: str, **fields: Any) -> None:
        doc = {"event": event, "run_id": self.run_id, "msg": _safe(msg), "scenes_done": self.scenes_done,
               "scenes_total": self.scenes_total, **fields}
        if event == "patches" and self.scene_seconds:
            left = self.scenes_total - self.scenes_done - 1
            doc["eta_run_s"] = round(fields.get("eta_s", 0.0) + left * float(np.mean(self.scene_seconds)), 1)
        doc = json.loads(_safe(json.dumps(doc, default=str)))
        log.info("%s", doc["msg"], extra={"fields": doc})
        if self.callback:
            self.callback(doc)

    def scene_finished(self, status: "SceneStatus", msg: str) -> None:
        self.scenes_done += 1
        if status.status == "done":
            self.scene_seconds.append(status.seconds)
        self("scene_done", msg, scene=status.id, status=status.status, seconds=status.seconds,
             timings=status.timings, message=status.message)


def source_version(item: Mapping[str, Any]) -> str:
    """What identifies the version of a source item: its ``updated`` property when it has one,
    else a hash of its JSON without links (hrefs of a catalog move; content does not)."""
    props = item.get("properties") or {}
    if props.get("updated"):
        return f"updated:{props['updated']}"
    body = {k: v for k, v in item.items() if k != "links"}
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:32]


def run(
    request: RunRequest,
    *,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    stop_after_batches: int | None = None,
    pool: Any = None,
) -> RunSummary:
    """Run ``request``; returns the summary (also written to ``OUT/runs/<run-id>.json``).

    ``pool``: an engine pool to use instead of Ray actors (e.g. ``LocalPool``).
    ``progress``: called with each progress event (the dict also logged, at INFO, as the
    ``fields`` extra of the record: see :class:`Progress`).
    """
    from dipfill.stac.item import config_hash
    from dipfill.stac.search import SearchQuery, search

    t0 = time.perf_counter()
    out = Path(request.out)
    config = request.config()
    chash = config_hash(config)
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    query = SearchQuery(collections=request.collections, bbox=request.bbox, datetime=request.datetime,
                        max_cloud=request.max_cloud, filter=request.filter)
    records = list(search(request.stac, query))
    if request.since:
        cutoff = dt.datetime.now(dt.timezone.utc) - parse_since(request.since)
        records = [r for r in records if _updated(r) and _parse_time(_updated(r)) >= cutoff]
    if request.max_scenes is not None:
        records = records[: request.max_scenes]
    say = Progress(run_id, len(records), progress)
    stac = redact_href(request.stac)
    say("run_start", f"run {run_id}: {len(records)} scene(s) from {stac}", stac=stac)

    statuses: list[SceneStatus] = []
    budget = [stop_after_batches]
    # Actors stay up for this driver's next run (tests, notebooks); stop_ray() or exit ends them.
    try:
        for n, record in enumerate(records, start=1):
            start = time.perf_counter()
            try:
                status = _current(record, out, chash, request)
                if status is None:
                    if pool is None:
                        pool = _engine_pool(request, ray_address, num_cpus)  # ClusterError: the run stops
                        start = time.perf_counter()
                    status = _process_scene(record, request, out, chash, pool, say, budget)
            except (RunInterrupted, ClusterError):
                raise
            except (DipfillError, OSError, ValueError, KeyError) as exc:
                status = SceneStatus(str(record.get("id")), "failed", message=_safe(str(exc)))
                log.error("scene %s failed: %s", record.get("id"), status.message)
            status.seconds = round(time.perf_counter() - start, 3)
            statuses.append(status)
            say.scene_finished(status, f"scene {n}/{len(records)} {record.get('id')}: {status.status}"
                               + (f" ({status.message})" if status.message else ""))
    except ClusterError as exc:
        summary = RunSummary(run_id, _request_record(request), chash, statuses, round(time.perf_counter() - t0, 3),
                             error=_safe(str(exc)))
        summary.record = str(_write_summary(out, summary))
        say("run_failed", f"run {run_id}: stopped: {summary.error}", error=summary.error, record=summary.record)
        raise
    summary = RunSummary(run_id, _request_record(request), chash, statuses, round(time.perf_counter() - t0, 3))
    summary.record = str(_write_summary(out, summary))
    counts = {k: sum(1 for st in statuses if st.status == k) for k in ("done", "current", "failed")}
    say("run_done", f"run {run_id}: {counts['done']} done, {counts['current']} current, {counts['failed']} failed "
        f"in {summary.seconds:.1f} s", counts=counts, seconds=summary.seconds, record=summary.record)
    return summary


def _engine_pool(request: RunRequest, ray_address: str | None, num_cpus: int | None) -> Any:
    """Join or start Ray and get the engine actors: only when some scene needs work, so a
    rerun over current outputs costs no cluster at all."""
    from dipfill.pipeline.ray_exec import engine_pool, start_ray

    start_ray(ray_address, num_cpus=num_cpus)
    opts = request.options
    return engine_pool(opts.engine, dict(opts.engine_options), opts.fallback)


def _current(item: Mapping[str, Any], out: Path, chash: str, request: RunRequest) -> SceneStatus | None:
    """The scene's status when its output is current (same source version and config)."""
    from dipfill.stac.item import sanitize_id

    item_id = sanitize_id(str(item["id"])) + "-dipfill"
    path = _scene_dir(out, item, item_id) / f"{item_id}.json"
    if request.force or not path.exists():
        return None
    props = json.loads(path.read_text()).get("properties", {})
    if props.get("dipfill:config_hash") == chash and props.get("dipfill:source_version") == source_version(item):
        return SceneStatus(str(item["id"]), "current", output=str(path),
                           message="output current (same source version and config): no engine work")
    return None


def _scene_dir(out: Path, item: Mapping[str, Any], item_id: str) -> Path:
    from dipfill.stac.item import sanitize_id

    return out / sanitize_id(str(item.get("collection") or "items")) / item_id


def _process_scene(item: Mapping[str, Any], request: RunRequest, out: Path, chash: str, pool: Any,
                   say: "Progress", budget: list[int | None]) -> SceneStatus:
    import zarr

    from dipfill.pipeline.blocks import block_tasks, merge_counts, preview_mosaic
    from dipfill.pipeline.fill import SceneProduct, _write_outputs, mosaic_attrs, output_names
    from dipfill.pipeline.patchstore import PatchStore
    from dipfill.pipeline.publish import add_to_static_catalog
    from dipfill.pipeline.ray_exec import FitTask
    from dipfill.pipeline.scene import open_scene, scene_mask
    from dipfill.pipeline.write import MOSAIC_CHUNK, create_zarr_mosaic, staged
    from dipfill.stac.item import sanitize_id

    opts = request.options
    clock = _Stages()
    source = open_scene(dict(item), bands=request.bands, mask=request.mask, sign=signer(request.sign))
    nodata = _one_nodata(source.nodata, str(item["id"]))
    mask = scene_mask(source, rows=MOSAIC_CHUNK, closing=opts.collar_closing)
    item_id = sanitize_id(str(item["id"])) + "-dipfill"
    scene_dir = _scene_dir(out, item, item_id)
    scene_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_from_mask(mask.state, mask.nvalid, mask.bands, opts, with_fallback=opts.fallback != "none")
    dtype = mask.dtype
    del mask  # the plan keeps the one-byte state; the count of observed bands is done with
    windows = plan.windows
    index = {w.id: i for i, w in enumerate(windows)}
    store = PatchStore.open(scene_dir / "patches.zarr", len(windows), plan.shape[0], opts.patch, chash)
    done = store.done()
    tasks = [
        FitTask(item_id, source, store.path, b.index, b.fallback, b.windows,
                tuple(index[w.id] for w in b.windows), tuple(patch_seed(opts.seed, w) for w in b.windows))
        for b in plan.batches
        if not all(done[index[w.id]] for w in b.windows)
    ]
    resumed = int(done.sum()) - sum(int(done[i]) for t in tasks for i in t.indices)
    fitted = [0]
    t0 = time.perf_counter()
    total = sum(len(t.windows) for t in tasks)

    def on_fitted(task: FitTask, diags: list[tuple[str, dict]]) -> None:
        fitted[0] += len(task.windows)
        rate = fitted[0] / max(time.perf_counter() - t0, 1e-9)
        eta = (total - fitted[0]) / rate if rate else float("nan")
        say("patches", f"  {item_id}: patches {fitted[0]}/{total} ({resumed} resumed), {rate:.2f} patches/s, "
            f"ETA {eta:.0f} s", scene=str(item["id"]), patches_done=fitted[0], patches_total=total,
            patches_resumed=resumed, patches_per_s=round(rate, 3), eta_s=round(eta, 1))
        if budget[0] is not None:
            budget[0] -= 1
            if budget[0] <= 0:
                raise RunInterrupted(f"stopped after the requested number of batches ({item_id})")

    clock.lap("mask")
    pool.run(tasks, on_fitted)
    # every patch's diagnostics, those of a run this one resumed included
    diagnostics = {windows[i].id: PatchDiagnostics(**d) for i, d in sorted(store.diagnostics().items())}
    clock.lap("fit")

    # The item is the commit marker: a stale one goes first, so a crash below leaves a
    # scene that the next run reprocesses, never an item describing mixed outputs.
    names = output_names(item_id, plan.shape[0])
    (scene_dir / names["item"]).unlink(missing_ok=True)
    mosaic_path = scene_dir / names["mosaic"]
    for stale in scene_dir.glob(f".{names['mosaic']}.tmp-*"):  # left by a killed driver
        shutil.rmtree(stale, ignore_errors=True)
    blocks: list[Any] = []
    with staged(mosaic_path) as tmp:
        create_zarr_mosaic(tmp, plan.shape, dtype, source.grid, nodata=nodata,
                           band_names=list(source.band_names), attrs=mosaic_attrs(opts))
        blend = block_tasks(item_id, source, plan, store.path, str(tmp), nodata, MOSAIC_CHUNK)
        pool.run(blend, lambda task, res: blocks.append(res), "blend")
    clock.lap("blend")
    mosaic = zarr.open_group(str(mosaic_path), mode="r")
    counts = merge_counts([b.counts for b in blocks])
    props = item.get("properties") or {}
    self_href = next((ln.get("href") for ln in item.get("links", []) if ln.get("rel") == "self"), None)
    extras = ItemExtras(
        geometry=item.get("geometry"),
        bbox=item.get("bbox"),
        derived_from=(self_href,) if self_href else (),
        properties={"dipfill:source_version": source_version(item), "dipfill:source_item": str(item["id"]),
                    "dipfill:config_hash": chash, "dipfill:run_config": request.config()},
        scale_offset=tuple(zip(source.scale, source.offset)),
    )
    product = SceneProduct(
        grid=source.grid,
        band_names=list(source.band_names),
        dtype=dtype,
        nodata=nodata,
        sources=[self_href or str(item["id"])],
        bands=mosaic["bands"],
        qa=mosaic["qa"],
        footprint=None if extras.geometry is not None and extras.bbox is not None else plan.state != OUTSIDE,
        preview=preview_mosaic(blocks),
        counts=counts,
        diagnostics=diagnostics,
    )
    when = props.get("datetime") or props.get("start_datetime")
    rgb = (0, 1, 2) if plan.shape[0] >= 3 else (0, 0, 0)
    outputs = _write_outputs(scene_dir, item_id, product, opts, when.replace("Z", "+00:00") if when else None,
                             rgb, extras, mosaic_written=True)
    store.remove()
    add_to_static_catalog(out, scene_dir, scene_dir.parent.name)
    clock.lap("write")
    if request.publish:
        _publish(request.publish, outputs["item"], item)
        clock.lap("publish")
    return SceneStatus(str(item["id"]), "done", output=outputs["item"], patches=len(windows),
                       patches_fitted=sum(len(t.windows) for t in tasks), patches_resumed=resumed, counts=counts,
                       timings=clock.laps, driver_peak_mib=clock.peaks)


class _Stages:
    """Seconds spent per stage of a scene, and the driver's peak resident memory at the end
    of each (MiB, since the process started), for the run record and ``make bench``."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.peaks: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        import resource

        now = time.perf_counter()
        self.laps[name] = round(now - self._t, 3)
        self.peaks[name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        self._t = now


def signer(name: str | None) -> Callable[[str], str] | None:
    """The href-signing hook named ``name``; imported only when asked for."""
    if name is None:
        return None
    if name == "planetary-computer":
        try:
            import planetary_computer
        except ImportError:
            raise InputError("--sign planetary-computer needs the planetary-computer package "
                             "(pip install planetary-computer)") from None
        return planetary_computer.sign
    raise InputError(f"unknown --sign {name!r}; known: planetary-computer")


def _publish(url: str, item_path: str, source: Mapping[str, Any]) -> None:
    from dipfill.pipeline.publish import absolute_item, publish_to_api
    from dipfill.stac.catalog import collection_with_item, new_collection

    item = json.loads(Path(item_path).read_text())
    cid = f"{source.get('collection') or 'items'}-dipfill"
    doc = absolute_item(item, Path(item_path).parent.resolve().as_uri())
    publish_to_api(url, collection_with_item(new_collection(cid), item), [doc])


def _one_nodata(values: Sequence[float | None], item_id: str) -> float | None:
    distinct = {v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))}
    if len(distinct) > 1:
        raise InputError(f"item {item_id}: bands have different nodata values {sorted(distinct)}; "
                         "one output COG needs one")
    return distinct.pop() if distinct else (values[0] if values else None)


_SECRET = re.compile(r"([?&](?:sig|se|sp|sv|sr|st|skoid|sktid|skt|ske|sks|skv|token|X-Amz-[A-Za-z-]+)=)[^&\s\"']+",
                     re.IGNORECASE)


def _safe(text: str) -> str:
    """Messages go to logs and the run record: strip signed-URL secrets from them."""
    return _SECRET.sub(r"\1REDACTED", text)


def _request_record(request: RunRequest) -> dict[str, Any]:
    d = asdict(request)
    d["options"] = request.options.hashable_dict()
    return json.loads(_safe(json.dumps(d, default=str)))


def _write_summary(out: Path, summary: RunSummary) -> Path:
    from dipfill.pipeline.write import staged

    path = out / "runs" / f"{summary.run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "run_id": summary.run_id,
        "dipfill": __version__,
        "request": summary.request,
        "config_hash": summary.config_hash,
        "seconds": summary.seconds,
        **({"error": summary.error} if summary.error else {}),
        "scenes": [asdict(s) for s in summary.scenes],
        "failures": [{"id": s.id, "message": s.message} for s in summary.failed],
        "counts": {k: sum(1 for s in summary.scenes if s.status == k) for k in ("done", "current", "failed")},
    }
    with staged(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    return path
