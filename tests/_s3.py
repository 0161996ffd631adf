"""A real S3 API on 127.0.0.1 for the tests: moto's server mode, started and stopped inside
the test session (no mock of boto: dipfill talks HTTP to it as to AWS or MinIO).

Use the ``s3`` fixture (session scope, in tests/conftest.py): it starts one server, sets
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
        """GDAL's settings for reading ``s3://`` (``/vsis3/``) from this server."""
        return {"AWS_S3_ENDPOINT": f"{self.host}:{self.port}", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
                "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": REGION}

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


def s3_server() -> Iterator[S3Server]:
    """Start moto's server on 127.0.0.1 (a free port), export the AWS variables, stop both at the end."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = S3Server(host, port)
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
        server.stop()
