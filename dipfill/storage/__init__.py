"""Outputs written so that no reader ever sees half of one, on a local disk or object storage.

The one place that knows how outputs reach their storage. Every writer of dipfill (COGs,
the Zarr mosaic, items, catalogs, run records, reports) goes through :func:`staged`, so a
crashed or killed run leaves either the old file or the new one, never a torn one.

An output root is a local directory (a :class:`~pathlib.Path`) or an object-storage URL
(``s3://bucket/prefix``, also ``gs://`` and ``az://``: an :class:`ObjectPath`, which
answers the pathlib calls the writers make). :func:`as_path` turns what the user gave into
one or the other; the functions here take either:

* :func:`staged` — local: temporary name + one rename; object storage: a local temporary
  uploaded in one PUT (multipart above 5 MiB: S3 shows the object only once it is
  complete), a directory object by object;
* :func:`zarr_store` — what ``zarr.open_group`` takes for a Zarr store at a path or URL
  (workers write the patch store and mosaic chunks straight to the object store: on a
  cluster they share no file system with the driver);
* :func:`exclusive` — local: ``flock``; object storage: a lease object created with a
  conditional write (``If-None-Match: *``), renewed while held and taken over (``If-Match``
  on the expired lease's ETag) once a killed holder lets it expire;
* reading: :func:`read_json`, :func:`read_text`, :func:`exists`, :func:`list_files`.

Object storage (:mod:`dipfill.storage.objects`) is reached through obstore (chosen over s3fs by ``scripts/bench_store.py``:
docs/benchmarks/README.md); credentials come from the standard environment of each process
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_REGION``,
``AWS_ENDPOINT_URL`` for other S3 servers, instance or web-identity roles; ``AWS_PROFILE``
through boto3 where it is installed) and never pass through dipfill's arguments, records or
messages.

Several processes may write into one output directory at once (two cron runs, a run and a
``dipfill fill``): a temporary is named after its owner (``.NAME.tmp-HOST.PID.RANDOM``), a
process removes only its own, and :func:`remove_stale_temporaries` only those whose owner
is provably gone (same host, process no longer running).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from dipfill.errors import InputError
from dipfill.storage.objects import (LEASE_ENV, REMOTE_SCHEMES, ObjectPath, _bucket_store, _check_remote_root, _lease,
                                     _staged_remote, as_path, is_remote, lease_seconds)
from dipfill.storage.owners import host as _host, running as _running

__all__ = ["staged", "staged_tree", "write_json", "write_bytes", "remove", "temporary_path",
           "remove_stale_temporaries", "exclusive", "check_output_dir", "JsonFileCache",
           "default_strategy_cache_path", "ObjectPath", "as_path", "is_remote", "read_json", "read_text",
           "read_bytes", "exists", "list_files", "copy_tree", "zarr_store", "LEASE_ENV", "REMOTE_SCHEMES", "lease_seconds"]

log = logging.getLogger(__name__)

#: How many times :func:`staged` retries moving a directory into place while other
#: processes keep replacing it.
_REPLACE_ATTEMPTS = 100
_OWNED = re.compile(r"\.(?:tmp|old)-(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]+$")


def remove(path: "Path | ObjectPath | str") -> None:
    """Delete a file or a directory tree, whichever ``path`` is (no error if it is gone);
    on object storage the object and every object under ``path/``."""
    path = as_path(path)
    if isinstance(path, ObjectPath):
        path.remove_tree()
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def temporary_path(final: str | os.PathLike[str], kind: str = "tmp") -> Path:
    """A hidden sibling of ``final`` that no other process or call will pick:
    ``.NAME.KIND-HOST.PID.RANDOM``."""
    final = Path(final)
    return final.with_name(f".{final.name}.{kind}-{_host()}.{os.getpid()}.{uuid.uuid4().hex[:12]}")


def remove_stale_temporaries(final: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of ``final`` left by dead processes (a killed run) and return them.

    Only those named by :func:`temporary_path` on this host whose process is not running:
    a live process's temporary (another run writing the same output now), one from another
    host (a shared file system) or one of unknown owner (older names) stays.
    """
    if is_remote(final):
        return []  # no temporaries there: uploads are whole objects (see staged)
    final = Path(final)
    removed = []
    for path in final.parent.glob(f".{final.name}.*-*"):
        owner = _OWNED.search(path.name)
        if owner is None or owner["host"] != _host():
            continue
        pid = int(owner["pid"])
        if pid == os.getpid() or _running(pid):
            continue
        log.info("removing %s, left by process %d which is no longer running", path, pid)
        remove(path)
        removed.append(path)
    return removed


