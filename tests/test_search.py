"""`dipfill search`: static catalogs filtered with STAC API semantics, STAC APIs through a
retrying transport, the CLI. Real item JSON throughout; no network beyond 127.0.0.1.

Expected ids are computed here from the item JSON with plain comparisons, independently
of `dipfill.stac.search`.
"""

from __future__ import annotations

import datetime as dt
import functools
import http.server
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pystac
import pytest

from dipfill.cli.main import main
from dipfill.errors import InputError, StacError
from dipfill.stac.search import (
    ApiSource,
    SearchQuery,
    StaticSource,
    item_matches,
    open_source,
    search,
)
from tests._data import REPO, shared_file

FAST = {"retries": 3, "backoff_factor": 0.01, "timeout": 5.0}


# ------------------------------------------------------------------------- the items
def item_files() -> list[Path]:
    committed = sorted((REPO / "tests" / "fixtures" / "stac" / "items").glob("*.json"))
    if committed:
        return committed
    return sorted(shared_file("stac").glob("*.json"))


@pytest.fixture(scope="module")
def raw_items() -> list[dict]:
    return [json.loads(p.read_text()) for p in item_files()]


def build_catalog(root_dir: Path, items: list[dict]) -> Path:
    """A self-contained static catalog: one collection per collection id, its items."""
    root = pystac.Catalog("dipfill-test", "fixture items as a static catalog")
    by_collection: dict[str, list[pystac.Item]] = {}
    for d in items:
        item = pystac.Item.from_dict(json.loads(json.dumps(d)))
        item.clear_links()
        by_collection.setdefault(d["collection"], []).append(item)
    for cid, members in sorted(by_collection.items()):
        coll = pystac.Collection(cid, f"{cid} fixture items", extent=pystac.Extent.from_items(members))
        root.add_child(coll)
        coll.add_items(members)
    root.normalize_hrefs(str(root_dir))
    root.save(pystac.CatalogType.SELF_CONTAINED)
    return root_dir / "catalog.json"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, raw_items) -> Path:
    return build_catalog(tmp_path_factory.mktemp("catalog"), raw_items)


