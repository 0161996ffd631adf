"""Where the DIP engine keeps its strategy measurements: a protocol and an in-memory default.

Why a protocol: choosing ``loop`` vs ``packed`` (and fp32 vs bf16) is measured on the device
(:mod:`dipfill.engines.strategy`), and a measurement worth keeping across runs has to live
in a file. Engines open no files, so the caller hands the engine an object with ``get`` and
``put``; the file-backed one is :class:`dipfill.storage.JsonFileCache`. Without one, an
engine keeps its measurements in a :class:`MemoryStrategyCache` for its own lifetime.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol, runtime_checkable

__all__ = ["StrategyCache", "MemoryStrategyCache"]


@runtime_checkable
class StrategyCache(Protocol):
    """Measured plans by key (device, network, patch shape, batch size: strategy._cache_key).

    Values are JSON-able dicts. ``get`` answers ``None`` for a key it does not hold (or
    cannot read). ``put`` may raise ``OSError``: the engine logs it and carries on, because
    a cache that cannot be written must not stop a fill.
    """

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...


class MemoryStrategyCache:
    """A :class:`StrategyCache` in a dict: measurements last as long as this object.

    Values are copied in and out, as a file would, so a caller that changes what it put or
    got cannot change what the cache holds.
    """

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        value = self._entries.get(key)
        return None if value is None else copy.deepcopy(value)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._entries[key] = copy.deepcopy(value)

    def __repr__(self) -> str:
        return f"MemoryStrategyCache({len(self._entries)} entries)"
