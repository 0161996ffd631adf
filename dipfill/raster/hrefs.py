"""Asset hrefs: how rasterio opens them, how they are signed, how they appear in messages.

Item asset hrefs come from outside and may carry secrets (SAS tokens, signatures): this is
the one place that resolves them against the item, signs them through a named hook, and
redacts them before they reach a log, an error or the run record.
"""

from __future__ import annotations

import os
import re
from typing import Callable
from urllib.parse import urljoin, urlparse, urlunparse

from dipfill.errors import InputError

__all__ = ["resolve_href", "redact_href", "redact_text", "signer"]


def resolve_href(href: str, base: str | None) -> str:
    """An asset href as rasterio opens it: relative hrefs joined to the item's own href
    (a URL or a path), ``file://`` turned into a path; http(s) and s3 URLs unchanged
    (rasterio maps them onto /vsicurl/ and /vsis3/)."""
    scheme = urlparse(href).scheme
    if scheme == "file":
        return urlparse(href).path
    if scheme and len(scheme) > 1:  # a URL (a one-letter scheme is a Windows drive)
        return href
    if os.path.isabs(href) or href.startswith("/vsi") or base is None:
        return href
    if urlparse(base).scheme in ("http", "https", "s3", "gs", "az"):
        return urljoin(base, href)
    if urlparse(base).scheme == "file":
        base = urlparse(base).path
    return os.path.normpath(os.path.join(os.path.dirname(base), href))


def redact_href(href: str) -> str:
    """An href for messages and logs: the query string (SAS tokens, signatures) removed."""
    parts = urlparse(href)
    return urlunparse(parts._replace(query="", fragment="")) if parts.query else href


_SECRET = re.compile(r"([?&](?:sig|se|sp|sv|sr|st|skoid|sktid|skt|ske|sks|skv|token|X-Amz-[A-Za-z-]+)=)[^&\s\"']+",
                     re.IGNORECASE)


def redact_text(text: str) -> str:
    """Messages go to logs and the run record: signed-URL secrets (SAS, AWS signatures,
    tokens) in them are replaced by ``REDACTED``."""
    return _SECRET.sub(r"\1REDACTED", text)


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
