"""Describe one filled scene as a STAC item: metadata out, nothing else.

Projection is ``proj:code`` (``"EPSG:3577"``; ``proj:wkt2`` for a CRS without one) as the
projection extension v2.0.0 the item declares: v2 removed ``proj:epsg`` and its schema
rejects it. stackstac (0.5) still reads only ``proj:epsg``: pass it ``epsg=`` or copy the
code into ``proj:epsg`` on the dicts you hand it. Band information is written both as
``raster:bands`` (raster extension, read by odc-stac and titiler) and STAC 1.1 ``bands``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pystac
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension

from dipfill import __version__
from dipfill.errors import InputError
from dipfill.specs import FillOptions

__all__ = [
    "AssetSpec",
    "ItemSpec",
    "ItemExtras",
    "FilledScene",
    "build_item",
    "output_item",
    "self_href",
    "sanitize_id",
    "config_hash",
    "file_checksum",
]

PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
FILE_SCHEMA = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
COG_MEDIA_TYPE = pystac.MediaType.COG
ZARR_MEDIA_TYPE = "application/vnd+zarr; version=3"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_id(raw: str) -> str:
    """Make an id safe as a file name and URL path segment (ids come from outside)."""
    cleaned = _UNSAFE.sub("_", raw).strip("._-")
    if not cleaned:
        raise InputError(f"cannot make a usable id from {raw!r}: give an id with letters or digits "
                         "(e.g. --item-id)")
    return cleaned[:200]


def self_href(item: Mapping[str, Any]) -> str | None:
    """The href of an item's ``self`` link, if it has one."""
    return next((ln.get("href") for ln in item.get("links", []) if ln.get("rel") == "self"), None)


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
    # hrefs of raster files (not items) it was derived from, such as guides
    derived_from_files: Sequence[str] = ()
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
        proj.code = f"EPSG:{spec.epsg}"  # v2: no proj:epsg (the schema forbids it)
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
    for href in spec.derived_from_files:
        item.add_link(pystac.Link("derived_from", href, title="guide raster"))
    if any(k.startswith("processing:") for k in item.properties):
        item.stac_extensions.append(PROCESSING_SCHEMA)
    if spec.files_dir is not None:
        item.stac_extensions.append(FILE_SCHEMA)
    return item


@dataclass(frozen=True)
class ItemExtras:
    """What a run knows about the source item: its geometry and bbox (used instead of the
    footprint's), ``derived_from`` hrefs and extra properties (source version...)."""

    geometry: dict[str, Any] | None = None
    bbox: Sequence[float] | None = None
    derived_from: Sequence[str] = ()
    properties: Mapping[str, Any] = field(default_factory=dict)
    scale_offset: Sequence[tuple[float, float]] = ()  # per band, from the source's raster:bands


@dataclass(frozen=True)
class FilledScene:
    """What an output item says about the filled scene, as plain values (no raster objects):
    the pipeline measures them, this room only describes them."""

    item_id: str
    geometry: dict[str, Any]  # the footprint (EPSG:4326), from the source item or the mask
    bbox: Sequence[float]
    epsg: int | None
    wkt2: str | None
    shape: tuple[int, int]
    transform: Sequence[float]  # the first six affine coefficients
    band_names: Sequence[str]
    dtype: str  # numpy dtype name
    nodata: float | None
    counts: Mapping[str, int]  # pixels per QA class name
    qa_classes: Mapping[int, tuple[str, str]]  # QA code → (name, description)
    sources: Sequence[str]
    # the guides, in rank order: {"href" (the raster, no secrets), "datetime" (or None), "bands",
    # "resampling"[, "item": the STAC item href of a guide found by search, linked instead of the file]}
    guides: Sequence[Mapping[str, Any]] = ()


