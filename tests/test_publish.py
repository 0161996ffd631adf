"""An output item published to a real STAC API, searched back, and loaded by the readers
users have (odc-stac, stackstac): same pixels as the COG, checksums that match the files.
Publishing's transport against a scripted server on 127.0.0.1: retries, statuses kept."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import numpy as np
import pytest
import rasterio

from dipfill.cli.main import main
from dipfill.errors import StacError
from dipfill.stac.item import file_checksum
from dipfill.stac.publish import publish_to_api
from tests._data import ARG25_JAN


@pytest.fixture(scope="module")
def published(stac_api, tmp_path_factory):
    out = tmp_path_factory.mktemp("publish") / "out"
    rc = main(["fill", str(ARG25_JAN), "--out", str(out), "--engine", "fillnodata",
               "--collection", "dipfill-test", "--publish", stac_api.url])
    assert rc == 0
    return out


def test_item_is_searchable_and_checksums_match(stac_api, published: Path) -> None:
    from pystac_client import Client

    client = Client.open(stac_api.url)
    items = list(client.search(collections=["dipfill-test"], bbox=[142.0, -32.5, 142.8, -32.1],
                               datetime="2010-01-01/2010-01-31").items())
    assert [i.id for i in items] == ["LS7_ETM_095_082_20100116_B3B4B5_crop512-dipfill"]
    item = items[0]
    for key in ("filled", "qa", "quicklook", "patches"):
        asset = item.assets[key]
        assert asset.href.startswith("file:///")
        path = Path(urlparse(asset.href).path)
        assert path.parent == published.resolve()
        assert asset.extra_fields["file:checksum"] == file_checksum(path)
        assert asset.extra_fields["file:size"] == path.stat().st_size
    # republishing is an upsert, not an error or a duplicate
    assert main(["fill", str(ARG25_JAN), "--out", str(published.parent / "again"), "--engine", "fillnodata",
                 "--collection", "dipfill-test", "--publish", stac_api.url]) == 0
    again = list(client.search(collections=["dipfill-test"]).items())
    assert len(again) == 1 and Path(urlparse(again[0].assets["filled"].href).path).parent.name == "again"


BANDS = ["B3_red", "B4_NIR", "B5_SWIR1"]  # the input file's band descriptions, made asset keys


def test_odc_stac_and_stackstac_read_the_same_pixels_as_the_cogs(stac_api, published: Path) -> None:
    """One COG per band: odc-stac loads them by name, and stackstac's default call (no
    ``assets=``: every image/tiff asset) works, since no asset has more than one band."""
    import odc.stac
    import stackstac
    from pystac_client import Client

    item = next(Client.open(stac_api.url).search(collections=["dipfill-test"]).items())
    cogs = []
    for key in BANDS:
        with rasterio.open(urlparse(item.assets[key].href).path) as ds:
            assert ds.count == 1
            cogs.append(ds.read(1))
            nodata = ds.nodata
    cog = np.stack(cogs)
    with rasterio.open(urlparse(item.assets["filled"].href).path) as vrt:  # all bands in one VRT
        assert np.array_equal(vrt.read(), cog)
    ds_odc = odc.stac.load([item], bands=BANDS, chunks=None)
    assert np.array_equal(np.stack([ds_odc[n].values[0] for n in BANDS]), cog)

    # stackstac 0.5 reads only proj:epsg, which projection v2 (the item's) removed in favour
    # of proj:code (gjoseph92/stackstac#262): users copy the code back on the dicts they
    # hand it, as here. Otherwise its default call: all image/tiff assets, float64, rescaled.
    raw = next(Client.open(stac_api.url).search(collections=["dipfill-test"]).items_as_dicts())
    assert raw["properties"]["proj:code"] == "EPSG:3577" and "proj:epsg" not in raw["properties"]
    raw["properties"]["proj:epsg"] = int(raw["properties"]["proj:code"].removeprefix("EPSG:"))
    arr = stackstac.stack([raw])
    assert sorted(arr.band.values) == sorted([*BANDS, "qa"])  # the API keeps its own asset order
    values = arr.isel(time=0).sel(band=BANDS).values
    scale = item.assets[BANDS[0]].extra_fields["raster:bands"][0].get("scale", 1.0)  # stackstac applies it
    expected = cog.astype("float64") * scale
    expected[cog == nodata] = np.nan
    assert values.shape == expected.shape
    assert np.allclose(values, expected, equal_nan=True, rtol=0, atol=1e-12)


# ------------------------------------------------- the transport, against a scripted server
class ScriptedApi(http.server.ThreadingHTTPServer):
    """Answers the n-th request with ``statuses[n]`` (the last one thereafter) on
    127.0.0.1, and logs ``(method, path, status, body)``."""

    daemon_threads = True

    def __init__(self, statuses: list[int]) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.statuses = statuses
        self.log: list[tuple[str, str, int, dict]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    server: ScriptedApi

    def log_message(self, *args) -> None:
        pass

    def _answer(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
        with self.server.lock:
            n = len(self.server.log)
            status = self.server.statuses[min(n, len(self.server.statuses) - 1)]
            self.server.log.append((self.command, self.path, status, body))
        out = json.dumps({"code": str(status), "description": f"scripted {status}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_POST = do_PUT = _answer


@pytest.fixture
def scripted() -> Iterator:
    servers: list[ScriptedApi] = []

    def start(statuses: list[int]) -> ScriptedApi:
        server = ScriptedApi(statuses)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


COLLECTION = {"type": "Collection", "id": "c", "description": "d", "license": "proprietary", "links": []}
ITEM = {"type": "Feature", "id": "i", "properties": {"datetime": "2020-01-01T00:00:00Z"}, "links": []}
FAST = {"retries": 2, "backoff_factor": 0.01, "timeout": 5.0}


def test_publish_retries_a_503_then_succeeds(scripted) -> None:
    api = scripted([503, 201])
    publish_to_api(api.url, COLLECTION, [ITEM], **FAST)
    assert [(m, p, st) for m, p, st, _ in api.log] == [
        ("POST", "/collections", 503),
        ("POST", "/collections", 201),  # the same request again
        ("POST", "/collections/c/items", 201),
    ]
    assert api.log[1][3] == COLLECTION and api.log[2][3] == {**ITEM, "collection": "c"}


def test_publish_puts_what_exists_and_retries_the_put(scripted) -> None:
    api = scripted([409, 502, 200, 201])
    publish_to_api(api.url, COLLECTION, [ITEM], **FAST)
    assert [(m, p, st) for m, p, st, _ in api.log] == [
        ("POST", "/collections", 409),
        ("PUT", "/collections/c", 502),
        ("PUT", "/collections/c", 200),
        ("POST", "/collections/c/items", 201),
    ]


def test_publish_keeps_a_400_status_and_does_not_retry(scripted) -> None:
    api = scripted([400])
    with pytest.raises(StacError) as err:
        publish_to_api(api.url, COLLECTION, [ITEM], **FAST)
    assert err.value.status == 400
    assert len(api.log) == 1
    msg = str(err.value)
    assert "\n" not in msg and f"POST {api.url}/collections" in msg and "HTTP 400" in msg
    assert "scripted 400" in msg and "rejected the document" in msg


def test_publish_gives_up_after_the_retries_with_the_last_status(scripted) -> None:
    api = scripted([503])
    with pytest.raises(StacError, match=r"HTTP 503 after 2 retries") as err:
        publish_to_api(api.url, COLLECTION, [ITEM], **FAST)
    assert err.value.status == 503 and len(api.log) == 3


def test_publish_to_nothing_listening_names_the_url(scripted) -> None:
    api = scripted([201])
    url = api.url
    api.shutdown()
    api.server_close()  # nothing listens there any more
    with pytest.raises(StacError, match=f"POST {url}/collections: .*connection refused") as err:
        publish_to_api(url, COLLECTION, [ITEM], **FAST)
    assert err.value.status is None
