"""The real STAC API of tests/stac_server.py answers searches correctly and takes writes.

Expected results are computed here, independently of the server, from the committed
fixture items: footprints with shapely, datetimes and cloud cover from their properties.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests._procs import descendants
from tests.stac_server import collection_for, fixture_item_files, require

try:
    from shapely.geometry import box, shape  # a test extra
except ImportError:  # pragma: no cover - skip outside CI, fail in CI (see require)
    require("shapely", ["Python module shapely not installed"])

FIXTURE_COLLECTIONS = ["landsat-c2-l2", "sentinel-2-l2a"]


def _utc(text: str) -> datetime:
    """RFC 3339 (or a bare date, as in one USGS item) -> aware UTC datetime."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _raw_items() -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in fixture_item_files()]


RAW = _raw_items()


def expected(bbox=None, start=None, end=None, pred=None) -> set[str]:
    """Ids of fixture items whose footprint intersects bbox and whose datetime lies in
    [start, end] (either may be None: open), and that satisfy pred(item)."""
    out = set()
    for item in RAW:
        if bbox is not None and not box(*bbox).intersects(shape(item["geometry"])):
            continue
        t = _utc(item["properties"]["datetime"])
        if start is not None and t < _utc(start):
            continue
        if end is not None and t > _utc(end):
            continue
        if pred is not None and not pred(item):
            continue
        out.add(item["id"])
    return out


def _ids(search) -> set[str]:
    ids = [item.id for item in search.items()]
    assert len(ids) == len(set(ids)), f"duplicate ids in {ids}"
    return set(ids)


@pytest.fixture(scope="module")
def client(stac_api):
    from pystac_client import Client

    return Client.open(stac_api.url)


# A corner of LC08 001062's bounding box that its tilted footprint does not cover: the
# server must test geometries, not boxes.
_TILTED_CORNER = [-66.18, -1.95, -66.05, -1.86]


def test_fixture_corner_is_outside_the_tilted_footprint():
    lc08 = next(i for i in RAW if i["id"].startswith("LC08_L2SP_001062"))
    assert box(*_TILTED_CORNER).intersects(box(*lc08["bbox"]))
    assert not box(*_TILTED_CORNER).intersects(shape(lc08["geometry"]))


def test_landing_page_and_schema_version(stac_api, client):
    import httpx
    import pypgstac

    conforms = set(client.get_conforms_to())
    for wanted in ("item-search#query", "item-search#filter", "collections/extensions/transaction"):
        assert any(c.endswith(wanted) for c in conforms), (wanted, conforms)
    health = httpx.get(stac_api.url + "/_mgmt/health", timeout=30).json()
    assert health["pgstac"]["status"] == "UP"
    # The schema pypgstac installed is the one the server talks to.
    assert health["pgstac"]["pgstac_version"] == pypgstac.__version__


def test_collections_and_items_loaded(client):
    ids = {c.id for c in client.get_collections()}
    assert set(FIXTURE_COLLECTIONS) <= ids
    for cid in FIXTURE_COLLECTIONS:
        got = {i.id for i in client.get_collection(cid).get_items()}
        assert got == {i["id"] for i in RAW if collection_for(i["id"]) == cid}


@pytest.mark.parametrize(
    "bbox, dt",
    [
        (None, None),  # everything
        ([-20.0, 15.0, -5.0, 30.0], None),  # north-west Africa: the two Earth Search S2 tiles
        ([-125.0, 30.0, -90.0, 50.0], None),  # conterminous US: LE07 044033, LC08 028030
        (_TILTED_CORNER, None),  # bbox hit, footprint miss: nothing
        ([-66.1, -3.0, -65.0, -2.5], None),  # inside LC08 001062's footprint
        (None, "2020-01-01T00:00:00Z/2020-12-31T23:59:59Z"),
        (None, "../2019-12-31T23:59:59Z"),
        (None, "2021-01-01T00:00:00Z/.."),
        ([-180.0, -90.0, 0.0, 90.0], "2020-01-01T00:00:00Z/2020-06-30T23:59:59Z"),
        ([-20.0, 15.0, -5.0, 30.0], "2020-07-01T00:00:00Z/2020-07-31T23:59:59Z"),
    ],
)
def test_search_bbox_datetime(client, bbox, dt):
    start = end = None
    if dt is not None:
        lo, hi = dt.split("/")
        start = None if lo == ".." else lo
        end = None if hi == ".." else hi
    want = expected(bbox=bbox, start=start, end=end)
    kwargs = {"collections": FIXTURE_COLLECTIONS, "limit": 2}  # limit 2: pages are followed
    if bbox is not None:
        kwargs["bbox"] = bbox
    if dt is not None:
        kwargs["datetime"] = dt
    assert _ids(client.search(**kwargs)) == want
    if bbox == _TILTED_CORNER:
        assert want == set()


