"""What an output root holds: per scene, done, failed or pending, after the latest run that touched it.

``dipfill status OUT`` and ``dipfill report OUT`` read what runs leave behind, nothing else:

* the run records ``OUT/runs/<run-id>.json`` (:func:`~dipfill.pipeline.progress.write_summary`):
  a run writes its record when it starts (every scene ``pending``), after each scene and
  when it ends, so a killed run leaves the scenes it never finished ``pending``;
* the output items ``OUT/<collection>/<output id>/<output id>.json`` (a scene filled by
  ``dipfill fill``, or whose run records were deleted, still counts as done);
* patch stores ``OUT/<collection>/<output id>/patches.zarr`` left by an unfinished scene:
  how many of its patches a rerun will not fit again.

The output root is a local directory or an object-storage prefix (``s3://bucket/prefix``):
reading goes through :func:`read_json`, :func:`list_json`, :func:`list_dirs` and
:func:`exists`, which :mod:`dipfill.storage` answers for either.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dipfill import storage
from dipfill.errors import InputError
from dipfill.stac.ids import unique_id

__all__ = ["SceneState", "RunInfo", "OutputStatus", "output_status", "read_runs", "find_items", "read_json",
           "list_json", "item_scene_id"]

#: The states ``dipfill status`` shows, worst first.
STATES = ("failed", "pending", "done")


# ------------------------------------------------------------------ reading the output root
Where = "Path | storage.ObjectPath"


def read_json(path: Where) -> Any:
    """One JSON document of the output root; raises ``OSError`` or ``ValueError``."""
    return storage.read_json(path)


def list_json(folder: Where, pattern: str = "*.json") -> list[Any]:
    """The JSON files matching ``pattern`` under ``folder`` (hidden temporaries left out), sorted."""
    return [p for p in storage.list_files(folder, pattern) if p.name.endswith(".json")]


#: Names under an output root that are never collection or scene directories.
_NOT_DIRS = (".json", ".html", ".zarr", ".tif", ".png", ".vrt", ".lock")


def list_dirs(folder: Where) -> list[Any]:
    """The directories (key prefixes) right under ``folder`` that may hold scenes, sorted:
    not hidden, not ``runs``, not named like a file. On object storage one delimited
    listing (not every key below), which also yields objects: a file let through has
    nothing under it, so it adds nothing."""
    if isinstance(folder, storage.ObjectPath):
        entries = list(folder.iterdir())
    else:
        entries = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return [p for p in entries if not p.name.startswith(".") and p.name != "runs" and not p.name.endswith(_NOT_DIRS)]


def exists(path: Where) -> bool:
    return storage.exists(path)


def relative(path: Any, root: Any) -> str:
    """``path`` below ``root`` as a relative POSIX path (local or object storage alike)."""
    base = str(root).rstrip("/")
    text = str(path).replace(os.sep, "/") if not isinstance(path, storage.ObjectPath) else str(path)
    return text[len(base.replace(os.sep, "/")):].lstrip("/") if text.startswith(base.replace(os.sep, "/")) else text


# ------------------------------------------------------------------ what was found
@dataclass(frozen=True)
class RunInfo:
    """One run record, in short. ``state``: ``finished``, ``running`` (its driver still
    runs), ``killed`` (a ``running`` record whose driver is gone: SIGKILL, a lost node),
    ``interrupted`` (SIGTERM/Ctrl-C) or ``stopped`` (the cluster failed)."""

    run_id: str
    state: str
    started: str
    seconds: float
    counts: dict[str, int]
    record: str  # path relative to the output root
    error: str = ""


@dataclass(frozen=True)
class SceneState:
    """A scene as the latest run that touched it left it (``run_id`` None: only its item was found)."""

    id: str
    state: str  # done | failed | pending
    run_id: str | None
    message: str = ""  # a failure's one line, or what "done"/"pending" means here
    item: str | None = None  # the output item, relative to the output root
    patches_stored: int | None = None  # pending: patches already in the scene's patch store
    patches_total: int | None = None


@dataclass(frozen=True)
class OutputStatus:
    root: str
    runs: tuple[RunInfo, ...]
    scenes: tuple[SceneState, ...]
    unreadable: tuple[str, ...] = field(default=())  # run records that could not be read

    def of(self, state: str) -> list[SceneState]:
        return [s for s in self.scenes if s.state == state]

    @property
    def counts(self) -> dict[str, int]:
        return {k: len(self.of(k)) for k in ("done", "failed", "pending")}

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root, "counts": self.counts, "scenes": [asdict(s) for s in self.scenes],
                "runs": [asdict(r) for r in self.runs], "unreadable": list(self.unreadable)}


def _order(doc: dict[str, Any]) -> str:
    """Runs in the order they started: ``started`` (microseconds) where recorded, else the
    run id's own UTC second (older records)."""
    started = doc.get("started") or ""
    if started:
        return started
    rid = str(doc.get("run_id", ""))
    return f"{rid[0:4]}-{rid[4:6]}-{rid[6:8]}T{rid[9:11]}:{rid[11:13]}:{rid[13:15]}" if len(rid) >= 15 else rid