def utc(text: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def expected_ids(items, *, collections=None, bbox=None, start=None, end=None, max_cloud=None, where=None) -> set:
    """Plain per-item tests on the raw JSON: item bbox overlap, datetime in range, cloud."""
    out = set()
    for d in items:
        p = d["properties"]
        if collections and d["collection"] not in collections:
            continue
        if bbox:
            w, s, e, n = d["bbox"]
            if not (w <= bbox[2] and e >= bbox[0] and s <= bbox[3] and n >= bbox[1]):
                continue
        t = utc(p["datetime"])
        if (start and t < utc(start)) or (end and t > utc(end)):
            continue
        if max_cloud is not None and not (p.get("eo:cloud_cover") is not None and p["eo:cloud_cover"] <= max_cloud):
            continue
        if where is not None and not where(d):
            continue
        out.add(d["id"])
    return out


def ids(items: Iterator[dict]) -> set:
    return {d["id"] for d in items}


# -------------------------------------------------------------- static catalog search
QUERIES = {
    # name: (SearchQuery kwargs, expected_ids kwargs)
    "bbox-west-africa": (dict(bbox=(-20, 15, -5, 30)), dict(bbox=(-20, 15, -5, 30))),
    "bbox-and-year": (
        dict(bbox=(-180, -90, 180, 90), datetime="2020"),
        dict(start="2020-01-01T00:00:00Z", end="2020-12-31T23:59:59Z"),
    ),
    "date-range-open-end": (dict(datetime="2020-06-01/.."), dict(start="2020-06-01T00:00:00Z")),
    "months": (dict(datetime="2019-06/2020-02"), dict(start="2019-06-01T00:00:00Z", end="2020-02-29T23:59:59Z")),
    "cloud": (dict(max_cloud=5), dict(max_cloud=5)),
    "cloud-and-bbox": (dict(bbox=(-20, 15, -5, 30), max_cloud=3), dict(bbox=(-20, 15, -5, 30), max_cloud=3)),
    "collection": (dict(collections="sentinel-2-l2a"), dict(collections={"sentinel-2-l2a"})),
    "north-america-2021": (
        dict(bbox=(-130, 30, -90, 50), datetime="2021-01-01/2021-12-31"),
        dict(bbox=(-130, 30, -90, 50), start="2021-01-01T00:00:00Z", end="2021-12-31T23:59:59Z"),
    ),
}


@pytest.mark.parametrize("name", QUERIES)
def test_static_catalog_search_returns_exactly_the_expected_ids(catalog, raw_items, name) -> None:
    query_kwargs, expect_kwargs = QUERIES[name]
    want = expected_ids(raw_items, **expect_kwargs)
    assert want and len(want) < len(raw_items), "a query that discriminates"
    got = search(catalog, **query_kwargs)
    assert ids(got) == want


def test_static_catalog_opens_from_directory_and_limit_keeps_the_newest(catalog, raw_items) -> None:
    source = open_source(catalog.parent)
    assert isinstance(source, StaticSource)
    newest = sorted(raw_items, key=lambda d: utc(d["properties"]["datetime"]), reverse=True)[:2]
    assert [d["id"] for d in source.search(SearchQuery(limit=2))] == [d["id"] for d in newest]


def test_bbox_tests_the_item_geometry_not_its_bbox(catalog, raw_items) -> None:
    """A box in the NW corner of S2A_29RKH's bbox but north of its tilted footprint."""
    d = next(d for d in raw_items if d["id"] == "S2A_29RKH_20200219_0_L2A")
    box = (-11.979, 25.295, -11.97, 25.305)
    assert expected_ids([d], bbox=box) == {d["id"]}  # the bbox overlaps ...
    assert d["id"] not in ids(search(catalog, bbox=box))  # ... the geometry does not
    inside = (-11.5, 24.7, -11.4, 24.8)
    assert d["id"] in ids(search(catalog, bbox=inside))


CQL2 = {
    "and-compare": (
        {"op": "and", "args": [
            {"op": ">", "args": [{"property": "eo:cloud_cover"}, 1]},
            {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 50]},
        ]},
        lambda d: 1 < d["properties"].get("eo:cloud_cover", -1) <= 50,
    ),
    "or-equal": (
        {"op": "or", "args": [
            {"op": "=", "args": [{"property": "collection"}, "sentinel-2-l2a"]},
            {"op": "<", "args": [{"property": "eo:cloud_cover"}, 1]},
        ]},
        lambda d: d["collection"] == "sentinel-2-l2a" or d["properties"].get("eo:cloud_cover", 99) < 1,
    ),
    "not": (
        {"op": "not", "args": [{"op": ">=", "args": [{"property": "eo:cloud_cover"}, 5]}]},
        lambda d: d["properties"].get("eo:cloud_cover") is not None and d["properties"]["eo:cloud_cover"] < 5,
    ),
    "not-equal-missing-property-is-unknown": (
        {"op": "<>", "args": [{"property": "platform"}, "sentinel-2a"]},
        # pystac reads STAC 0.7 items' eo:platform as platform (its migration)
        lambda d: (plat := d["properties"].get("platform", d["properties"].get("eo:platform"))) is not None
        and plat != "sentinel-2a",
    ),
    "missing-property-is-unknown": (
        {"op": "<=", "args": [{"property": "s2:vegetation_percentage"}, 1]},
        lambda d: d["properties"].get("s2:vegetation_percentage", 99) <= 1,
    ),
    "t_intersects": (
        {"op": "t_intersects", "args": [
            {"property": "datetime"}, {"interval": ["2020-01-01T00:00:00Z", "2020-06-30T23:59:59Z"]},
        ]},
        lambda d: utc("2020-01-01T00:00:00Z") <= utc(d["properties"]["datetime"]) <= utc("2020-06-30T23:59:59Z"),
    ),
    "s_intersects": (
        # a small polygon inside the 29RKH tile (Western Sahara)
        {"op": "s_intersects", "args": [
            {"property": "geometry"},
            {"type": "Polygon", "coordinates": [[[-11.5, 24.7], [-11.4, 24.7], [-11.4, 24.8], [-11.5, 24.7]]]},
        ]},
        lambda d: d["id"] == "S2A_29RKH_20200219_0_L2A",
    ),
}


@pytest.mark.parametrize("name", CQL2)
def test_static_catalog_cql2_filter(catalog, raw_items, name) -> None:
    expr, where = CQL2[name]
    want = expected_ids(raw_items, where=where)
    assert want and len(want) < len(raw_items)
    assert ids(search(catalog, filter=json.dumps(expr))) == want


