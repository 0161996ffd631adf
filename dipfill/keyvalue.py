"""``KEY=VALUE`` option text → typed Python values, for every command that takes such pairs.

``dipfill fill --dip steps=300`` and ``dipfill eval --method dip:mcpn-core:steps=300,lr=0.005``
both set :class:`~dipfill.engines.dip.DIPConfig` fields from text; one parser here means a
value is read the same way whichever command it is given to. A value is JSON where it
parses (numbers, ``true``/``false``, ``null``, lists, which become tuples to match the
config's tuple fields) and otherwise the bare string (``upsample=bilinear``).

This module sits on the bottom floor: it imports nothing from dipfill but the errors, so
the CLI, the evaluation and the library can all use it without import cycles.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from dipfill.errors import InputError

__all__ = ["parse_value", "parse_pairs", "split_top_level"]


def parse_value(raw: str) -> Any:
    """JSON where ``raw`` parses (``300``, ``0.005``, ``true``, ``[4,4]`` → ``(4, 4)``), else ``raw`` itself.

    Lists become tuples at every depth. Surrounding whitespace is ignored.
    """
    raw = raw.strip()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return raw

    def tup(v: Any) -> Any:
        return tuple(tup(x) for x in v) if isinstance(v, list) else v

    return tup(value)


def parse_pairs(items: Iterable[str], *, flag: str = "option") -> dict[str, Any]:
    """``["steps=300", "upsample=bilinear"]`` → ``{"steps": 300, "upsample": "bilinear"}``.

    Values go through :func:`parse_value`; keys are stripped; a later key wins. An item
    without ``=`` or with an empty key raises :class:`~dipfill.errors.InputError` naming
    ``flag`` (``"--dip takes KEY=VALUE, got 'steps'"``).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_value(raw)
    return out


def split_top_level(text: str) -> list[str]:
    """Split on the commas that are not inside brackets or braces: ``a=1,b=[1,2]`` → ``['a=1', 'b=[1,2]']``.

    Parts are stripped and empty parts dropped.
    """
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (p.strip() for p in parts) if p]
