"""A self-contained static STAC catalog that grows one item at a time. Metadata only.

Layout (DESIGN.md), all hrefs relative so the tree can be copied or served anywhere:

    ROOT/catalog.json                         links: child -> <collection>/collection.json
    ROOT/<collection>/collection.json         links: item -> <item-id>/<item-id>.json; extent
    ROOT/<collection>/<item-id>/<item-id>.json   links: root, parent, collection

Adding an item changes only the new item's links, its collection's links and extent, and
(for a new collection) the root catalog: other items are never rewritten, so concurrent
scene writers only contend on the small collection document. These functions build the
documents as dicts; :mod:`dipfill.stac.publish` writes them atomically.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

__all__ = ["new_catalog", "new_collection", "with_item_links", "collection_with_item", "catalog_with_collection"]

STAC_VERSION = "1.1.0"


def new_catalog(catalog_id: str = "dipfill", description: str = "Gap-filled scenes written by dipfill") -> dict[str, Any]:
    return {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": catalog_id,
        "description": description,
        "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"}],
    }


def new_collection(collection_id: str, description: str | None = None, license: str = "other") -> dict[str, Any]:
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "id": collection_id,
        "description": description or f"{collection_id}: gap-filled scenes (dipfill)",
        "license": license,
        "extent": {"spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]}, "temporal": {"interval": [[None, None]]}},
        "links": [
            {"rel": "root", "href": "../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
        ],
        "dipfill:items": 0,
    }


def with_item_links(item: Mapping[str, Any], collection_id: str) -> dict[str, Any]:
    """The item dict placed at ``<collection>/<id>/<id>.json`` with root/parent/collection links."""
    out = copy.deepcopy(dict(item))
    keep = [ln for ln in out.get("links", []) if ln.get("rel") not in {"root", "parent", "collection", "self"}]
    out["links"] = keep + [
        {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "../collection.json", "type": "application/json"},
        {"rel": "collection", "href": "../collection.json", "type": "application/json"},
    ]
    out["collection"] = collection_id
    return out


def collection_with_item(collection: Mapping[str, Any], item: Mapping[str, Any]) -> dict[str, Any]:
    """``collection`` with a link to ``item`` and its extent grown to cover it (idempotent)."""
    out = copy.deepcopy(dict(collection))
    href = f"./{item['id']}/{item['id']}.json"
    links = [ln for ln in out["links"] if not (ln.get("rel") == "item" and ln.get("href") == href)]
    links.append({"rel": "item", "href": href, "type": "application/geo+json"})
    out["links"] = links
    first = out.get("dipfill:items", 0) == 0
    out["dipfill:items"] = sum(1 for ln in links if ln.get("rel") == "item")
    bbox = list(item["bbox"])
    when = item["properties"].get("datetime") or item["properties"].get("start_datetime")
    if first:
        out["extent"] = {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [[when, when]]}}
    else:
        (old,) = out["extent"]["spatial"]["bbox"][:1]
        out["extent"]["spatial"]["bbox"][0] = [
            min(old[0], bbox[0]), min(old[1], bbox[1]), max(old[2], bbox[2]), max(old[3], bbox[3])
        ]
        start, end = out["extent"]["temporal"]["interval"][0]
        out["extent"]["temporal"]["interval"][0] = [min(start, when), max(end, when)]
    return out


def catalog_with_collection(catalog: Mapping[str, Any], collection_id: str) -> dict[str, Any]:
    out = copy.deepcopy(dict(catalog))
    href = f"./{collection_id}/collection.json"
    if not any(ln.get("rel") == "child" and ln.get("href") == href for ln in out["links"]):
        out["links"].append({"rel": "child", "href": href, "type": "application/json"})
    return out
