"""A real S3 API on 127.0.0.1 for the tests: moto's server mode, started and stopped inside
the test session (no mock of boto: dipfill talks HTTP to it as to AWS or MinIO).

Use the ``s3`` fixture (module scope, in tests/conftest.py): it starts one server (in a
process of its own, see :func:`s3_server`), sets
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_REGION``/``AWS_ENDPOINT_URL`` in this
process's environment for as long as it runs (child processes and a local Ray started by
the test inherit them) and gives an :class:`S3Server`; ``server.bucket(name)`` creates a
bucket. :meth:`S3Server.env` gives the same variables for a subprocess, and
:meth:`S3Server.rasterio_env` what GDAL needs to read ``s3://`` from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

#: Test credentials of the local server (moto accepts any).
KEY_ID, SECRET, REGION = "testing-key", "testing-secret", "us-east-1"


@dataclass(frozen=True)
class S3Server:
    host: str
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables pointing at this server."""
        return {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": self.endpoint, "AWS_EC2_METADATA_DISABLED": "true"}

    def rasterio_env(self) -> dict[str, str]:
        """GDAL's settings for reading ``s3://`` (``/vsis3/``) from this server, for
        ``rasterio.Env(**...)`` (the keys themselves come from the environment: rasterio
        refuses them as settings)."""
        return {"AWS_S3_ENDPOINT": f"{self.host}:{self.port}", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY_ID,
                            aws_secret_access_key=SECRET, region_name=REGION)

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (if missing); returns ``s3://name``."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return f"s3://{name}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


#: The server process: moto's ThreadedMotoServer on 127.0.0.1 and a free port, which it
#: prints; it exits when its stdin closes (the test session ended, or was killed).
_SERVER = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("%s %d" % server.get_host_and_port(), flush=True)
sys.stdin.read()
server.stop()
"""


def s3_server() -> Iterator[S3Server]:
    """Start moto's server on 127.0.0.1 (a free port) in a process of its own, export the
    AWS variables, stop both at the end.

    A process, not a thread of the test's: GDAL holds the GIL through some of its network
    reads (opening a VRT over /vsis3/), and a server thread waiting for the GIL never answers."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline().split()  # type: ignore[union-attr]
        if len(line) != 2:
            raise RuntimeError(f"moto server did not start (exit {proc.poll()})")
        s3 = S3Server(line[0], int(line[1]))
        saved = {k: os.environ.get(k) for k in s3.env()}
        os.environ.update(s3.env())
        try:
            yield s3
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