def _move_dir_into_place(tmp: Path, final: Path) -> None:
    """Rename the directory ``tmp`` onto ``final``. A directory cannot replace a non-empty
    one, so an existing ``final`` is moved aside (to a name of our own) and deleted; when
    another process puts its own in place meanwhile, we try again: the last one wins and
    no one fails."""
    for _ in range(_REPLACE_ATTEMPTS):
        try:
            os.replace(tmp, final)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        old = temporary_path(final, "old")
        try:
            os.replace(final, old)
        except FileNotFoundError:
            continue  # another writer moved it aside first
        remove(old)  # then try again: ours goes in unless another writer's went in first
    raise OSError(errno.EBUSY, f"could not move {tmp.name} onto {final}: other processes keep replacing it")


@contextlib.contextmanager
def staged(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it onto ``final`` in one rename.

    The temporary is this call's own (:func:`temporary_path`) and is removed if anything
    fails. Directories (Zarr stores) cannot be atomically replaced when the target exists,
    so an existing target is first renamed aside and deleted after the new one is in place.

    ``final`` on object storage (an :class:`ObjectPath` or URL): the temporary is a local
    file (or directory) under ``$DIPFILL_TMPDIR`` (else the system's), uploaded onto
    ``final`` in one PUT (multipart for large files: the object appears only when complete);
    a directory replaces whatever was under ``final/``, object by object.
    """
    if is_remote(final):
        with _staged_remote(as_path(final)) as tmp:  # type: ignore[arg-type]
            yield tmp
        return
    final = Path(final)
    tmp = temporary_path(final)
    try:
        yield tmp
        if tmp.is_dir():
            _move_dir_into_place(tmp, final)
        else:
            os.replace(tmp, final)
    finally:
        remove(tmp)


@contextlib.contextmanager
def exclusive(lock_file: str | os.PathLike[str], *, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if missing) for the block, waiting
    while another process holds it; ``on_wait(holder)`` is called once before waiting, with
    what the holder wrote (``HOST PID``).

    An advisory ``flock``: the kernel releases it when its holder exits or is killed, so a
    crashed run never leaves a scene locked. The file stays (removing it would let two
    processes lock two different files of one name). Where ``fcntl`` is missing (Windows)
    the block runs unlocked.

    ``lock_file`` on object storage: a lease object (:func:`_lease`), which a killed
    holder leaves to expire after ``$DIPFILL_LEASE_SECONDS`` (default 120) seconds.
    """
    if is_remote(lock_file):
        with _lease(as_path(lock_file), on_wait=on_wait):  # type: ignore[arg-type]
            yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(lock_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            if on_wait is not None:
                on_wait(f.read().strip() or "another process")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{_host()} {os.getpid()}\n")
            f.flush()
            yield
        finally:
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)


def check_output_dir(path: str | os.PathLike[str], *, flag: str = "--out") -> Path:
    """Check, before any work, that outputs can be written in the directory ``path``
    (existing, or to be created): it is not a file, no part of it is a file, and the
    nearest existing directory takes a new file. Creates nothing that stays; raises
    :class:`~dipfill.errors.InputError` naming ``flag``, the path and the fix.

    Why try a file rather than ``os.access``: root passes every permission check, yet a
    read-only mount or a pseudo file system still refuses the write at the end of a fill.

    An object-storage URL is checked the same way: a probe object is put and deleted (a
    missing bucket, missing credentials or a refused write is one line). Returns what
    :func:`as_path` gives.
    """
    if is_remote(path):
        return _check_remote_root(as_path(path), flag)  # type: ignore[arg-type,return-value]
    out = Path(path)
    if str(path) == "":
        raise InputError(f"{flag} is empty; give the directory to write the outputs in")
    nearest = out
    while not nearest.exists() and nearest != nearest.parent:
        if nearest.is_symlink():  # a dangling link: nothing can be created through it
            raise InputError(f"{flag} {out}: {nearest} is a broken symbolic link; choose another {flag}")
        nearest = nearest.parent
    if not nearest.is_dir():
        where = "is a file" if nearest == out else f"lies under {nearest}, which is a file"
        raise InputError(f"{flag} {out} {where}, not a directory; choose a directory for the outputs")
    probe = temporary_path(nearest / "dipfill-write-check")
    try:
        probe.touch(exist_ok=False)
    except OSError as exc:
        raise InputError(f"{flag} {out}: cannot write in {nearest} ({exc.strerror or exc}); "
                         f"choose a directory you can write to") from None
    probe.unlink(missing_ok=True)
    return out


def write_json(path: "str | os.PathLike[str] | ObjectPath", doc: Any, *, indent: int = 2) -> None:
    """Write ``doc`` as JSON (with a final newline) under ``path`` atomically (on object
    storage: one PUT, which is atomic by itself)."""
    text = json.dumps(doc, indent=indent) + "\n"
    if is_remote(path):
        write_bytes(path, text.encode())
        return
    with staged(path) as tmp:
        tmp.write_text(text)


# ---------------------------------------------------------------------------------------
# The DIP strategy cache on disk: the file behind dipfill.engines.cache.StrategyCache.
# Engines open no files; whoever builds an engine (CLI, pipeline, Ray worker, eval) passes
# JsonFileCache(default_strategy_cache_path()) to make_engine(..., strategy_cache=...).


def default_strategy_cache_path() -> Path:
    """``$DIPFILL_CACHE_DIR/strategy.json``, or ``~/.cache/dipfill/strategy.json`` when unset.

    Read when called (not at import), so a test or a run that sets the variable first is
    honoured; the variable is read, never set.
    """
    root = os.environ.get("DIPFILL_CACHE_DIR") or Path.home() / ".cache" / "dipfill"
    return Path(root) / "strategy.json"


class JsonFileCache:
    """Entries of one JSON object file, ``{key: value}``; a ``StrategyCache`` for the engines.

    The file is reread on every ``get`` and on every ``put`` before it is rewritten, so
    processes sharing it (Ray workers, consecutive runs) see each other's entries; a write
    goes through :func:`staged`, so a reader never sees half a file. Concurrent writers
    can still drop each other's newest entry: it is a cache, the loser measures again.
    A missing, unreadable or corrupt file reads as empty (and is replaced by the next
    ``put``). ``put`` raises ``OSError`` when the file cannot be written (a read-only home);
    the engine logs that and carries on.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"JsonFileCache({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JsonFileCache) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def _entries(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry under ``key``; None when absent or not a JSON object."""
        value = self._entries().get(key)
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store ``value`` under ``key``, keeping the other entries."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self._entries()
        data[key] = value
        with staged(self.path) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))