def test_cql2_three_valued_logic_and_unsupported_operators() -> None:
    item = {"id": "x", "collection": "c", "properties": {"datetime": "2020-01-01T00:00:00Z", "a": 1},
            "geometry": {"type": "LineString", "coordinates": [[-1, 0.5], [2, 0.5]]}}

    def matches(expr: dict) -> bool:
        return item_matches(item, SearchQuery(filter=expr))

    missing = {"op": "<", "args": [{"property": "nope"}, 5]}
    assert not matches(missing)
    assert not matches({"op": "not", "args": [missing]})  # NOT unknown is unknown
    assert matches({"op": "or", "args": [missing, {"op": "=", "args": [{"property": "a"}, 1]}]})
    assert not matches({"op": "or", "args": [missing, {"op": "=", "args": [{"property": "a"}, 2]}]})
    assert not matches({"op": "and", "args": [missing, {"op": "=", "args": [{"property": "a"}, 1]}]})
    assert matches({"op": "not", "args": [{"op": "and", "args": [missing, {"op": "=", "args": [{"property": "a"}, 2]}]}]})
    assert matches({"op": "isNull", "args": [{"property": "nope"}]})
    assert not matches({"op": "isNull", "args": [{"property": "a"}]})
    assert matches({"op": "in", "args": [{"property": "collection"}, ["b", "c"]]})
    assert not matches({"op": "in", "args": [{"property": "collection"}, ["b", "d"]]})
    assert matches({"op": "between", "args": [{"property": "a"}, 0, 2]})
    assert not matches({"op": "between", "args": [{"property": "a"}, 2, 3]})
    assert matches({"op": "like", "args": [{"property": "id"}, "x%"]})
    assert not matches({"op": "like", "args": [{"property": "id"}, "y%"]})
    assert matches({"op": ">=", "args": [{"property": "datetime"}, {"timestamp": "2019-12-31T00:00:00Z"}]})
    assert not matches({"op": ">", "args": [{"property": "datetime"}, {"timestamp": "2020-01-01T00:00:00Z"}]})
    assert matches({"op": "s_crosses", "args": [{"property": "geometry"}, {"bbox": [0, 0, 1, 1]}]})
    assert not matches({"op": "s_crosses", "args": [{"property": "geometry"}, {"bbox": [0, 1, 1, 2]}]})
    with pytest.raises(InputError, match="'s_frobnicates' is not supported"):
        matches({"op": "s_frobnicates", "args": [{"property": "geometry"}, {"bbox": [0, 0, 1, 1]}]})


def test_bad_queries_are_input_errors() -> None:
    with pytest.raises(InputError, match="bbox"):
        SearchQuery(bbox=(10, 0, 5, 1))
    with pytest.raises(InputError, match="open at both ends"):
        SearchQuery(datetime="../..")
    with pytest.raises(InputError, match="ends before it starts"):
        SearchQuery(datetime="2021/2020")
    with pytest.raises(InputError, match="CQL2"):
        SearchQuery(filter="{not json")
    with pytest.raises(InputError, match="0..100"):
        SearchQuery(max_cloud=120)


