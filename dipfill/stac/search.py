"""Find scenes: one query, two kinds of source, the same answer.

* **STAC API** (``https://…`` whose landing page conforms to item search): pystac-client
  ``Client.open`` over the one retrying transport of :mod:`dipfill.stac.transport`;
  results page through ``items_as_dicts()``. The cloud limit and ``updated_since`` go to
  the server as a CQL2 ``filter`` when the API conforms to the filter extension; else the
  cloud limit goes through the ``query`` extension (or is applied here) and
  ``updated_since`` is applied here.
* **Static catalog** (``catalog.json`` on disk, ``file://`` or over http): there is no
  search endpoint, so the catalog's items are read with pystac and every one is tested
  here by :func:`~dipfill.stac.query.item_matches`, with the semantics of a STAC API
  (pgstac), and returned in the order pgstac returns them (newest first).

A query is normalised once (:class:`~dipfill.stac.query.SearchQuery`); every failure
becomes a :class:`~dipfill.errors.StacError` that names the URL and keeps the HTTP status.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import urlparse

from dipfill.errors import InputError, StacError
from dipfill.stac.query import (
    CLOUD_PROPERTY,
    CQL2_OPERATORS,
    SceneRecord,
    SearchQuery,
    cloud_ok,
    item_interval,
    item_matches,
    parse_interval,
    updated_ok,
)
from dipfill.stac.transport import (
    DEFAULT_BACKOFF,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    RETRY_STATUS,
    is_http,
    make_stac_io,
    retry_policy,
    stac_error,
)

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
    "parse_interval",
    "CQL2_OPERATORS",
]

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100

_FILTER_URIS = (
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
)
_QUERY_URI = re.compile(r"https://api\.stacspec\.org/v1\.0\..*/item-search#query")


def _failed(url: str, what: str, exc: BaseException, *, retries: int, timeout: float) -> StacError:
    return stac_error(url, what, status=getattr(exc, "status_code", None), text=str(exc).strip(),
                      retries=retries, timeout=timeout)


class ApiSource:
    """A STAC API: searches run on the server."""

    kind = "api"

    def __init__(self, url: str, client: Any, *, retries: int, timeout: float) -> None:
        from pystac_client import ConformanceClasses

        self.url = url
        self.client = client
        self._retries, self._timeout = retries, timeout
        self._known: set[str] = set()
        uris = client.get_conforms_to()
        self.supports_filter = client.conforms_to(ConformanceClasses.FILTER) or any(
            u.rstrip("/") in _FILTER_URIS for u in uris
        )
        self.supports_query = client.conforms_to(ConformanceClasses.QUERY) or any(
            _QUERY_URI.match(u) for u in uris
        )

    def __repr__(self) -> str:
        return f"ApiSource({self.url!r}, filter={self.supports_filter}, query={self.supports_query})"

    def _params(self, query: SearchQuery, page_size: int) -> tuple[dict[str, Any], list[Callable[[dict], bool]]]:
        """The search parameters for this API, and the tests it leaves to be done here."""
        params: dict[str, Any] = {
            "method": "POST",
            "collections": list(query.collections) or None,
            "bbox": list(query.bbox) if query.bbox else None,
            "datetime": query.datetime_param(),
            "limit": page_size,
        }
        here: list[Callable[[dict], bool]] = []
        if self.supports_filter:
            combined = query.combined_filter()
            if combined is not None:
                params.update(filter=combined, filter_lang="cql2-json")
            return params, here
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
                here.append(lambda item: cloud_ok(item, query.max_cloud))
        if query.updated_since is not None:
            here.append(lambda item: updated_ok(item, query.updated_since))
        return params, here

    def check_collections(self, ids: tuple[str, ...]) -> None:
        """Refuse collection ids the API does not have (``GET /collections/{id}`` is 404),
        so a misspelt ``--collection`` is one clear error, not an empty run. Each id is
        asked once per source; an API without the collections conformance is not judged
        (the search itself says what it finds)."""
        from pystac_client import ConformanceClasses
        from pystac_client.exceptions import APIError

        if not self.client.conforms_to(ConformanceClasses.COLLECTIONS):
            return
        for cid in ids:
            if cid in self._known:
                continue
            try:
                found = self.client.get_collection(cid)  # None on 404
            except APIError as exc:
                raise _failed(self.url, f"reading collection {cid!r}", exc, retries=self._retries,
                              timeout=self._timeout) from exc
            if found is None:
                raise InputError(f"{self.url}: no collection {cid!r}; list them with "
                                 f"GET {self.url.rstrip('/')}/collections")
            self._known.add(cid)

    def search(self, query: SearchQuery, *, page_size: int = DEFAULT_PAGE_SIZE) -> Iterator[dict[str, Any]]:
        from pystac_client.exceptions import APIError

        self.check_collections(query.collections)
        params, here = self._params(query, page_size)
        if not here:
            params["max_items"] = query.limit
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found = self.client.search(**params)
            n = 0
            for item in found.items_as_dicts():
                if all(test(item) for test in here):
                    yield item
                    n += 1
                    if query.limit and n >= query.limit:
                        return
        except APIError as exc:
            raise _failed(self.url, "search", exc, retries=self._retries, timeout=self._timeout) from exc


class StaticSource:
    """A static catalog: its items read with pystac, every one tested here."""

    kind = "static"

    def __init__(self, href: str, catalog: Any, *, retries: int = 0, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = href
        self.catalog = catalog
        self._retries, self._timeout = retries, timeout
        self._collections: set[str] | None = None

    def __repr__(self) -> str:
        return f"StaticSource({self.url!r})"

    def items(self) -> Iterator[dict[str, Any]]:
        """Every item of the catalog as a dict (absolute hrefs, a self link), with the id
        of the collection it sits in when it does not name one."""
        import pystac

        for item in self.catalog.get_items(recursive=True):
            d = item.to_dict(include_self_link=True, transform_hrefs=True)
            if not d.get("collection") and isinstance(parent := item.get_parent(), pystac.Collection):
                d["collection"] = parent.id
            yield d

    def collection_ids(self) -> set[str]:
        """The collections of the catalog: its collection objects and the collection every
        item names (a plain catalog of items has no collection objects)."""
        if self._collections is None:
            ids = {c.id for c in self.catalog.get_all_collections()}
            self._collections = ids | {d["collection"] for d in self.items() if d.get("collection")}
        return self._collections

    def check_collections(self, ids: tuple[str, ...]) -> None:
        """Refuse collection ids the catalog does not hold: one clear error naming the
        ones it does, not an empty run."""
        unknown = [c for c in ids if c not in self.collection_ids()]
        if unknown:
            have = ", ".join(sorted(self.collection_ids())) or "none"
            raise InputError(f"{self.url}: no collection {unknown[0]!r}; this catalog has: {have}")

    def search(self, query: SearchQuery, **_: Any) -> Iterator[dict[str, Any]]:
        from pystac_client.exceptions import APIError

        try:
            self.check_collections(query.collections)
            matches = [d for d in self.items() if item_matches(d, query)]
        except APIError as exc:
            raise _failed(self.url, "reading the catalog", exc, retries=self._retries, timeout=self._timeout) from exc
        except (OSError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise StacError(f"{self.url}: reading the catalog failed: {exc}") from exc
        # the order a STAC API (pgstac) returns by default: newest first
        matches.sort(key=lambda d: d.get("id", ""))
        oldest = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
        matches.sort(key=lambda d: item_interval(d)[0] or oldest, reverse=True)
        yield from matches[: query.limit] if query.limit else matches


def _catalog_io(api_io: Any) -> Any:
    """A pystac StacIO that reads http(s) through the retrying transport, files directly."""
    from pystac.stac_io import DefaultStacIO

    class _CatalogIO(DefaultStacIO):
        def read_text_from_href(self, href: str) -> str:
            if is_http(href):
                return api_io.request(href)
            return super().read_text_from_href(href)

    return _CatalogIO()


def _open_file(href: str) -> StaticSource:
    import pystac

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
    from pystac_client import Client, ConformanceClasses
    from pystac_client.errors import ClientTypeError
    from pystac_client.exceptions import APIError

    href = os.fspath(source)
    if href.startswith("file://"):
        href = urlparse(href).path
    if not is_http(href):
        return _open_file(href)
    io = make_stac_io(timeout=timeout, retries=retries, backoff_factor=backoff_factor, headers=headers)
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
        raise _failed(href, "opening the STAC API", exc, retries=retries, timeout=timeout) from exc
    except (ValueError, KeyError, pystac.STACError, pystac.STACTypeError, ClientTypeError) as exc:
        raise StacError(f"{href}: not a STAC API or catalog ({exc})") from exc
    if client.conforms_to(ConformanceClasses.ITEM_SEARCH):
        return ApiSource(href, client, retries=retries, timeout=timeout)
    try:
        catalog = pystac.Catalog.from_file(href, stac_io=_catalog_io(io))
    except APIError as exc:
        raise _failed(href, "reading the catalog", exc, retries=retries, timeout=timeout) from exc
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
    ``criteria``: collections, bbox, datetime, max_cloud, filter, limit, updated_since),
    lazily.

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
