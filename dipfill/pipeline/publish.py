"""Put finished items where readers find them: a static catalog on disk, and a STAC API.

Both are upserts: re-publishing the same item replaces it, so reruns are idempotent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

from dipfill.errors import StacError
from dipfill.pipeline.write import staged
from dipfill.stac.catalog import (
    catalog_with_collection,
    collection_with_item,
    new_catalog,
    new_collection,
    with_item_links,
)

__all__ = ["add_to_static_catalog", "publish_to_api", "absolute_item"]


def _read(path: Path, default: dict[str, Any]) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else default


def _write(path: Path, doc: Mapping[str, Any]) -> None:
    with staged(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")


def add_to_static_catalog(root: str | Path, item_dir: str | Path, collection_id: str) -> Path:
    """Add the item written in ``item_dir`` (its ``<id>.json`` and assets) to the catalog at
    ``root`` under ``collection_id``; returns the item's path in the catalog.

    When ``item_dir`` is not already ``ROOT/<collection>/<id>/``, its files are copied there
    first. The item JSON is written last, then the collection, then the catalog.
    """
    root, item_dir = Path(root), Path(item_dir)
    src_item = next(p for p in item_dir.glob("*.json") if not p.name.endswith("_patches.json"))
    item = json.loads(src_item.read_text())
    dest = root / collection_id / item["id"]
    if dest.resolve() != item_dir.resolve():
        dest.mkdir(parents=True, exist_ok=True)
        for path in item_dir.iterdir():
            if path == src_item:
                continue
            target = dest / path.name
            if path.is_dir():
                shutil.copytree(path, target, dirs_exist_ok=True)
            else:
                shutil.copy2(path, target)
    item_path = dest / f"{item['id']}.json"
    _write(item_path, with_item_links(item, collection_id))
    coll_path = root / collection_id / "collection.json"
    _write(coll_path, collection_with_item(_read(coll_path, new_collection(collection_id)), item))
    cat_path = root / "catalog.json"
    _write(cat_path, catalog_with_collection(_read(cat_path, new_catalog()), collection_id))
    return item_path


def absolute_item(item: Mapping[str, Any], base: str) -> dict[str, Any]:
    """A copy of ``item`` whose relative asset hrefs are resolved against ``base`` (a directory
    path or URL): an API has no directory to resolve them against."""
    out = json.loads(json.dumps(item))
    sep = "" if base.endswith("/") else "/"
    for asset in out.get("assets", {}).values():
        href = asset["href"]
        if "://" not in href and not href.startswith("/"):
            asset["href"] = f"{base}{sep}{href[2:] if href.startswith('./') else href}"
    out["links"] = [ln for ln in out.get("links", []) if ln.get("rel") not in {"root", "parent", "self"}]
    return out


def publish_to_api(url: str, collection: Mapping[str, Any], items: list[Mapping[str, Any]], *, timeout: float = 30.0) -> None:
    """Upsert ``collection`` and ``items`` into the STAC API at ``url`` (Transactions extension):
    POST, and PUT where the resource exists (409)."""
    import requests

    base = url.rstrip("/")
    session = requests.Session()

    def upsert(post_url: str, put_url: str, doc: Mapping[str, Any]) -> None:
        try:
            r = session.post(post_url, json=doc, timeout=timeout)
            if r.status_code == 409:
                r = session.put(put_url, json=doc, timeout=timeout)
        except requests.RequestException as exc:
            raise StacError(f"{post_url}: cannot publish: {exc}") from None
        if r.status_code >= 400:
            raise StacError(f"{r.request.method} {r.url}: HTTP {r.status_code}: {r.text[:300]}")

    cid = collection["id"]
    upsert(f"{base}/collections", f"{base}/collections/{cid}", collection)
    for item in items:
        doc = {**item, "collection": cid}
        upsert(f"{base}/collections/{cid}/items", f"{base}/collections/{cid}/items/{item['id']}", doc)
