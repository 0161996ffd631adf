"""Session-wide test settings."""

from __future__ import annotations

import os
import socket

import pytest

# Before anything imports Ray: Ray reads it once, at import, and then answers 127.0.0.1 to
# its own IP lookups, so no part of a test's local cluster listens beyond loopback
# (dipfill's start_ray sets it too, but only if Ray was not imported before).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", "", None, socket.gethostname(), socket.getfqdn()}


def _local(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    return host in _LOCAL_NAMES or (isinstance(host, str) and (host.startswith("127.") or host.startswith("/")))


@pytest.fixture(autouse=True, scope="session")
def _loopback_only():
    """Tests talk to 127.0.0.1 only: a name lookup or connection to any other address from
    this process fails the test that made it, saying where it tried to go (a stubbed search
    that still reached a public STAC API was caught this way). Subprocesses and GDAL's own
    HTTP are not covered; their tests point them at 127.0.0.1 explicitly."""
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if not _local(host):
            raise AssertionError(f"a test tried to resolve {host!r}: tests reach 127.0.0.1 only")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
            raise AssertionError(f"a test tried to connect to {address!r}: tests reach 127.0.0.1 only")
        return real_connect(self, address)

    mp = pytest.MonkeyPatch()
    mp.setattr(socket, "getaddrinfo", getaddrinfo)
    mp.setattr(socket.socket, "connect", connect)
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _private_strategy_cache(tmp_path_factory):
    """Strategy measurements go to a throwaway cache, never the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DIPFILL_CACHE_DIR", str(tmp_path_factory.mktemp("dipfill-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def stac_api():
    """A real stac-fastapi-pgstac server (PostgreSQL + PostGIS + pgstac + uvicorn, all on
    127.0.0.1) holding the collections and items of tests/fixtures/stac/, with the
    Transactions extension on. Yields a `tests.stac_server.StacServer`: `.url` is the API
    root, `.dsn` the database. Everything is stopped and removed at the session's end."""
    from tests.stac_server import missing_requirements, require, running_stac_server

    require("real STAC API server (tests/stac_server.py)", missing_requirements())
    with running_stac_server() as server:
        yield server


@pytest.fixture(scope="module")
def s3():
    """A real S3 API (moto's server mode) on 127.0.0.1 for the module's tests, with the
    standard AWS variables (keys, region, ``AWS_ENDPOINT_URL``) set in this process while it
    runs: a `tests._s3.S3Server` (``.bucket(name)`` makes a bucket, ``.env()`` the variables
    for a subprocess, ``.rasterio_env()`` GDAL's for reading ``s3://``)."""
    pytest.importorskip("moto.server", reason="moto[server] (test extra) for the local S3 API")
    from tests._s3 import s3_server

    yield from s3_server()
