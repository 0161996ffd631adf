"""`dipfill run`: search scenes, fit their gap patches on engine actors, write outputs per scene.

Per scene (DESIGN.md's one-way flow): the driver reads the scene once for its three-state
mask, plans windows and batches (the same :func:`~dipfill.pipeline.fill.plan_fill` as
``dipfill fill``), sends *descriptions* of the batches to engine actors, which read their
own windows, fit them and write the results into the scene's patch store; the driver then
blends from the store and writes COG, QA COG, zarr, quicklook and, last, the STAC item.

Idempotent and resumable: a scene whose item records the same source version and config
hash is skipped without engine work; a scene with a patch store resumes from its done
flags, refitting only whole unfinished batches, so the bytes equal an uninterrupted run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dipfill import __version__
from dipfill.engines.base import PatchDiagnostics
from dipfill.errors import DipfillError, InputError
from dipfill.pipeline.fill import FillOptions, FillResult, ItemExtras, assemble, patch_seed, plan_fill

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
    seconds: float = 0.0


@dataclass
class RunSummary:
    run_id: str
    request: dict[str, Any]
    config_hash: str
    scenes: list[SceneStatus]
    seconds: float
    record: str = ""

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
    progress: Callable[[str], None] | None = None,
    stop_after_batches: int | None = None,
    pool: Any = None,
) -> RunSummary:
    """Run ``request``; returns the summary (also written to ``OUT/runs/<run-id>.json``).

    ``pool``: an engine pool to use instead of Ray actors (e.g. ``LocalPool``).
    """
    from dipfill.pipeline.ray_exec import engine_pool, start_ray
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
    say = progress or (lambda msg: log.info("%s", msg))
    say(f"run {run_id}: {len(records)} scene(s) from {request.stac}")

    statuses: list[SceneStatus] = []
    budget = [stop_after_batches]
    # Actors stay up for this driver's next run (tests, notebooks); stop_ray() or exit ends them.
    for n, record in enumerate(records, start=1):
        start = time.perf_counter()
        try:
            status = _current(record, out, chash, request)
            if status is None:
                if pool is None:
                    start_ray(ray_address, num_cpus=num_cpus)
                    opts = request.options
                    pool = engine_pool(opts.engine, dict(opts.engine_options), opts.fallback)
                status = _process_scene(record, request, out, chash, pool, say, budget)
        except RunInterrupted:
            raise
        except (DipfillError, OSError, ValueError, KeyError) as exc:
            status = SceneStatus(str(record.get("id")), "failed", message=_safe(str(exc)))
            log.error("scene %s failed: %s", record.get("id"), status.message)
        status.seconds = round(time.perf_counter() - start, 3)
        statuses.append(status)
        say(f"scene {n}/{len(records)} {record.get('id')}: {status.status}"
            + (f" ({status.message})" if status.message else ""))
    summary = RunSummary(run_id, _request_record(request), chash, statuses, round(time.perf_counter() - t0, 3))
    summary.record = str(_write_summary(out, summary))
    return summary


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
                   say: Callable[[str], None], budget: list[int | None]) -> SceneStatus:
    from dipfill.masks import QA_CLASSES
    from dipfill.pipeline.fill import _write_outputs
    from dipfill.pipeline.patchstore import PatchStore
    from dipfill.pipeline.publish import add_to_static_catalog
    from dipfill.pipeline.ray_exec import FitTask
    from dipfill.pipeline.read import Scene
    from dipfill.pipeline.scene import open_scene
    from dipfill.stac.item import sanitize_id

    opts = request.options
    source = open_scene(dict(item), bands=request.bands, mask=request.mask, sign=signer(request.sign))
    scene = source.read()
    nodata = _one_nodata(scene.nodata, str(item["id"]))
    item_id = sanitize_id(str(item["id"])) + "-dipfill"
    scene_dir = _scene_dir(out, item, item_id)
    scene_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_fill(scene.valid, scene.footprint, opts, with_fallback=opts.fallback != "none")
    windows = plan.windows
    index = {w.id: i for i, w in enumerate(windows)}
    store = PatchStore.open(scene_dir / "patches.zarr", len(windows), scene.data.shape[0], opts.patch, chash)
    done = store.done()
    tasks = [
        FitTask(item_id, source, store.path, b.index, b.fallback, b.windows,
                tuple(index[w.id] for w in b.windows), tuple(patch_seed(opts.seed, w) for w in b.windows))
        for b in plan.batches
        if not all(done[index[w.id]] for w in b.windows)
    ]
    resumed = int(done.sum()) - sum(int(done[i]) for t in tasks for i in t.indices)
    diagnostics: dict[str, PatchDiagnostics] = {}
    fitted = [0]
    t0 = time.perf_counter()
    total = sum(len(t.windows) for t in tasks)

    def on_done(task: FitTask, diags: list[tuple[str, dict]]) -> None:
        for wid, d in diags:
            diagnostics[wid] = PatchDiagnostics(**d)
        fitted[0] += len(task.windows)
        rate = fitted[0] / max(time.perf_counter() - t0, 1e-9)
        eta = (total - fitted[0]) / rate if rate else float("nan")
        say(f"  {item_id}: patches {fitted[0]}/{total} ({resumed} resumed), {rate:.2f} patches/s, ETA {eta:.0f} s")
        if budget[0] is not None:
            budget[0] -= 1
            if budget[0] <= 0:
                raise RunInterrupted(f"stopped after the requested number of batches ({item_id})")

    pool.run(tasks, on_done)
    results = {w.id: (store.read(index[w.id], w.height, w.width), b.fallback) for b in plan.batches for w in b.windows}
    data, qa = assemble(scene.data, scene.valid, plan, results, nodata)
    result = FillResult(data, qa, diagnostics, plan.windows_total, len(windows))
    counts = {name: int((qa == code).sum()) for code, (name, _) in QA_CLASSES.items()}
    props = item.get("properties") or {}
    self_href = next((ln.get("href") for ln in item.get("links", []) if ln.get("rel") == "self"), None)
    extras = ItemExtras(
        geometry=item.get("geometry"),
        bbox=item.get("bbox"),
        derived_from=(self_href,) if self_href else (),
        properties={"dipfill:source_version": source_version(item), "dipfill:source_item": str(item["id"]),
                    "dipfill:config_hash": chash, "dipfill:run_config": request.config()},
        scale_offset=tuple(zip(scene.scale, scene.offset)),
    )
    grid_scene = Scene(data=scene.data, grid=scene.grid, nodata=nodata, band_names=list(scene.band_names),
                       sources=[self_href or str(item["id"])])
    when = props.get("datetime") or props.get("start_datetime")
    rgb = (0, 1, 2) if data.shape[0] >= 3 else (0, 0, 0)
    outputs = _write_outputs(scene_dir, item_id, grid_scene, scene.valid, result, opts,
                             when.replace("Z", "+00:00") if when else None, counts, rgb, extras)
    store.remove()
    add_to_static_catalog(out, scene_dir, scene_dir.parent.name)
    if request.publish:
        _publish(request.publish, outputs["item"], item)
    return SceneStatus(str(item["id"]), "done", output=outputs["item"], patches=len(windows),
                       patches_fitted=sum(len(t.windows) for t in tasks), patches_resumed=resumed, counts=counts)


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
        "scenes": [asdict(s) for s in summary.scenes],
        "failures": [{"id": s.id, "message": s.message} for s in summary.failed],
        "counts": {k: sum(1 for s in summary.scenes if s.status == k) for k in ("done", "current", "failed")},
    }
    with staged(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    return path