def output_item(scene: FilledScene, options: FillOptions, acquired: str | None, names: Mapping[str, str],
                out_dir: str | os.PathLike[str], extras: ItemExtras = ItemExtras()) -> pystac.Item:
    """The STAC item describing the written outputs ``names`` (asset key → file name, hrefs
    relative to the item) of ``scene``; ``file:`` facts are read from ``out_dir``."""
    geometry, bbox = scene.geometry, list(scene.bbox)
    if acquired:
        when = dt.datetime.fromisoformat(acquired).replace(tzinfo=dt.timezone.utc)
        when_source = "input"
    else:
        when = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        when_source = "processing time (no acquisition date found; pass --datetime)"
    cfg = options.hashable_dict()
    nodata = None if scene.nodata is None or math.isnan(scene.nodata) else scene.nodata
    scales = list(extras.scale_offset) or [(1.0, 0.0)] * len(scene.band_names)
    bands = tuple(
        {"name": n, "data_type": scene.dtype, **({"nodata": nodata} if nodata is not None else {}),
         **({"scale": sc, "offset": off} if (sc, off) != (1.0, 0.0) else {})}
        for n, (sc, off) in zip(scene.band_names, scales)
    )
    qa_classes = [
        {"value": code, "name": name, "description": desc} for code, (name, desc) in scene.qa_classes.items()
    ]
    assets = [
        AssetSpec("filled", names["filled"], COG_MEDIA_TYPE, ("data",), "Filled bands (COG)", bands),
        AssetSpec(
            "qa",
            names["qa"],
            COG_MEDIA_TYPE,
            ("metadata",),
            "Fill QA (COG)",
            ({"name": "qa", "data_type": "uint8"},),
            {"classification:classes": qa_classes},
        ),
        *(
            AssetSpec(f"filled_{b}", names[f"filled_{b}"], "application/x-vrt", ("data",),
                      f"{band['name']} (one-band VRT of the filled COG, for one-band-per-asset readers)", (band,))
            for b, band in enumerate(bands, start=1)
        ),
        AssetSpec("mosaic", names["mosaic"], ZARR_MEDIA_TYPE, ("data",), "Filled scene (Zarr v3)"),
        AssetSpec("quicklook", names["quicklook"], "image/png", ("overview",), "Before | after"),
        AssetSpec("patches", names["patches"], "application/json", ("metadata",), "Per-patch fit diagnostics"),
    ]
    lineage = (
        f"Gaps filled with the '{options.engine}' engine (fallback '{options.fallback}') "
        f"in {options.patch}-px patches overlapping by {options.overlap} px, blended with "
        "a Hann taper; observed pixels copied from the source unchanged"
    )
    guides = [dict(g) for g in scene.guides]
    if guides:
        lineage += (f"; {len(guides)} guide raster(s) (dipfill:guides) resampled onto the grid and given to the "
                    "engine as evidence where they observe")
    spec = ItemSpec(
        item_id=scene.item_id,
        geometry=geometry,
        bbox=bbox,
        datetime=when,
        epsg=scene.epsg,
        wkt2=scene.wkt2,
        shape=scene.shape,
        transform=list(scene.transform)[:6],
        properties={
            "processing:software": {"dipfill": __version__},
            "processing:lineage": lineage,
            "processing:datetime": dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
            .isoformat().replace("+00:00", "Z"),
            "processing:level": "L3",
            "dipfill:config": cfg,
            "dipfill:config_hash": config_hash(cfg),
            "dipfill:counts": scene.counts,
            "dipfill:datetime_source": when_source,
            "dipfill:sources": [os.path.basename(s) for s in scene.sources],
            **({"dipfill:guides": guides} if guides else {}),
            **extras.properties,
        },
        assets=assets,
        files_dir=str(out_dir),
        derived_from=(*extras.derived_from, *(str(g["item"]) for g in guides if g.get("item"))),
        derived_from_files=tuple(str(g["href"]) for g in guides if not g.get("item")),
    )
    item = build_item(spec)
    item.stac_extensions.append("https://stac-extensions.github.io/classification/v2.0.0/schema.json")
    return item
