"""GDAL settings for reading rasters, local or remote, entered through one context manager.

Settings never go through ``os.environ``: a reader enters :func:`gdal_env` (a
``rasterio.Env``) around its reads, and a worker re-enters it with the same plain dict.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

__all__ = ["GDAL_ENV_DEFAULTS", "gdal_env"]

#: GDAL settings that make remote COG reads cheap: no directory listing on open, only
#: raster extensions probed, consecutive byte ranges merged into one request, HTTP/2
#: multiplexing (where HTTP/2 is available), a block cache for /vsicurl/, and GDAL's own retries on 429/5xx.
GDAL_ENV_DEFAULTS: Mapping[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.jp2,.JP2,.vrt",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "VSI_CACHE": "TRUE",
    "GDAL_HTTP_MAX_RETRY": "4",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
}


@contextlib.contextmanager
def gdal_env(options: Mapping[str, str] | None = None) -> Iterator[None]:
    """``rasterio.Env`` with :data:`GDAL_ENV_DEFAULTS` overridden by ``options``.

    Credentials are not settings: leave them to the environment (AWS_*, GDAL's own
    config), so a :class:`SceneSource` sent to a worker carries no secret.
    """
    import rasterio

    with rasterio.Env(**{**GDAL_ENV_DEFAULTS, **(options or {})}):
        yield