# --------------------------------------------------------------------------------- CLI
def test_cli_table_and_json(catalog, raw_items, capsys) -> None:
    want = expected_ids(raw_items, bbox=(-20, 15, -5, 30), start="2020-01-01T00:00:00Z", end="2020-12-31T23:59:59Z")
    args = ["search", "--stac", str(catalog), "--bbox", "-20", "15", "-5", "30", "--datetime", "2020"]
    assert main(args) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].split() == ["id", "collection", "datetime", "cloud", "%"]
    assert {line.split()[0] for line in lines[1:-1]} == want
    assert lines[-1].startswith(f"{len(want)} scenes from static catalog")
    s2 = next(d for d in raw_items if d["id"] == "S2A_29RKH_20200219_0_L2A")
    assert any(line.split()[-1] == f"{s2['properties']['eo:cloud_cover']:.2f}" for line in lines)

    assert main([*args, "--max-cloud", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    want3 = expected_ids(raw_items, bbox=(-20, 15, -5, 30), start="2020-01-01T00:00:00Z",
                         end="2020-12-31T23:59:59Z", max_cloud=3)
    assert doc["kind"] == "static" and doc["count"] == len(want3)
    assert {s["id"] for s in doc["scenes"]} == want3
    assert all(s["cloud_cover"] <= 3 for s in doc["scenes"])
    assert doc["query"]["datetime"] == "2020-01-01T00:00:00Z/2020-12-31T23:59:59Z"


def test_cli_errors_name_the_source(tmp_path, capsys) -> None:
    assert main(["search", "--stac", str(tmp_path / "nope.json")]) == 1
    assert "nope.json: no such STAC catalog" in capsys.readouterr().err
    assert main(["search", "--stac", str(tmp_path), "--filter", "{bad"]) == 1
    assert "not valid CQL2-JSON" in capsys.readouterr().err


# ------------------------------------------------------------ loopback HTTP STAC APIs
CORE = "https://api.stacspec.org/v1.0.0/core"
ITEM_SEARCH = "https://api.stacspec.org/v1.0.0/item-search"
FILTER = "https://api.stacspec.org/v1.0.0-rc.2/item-search#filter"
QUERY = "https://api.stacspec.org/v1.0.0-rc.2/item-search#query"


class FakeApi(http.server.ThreadingHTTPServer):
    """A minimal STAC API on 127.0.0.1: landing page, /conformance, POST /search with
    paging, answering 503 to the first ``fail_first`` requests (or to all), and sleeping
    ``slow_first`` seconds before its first /search answer."""

    daemon_threads = True

    def __init__(self, items, *, conforms=(CORE, ITEM_SEARCH, FILTER), fail_first=0, always_fail=False,
                 slow_first=0.0):
        super().__init__(("127.0.0.1", 0), _ApiHandler)
        self.items, self.conforms = items, list(conforms)
        self.fail_first, self.always_fail, self.slow_first = fail_first, always_fail, slow_first
        self.log: list[tuple[str, str, int, Any]] = []
        self.lock = threading.Lock()
        self.searches = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address) -> None:  # a client that gave up
        pass


class _ApiHandler(http.server.BaseHTTPRequestHandler):
    server: FakeApi

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method: str) -> None:
        api = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        with api.lock:
            n = len(api.log)
            fail = api.always_fail or n < api.fail_first
            api.log.append((method, self.path, 503 if fail else 200, body))
        if fail:
            self._send(503, {"code": "ServiceUnavailable", "description": "try again"})
            return
        base = api.url
        path = self.path.split("?")[0].rstrip("/")
        if path == "" and method == "GET":
            self._send(200, {
                "type": "Catalog", "id": "fake-api", "description": "loopback test API",
                "stac_version": "1.0.0",
                "links": [
                    {"rel": "self", "href": f"{base}/", "type": "application/json"},
                    {"rel": "root", "href": f"{base}/", "type": "application/json"},
                    {"rel": "conformance", "href": f"{base}/conformance", "type": "application/json"},
                    {"rel": "search", "href": f"{base}/search", "type": "application/geo+json", "method": "POST"},
                    {"rel": "search", "href": f"{base}/search", "type": "application/geo+json", "method": "GET"},
                ],
            })
        elif path == "/conformance":
            self._send(200, {"conformsTo": api.conforms})
        elif path == "/search" and method == "POST":
            with api.lock:
                api.searches += 1
                first = api.searches == 1
            if first and api.slow_first:
                time.sleep(api.slow_first)
            limit = int(body.get("limit") or 10)
            start = int(body.get("token") or 0)
            page = api.items[start:start + limit]
            links = []
            if start + limit < len(api.items):
                links.append({"rel": "next", "href": f"{base}/search", "method": "POST",
                              "type": "application/geo+json", "body": {**body, "token": str(start + limit)}})
            self._send(200, {"type": "FeatureCollection", "features": page, "links": links})
        else:
            self._send(404, {"code": "NotFound", "description": self.path})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


