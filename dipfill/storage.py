"""Files written so that no reader ever sees half of one: temporary name, then one rename.

The one place that knows how outputs reach their storage. Every writer of dipfill (COGs,
the Zarr mosaic, items, catalogs, run records, reports) goes through :func:`staged`, so a
crashed or killed run leaves either the old file or the new one, never a torn one; object
storage (a later store abstraction) replaces this module, not its callers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

__all__ = ["staged", "write_json", "remove", "JsonFileCache", "default_strategy_cache_path"]


def remove(path: Path) -> None:
    """Delete a file or a directory tree, whichever ``path`` is (no error if it is gone)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def staged(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it onto ``final`` in one rename.

    Directories (Zarr stores) cannot be atomically replaced when the target exists, so
    an existing target is first renamed aside and deleted after the new one is in place.
    """
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if tmp.is_dir() and final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
            os.replace(tmp, final)
            remove(old)
        else:
            os.replace(tmp, final)
    finally:
        remove(tmp)


def write_json(path: str | os.PathLike[str], doc: Any, *, indent: int = 2) -> None:
    """Write ``doc`` as JSON (with a final newline) under ``path`` atomically."""
    with staged(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=indent) + "\n")


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
