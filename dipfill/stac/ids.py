"""Ids from outside as file names and URL segments, one output per id.

:func:`~dipfill.stac.item.sanitize_id` makes an id safe to use as a path (``../../evil`` →
``evil``), but two ids can clean to one (``evil`` is already clean): their outputs would
overwrite each other, and an id chosen to collide could replace another scene's item.
:func:`unique_id` keeps a clean id as it is and gives one that cleaning changed a short
hash of the original, so distinct ids give distinct names, the same id the same name on
every run (reruns find their outputs).
"""

from __future__ import annotations

import hashlib

from dipfill.stac.item import sanitize_id

__all__ = ["unique_id"]

#: Hex digits of sha256(original id) appended to an id that sanitising changed.
HASH_DIGITS = 8
#: The longest id sanitize_id returns; a hashed id stays within it.
MAX_ID = 200


def unique_id(raw: str) -> str:
    """``raw`` itself when it is already a safe id; else the sanitised id, ``-`` and the
    first :data:`HASH_DIGITS` hex digits of sha256(``raw``) (``../../evil`` →
    ``evil-<hash>``, ``evil`` → ``evil``). Raises what :func:`sanitize_id` raises for an id
    with nothing usable in it."""
    cleaned = sanitize_id(raw)
    if cleaned == raw:
        return raw
    digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_DIGITS]
    return f"{cleaned[: MAX_ID - HASH_DIGITS - 1].rstrip('._-')}-{digest}"