def exists(target: "str | os.PathLike[str] | ObjectPath") -> bool:
    """Whether ``target`` (a file/object, or a directory/prefix with something in it) exists."""
    return as_path(target).exists()


def read_bytes(target: "str | os.PathLike[str] | ObjectPath") -> bytes:
    """The bytes of a file or object; ``FileNotFoundError`` when there is none."""
    return as_path(target).read_bytes()


def read_text(target: "str | os.PathLike[str] | ObjectPath") -> str:
    """The text (UTF-8) of a file or object; ``FileNotFoundError`` when there is none."""
    return read_bytes(target).decode("utf-8")


def read_json(target: "str | os.PathLike[str] | ObjectPath") -> Any:
    """The JSON document of a file or object (``FileNotFoundError``/``ValueError`` as
    ``json.loads`` and the store raise them)."""
    return json.loads(read_bytes(target))


def write_bytes(target: "str | os.PathLike[str] | ObjectPath", data: bytes) -> None:
    """Write ``data`` atomically: staged locally, one PUT on object storage."""
    path = as_path(target)
    if isinstance(path, ObjectPath):
        path.write_bytes(data)
        return
    with staged(path) as tmp:
        tmp.write_bytes(data)


def list_files(folder: "str | os.PathLike[str] | ObjectPath", pattern: str = "*") -> list["Path | ObjectPath"]:
    """Files (objects) in ``folder`` whose path relative to it matches ``pattern``
    (``*.json``, ``*/*/*.json``), sorted; hidden names (temporaries, locks) left out."""
    path = as_path(folder)
    if isinstance(path, ObjectPath):
        keys = path.keys()
        parts = pattern.split("/")
        hits = [k for k in keys if len(k.split("/")) == len(parts)
                and all(fnmatch.fnmatchcase(s, p) for s, p in zip(k.split("/"), parts))]
        return [path / k for k in sorted(hits) if not any(s.startswith(".") for s in k.split("/"))]
    if not path.is_dir():
        return []
    return sorted(p for p in path.glob(pattern) if p.is_file()
                  and not any(s.startswith(".") for s in p.relative_to(path).parts))