def read_runs(out: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The run records under ``out/runs``, oldest first, and the names of those that are
    not readable run records."""
    docs, bad = [], []
    for path in list_json(out / "runs"):
        try:
            doc = read_json(path)
        except (OSError, ValueError):
            bad.append(path.name)
            continue
        if not isinstance(doc, dict) or "run_id" not in doc or not isinstance(doc.get("scenes"), list):
            bad.append(path.name)
            continue
        doc["_record"] = f"runs/{path.name}"
        docs.append(doc)
    return sorted(docs, key=_order), bad


def item_scene_id(item: dict[str, Any]) -> str | None:
    """The source scene an output item was made from (None: not a dipfill item)."""
    props = item.get("properties") if isinstance(item, dict) else None
    if not isinstance(props, dict) or "dipfill:config_hash" not in props:
        return None
    return str(props.get("dipfill:source_item") or item.get("id"))


def find_items(out: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """dipfill output items under ``out`` (``<collection>/<output id>/<output id>.json``),
    by source scene id: (path relative to ``out``, the item)."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for collection in list_dirs(out):
        for directory in list_dirs(collection):
            path = directory / f"{directory.name}.json"  # the item is named after its directory
            try:
                item = read_json(path)
            except (OSError, ValueError):  # no item (yet): a scene in progress or failed
                continue
            scene = item_scene_id(item)
            if scene is not None:
                found[scene] = (relative(path, out), item)
    return found


def _patch_store(out: Any, scene_id: str) -> tuple[int, int] | None:
    """(patches stored, patches planned) of a scene's patch store, when one is left."""
    try:
        name = unique_id(scene_id) + "-dipfill"
    except Exception:  # an id with nothing usable in it has no scene directory
        return None
    for collection in list_dirs(out):
        store = collection / name / "patches.zarr"
        if not exists(store / "zarr.json"):
            continue
        try:
            import zarr  # only when a patch store is there

            done = zarr.open_group(storage.zarr_store(store, read_only=True), mode="r")["done"][...]
        except Exception:  # a store being created or removed right now: nothing to tell
            continue
        return int(done.sum()), int(done.size)
    return None


def _alive(doc: dict[str, Any]) -> bool | None:
    """Whether a ``running`` record's driver still runs (None: on another host, cannot tell)."""
    if doc.get("host") != socket.gethostname() or not isinstance(doc.get("pid"), int):
        return None
    try:
        os.kill(doc["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_info(doc: dict[str, Any]) -> RunInfo:
    state = str(doc.get("state") or "finished")  # records from before states were written had finished
    if state == "running" and _alive(doc) is False:
        state = "killed"
    counts = doc.get("counts") if isinstance(doc.get("counts"), dict) else {}
    return RunInfo(str(doc["run_id"]), state, str(doc.get("started") or _order(doc)),
                   float(doc.get("seconds") or 0.0), {str(k): int(v) for k, v in counts.items()},
                   doc["_record"], str(doc.get("error") or ""))


def check_root(out: str | os.PathLike[str]) -> Any:
    """``out`` as a Path (or an ObjectPath for ``s3://``...), or one-line
    :class:`~dipfill.errors.InputError` when it is no directory (no prefix with objects)."""
    root = storage.as_path(out)
    if isinstance(root, storage.ObjectPath):
        try:
            found = root.is_dir()
        except Exception as exc:  # credentials, endpoint, bucket: the store's own words
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise InputError(f"{out}: cannot list it ({why}); check the URL and the AWS_*/GOOGLE_*/AZURE_* "
                             "credentials") from None
        if not found:
            raise InputError(f"{out}: nothing under this prefix: give the --out of a dipfill run")
        return root
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise InputError(f"{out} {what}: give the --out directory of a dipfill run")
    return root


def output_status(out: str | os.PathLike[str]) -> OutputStatus:
    """Every scene under the output root ``out`` with its latest state: the state in the
    latest run record that lists it (``current`` counts as done), else done when its item
    is there. Raises :class:`~dipfill.errors.InputError` when ``out`` is not a dipfill
    output root (no run record and no dipfill item)."""
    root = check_root(out)
    docs, bad = read_runs(root)
    items = find_items(root)
    if not docs and not items:
        extra = f" ({len(bad)} unreadable file(s) in runs/)" if bad else ""
        raise InputError(f"{out} is not a dipfill output root: no runs/<run-id>.json and no dipfill items{extra}; "
                         "give the --out directory of a dipfill run")
    infos = {d["run_id"]: _run_info(d) for d in docs}
    latest: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for doc in docs:  # oldest first: a later run overrides
        for scene in doc["scenes"]:
            if isinstance(scene, dict) and "id" in scene:
                latest[str(scene["id"])] = (doc, scene)
    scenes = []
    for scene_id, (doc, rec) in latest.items():
        item = items.get(scene_id, (None, None))[0]
        status, message = str(rec.get("status")), str(rec.get("message") or "")
        stored = total = None
        if status in ("done", "current"):
            state = "done"
            message = "output current: no engine work" if status == "current" else ""
        elif status == "failed":
            state = "failed"
        else:
            state = "pending"
            run_state = infos[doc["run_id"]].state
            message = {"running": "its run is still running", "killed": "its run stopped without finishing",
                       "interrupted": "its run was interrupted", "stopped": "its run stopped: the cluster failed"
                       }.get(run_state, "not processed by its run")
            progress = _patch_store(root, scene_id)
            if progress is not None:
                stored, total = progress
                message += f"; {stored}/{total} patches in its patch store (a rerun resumes)"
        scenes.append(SceneState(scene_id, state, str(doc["run_id"]), message, item, stored, total))
    for scene_id, (path, _) in items.items():
        if scene_id not in latest:
            scenes.append(SceneState(scene_id, "done", None, "item only (dipfill fill, or its run record is gone)",
                                     path))
    scenes.sort(key=lambda s: (STATES.index(s.state), s.id))
    return OutputStatus(str(root), tuple(infos[d["run_id"]] for d in docs), tuple(scenes), tuple(bad))
