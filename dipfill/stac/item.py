"""Describe one filled scene as a STAC item: metadata out, nothing else.

Projection is ``proj:code`` (``"EPSG:3577"``; ``proj:wkt2`` for a CRS without one) as the
projection extension v2.0.0 the item declares: v2 removed ``proj:epsg`` and its schema
rejects it. stackstac (0.5) still reads only ``proj:epsg``: pass it ``epsg=`` or copy the
code into ``proj:epsg`` on the dicts you hand it. Band information is written both as
``raster:bands`` (raster extension, read by odc-stac and titiler) and STAC 1.1 ``bands``.

The product mirrors its input: one COG asset per band under the input's asset key, with the
input asset's title, roles, ``eo:bands`` and ``raster:bands`` (scale/offset kept; data type
and nodata those of the file; statistics dropped, they describe the unfilled pixels), and
the input's QA asset copied under its own key (:class:`MirroredAsset`). Code written for the
input collection (``odc.stac.load(items, bands=["red", "nir08"])``, stackstac) reads the
output unchanged. dipfill's own assets (``filled`` VRT of all bands, ``qa``, ``mosaic``,
``quicklook``, ``patches``) sit beside them; one whose key the input already uses is
prefixed ``dipfill_``.
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
    "MirroredAsset",
    "OWN_ASSETS",
    "own_asset_keys",
    "mirrored_properties",
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
EO_SCHEMA = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
VRT_MEDIA_TYPE = "application/x-vrt"

#: dipfill's own assets, beside the mirrored ones (the key each gets unless the input uses it).
OWN_ASSETS = ("filled", "qa", "mosaic", "quicklook", "patches")
#: Fields of an input asset a mirrored asset keeps (metadata whose extension the output
#: declares; hrefs, file:, proj:, alternate and storage: facts describe the input's file).
MIRRORED_FIELDS = ("title", "description", "roles", "eo:bands", "gsd", "classification:classes",
                   "classification:bitfields", "unit")
#: Item properties an output repeats from its input: common metadata (core schema) that
#: code written for the input collection filters on (``platform == "landsat-8"``).
MIRRORED_PROPERTIES = ("platform", "constellation", "instruments", "mission")
#: raster:bands / bands entries that no longer hold for the filled pixels.
_STALE_BAND_FIELDS = ("statistics", "histogram")
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


def mirrored_properties(properties: Mapping[str, Any]) -> dict[str, Any]:
    """The input item's :data:`MIRRORED_PROPERTIES` it has."""
    return {k: properties[k] for k in MIRRORED_PROPERTIES if properties.get(k) is not None}


def own_asset_keys(mirrored: Sequence[str]) -> dict[str, str]:
    """The asset key of each of dipfill's own outputs (:data:`OWN_ASSETS`): its name, or
    ``dipfill_<name>`` where an input asset mirrored into the product has that key."""
    taken = set(mirrored)
    return {name: name if name not in taken else f"dipfill_{name}" for name in OWN_ASSETS}


@dataclass(frozen=True)
class MirroredAsset:
    """An input asset whose key and metadata the output repeats: a filled band (``band`` its
    index in the scene) or an asset copied unchanged (``band`` None: the QA layer).

    ``source`` is the input asset's JSON; only :data:`MIRRORED_FIELDS` and its band
    entries are taken from it. ``dtype``/``nodata`` are the written file's; ``shape``,
    ``transform`` and ``epsg``/``wkt2`` are given only when its grid is not the item's (a
    copied QA layer on its own grid), and then go on the asset as ``proj:`` fields."""

    key: str
    source: Mapping[str, Any]
    dtype: str
    nodata: float | None = None
    band: int | None = None
    shape: tuple[int, int] | None = None
    transform: Sequence[float] | None = None
    epsg: int | None = None
    wkt2: str | None = None


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
    # fields added to every filled band's raster:bands/bands entry (a mode's: --product ndvi
    # states the index, its nodata "nan", the accepted QA classes, the vegetation threshold)
    band_fields: Mapping[str, Any] = field(default_factory=dict)


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
    # one per band (band order), then copied input assets (the QA layer); empty: dipfill fill's
    # bands from files get keys from their names (:func:`band_asset_keys`)
    mirrored: Sequence[MirroredAsset] = ()
    resolution: float | None = None  # the grid's pixel size (raster:bands spatial_resolution)