@pytest.fixture
def fake_api(raw_items) -> Iterator[Callable[..., FakeApi]]:
    servers: list[FakeApi] = []

    def start(**kwargs) -> FakeApi:
        api = FakeApi(raw_items, **kwargs)
        threading.Thread(target=api.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(api)
        return api

    yield start
    for api in servers:
        api.shutdown()
        api.server_close()


def searches(api: FakeApi) -> list[dict]:
    return [body for method, path, status, body in api.log if path == "/search" and status == 200]


def test_api_succeeds_after_503s_pages_and_sends_cql2_cloud_filter(fake_api, raw_items) -> None:
    api = fake_api(fail_first=2)
    source = open_source(api.url, **FAST)
    assert isinstance(source, ApiSource) and source.supports_filter
    got = list(source.search(SearchQuery(collections="sentinel-2-l2a", max_cloud=50), page_size=2))
    assert [d["id"] for d in got] == [d["id"] for d in raw_items]  # every page, in order
    assert [status for _, _, status, _ in api.log[:2]] == [503, 503]
    bodies = searches(api)
    assert len(bodies) == -(-len(raw_items) // 2)
    assert bodies[0]["filter"] == {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 50.0]}
    assert bodies[0]["filter-lang"] == "cql2-json" and "query" not in bodies[0]
    assert bodies[0]["collections"] == ["sentinel-2-l2a"]


def test_api_combines_user_filter_with_cloud_and_honours_limit(fake_api) -> None:
    api = fake_api()
    user = {"op": "=", "args": [{"property": "platform"}, "sentinel-2a"]}
    got = list(search(api.url, filter=user, max_cloud=10, limit=3, **FAST))
    assert len(got) == 3
    body = searches(api)[0]
    assert body["filter"] == {"op": "and", "args": [user, {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 10.0]}]}


def test_api_without_filter_extension_uses_query(fake_api) -> None:
    api = fake_api(conforms=(CORE, ITEM_SEARCH, QUERY))
    list(search(api.url, max_cloud=20, datetime="2020", **FAST))
    body = searches(api)[0]
    assert body["query"] == {"eo:cloud_cover": {"lte": 20.0}} and "filter" not in body
    assert body["datetime"] == "2020-01-01T00:00:00Z/2020-12-31T23:59:59Z"
    with pytest.raises(InputError, match="does not conform to the STAC filter extension"):
        list(search(api.url, filter={"op": "=", "args": [{"property": "id"}, "x"]}, **FAST))


def changed_since(items, cutoff: str) -> set:
    """`dipfill run --since`'s rule: `updated`, else `datetime`, else `start_datetime` >= cutoff."""
    out = set()
    for d in items:
        p = d["properties"]
        if utc(p.get("updated") or p.get("datetime") or p.get("start_datetime")) >= utc(cutoff):
            out.add(d["id"])
    return out


@pytest.mark.parametrize("cutoff", ["2020-08-01T00:00:00Z", "2021-01-01T00:00:00Z", "2021-07-23T22:39:42.963Z"])
def test_static_catalog_updated_since(catalog, raw_items, cutoff) -> None:
    want = changed_since(raw_items, cutoff)
    assert want and len(want) < len(raw_items)
    assert ids(search(catalog, updated_since=cutoff)) == want
    naive = utc(cutoff).replace(tzinfo=None)  # a naive datetime is UTC
    assert ids(search(catalog, SearchQuery(updated_since=naive))) == want


def test_api_gets_updated_since_as_cql2_or_applies_it_here(fake_api, raw_items) -> None:
    cutoff = "2021-01-01T00:00:00Z"
    want = changed_since(raw_items, cutoff)
    api = fake_api()
    list(search(api.url, updated_since=dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc), max_cloud=10, **FAST))
    updated = {"op": "or", "args": [
        {"op": "t_intersects", "args": [{"property": "updated"}, {"interval": [cutoff, ".."]}]},
        {"op": "and", "args": [
            {"op": "isNull", "args": [{"property": "updated"}]},
            {"op": ">=", "args": [{"property": "datetime"}, {"timestamp": cutoff}]},
        ]},
    ]}
    cloud = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 10.0]}
    assert searches(api)[0]["filter"] == {"op": "and", "args": [cloud, updated]}

    api = fake_api(conforms=(CORE, ITEM_SEARCH, QUERY))  # no filter extension: tested here
    assert ids(search(api.url, updated_since=cutoff, **FAST)) == want
    got = list(search(api.url, updated_since=cutoff, limit=1, **FAST))
    assert len(got) == 1 and got[0]["id"] in want
    assert all("filter" not in body for body in searches(api))


def test_api_slow_answer_is_retried(fake_api, raw_items) -> None:
    api = fake_api(slow_first=1.5)
    t = time.perf_counter()
    got = list(search(api.url, timeout=0.4, retries=2, backoff_factor=0.01, page_size=100))
    assert ids(got) == {d["id"] for d in raw_items}
    assert len([1 for _, path, _, _ in api.log if path == "/search"]) == 2
    assert time.perf_counter() - t < 1.5  # did not wait for the slow answer


