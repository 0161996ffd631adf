"""Find scenes: one query, two kinds of source, the same answer.

* **STAC API** (``https://…`` whose landing page conforms to item search): pystac-client
  ``Client.open`` over one :class:`~pystac_client.stac_api_io.StacApiIO` transport with
  retries (HTTP 429/502/503/504, connection errors and read timeouts, exponential
  backoff) and a request timeout; results page through ``items_as_dicts()``. The cloud
  limit goes to the server as a CQL2 ``filter`` when the API conforms to the filter
  extension, else through the ``query`` extension, else it is applied here.
* **Static catalog** (``catalog.json`` on disk, ``file://`` or over http): there is no
  search endpoint, so the catalog is walked with pystac and every item is tested here
  with the same semantics as a STAC API (pgstac): bbox intersects the item *geometry*,
  the datetime interval intersects the item's ``datetime`` or
  ``start_datetime``/``end_datetime`` (bounds inclusive), ``eo:cloud_cover <= P`` (items
  without it do not match), collection id, and CQL2-JSON filters evaluated with SQL's
  three-valued logic (a comparison with a missing property is unknown, never true).

A query is normalised once (:class:`SearchQuery`); every failure becomes a
:class:`~dipfill.errors.StacError` that names the URL and keeps the HTTP status.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import urlparse

from dipfill.errors import InputError, StacError

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_RETRIES",
    "DEFAULT_BACKOFF",
    "RETRY_STATUS",
    "SearchQuery",
    "SceneRecord",
    "ApiSource",
    "StaticSource",
    "retry_policy",
    "make_stac_io",
    "open_source",
    "search",
    "item_matches",
    "cql2_matches",
    "geometry_intersects",
    "parse_interval",
    "CQL2_OPERATORS",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0  # seconds per request (connect and read)
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = 0.5  # sleeps 0.5, 1, 2, 4 s between tries
RETRY_STATUS = (429, 502, 503, 504)
DEFAULT_PAGE_SIZE = 100
CLOUD_PROPERTY = "eo:cloud_cover"

_FILTER_URIS = (
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
)
_QUERY_URI = re.compile(r"https://api\.stacspec\.org/v1\.0\..*/item-search#query")


# ------------------------------------------------------------------------ time intervals
_UTC = dt.timezone.utc
_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_FRACTION = re.compile(r"\.(\d+)")

Interval = tuple["dt.datetime | None", "dt.datetime | None"]


def _parse_instant(text: str) -> dt.datetime:
    """RFC 3339 timestamp (``Z`` or offset; naive = UTC) → aware UTC datetime."""
    s = text.strip()
    if s.endswith(("z", "Z")):
        s = s[:-1] + "+00:00"
    # any number of fractional digits (Python < 3.11 takes only 3 or 6)
    s = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], s)
    try:
        value = dt.datetime.fromisoformat(s)
    except ValueError:
        raise InputError(f"not an RFC 3339 date or timestamp: {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)
    return value.astimezone(_UTC)


def _expand(text: str) -> tuple[dt.datetime, dt.datetime]:
    """A date string → the period it names: ``2020`` → the year, ``2020-02`` → the
    month, ``2020-02-19`` → the day (ending at 23:59:59, as pystac-client expands it);
    a full timestamp → that instant."""
    m = _PARTIAL.match(text.strip())
    if not m:
        t = _parse_instant(text)
        return t, t
    year, month, day = int(m.group(1)), m.group(2), m.group(3)
    try:
        if day:
            start = dt.datetime(year, int(month), int(day), tzinfo=_UTC)
            end = start + dt.timedelta(days=1)
        elif month:
            start = dt.datetime(year, int(month), 1, tzinfo=_UTC)
            end = dt.datetime(year + int(month) // 12, int(month) % 12 + 1, 1, tzinfo=_UTC)
        else:
            start = dt.datetime(year, 1, 1, tzinfo=_UTC)
            end = dt.datetime(year + 1, 1, 1, tzinfo=_UTC)
    except ValueError:
        raise InputError(f"not a valid date: {text!r}") from None
    return start, end - dt.timedelta(seconds=1)


def parse_interval(value: Any) -> Interval:
    """Datetime range "like" input → ``(start, end)`` (aware UTC; ``None`` = open).

    Accepts ``"2020"``, ``"2020-02"``, ``"2020-02-19"``, a timestamp, ``"A/B"`` with
    ``..`` or an empty side for an open end, a ``datetime``, or a pair of those.
    """
    if isinstance(value, dt.datetime):
        t = value if value.tzinfo else value.replace(tzinfo=_UTC)
        return t.astimezone(_UTC), t.astimezone(_UTC)
    if isinstance(value, str):
        parts = value.split("/")
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        raise InputError(f"datetime must be a string like 2020-01-01/2020-06-30, got {value!r}")
    if len(parts) == 1:
        if not isinstance(parts[0], (str, dt.datetime)) or parts[0] in ("", ".."):
            raise InputError(f"datetime needs at least one bound, got {value!r}")
        return parse_interval(parts[0]) if isinstance(parts[0], dt.datetime) else _expand(parts[0])
    if len(parts) != 2:
        raise InputError(f"datetime has more than two parts: {value!r}")

    def bound(p: Any, which: int) -> dt.datetime | None:
        if p is None or (isinstance(p, str) and p.strip() in ("", "..")):
            return None
        if isinstance(p, dt.datetime):
            return parse_interval(p)[0]
        return _expand(str(p))[which]

    start, end = bound(parts[0], 0), bound(parts[1], 1)
    if start is None and end is None:
        raise InputError(f"datetime range is open at both ends: {value!r}")
    if start is not None and end is not None and start > end:
        raise InputError(f"datetime range ends before it starts: {value!r}")
    return start, end


def _rfc3339(t: dt.datetime | None) -> str:
    if t is None:
        return ".."
    text = t.astimezone(_UTC).isoformat().replace("+00:00", "Z")
    return text


# ------------------------------------------------------------------------------- query
def _as_collections(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    out = tuple(str(c).strip() for c in value if str(c).strip())
    return tuple(dict.fromkeys(out))


def _as_bbox(value: Any) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    try:
        w, s, e, n = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"bbox must be four numbers W S E N (lon/lat), got {value!r}") from None
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= 90 and -90 <= n <= 90):
        raise InputError(f"bbox {w} {s} {e} {n} is not lon/lat degrees (W S E N)")
    if s > n:
        raise InputError(f"bbox south {s} is north of north {n}; give W S E N")
    if w > e:
        raise InputError(
            f"bbox west {w} is east of east {e}; boxes across the antimeridian are not supported: "
            "search each side separately"
        )
    return (w, s, e, n)


def _as_filter(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InputError(f"filter is not valid CQL2-JSON: {exc}") from None
    if not isinstance(value, Mapping) or "op" not in value:
        raise InputError(f'filter must be a CQL2-JSON expression like {{"op": "<=", "args": [...]}}, got {value!r}')
    return dict(value)


@dataclass(frozen=True)
class SearchQuery:
    """One scene search, normalised at construction ("like" inputs in, canonical out).

    ``collections``: ids (a comma-separated string or a sequence); ``bbox``: W S E N in
    lon/lat; ``datetime``: a range (see :func:`parse_interval`); ``max_cloud``:
    ``eo:cloud_cover`` upper bound in percent; ``filter``: CQL2-JSON (dict or text);
    ``limit``: most items returned.
    """

    collections: tuple[str, ...] = ()
    bbox: tuple[float, float, float, float] | None = None
    datetime: Interval | None = None
    max_cloud: float | None = None
    filter: dict[str, Any] | None = field(default=None, hash=False)
    limit: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "collections", _as_collections(self.collections))
        set_(self, "bbox", _as_bbox(self.bbox))
        if self.datetime is not None:
            set_(self, "datetime", parse_interval(self.datetime))
        if self.max_cloud is not None:
            try:
                cloud = float(self.max_cloud)
            except (TypeError, ValueError):
                raise InputError(f"max cloud cover must be a number of percent, got {self.max_cloud!r}") from None
            if not 0 <= cloud <= 100:
                raise InputError(f"max cloud cover must be within 0..100 %, got {cloud}")
            set_(self, "max_cloud", cloud)
        set_(self, "filter", _as_filter(self.filter))
        if self.limit is not None:
            if int(self.limit) != self.limit or self.limit < 1:
                raise InputError(f"limit must be a positive integer, got {self.limit!r}")
            set_(self, "limit", int(self.limit))

    def datetime_param(self) -> str | None:
        """The range as a STAC API ``datetime`` parameter (``start/end``, ``..`` open)."""
        if self.datetime is None:
            return None
        start, end = self.datetime
        if start is not None and start == end:
            return _rfc3339(start)
        return f"{_rfc3339(start)}/{_rfc3339(end)}"

    def cloud_filter(self) -> dict[str, Any] | None:
        if self.max_cloud is None:
            return None
        return {"op": "<=", "args": [{"property": CLOUD_PROPERTY}, self.max_cloud]}

    def combined_filter(self) -> dict[str, Any] | None:
        """The user's CQL2 filter AND the cloud limit, or whichever is given."""
        parts = [f for f in (self.filter, self.cloud_filter()) if f is not None]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else {"op": "and", "args": parts}

    def to_dict(self) -> dict[str, Any]:
        return {
            "collections": list(self.collections),
            "bbox": list(self.bbox) if self.bbox else None,
            "datetime": self.datetime_param(),
            "max_cloud": self.max_cloud,
            "filter": self.filter,
            "limit": self.limit,
        }