def band_asset_keys(band_names: Sequence[str]) -> list[str]:
    """Asset keys for bands that come from files, not from a STAC item: each band name made
    safe (``B3 red`` → ``B3_red``; none → ``band<n>``), distinct."""
    keys: list[str] = []
    for i, name in enumerate(band_names, start=1):
        key = _UNSAFE.sub("_", name).strip("._-") or f"band{i}"
        while key in keys or key in OWN_ASSETS:
            key = f"{key}_{i}"
        keys.append(key)
    return keys


def _mirrored_bands(source: Mapping[str, Any], base: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The input asset's ``raster:bands`` entry (else its STAC 1.1 ``bands`` entry) with
    ``base`` (name, data type, nodata, scale/offset of the written file) over it, stale
    statistics dropped."""
    entries = source.get("raster:bands") or source.get("bands") or [{}]
    entry = entries[0] if isinstance(entries, list) and entries and isinstance(entries[0], Mapping) else {}
    merged = {k: v for k, v in entry.items() if k not in _STALE_BAND_FIELDS and k not in ("name", "nodata")}
    return [{**merged, **base}]


def _mirrored_asset(m: MirroredAsset, href: str, base: Mapping[str, Any], resolution: float | None) -> AssetSpec:
    src = m.source
    extra = {k: src[k] for k in MIRRORED_FIELDS if k in src and k not in ("title", "roles")}
    if not all(isinstance(b, Mapping) for b in extra.get("eo:bands") or ()):
        del extra["eo:bands"]  # STAC 0.x items list band indexes: not eo v1.1 band objects
    band = _mirrored_bands(src, base)
    if resolution is not None and "spatial_resolution" in band[0] and m.shape is None:
        band[0]["spatial_resolution"] = resolution  # resampled onto the item's grid
    if m.shape is not None:  # a copied asset on its own grid
        extra["proj:shape"] = list(m.shape)
        extra["proj:transform"] = list(m.transform or ())[:6]
        if m.epsg is not None:
            extra["proj:code"] = f"EPSG:{m.epsg}"
        elif m.wkt2:
            extra["proj:wkt2"] = m.wkt2
    what = "filled" if m.band is not None else "copied from the input"
    title = str(src.get("title") or m.key)
    return AssetSpec(m.key, href, COG_MEDIA_TYPE, tuple(src.get("roles") or ("data",)), f"{title} ({what})",
                     tuple(band), extra)


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
         **({"scale": sc, "offset": off} if (sc, off) != (1.0, 0.0) else {}), **extras.band_fields}
        for n, (sc, off) in zip(scene.band_names, scales)
    )
    qa_classes = [
        {"value": code, "name": name, "description": desc} for code, (name, desc) in scene.qa_classes.items()
    ]
    mirrored = list(scene.mirrored)
    by_band = {m.band: m for m in mirrored if m.band is not None}
    keys = [by_band[b].key if b in by_band else k
            for b, k in enumerate(band_asset_keys(scene.band_names))]
    own = own_asset_keys([*keys, *(m.key for m in mirrored if m.band is None)])
    band_assets = [
        _mirrored_asset(by_band[b], names[key], band, scene.resolution) if b in by_band
        else AssetSpec(key, names[key], COG_MEDIA_TYPE, ("data",), f"{band['name']} (filled)", (band,))
        for b, (key, band) in enumerate(zip(keys, bands))
    ]
    copied = [
        _mirrored_asset(m, names[m.key], {"data_type": m.dtype, **({"nodata": m.nodata} if m.nodata is not None
                                                                  else {})}, scene.resolution)
        for m in mirrored if m.band is None
    ]
    assets = [
        *band_assets,
        *copied,
        AssetSpec(own["filled"], names[own["filled"]], VRT_MEDIA_TYPE, ("data", "virtual"),
                  "All filled bands (VRT over the band COGs)", bands),
        AssetSpec(
            own["qa"],
            names[own["qa"]],
            COG_MEDIA_TYPE,
            ("metadata",),
            "Fill QA (COG)",
            ({"name": "qa", "data_type": "uint8"},),
            {"classification:classes": qa_classes},
        ),
        AssetSpec(own["mosaic"], names[own["mosaic"]], ZARR_MEDIA_TYPE, ("data",), "Filled scene (Zarr v3)"),
        AssetSpec(own["quicklook"], names[own["quicklook"]], "image/png", ("overview",), "Before | after"),
        AssetSpec(own["patches"], names[own["patches"]], "application/json", ("metadata",),
                  "Per-patch fit diagnostics"),
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
    item.stac_extensions.append(CLASSIFICATION_SCHEMA)
    if any("eo:bands" in a.extra_fields for a in item.assets.values()):
        item.stac_extensions.append(EO_SCHEMA)
    return item
