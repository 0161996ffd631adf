"""The one HTTP transport of dipfill.stac: retries, a timeout, and one error that keeps the status.

Searching (:mod:`dipfill.stac.search`) and publishing (:mod:`dipfill.stac.publish`) talk to
the same kind of servers and fail in the same ways (a busy gateway, a dropped connection,
a slow answer), so both go through :func:`make_stac_io`: a pystac-client ``StacApiIO``
whose ``requests.Session`` has urllib3 :func:`retry_policy` mounted. Whatever the transport
raises in the end becomes one :class:`~dipfill.errors.StacError` (:func:`stac_error`) that
names the URL, keeps the HTTP status and says what to do where there is something to do.
"""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import urlparse

from dipfill.errors import StacError

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_RETRIES",
    "DEFAULT_BACKOFF",
    "RETRY_STATUS",
    "retry_policy",
    "make_stac_io",
    "stac_error",
    "is_http",
]

DEFAULT_TIMEOUT = 30.0  # seconds per request (connect and read)
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = 0.5  # sleeps 0.5, 1, 2, 4 s between tries
RETRY_STATUS = (429, 502, 503, 504)

# What the exception text says → what the user reads.
_REASONS = (
    ("timed out", "no answer within the timeout"),
    ("Connection refused", "connection refused"),
    ("Name or service not known", "host name not found"),
    ("nodename nor servname", "host name not found"),
    ("Temporary failure in name resolution", "host name not found"),
    ("RemoteDisconnected", "the server closed the connection without answering"),
    ("Connection reset", "connection reset"),
    ("SSLError", "TLS error"),
)


def retry_policy(retries: int = DEFAULT_RETRIES, backoff_factor: float = DEFAULT_BACKOFF) -> Any:
    """urllib3 ``Retry``: HTTP 429/502/503/504, connection errors and read timeouts are
    retried ``retries`` times with exponential backoff (``backoff_factor · 2^(n-1)`` s,
    at most 30 s, honouring ``Retry-After``). POST and PUT are retried too: a STAC search
    is a read, and a Transactions upsert may be repeated (a POST that did land answers
    409 the second time, and is then PUT). The last response is returned rather than
    raised, so its status is kept."""
    from urllib3 import Retry

    return Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        allowed_methods=frozenset({"GET", "HEAD", "POST", "PUT"}),
        status_forcelist=RETRY_STATUS,
        backoff_factor=backoff_factor,
        backoff_max=30.0,
        raise_on_status=False,
        respect_retry_after_header=True,
    )


def make_stac_io(
    *,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff_factor: float = DEFAULT_BACKOFF,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """The one HTTP transport: a pystac-client ``StacApiIO`` with retries and a timeout.

    Its ``.session`` (a ``requests.Session`` with the retries mounted) is what
    :func:`~dipfill.stac.publish.publish_to_api` sends with; pass ``timeout`` per request there.
    """
    from pystac_client.stac_api_io import StacApiIO

    from dipfill import __version__

    return StacApiIO(
        headers={"User-Agent": f"dipfill/{__version__}", **(headers or {})},
        max_retries=retry_policy(retries, backoff_factor),
        timeout=timeout,
    )


def is_http(href: str) -> bool:
    return urlparse(href).scheme in ("http", "https")


def _retries(n: int) -> str:
    return f"{n} {'retry' if n == 1 else 'retries'}"


def _one_line(text: str, width: int) -> str:
    return " ".join(text.split())[:width]


def stac_error(
    url: str,
    what: str,
    *,
    status: int | None,
    text: str,
    retries: int,
    timeout: float,
    fix: str | None = None,
) -> StacError:
    """One readable, one-line error for a request that failed: ``status`` is the HTTP
    status of the last answer (None when there was none: ``text`` is then the
    transport's exception, turned into a reason), ``fix`` what the user can do."""
    if status is not None:
        body = _one_line(text, 200)
        tried = f" after {_retries(retries)}" if status in RETRY_STATUS else ""
        msg = f"{url}: {what} failed: HTTP {status}{tried}" + (f" ({body})" if body else "")
    else:
        reason = next((nice for key, nice in _REASONS if key in text), None)
        if reason == "no answer within the timeout":
            reason = f"no answer within {timeout:g} s"
        msg = f"{url}: {what} failed after {_retries(retries)}: {reason or _one_line(text, 300)}"
    return StacError(msg + (f"; {fix}" if fix else ""), status=status)