@dataclass(frozen=True)
class SceneRecord:
    """What a search result says about one scene (the full item is kept in ``item``)."""

    id: str
    collection: str | None
    datetime: str | None
    cloud_cover: float | None
    bbox: tuple[float, ...] | None
    href: str | None
    item: dict[str, Any] = field(repr=False, compare=False, hash=False)

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> "SceneRecord":
        props = item.get("properties") or {}
        when = props.get("datetime") or props.get("start_datetime")
        cloud = props.get(CLOUD_PROPERTY)
        href = next((link.get("href") for link in item.get("links", []) if link.get("rel") == "self"), None)
        bbox = item.get("bbox")
        return cls(
            id=str(item.get("id")),
            collection=item.get("collection"),
            datetime=str(when) if when is not None else None,
            cloud_cover=float(cloud) if isinstance(cloud, (int, float)) else None,
            bbox=tuple(bbox) if bbox else None,
            href=href,
            item=dict(item),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "collection": self.collection,
            "datetime": self.datetime,
            "cloud_cover": self.cloud_cover,
            "bbox": list(self.bbox) if self.bbox else None,
            "href": self.href,
        }


# --------------------------------------------------------------------------- transport
def retry_policy(retries: int = DEFAULT_RETRIES, backoff_factor: float = DEFAULT_BACKOFF):
    """urllib3 ``Retry``: HTTP 429/502/503/504, connection errors and read timeouts are
    retried ``retries`` times with exponential backoff (``backoff_factor · 2^(n-1)`` s,
    at most 30 s, honouring ``Retry-After``). POST is retried too: a STAC search is a
    read. The last response is returned rather than raised, so its status is kept."""
    from urllib3 import Retry

    return Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        allowed_methods=frozenset({"GET", "POST", "HEAD"}),
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
):
    """The one HTTP transport: a pystac-client ``StacApiIO`` with retries and a timeout."""
    from pystac_client.stac_api_io import StacApiIO

    from dipfill import __version__

    return StacApiIO(
        headers={"User-Agent": f"dipfill/{__version__}", **(headers or {})},
        max_retries=retry_policy(retries, backoff_factor),
        timeout=timeout,
    )


