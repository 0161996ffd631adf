"""Object storage behind :mod:`dipfill.storage`: ``s3://``, ``gs://``, ``az://`` through obstore.

:class:`ObjectPath` answers the pathlib calls dipfill's writers make, so they take a local
:class:`~pathlib.Path` or an object-storage URL alike; :func:`_staged_remote` uploads a
local temporary in one PUT (multipart for large files: the object appears when complete);
:func:`_lease` is :func:`dipfill.storage.exclusive` on object storage (a lease object made
with a conditional write). Each process connects with its own environment's credentials
(:func:`_bucket_store`); none passes through dipfill's arguments or records.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from dipfill.errors import InputError
from dipfill.storage.owners import host as _host, running as _running

__all__ = ["REMOTE_SCHEMES", "LEASE_ENV", "ObjectPath", "is_remote", "as_path", "lease_seconds"]

log = logging.getLogger("dipfill.storage")

#: URL schemes of object storage (obstore's stores); anything else is a local path.
REMOTE_SCHEMES = ("s3", "s3a", "gs", "az", "abfs", "abfss", "azure")
#: Seconds a lease on object storage lasts unless renewed (its holder renews it every third).
LEASE_ENV = "DIPFILL_LEASE_SECONDS"
_LEASE_DEFAULT = 120.0


def is_remote(target: Any) -> bool:
    """Whether ``target`` names object storage (an :class:`ObjectPath` or ``s3://``-like URL)."""
    if isinstance(target, ObjectPath):
        return True
    if not isinstance(target, str):
        return False
    scheme, sep, _ = target.partition("://")
    return bool(sep) and scheme.lower() in REMOTE_SCHEMES


def as_path(target: "str | os.PathLike[str] | ObjectPath") -> "Path | ObjectPath":
    """An :class:`ObjectPath` for an object-storage URL, else a :class:`~pathlib.Path`."""
    if isinstance(target, ObjectPath):
        return target
    if is_remote(target):
        return ObjectPath(str(target))
    return Path(target)


#: The environment variables a store is configured from: a store made before one of them
#: changed (another endpoint or key, in tests or a notebook) is not reused.
_STORE_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_REGION", "AWS_DEFAULT_REGION",
              "AWS_PROFILE", "GOOGLE_SERVICE_ACCOUNT", "AZURE_STORAGE_ACCOUNT_NAME")


def _bucket_store(root: str) -> Any:
    """The obstore store of one bucket (``scheme://bucket``), or of a prefix in it (a Zarr
    store's), made once per process and environment (:data:`_STORE_ENV`)."""
    return _make_store(root, tuple(os.environ.get(k) for k in _STORE_ENV))


@functools.lru_cache(maxsize=64)
def _make_store(root: str, _env: tuple[str | None, ...]) -> Any:
    """The store :func:`_bucket_store` gives (``_env``: the cache key, read again here).

    Configured from the process's own environment: the AWS_*/GOOGLE_*/AZURE_* variables
    obstore reads, and ``AWS_ENDPOINT_URL`` (plain ``http://`` allowed for it: a MinIO or
    moto on a private network). Without keys in the environment and with ``AWS_PROFILE``
    set, boto3 (where installed) resolves the profile chain."""
    from obstore.store import from_url

    kwargs: dict[str, Any] = {}
    if root.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            kwargs["endpoint"] = endpoint
            if endpoint.startswith("http://"):
                kwargs["client_options"] = {"allow_http": True}
        if not os.environ.get("AWS_REGION") and not os.environ.get("AWS_DEFAULT_REGION"):
            kwargs["region"] = "us-east-1"
        if os.environ.get("AWS_PROFILE") and not os.environ.get("AWS_ACCESS_KEY_ID"):
            with contextlib.suppress(ImportError):
                from obstore.auth.boto3 import Boto3CredentialProvider

                kwargs["credential_provider"] = Boto3CredentialProvider()
        elif os.environ.get("AWS_DEFAULT_REGION") and not os.environ.get("AWS_REGION"):
            kwargs["region"] = os.environ["AWS_DEFAULT_REGION"]
    return from_url(root.replace("s3a://", "s3://", 1), **kwargs)