def test_api_that_always_fails_gives_a_clear_error(fake_api) -> None:
    api = fake_api(always_fail=True)
    with pytest.raises(StacError) as err:
        open_source(api.url, retries=2, backoff_factor=0.01, timeout=5)
    msg = str(err.value)
    assert api.url in msg and "HTTP 503 after 2 retries" in msg
    assert len(api.log) == 3  # one try and two retries


def test_unreachable_api_names_the_url(capsys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"  # nothing listens there any more
    with pytest.raises(StacError, match=f"{url}: .*connection refused"):
        open_source(url, retries=1, backoff_factor=0.01)
    assert main(["search", "--stac", url, "--retries", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dipfill: error: ") and url in err


def test_cli_against_an_api(fake_api, capsys) -> None:
    api = fake_api(fail_first=1)
    assert main(["search", "--stac", api.url, "--collection", "sentinel-2-l2a", "--limit", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "api" and doc["count"] == 2 and doc["source"] == api.url


def test_static_catalog_over_http(catalog, raw_items) -> None:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(catalog.parent))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/catalog.json"
        source = open_source(url, **FAST)
        assert isinstance(source, StaticSource)
        query = SearchQuery(bbox=(-20, 15, -5, 30), max_cloud=3)
        assert ids(source.search(query)) == ids(search(catalog, query)) == expected_ids(
            raw_items, bbox=(-20, 15, -5, 30), max_cloud=3
        )
    finally:
        server.shutdown()
        server.server_close()


# -------------------------------------------------- the same ids from a real STAC API
def test_same_ids_from_the_real_api_and_the_static_catalog(request, tmp_path) -> None:
    """Needs the stac-fastapi-pgstac fixture (`stac_api`, tests/conftest.py)."""
    try:
        api = request.getfixturevalue("stac_api")
    except pytest.FixtureLookupError:
        pytest.skip("no stac_api fixture (real stac-fastapi-pgstac server) in this checkout")
    from tests.stac_server import fixture_items

    loaded = fixture_items()  # as the server holds them (collection ids rewritten)
    static = build_catalog(tmp_path / "catalog", loaded)
    queries = [
        SearchQuery(bbox=(-20, 15, -5, 30)),
        SearchQuery(datetime="2020"),
        SearchQuery(max_cloud=5),
        SearchQuery(collections="sentinel-2-l2a", max_cloud=3),
        SearchQuery(collections="landsat-c2-l2", datetime="2020-01/2021-12", bbox=(-130, 30, -90, 50)),
        SearchQuery(filter={"op": "or", "args": [
            {"op": "<", "args": [{"property": "eo:cloud_cover"}, 1]},
            {"op": "=", "args": [{"property": "collection"}, "sentinel-2-l2a"]},
        ]}),
        SearchQuery(bbox=(-11.979, 25.295, -11.97, 25.305)),  # bbox corner outside the geometry
        SearchQuery(filter={"op": "not", "args": [{"op": ">=", "args": [{"property": "eo:cloud_cover"}, 5]}]}),
        SearchQuery(filter={"op": "<=", "args": [{"property": "s2:vegetation_percentage"}, 1]}),  # missing: unknown
        SearchQuery(filter={"op": "t_intersects", "args": [
            {"property": "datetime"}, {"interval": ["2020-01-01T00:00:00Z", "2020-06-30T23:59:59Z"]}]}),
        SearchQuery(filter={"op": "s_intersects", "args": [{"property": "geometry"}, {"type": "Polygon",
            "coordinates": [[[-11.5, 24.7], [-11.4, 24.7], [-11.4, 24.8], [-11.5, 24.7]]]}]}),
        SearchQuery(datetime="2020-02-19", max_cloud=4.06, limit=1),
        SearchQuery(updated_since="2021-01-01T00:00:00Z", max_cloud=10),  # `updated`, else `datetime`
    ]
    source = open_source(api.url, **FAST)
    assert isinstance(source, ApiSource) and source.supports_filter
    answered: list[int] = []
    for query in queries:
        from_api = ids(source.search(query))
        assert from_api == ids(search(static, query)), query
        answered.append(len(from_api))
    assert sum(answered) > 0 and 0 in answered  # the queries discriminate