def _is_http(href: str) -> bool:
    return urlparse(href).scheme in ("http", "https")


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


def _retries(n: int) -> str:
    return f"{n} {'retry' if n == 1 else 'retries'}"


def _stac_error(url: str, what: str, exc: BaseException, *, retries: int, timeout: float) -> StacError:
    """One readable error from whatever the transport raised; keeps the HTTP status."""
    status = getattr(exc, "status_code", None)
    text = str(exc).strip()
    if status is not None:
        body = " ".join(text.split())[:200]
        tried = f" after {_retries(retries)}" if status in RETRY_STATUS else ""
        msg = f"{url}: {what} failed: HTTP {status}{tried}" + (f" ({body})" if body else "")
    else:
        reason = next((nice for key, nice in _REASONS if key in text), None)
        if reason == "no answer within the timeout":
            reason = f"no answer within {timeout:g} s"
        detail = reason or " ".join(text.split())[:300]
        msg = f"{url}: {what} failed after {_retries(retries)}: {detail}"
    err = StacError(msg)
    err.status_code = status  # type: ignore[attr-defined]
    return err


# ----------------------------------------------------------------------------- sources
class ApiSource:
    """A STAC API: searches run on the server."""

    kind = "api"

    def __init__(self, url: str, client: Any, *, retries: int, timeout: float) -> None:
        from pystac_client import ConformanceClasses

        self.url = url
        self.client = client
        self._retries, self._timeout = retries, timeout
        uris = client.get_conforms_to()
        self.supports_filter = client.conforms_to(ConformanceClasses.FILTER) or any(
            u.rstrip("/") in _FILTER_URIS for u in uris
        )
        self.supports_query = client.conforms_to(ConformanceClasses.QUERY) or any(
            _QUERY_URI.match(u) for u in uris
        )

    def __repr__(self) -> str:
        return f"ApiSource({self.url!r}, filter={self.supports_filter}, query={self.supports_query})"

    def search(self, query: SearchQuery, *, page_size: int = DEFAULT_PAGE_SIZE) -> Iterator[dict[str, Any]]:
        from pystac_client.exceptions import APIError

        params: dict[str, Any] = {
            "method": "POST",
            "collections": list(query.collections) or None,
            "bbox": list(query.bbox) if query.bbox else None,
            "datetime": query.datetime_param(),
            "limit": page_size,
        }
        local_cloud = False
        if self.supports_filter:
            combined = query.combined_filter()
            if combined is not None:
                params.update(filter=combined, filter_lang="cql2-json")
        else:
            if query.filter is not None:
                raise InputError(
                    f"{self.url}: the API does not conform to the STAC filter extension (CQL2), "
                    "so --filter cannot be sent; drop --filter or use another API"
                )
            if query.max_cloud is not None:
                if self.supports_query:
                    params["query"] = {CLOUD_PROPERTY: {"lte": query.max_cloud}}
                else:
                    log.warning("%s supports neither filter nor query; cloud cover is filtered here", self.url)
                    local_cloud = True
        if not local_cloud:
            params["max_items"] = query.limit
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                search = self.client.search(**params)
            n = 0
            for item in search.items_as_dicts():
                if local_cloud and not _cloud_ok(item, query.max_cloud):
                    continue
                yield item
                n += 1
                if local_cloud and query.limit and n >= query.limit:
                    return
        except APIError as exc:
            raise _stac_error(self.url, "search", exc, retries=self._retries, timeout=self._timeout) from exc