@pytest.mark.parametrize("limit", [0.5, 5.0, 10.0])
def test_search_query_cloud_cover(client, limit):
    want = expected(pred=lambda i: i["properties"]["eo:cloud_cover"] < limit)
    search = client.search(collections=FIXTURE_COLLECTIONS, query={"eo:cloud_cover": {"lt": limit}})
    assert _ids(search) == want
    assert want  # each threshold selects something


def test_search_cql2_json_filter(client):
    landsat_clear = {
        "op": "and",
        "args": [
            {"op": "=", "args": [{"property": "collection"}, "landsat-c2-l2"]},
            {"op": "<", "args": [{"property": "eo:cloud_cover"}, 10]},
        ],
    }
    want = expected(
        pred=lambda i: collection_for(i["id"]) == "landsat-c2-l2" and i["properties"]["eo:cloud_cover"] < 10
    )
    assert want == {"LC08_L2SP_028030_20200114_20200824_02_T1_SR", "LE07_L2SP_044033_20210329_20210424_02_T1_SR"}
    search = client.search(collections=FIXTURE_COLLECTIONS, filter=landsat_clear, filter_lang="cql2-json")
    assert _ids(search) == want

    area = [-20.0, 15.0, -5.0, 30.0]
    spatial_temporal = {
        "op": "and",
        "args": [
            {"op": "s_intersects", "args": [{"property": "geometry"}, box(*area).__geo_interface__]},
            {"op": "t_after", "args": [{"property": "datetime"}, {"timestamp": "2020-03-01T00:00:00Z"}]},
        ],
    }
    want = expected(bbox=area, start="2020-03-01T00:00:00.000001Z")
    assert want == {"S2A_28QCH_20200714_0_L2A"}
    search = client.search(collections=FIXTURE_COLLECTIONS, filter=spatial_temporal, filter_lang="cql2-json")
    assert _ids(search) == want


def test_transactions_post_then_get(stac_api, client):
    import httpx

    src = next(i for i in RAW if i["id"] == "S2A_29RKH_20200219_0_L2A")
    collection = {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": "dipfill-transactions-test",
        "description": "written by tests/test_stac_server.py",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [src["bbox"]]},
            "temporal": {"interval": [["2024-05-01T00:00:00Z", None]]},
        },
        "links": [],
    }
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": "dipfill-filled-S2A_29RKH_20200219",
        "collection": collection["id"],
        "geometry": src["geometry"],
        "bbox": src["bbox"],
        "properties": {"datetime": "2024-05-01T10:00:00Z", "eo:cloud_cover": 0.0},
        "assets": {
            "filled": {
                "href": "https://example.invalid/filled.tif",
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"],
            }
        },
        "links": [],
    }
    with httpx.Client(base_url=stac_api.url, timeout=30) as http:
        try:
            r = http.post("/collections", json=collection)
            assert r.status_code in (200, 201), r.text
            r = http.post(f"/collections/{collection['id']}/items", json=item)
            assert r.status_code in (200, 201), r.text

            r = http.get(f"/collections/{collection['id']}/items/{item['id']}")
            assert r.status_code == 200, r.text
            got = r.json()
            assert got["id"] == item["id"]
            assert got["collection"] == collection["id"]
            assert got["properties"]["datetime"] == item["properties"]["datetime"]
            assert got["assets"]["filled"]["href"] == item["assets"]["filled"]["href"]
            assert shape(got["geometry"]).equals(shape(item["geometry"]))

            found = client.search(collections=[collection["id"]], bbox=src["bbox"], datetime="2024-05-01")
            assert _ids(found) == {item["id"]}
        finally:
            http.delete(f"/collections/{collection['id']}/items/{item['id']}")
            http.delete(f"/collections/{collection['id']}")
        assert http.get(f"/collections/{collection['id']}/items/{item['id']}").status_code == 404


