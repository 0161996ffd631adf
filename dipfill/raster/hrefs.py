"""Asset hrefs: how rasterio opens them, how they are signed, how they appear in messages.

Item asset hrefs come from outside and may carry secrets (SAS tokens, signatures, a
``user:password@`` in the URL): this is the one place that resolves them against the item,
signs them through a named hook, and redacts them before they reach a log, an error or the
run record.
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


# The userinfo of a URL anywhere in a text: ``scheme://user:password@`` (or a token alone
# before the "@"), up to the last "@" before the host's end, so an unescaped "@" in a
# password is not left half-shown. Neither pattern crosses a backslash: text redacted as
# JSON (run records, log lines) keeps its escapes, so it still parses.
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s?#\"'<>\\]*@")


def redact_href(href: str) -> str:
    """An href for messages, logs and records: the query string (SAS tokens, signatures) and
    the userinfo (``user:password@``) removed, also from a URL inside it (``/vsicurl/...``)."""
    parts = urlparse(href)
    if "@" in parts.netloc or parts.query:
        netloc = parts.netloc.rpartition("@")[2]
        href = urlunparse(parts._replace(netloc=netloc, query="", fragment="") if parts.query
                          else parts._replace(netloc=netloc))
    return _USERINFO.sub(r"\1", href)


_SECRET = re.compile(r"([?&](?:sig|se|sp|sv|sr|st|skoid|sktid|skt|ske|sks|skv|token|X-Amz-[A-Za-z-]+)=)[^&\s\"'\\]+",
                     re.IGNORECASE)


def redact_text(text: str) -> str:
    """Messages go to logs, stdout and the run record: signed-URL secrets (SAS, AWS
    signatures, tokens) and URL passwords (``https://user:password@host``) in them are
    replaced by ``REDACTED``."""
    return _USERINFO.sub(r"\1REDACTED@", _SECRET.sub(r"\1REDACTED", text))


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