class ObjectPath:
    """An object (or a "directory": a key prefix) on object storage, with the pathlib calls
    dipfill's writers make (``/``, ``name``, ``parent``, ``exists``, ``read_text``, ``glob``,
    ``unlink``, ``mkdir``...). Directories are implied by keys, so ``mkdir`` does nothing and
    a directory exists while something lies under it.

    Held as its URL (``s3://bucket/key``): cheap to pickle to workers, which open their own
    connection from their own environment."""

    __slots__ = ("url", "root", "key")

    def __init__(self, url: str) -> None:
        scheme, _, rest = str(url).partition("://")
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise InputError(f"{url}: no bucket in the URL; write it as {scheme}://BUCKET/PREFIX")
        self.key = "/".join(p for p in key.split("/") if p and p != ".")
        self.root = f"{scheme.lower()}://{bucket}"
        self.url = f"{self.root}/{self.key}" if self.key else self.root

    # -- pure path ------------------------------------------------------------------
    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"ObjectPath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __truediv__(self, part: "str | os.PathLike[str]") -> "ObjectPath":
        return ObjectPath(f"{self.url}/{os.fspath(part)}")

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def parent(self) -> "ObjectPath":
        return ObjectPath(f"{self.root}/{self.key.rpartition('/')[0]}")

    def with_name(self, name: str) -> "ObjectPath":
        return self.parent / name

    def resolve(self) -> "ObjectPath":
        return self

    def as_uri(self) -> str:
        return self.url

    def is_symlink(self) -> bool:
        return False

    # -- I/O --------------------------------------------------------------------------
    @property
    def store(self) -> Any:
        return _bucket_store(self.root)

    def _prefix(self) -> str:
        return f"{self.key}/" if self.key else ""

    def is_file(self) -> bool:
        import obstore

        if not self.key:
            return False
        try:
            obstore.head(self.store, self.key)
        except FileNotFoundError:
            return False
        return True

    def is_dir(self) -> bool:
        import obstore

        for chunk in obstore.list(self.store, prefix=self._prefix() or None, chunk_size=1):
            return bool(chunk)
        return False

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to make: directories are key prefixes."""

    def rmdir(self) -> None:
        """Nothing to remove: an empty directory does not exist on object storage."""

    def read_bytes(self) -> bytes:
        import obstore

        return bytes(obstore.get(self.store, self.key).bytes())

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        import obstore

        obstore.put(self.store, self.key, data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        import obstore

        if not missing_ok and not self.is_file():
            raise FileNotFoundError(self.url)
        obstore.delete(self.store, self.key)  # deleting a missing key is no error

    def keys(self) -> list[str]:
        """Every key under this directory (recursively), relative to it."""
        import obstore

        prefix = self._prefix()
        return [o["path"][len(prefix):] for chunk in obstore.list(self.store, prefix=prefix or None)
                for o in chunk]

    def iterdir(self) -> Iterator["ObjectPath"]:
        import obstore

        found = obstore.list_with_delimiter(self.store, prefix=self._prefix() or None)
        names = {p.rstrip("/").rpartition("/")[2] for p in found["common_prefixes"]}
        names.update(o["path"].rpartition("/")[2] for o in found["objects"])
        return iter([self / n for n in sorted(names)])

    def glob(self, pattern: str) -> Iterator["ObjectPath"]:
        """Objects and implied directories whose path relative to this one matches
        ``pattern`` segment by segment (``fnmatch``; no ``**``)."""
        parts = pattern.split("/")
        found: set[str] = set()
        for key in self.keys():
            segs = key.split("/")
            if len(segs) >= len(parts):
                head = segs[: len(parts)]
                if all(fnmatch.fnmatchcase(s, p) for s, p in zip(head, parts)):
                    found.add("/".join(head))
        return iter([self / k for k in sorted(found)])

    def remove_tree(self) -> None:
        """Delete this object and every object under ``self/``."""
        import obstore

        keys = [f"{self._prefix()}{k}" for k in self.keys()]
        if self.key and self.is_file():
            keys.append(self.key)
        for i in range(0, len(keys), 1000):
            obstore.delete(self.store, keys[i: i + 1000])

    def upload(self, local: Path) -> None:
        """Put the local file ``local`` onto this key: one PUT, or a multipart upload for a
        large file (the object appears when it completes); a local directory replaces
        whatever was under this one, file by file."""
        import obstore

        if local.is_dir():
            self.remove_tree()
            for f in sorted(p for p in local.rglob("*") if p.is_file()):
                obstore.put(self.store, f"{self._prefix()}{f.relative_to(local).as_posix()}", f)
        else:
            obstore.put(self.store, self.key, local)


def _staged_remote_tmpdir() -> str:
    return tempfile.mkdtemp(prefix="dipfill-upload-", dir=os.environ.get("DIPFILL_TMPDIR") or None)


@contextlib.contextmanager
def _staged_remote(final: ObjectPath) -> Iterator[Path]:
    """:func:`staged` for object storage: a local temporary, uploaded once complete."""
    folder = Path(_staged_remote_tmpdir())
    tmp = folder / final.name
    try:
        yield tmp
        if tmp.exists():
            final.upload(tmp)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _short(exc: BaseException) -> str:
    """An object-store error in a few words: its first line, the server's error code where
    it gave one (obstore's messages carry the whole request)."""
    text = re.sub(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]*@", r"\1", str(exc))  # no user:password@ of an endpoint
    code = re.search(r"<Code>([^<]+)</Code>", text)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return (code.group(1) + ": " if code else "") + first[:200]


def _check_remote_root(out: ObjectPath, flag: str) -> ObjectPath:
    """Put and delete a probe object under ``out`` (see :func:`check_output_dir`)."""
    import obstore

    probe = out / f".dipfill-write-check-{_host()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        obstore.put(out.store, probe.key, b"")
        obstore.delete(out.store, probe.key)
    except Exception as exc:  # obstore's errors: not found (no bucket), permission, connection...
        why = "the bucket does not exist" if "NoSuchBucket" in str(exc) else _short(exc)
        raise InputError(f"{flag} {out}: cannot write there ({why}); check the bucket, the credentials "
                         "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and AWS_ENDPOINT_URL") from None
    return out


def lease_seconds() -> float:
    """How long a lease lasts unless renewed: ``$DIPFILL_LEASE_SECONDS`` (default 120)."""
    try:
        return max(1.0, float(os.environ.get(LEASE_ENV) or _LEASE_DEFAULT))
    except ValueError:
        return _LEASE_DEFAULT


def _dead_here(doc: Any) -> bool:
    """Whether a lease's holder ran on this host and its process is gone (a killed run on
    this machine: its lease need not be waited out)."""
    owner = str(doc.get("owner", "")).split() if isinstance(doc, dict) else []
    return len(owner) >= 2 and owner[0] == _host() and owner[1].isdigit() and not _running(int(owner[1]))


@contextlib.contextmanager
def _lease(path: ObjectPath, *, on_wait: Callable[[str], None] | None = None,
           poll: float = 0.5) -> Iterator[None]:
    """Hold the lease object ``path`` for the block (:func:`exclusive` on object storage).

    Taken with a conditional create (``If-None-Match: *``): of two runs only one succeeds.
    The holder renews it every third of its lifetime (``If-Match`` on its own ETag) from a
    thread; a lease whose expiry has passed (its holder was killed) is taken over with
    ``If-Match`` on that lease's ETag, so of two runs taking it over only one succeeds; so
    is, at once, a lease whose holder ran on this host and is no longer running. Expiry is judged by the waiter's clock against the holder's: hosts' clocks must agree
    to well within the lifetime."""
    import obstore
    from obstore.exceptions import AlreadyExistsError, PreconditionError

    store, key, ttl = path.store, path.key, lease_seconds()
    owner = f"{_host()} {os.getpid()} {uuid.uuid4().hex[:8]}"

    def body() -> bytes:
        return json.dumps({"owner": owner, "expires": time.time() + ttl, "seconds": ttl}).encode()

    waited = False
    while True:
        try:
            etag = obstore.put(store, key, body(), mode="create")["e_tag"]
            break
        except AlreadyExistsError:
            pass
        try:
            held = obstore.get(store, key)
            meta, raw = held.meta, bytes(held.bytes())
        except FileNotFoundError:
            continue  # released meanwhile: try again
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = {}
        expires = doc.get("expires") if isinstance(doc, dict) else None
        if not isinstance(expires, (int, float)) or expires < time.time() or _dead_here(doc):
            try:
                etag = obstore.put(store, key, body(), mode={"e_tag": meta["e_tag"]})["e_tag"]
                log.warning("took over the lease %s: its holder (%s) let it expire", path,
                            doc.get("owner", "unknown") if isinstance(doc, dict) else "unknown")
                break
            except (PreconditionError, FileNotFoundError):
                continue  # someone else took it over (or released it) first
        if not waited and on_wait is not None:
            on_wait(str(doc.get("owner") or "another process") if isinstance(doc, dict) else "another process")
        waited = True
        time.sleep(poll)

    stop = threading.Event()
    current = [etag]

    def renew() -> None:
        while not stop.wait(ttl / 3):
            try:
                current[0] = obstore.put(store, key, body(), mode={"e_tag": current[0]})["e_tag"]
            except Exception as exc:  # lost it (taken over after a stall) or the store is unreachable
                log.warning("could not renew the lease %s (%s)", path, _short(exc))
                return

    beat = threading.Thread(target=renew, name=f"dipfill-lease-{path.name}", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        with contextlib.suppress(Exception):
            if obstore.head(store, key)["e_tag"] == current[0]:  # still ours: release it
                obstore.delete(store, key)