class StaticSource:
    """A static catalog: walked with pystac, every item tested here."""

    kind = "static"

    def __init__(self, href: str, catalog: Any, *, retries: int = 0, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = href
        self.catalog = catalog
        self._retries, self._timeout = retries, timeout

    def __repr__(self) -> str:
        return f"StaticSource({self.url!r})"

    def _walk(self, catalog: Any, collections: tuple[str, ...]) -> Iterator[dict[str, Any]]:
        import pystac

        collection_id = catalog.id if isinstance(catalog, pystac.Collection) else None
        if collections and collection_id is not None and collection_id not in collections:
            return  # a collection's items belong to it: prune the subtree
        for item in catalog.get_items(recursive=False):
            d = item.to_dict(include_self_link=True, transform_hrefs=True)
            if not d.get("collection") and collection_id is not None:
                d["collection"] = collection_id
            yield d
        for child in catalog.get_children():
            yield from self._walk(child, collections)

    def search(self, query: SearchQuery, **_: Any) -> Iterator[dict[str, Any]]:
        from pystac_client.exceptions import APIError

        try:
            matches = [d for d in self._walk(self.catalog, query.collections) if item_matches(d, query)]
        except APIError as exc:
            raise _stac_error(self.url, "reading the catalog", exc, retries=self._retries, timeout=self._timeout) from exc
        except (OSError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise StacError(f"{self.url}: reading the catalog failed: {exc}") from exc
        # the order a STAC API (pgstac) returns by default: newest first
        matches.sort(key=lambda d: d.get("id", ""))
        matches.sort(key=lambda d: _item_interval(d)[0] or dt.datetime.min.replace(tzinfo=_UTC), reverse=True)
        yield from matches[: query.limit] if query.limit else matches


def _catalog_io(api_io: Any):
    """A pystac StacIO that reads http(s) through the retrying transport, files directly."""
    from pystac.stac_io import DefaultStacIO

    class _CatalogIO(DefaultStacIO):
        def read_text_from_href(self, href: str) -> str:
            if _is_http(href):
                return api_io.request(href)
            return super().read_text_from_href(href)

    return _CatalogIO()


def open_source(
    source: str | os.PathLike[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff_factor: float = DEFAULT_BACKOFF,
    headers: Mapping[str, str] | None = None,
) -> ApiSource | StaticSource:
    """Open a STAC API root or a static catalog (path, directory, ``file://`` or http URL).

    An http URL is an API when its landing page (or ``/conformance``) conforms to item
    search or links a ``search`` endpoint, else a static catalog.
    """
    import pystac
    from pystac_client.exceptions import APIError

    href = os.fspath(source)
    if href.startswith("file://"):
        href = urlparse(href).path
    io = make_stac_io(timeout=timeout, retries=retries, backoff_factor=backoff_factor, headers=headers)
    if not _is_http(href):
        path = Path(href)
        if path.is_dir():
            path = next((p for p in (path / "catalog.json", path / "collection.json") if p.exists()), path / "catalog.json")
        if not path.exists():
            raise StacError(f"{path}: no such STAC catalog file")
        try:
            catalog = pystac.read_file(str(path))
        except (ValueError, KeyError, pystac.STACError, pystac.STACTypeError) as exc:
            raise StacError(f"{path}: not a STAC catalog or collection ({exc})") from exc
        if not isinstance(catalog, pystac.Catalog):
            raise StacError(f"{path}: is a STAC {type(catalog).__name__}, not a catalog or collection")
        return StaticSource(str(path), catalog)

    from pystac_client import Client, ConformanceClasses
    from pystac_client.errors import ClientTypeError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NoConformsTo on static catalogs
            client = Client.open(href, stac_io=io, timeout=timeout)  # open() resets the io timeout
        if not client.has_conforms_to():
            link = client.get_single_link("conformance")
            if link is not None:
                doc = io.read_json(link.get_absolute_href() or link.href)
                client.set_conforms_to(list(doc.get("conformsTo", [])))
        if client.get_single_link("search") is not None and not client.conforms_to(ConformanceClasses.ITEM_SEARCH):
            client.add_conforms_to("ITEM_SEARCH")
    except APIError as exc:
        raise _stac_error(href, "opening the STAC API", exc, retries=retries, timeout=timeout) from exc
    except (ValueError, KeyError, pystac.STACError, pystac.STACTypeError, ClientTypeError) as exc:
        raise StacError(f"{href}: not a STAC API or catalog ({exc})") from exc
    if client.conforms_to(ConformanceClasses.ITEM_SEARCH):
        return ApiSource(href, client, retries=retries, timeout=timeout)
    try:
        catalog = pystac.Catalog.from_file(href, stac_io=_catalog_io(io))
    except APIError as exc:
        raise _stac_error(href, "reading the catalog", exc, retries=retries, timeout=timeout) from exc
    return StaticSource(href, catalog, retries=retries, timeout=timeout)


def search(
    source: str | os.PathLike[str] | ApiSource | StaticSource,
    query: SearchQuery | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff_factor: float = DEFAULT_BACKOFF,
    page_size: int = DEFAULT_PAGE_SIZE,
    **criteria: Any,
) -> Iterator[dict[str, Any]]:
    """Items (as dicts) matching ``query`` (or a :class:`SearchQuery` built from
    ``criteria``: collections, bbox, datetime, max_cloud, filter, limit), lazily.

    ``source`` is an opened source or anything :func:`open_source` opens; ``timeout``,
    ``retries`` and ``backoff_factor`` configure the transport (tests use small ones).
    """
    if query is None:
        query = SearchQuery(**criteria)
    elif criteria:
        raise TypeError("pass either a SearchQuery or search criteria, not both")
    if not isinstance(source, (ApiSource, StaticSource)):
        source = open_source(source, timeout=timeout, retries=retries, backoff_factor=backoff_factor)
    return source.search(query, page_size=page_size)


# ------------------------------------------------------------- static-catalog semantics
def _cloud_ok(item: Mapping[str, Any], max_cloud: float | None) -> bool:
    if max_cloud is None:
        return True
    cloud = (item.get("properties") or {}).get(CLOUD_PROPERTY)
    return isinstance(cloud, (int, float)) and not isinstance(cloud, bool) and cloud <= max_cloud


def _item_interval(item: Mapping[str, Any]) -> Interval:
    props = item.get("properties") or {}
    start = props.get("start_datetime") or props.get("datetime")
    end = props.get("end_datetime") or props.get("datetime")
    try:
        return (_parse_instant(start) if start else None, _parse_instant(end) if end else None)
    except InputError:
        return (None, None)


def _intervals_intersect(a: Interval, b: Interval) -> bool | None:
    (a0, a1), (b0, b1) = a, b
    if a0 is None and a1 is None or b0 is None and b1 is None:
        return None
    lo_ok = a1 is None or b0 is None or b0 <= a1
    hi_ok = a0 is None or b1 is None or a0 <= b1
    return lo_ok and hi_ok


def _bbox_geometry(bbox: Sequence[float]) -> dict[str, Any]:
    w, s, e, n = bbox[0], bbox[1], bbox[-2], bbox[-1]  # 2-D or 3-D bbox
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def item_matches(item: Mapping[str, Any], query: SearchQuery) -> bool:
    """Does ``item`` (a dict) match ``query`` with STAC API semantics? (static catalogs)"""
    if query.collections and item.get("collection") not in query.collections:
        return False
    if query.bbox is not None:
        geom = item.get("geometry") or (_bbox_geometry(item["bbox"]) if item.get("bbox") else None)
        if geom is None or not geometry_intersects(geom, _bbox_geometry(query.bbox)):
            return False
    if query.datetime is not None and not _intervals_intersect(_item_interval(item), query.datetime):
        return False
    if not _cloud_ok(item, query.max_cloud):
        return False
    if query.filter is not None and not cql2_matches(query.filter, item):
        return False
    return True


# ----------------------------------------------------------------- CQL2-JSON evaluation
_COMPARE = {
    "=": lambda a, b: a == b,
    "<>": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
CQL2_OPERATORS = (
    "and", "or", "not", *_COMPARE, "isNull", "between", "in", "like", "s_intersects", "t_intersects",
)


@dataclass(frozen=True)
class _Temporal:
    start: dt.datetime | None
    end: dt.datetime | None


class _Geometry(dict):
    """A GeoJSON geometry operand (marks dicts that are geometries, not expressions)."""


def cql2_matches(expr: Mapping[str, Any], item: Mapping[str, Any]) -> bool:
    """Evaluate a CQL2-JSON filter against an item dict: True only when the filter is
    true (SQL three-valued logic: unknown, e.g. a missing property, does not match).

    Supported: ``and or not = <> < <= > >= isNull between in like s_intersects
    t_intersects``; property references (``id``, ``collection``, ``geometry``,
    ``datetime`` and any item property), ``timestamp``, ``date``, ``interval``, ``bbox``
    and GeoJSON geometry literals. Anything else raises :class:`InputError` naming it.
    """
    return _eval(expr, item) is True


def _eval(node: Any, item: Mapping[str, Any]) -> Any:
    if isinstance(node, Mapping):
        if "op" in node:
            return _eval_op(str(node["op"]), list(node.get("args", [])), item)
        if "property" in node:
            return _property(str(node["property"]), item)
        if "timestamp" in node:
            t = _parse_instant(str(node["timestamp"]))
            return _Temporal(t, t)
        if "date" in node:
            return _Temporal(*_expand(str(node["date"])[:10]))
        if "interval" in node:
            a, b = (list(node["interval"]) + [None, None])[:2]
            return _Temporal(_operand_time(a, item, 0), _operand_time(b, item, 1))
        if "bbox" in node:
            return _Geometry(_bbox_geometry(node["bbox"]))
        if "type" in node and ("coordinates" in node or "geometries" in node):
            return _Geometry(node)
        if "function" in node:
            raise InputError(f"CQL2 functions are not supported for static catalogs: {node['function']!r}")
        raise InputError(f"not a CQL2-JSON expression: {dict(node)!r}")
    if isinstance(node, list):
        return [_eval(v, item) for v in node]
    return node


def _operand_time(value: Any, item: Mapping[str, Any], which: int) -> dt.datetime | None:
    if value is None or value == "..":
        return None
    v = _eval(value, item) if isinstance(value, Mapping) else value
    if isinstance(v, _Temporal):
        return v.start if which == 0 else v.end
    return _expand(str(v))[which]


def _property(name: str, item: Mapping[str, Any]) -> Any:
    if name == "id":
        return item.get("id")
    if name == "collection":
        return item.get("collection")
    if name in ("geometry", "geom"):
        geom = item.get("geometry")
        return _Geometry(geom) if geom else None
    props = item.get("properties") or {}
    if name in ("datetime", "start_datetime", "end_datetime"):
        if name == "datetime" and props.get("datetime") is None:
            start, end = _item_interval(item)
            return _Temporal(start, end) if start or end else None
        raw = props.get(name)
        if raw is None:
            return None
        t = _parse_instant(str(raw))
        return _Temporal(t, t)
    return props.get(name)


def _comparable(a: Any, b: Any) -> tuple[Any, Any] | None:
    """Bring two operands to comparable Python values, or None (unknown) if they are not."""
    if isinstance(a, _Temporal) or isinstance(b, _Temporal):
        def instant(v: Any) -> dt.datetime | None:
            if isinstance(v, _Temporal):
                return v.start if v.start == v.end or v.end is None else None
            if isinstance(v, str):
                try:
                    return _parse_instant(v)
                except InputError:
                    return None
            return None

        ia, ib = instant(a), instant(b)
        return None if ia is None or ib is None else (ia, ib)
    if isinstance(a, bool) or isinstance(b, bool):
        return (a, b) if isinstance(a, bool) and isinstance(b, bool) else None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a, b
    if isinstance(a, str) and isinstance(b, str):
        return a, b
    return None


def _eval_op(op: str, args: list[Any], item: Mapping[str, Any]) -> Any:
    lop = op.lower()
    if lop in ("and", "or"):
        values = [_eval(a, item) for a in args]
        if lop == "and":
            return False if any(v is False for v in values) else (None if any(v is None for v in values) else True)
        return True if any(v is True for v in values) else (None if any(v is None for v in values) else False)
    if lop == "not":
        v = _eval(args[0], item)
        return None if v is None else not v
    if op in _COMPARE or lop in ("eq", "neq", "lt", "lte", "gt", "gte"):
        op = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}.get(lop, op)
        a, b = (_eval(x, item) for x in args[:2])
        if a is None or b is None:
            return None
        pair = _comparable(a, b)
        return None if pair is None else _COMPARE[op](*pair)
    if lop == "isnull":
        return _eval(args[0], item) is None
    if lop == "between":
        v, lo, hi = (_eval(x, item) for x in args[:3])
        if v is None or lo is None or hi is None:
            return None
        p1, p2 = _comparable(v, lo), _comparable(v, hi)
        return None if p1 is None or p2 is None else p1[1] <= p1[0] <= p2[1]
    if lop == "in":
        v, options = _eval(args[0], item), _eval(args[1], item)
        if v is None:
            return None
        return any((p := _comparable(v, o)) is not None and p[0] == p[1] for o in options)
    if lop == "like":
        v, pattern = _eval(args[0], item), _eval(args[1], item)
        if not isinstance(v, str) or not isinstance(pattern, str):
            return None
        rx = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
        return re.fullmatch(rx, v, flags=re.S) is not None
    if lop in ("s_intersects", "intersects"):
        a, b = (_eval(x, item) for x in args[:2])
        if a is None or b is None:
            return None
        return geometry_intersects(a, b)
    if lop in ("t_intersects", "anyinteracts"):
        a, b = (_eval(x, item) for x in args[:2])
        if a is None or b is None:
            return None
        ta, tb = (v if isinstance(v, _Temporal) else _Temporal(*_expand(str(v))) for v in (a, b))
        return _intervals_intersect((ta.start, ta.end), (tb.start, tb.end))
    raise InputError(
        f"CQL2 operator {op!r} is not supported for static catalogs; supported: {', '.join(CQL2_OPERATORS)}"
    )


# -------------------------------------------------------------- planar geometry tests
# Plain lon/lat planar tests, as PostGIS ST_Intersects does on geometry: boundaries
# touching count as intersecting. No antimeridian handling.
Point = tuple[float, float]


def _parts(geom: Mapping[str, Any]) -> list[tuple[str, Any]]:
    kind, coords = geom.get("type"), geom.get("coordinates")
    pt = lambda c: (float(c[0]), float(c[1]))  # noqa: E731
    if kind == "Point":
        return [("point", pt(coords))]
    if kind == "MultiPoint":
        return [("point", pt(c)) for c in coords]
    if kind == "LineString":
        return [("line", [pt(c) for c in coords])]
    if kind == "MultiLineString":
        return [("line", [pt(c) for c in line]) for line in coords]
    if kind == "Polygon":
        return [("poly", [[pt(c) for c in ring] for ring in coords])]
    if kind == "MultiPolygon":
        return [("poly", [[pt(c) for c in ring] for ring in poly]) for poly in coords]
    if kind == "GeometryCollection":
        return [p for g in geom.get("geometries", []) for p in _parts(g)]
    raise InputError(f"unsupported geometry type {kind!r}")


def _orient(a: Point, b: Point, c: Point) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def _on_segment(p: Point, a: Point, b: Point) -> bool:
    return (
        _orient(a, b, p) == 0
        and min(a[0], b[0]) <= p[0] <= max(a[0], b[0])
        and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])
    )


def _segments_intersect(p1: Point, p2: Point, q1: Point, q2: Point) -> bool:
    d1, d2 = _orient(q1, q2, p1), _orient(q1, q2, p2)
    d3, d4 = _orient(p1, p2, q1), _orient(p1, p2, q2)
    if ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4)):
        return True
    return (
        _on_segment(p1, q1, q2) or _on_segment(p2, q1, q2) or _on_segment(q1, p1, p2) or _on_segment(q2, p1, p2)
    )