def copy_tree(src: "str | os.PathLike[str] | ObjectPath", dest: "str | os.PathLike[str] | ObjectPath", *,
              skip: str | None = None) -> None:
    """Copy every file (and directory tree) in the directory ``src`` into ``dest``, each
    written atomically (:func:`staged`/one PUT), leaving out the entry named ``skip``."""
    src, dest = as_path(src), as_path(dest)
    if isinstance(src, Path) and isinstance(dest, Path):
        dest.mkdir(parents=True, exist_ok=True)
        for path in src.iterdir():
            if path.name == skip:
                continue
            if path.is_dir():
                shutil.copytree(path, dest / path.name, dirs_exist_ok=True)
            else:
                with staged(dest / path.name) as tmp:
                    shutil.copy2(path, tmp)
        return
    rels = (src.keys() if isinstance(src, ObjectPath)
            else [p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()])
    for rel in rels:
        if rel.split("/")[0] != skip:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(target, (src / rel).read_bytes())


def zarr_store(target: "str | os.PathLike[str] | ObjectPath", *, read_only: bool = False) -> Any:
    """What ``zarr.open_group`` takes for the Zarr store at ``target``: the local path as
    a string, or a ``zarr.storage.ObjectStore`` on the object store's prefix."""
    path = as_path(target)
    if not isinstance(path, ObjectPath):
        return str(path)
    from zarr.storage import ObjectStore

    return ObjectStore(_bucket_store(path.url), read_only=read_only)


@contextlib.contextmanager
def staged_tree(final: "str | os.PathLike[str] | ObjectPath") -> Iterator["Path | ObjectPath"]:
    """Where to write a directory (a Zarr store) that other processes write into too (a
    run's mosaic, whose chunks its workers write): locally a :func:`staged` temporary
    beside ``final``; on object storage ``final`` itself, emptied first (workers on other
    nodes see no local temporary, and a prefix cannot be renamed). There, the item that
    :mod:`dipfill.pipeline.stages` writes after it, and removes before it, says whether the
    directory is complete."""
    if is_remote(final):
        path = as_path(final)
        path.remove_tree()  # type: ignore[union-attr]
        try:
            yield path
        except BaseException:
            with contextlib.suppress(Exception):
                path.remove_tree()  # type: ignore[union-attr]
            raise
        return
    with staged(final) as tmp:
        yield tmp


