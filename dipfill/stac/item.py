"""Describe one filled scene as a STAC item: metadata out, nothing else.

Projection is written both ways (``proj:code`` for STAC 1.1 / projection v2 readers and
``proj:epsg`` for stackstac), and band information both as ``raster:bands`` (raster
extension, read by odc-stac and titiler) and STAC 1.1 ``bands``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pystac
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension

__all__ = ["AssetSpec", "ItemSpec", "build_item", "sanitize_id", "config_hash", "file_checksum"]

PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
FILE_SCHEMA = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
COG_MEDIA_TYPE = pystac.MediaType.COG
ZARR_MEDIA_TYPE = "application/vnd+zarr; version=3"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_id(raw: str) -> str:
    """Make an id safe as a file name and URL path segment (ids come from outside)."""
    cleaned = _UNSAFE.sub("_", raw).strip("._-")
    if not cleaned:
        raise ValueError(f"cannot make a usable id from {raw!r}")
    return cleaned[:200]


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a configuration: same config, same hash."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def file_checksum(path: str | os.PathLike[str]) -> str:
    """Multihash (sha2-256, hex) as the STAC file extension expects in ``file:checksum``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "1220" + h.hexdigest()


@dataclass(frozen=True)
class AssetSpec:
    key: str
    href: str  # relative to the item JSON
    media_type: str
    roles: tuple[str, ...]
    title: str
    bands: tuple[Mapping[str, Any], ...] = ()  # name, data_type, nodata[, scale, offset]
    extra: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ItemSpec:
    item_id: str
    geometry: dict[str, Any]
    bbox: Sequence[float]
    datetime: dt.datetime
    epsg: int | None
    wkt2: str | None
    shape: tuple[int, int]
    transform: Sequence[float]  # first six coefficients of the affine, rasterio order
    properties: Mapping[str, Any]
    assets: Sequence[AssetSpec]
    # hrefs of the source items this one was derived from (``derived_from`` links)
    derived_from: Sequence[str] = ()
    # directory the asset hrefs are relative to: when given, each asset that is a file gets
    # ``file:size`` and ``file:checksum`` (so the files must be final before the item)
    files_dir: str | None = None


def build_item(spec: ItemSpec) -> pystac.Item:
    """A pystac Item for the outputs in ``spec``, hrefs relative to the item's directory."""
    item = pystac.Item(
        id=spec.item_id,
        geometry=spec.geometry,
        bbox=list(spec.bbox),
        datetime=spec.datetime,
        properties=dict(spec.properties),
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    if spec.epsg is not None:
        proj.code = f"EPSG:{spec.epsg}"
        item.properties["proj:epsg"] = spec.epsg
    else:
        proj.wkt2 = spec.wkt2
    proj.shape = list(spec.shape)
    proj.transform = list(spec.transform)
    RasterExtension.add_to(item)
    for a in spec.assets:
        asset = pystac.Asset(href=a.href, media_type=a.media_type, roles=list(a.roles), title=a.title)
        if a.bands:
            # raster extension (STAC 1.0 readers) has no band name; STAC 1.1 ``bands`` does.
            asset.extra_fields["raster:bands"] = [
                {k: v for k, v in b.items() if k != "name"} for b in a.bands
            ]
            asset.extra_fields["bands"] = [dict(b) for b in a.bands]
        if a.extra:
            asset.extra_fields.update(a.extra)
        if spec.files_dir is not None:
            path = os.path.join(spec.files_dir, a.href)
            if os.path.isfile(path):
                asset.extra_fields["file:size"] = os.path.getsize(path)
                asset.extra_fields["file:checksum"] = file_checksum(path)
        item.add_asset(a.key, asset)
    for href in spec.derived_from:
        item.add_link(pystac.Link("derived_from", href, media_type=pystac.MediaType.JSON))
    if any(k.startswith("processing:") for k in item.properties):
        item.stac_extensions.append(PROCESSING_SCHEMA)
    if spec.files_dir is not None:
        item.stac_extensions.append(FILE_SCHEMA)
    return item