def test_servers_listen_on_loopback_only(stac_api):
    require("`ss` (iproute2)", [] if shutil.which("ss") else ["ss not found"])
    ours = descendants(os.getpid(), *stac_api.pids)
    out = subprocess.run(["ss", "-H", "-tlnp"], capture_output=True, text=True, check=True).stdout
    listening: dict[int, set[str]] = {}  # port -> local addresses, for our processes only
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if not pids & ours:
            continue
        addr, _, port = fields[3].rpartition(":")
        listening.setdefault(int(port), set()).add(addr)
    assert stac_api.pg_port in listening and stac_api.api_port in listening, (listening, out)
    for port, addrs in listening.items():
        assert addrs == {"127.0.0.1"}, f"port {port} listens on {addrs}, not only 127.0.0.1"


# `dipfill run --since`: the bound as a CQL2 filter on the server, and the same rule here.
SINCE_CUTOFFS = [
    "2019-01-01T00:00:00Z",  # everything
    "2020-08-01T00:00:00Z",  # S2A_28QCH (no `updated`, datetime 2020-07-14) drops out
    "2020-10-31T00:00:00Z",  # LC08 001062's bare-date datetime, bounds inclusive
    "2021-01-01T00:00:00Z",  # LC08 028030 stays: acquired in 2020, `updated` in 2021
    "2021-07-23T22:39:42.962Z",  # exactly LC08 028030's `updated`: kept
    "2021-07-23T22:39:42.963Z",  # a millisecond later: gone
    "2022-11-06T09:32:34.081878Z",  # a microsecond after the newest `updated`: nothing
]


def _changed_since(cutoff: str, pred=None) -> set[str]:
    """The rule of `dipfill run --since`: `updated`, else `datetime`, else `start_datetime`."""
    out = set()
    for item in RAW:
        p = item["properties"]
        when = p.get("updated") or p.get("datetime") or p.get("start_datetime")
        if _utc(when) >= _utc(cutoff) and (pred is None or pred(item)):
            out.add(item["id"])
    return out


def test_updated_since_server_side_equals_client_side(stac_api):
    from dipfill.stac.search import ApiSource, SearchQuery, open_source

    on_server = open_source(stac_api.url, retries=1, backoff_factor=0.01)
    here = open_source(stac_api.url, retries=1, backoff_factor=0.01)
    assert isinstance(on_server, ApiSource) and on_server.supports_filter
    here.supports_filter = False  # as an API without the filter extension: tested in dipfill
    counts = []
    for cutoff in SINCE_CUTOFFS:
        query = SearchQuery(collections=FIXTURE_COLLECTIONS, updated_since=cutoff)
        want = _changed_since(cutoff)
        assert {i["id"] for i in on_server.search(query, page_size=2)} == want, cutoff
        assert {i["id"] for i in here.search(query, page_size=2)} == want, cutoff
        counts.append(len(want))
    assert counts[0] == len(RAW) and counts[-1] == 0 and len(set(counts)) >= 5  # the cutoffs discriminate

    # ANDed with the cloud limit and a user filter, and still within the limit
    query = SearchQuery(collections=FIXTURE_COLLECTIONS, updated_since="2020-08-01T00:00:00Z", max_cloud=10,
                        filter={"op": "<>", "args": [{"property": "collection"}, "sentinel-2-l2a"]}, limit=5)
    want = _changed_since("2020-08-01T00:00:00Z", lambda i: i["properties"]["eo:cloud_cover"] <= 10
                          and collection_for(i["id"]) != "sentinel-2-l2a")
    assert want == {"LC08_L2SP_028030_20200114_20200824_02_T1_SR", "LE07_L2SP_044033_20210329_20210424_02_T1_SR"}
    assert {i["id"] for i in on_server.search(query)} == want