def _edges(points: list[Point]) -> Iterator[tuple[Point, Point]]:
    return zip(points[:-1], points[1:])


def _in_ring(p: Point, ring: list[Point]) -> bool:
    """Point strictly inside or on the boundary of a closed ring (even-odd rule)."""
    inside = False
    x, y = p
    for a, b in _edges(ring):
        if _on_segment(p, a, b):
            return True
        if (a[1] > y) != (b[1] > y):
            xc = a[0] + (y - a[1]) * (b[0] - a[0]) / (b[1] - a[1])
            if x < xc:
                inside = not inside
    return inside


def _in_polygon(p: Point, rings: list[list[Point]]) -> bool:
    if not rings or not _in_ring(p, rings[0]):
        return False
    for hole in rings[1:]:
        if _in_ring(p, hole) and not any(_on_segment(p, a, b) for a, b in _edges(hole)):
            return False
    return True


def _part_edges(part: tuple[str, Any]) -> list[tuple[Point, Point]]:
    kind, data = part
    if kind == "line":
        return list(_edges(data))
    if kind == "poly":
        return [e for ring in data for e in _edges(ring)]
    return []


def _part_vertices(part: tuple[str, Any]) -> list[Point]:
    kind, data = part
    if kind == "point":
        return [data]
    if kind == "line":
        return list(data)
    return list(data[0]) if data else []


def _parts_intersect(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    ka, kb = a[0], b[0]
    if ka == "point" and kb == "point":
        return a[1] == b[1]
    for pa, pb in ((a, b), (b, a)):
        if pb[0] == "poly" and any(_in_polygon(v, pb[1]) for v in _part_vertices(pa)):
            return True
        if pa[0] == "point" and pb[0] == "line":
            return any(_on_segment(pa[1], s, e) for s, e in _edges(pb[1]))
    ea, eb = _part_edges(a), _part_edges(b)
    return any(_segments_intersect(p1, p2, q1, q2) for p1, p2 in ea for q1, q2 in eb)


def geometry_intersects(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Do two GeoJSON geometries (lon/lat, planar) intersect? Touching counts."""
    return any(_parts_intersect(pa, pb) for pa in _parts(a) for pb in _parts(b))
