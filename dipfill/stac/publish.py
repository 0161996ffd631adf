"""Put finished items where readers find them: a static catalog (on disk or object storage), and a STAC API.

Both are upserts: re-publishing the same item replaces it, so reruns are idempotent, and
so are retries: an API is written through the same retrying transport that searches it
(:mod:`dipfill.stac.transport`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from dipfill.errors import InputError
from dipfill.storage import (ObjectPath, as_path, check_output_dir, copy_tree, exclusive, list_files,
                             read_json, write_json)
from dipfill.stac.catalog import (
    catalog_with_collection,
    collection_with_item,
    new_catalog,
    new_collection,
    with_item_links,
)
from dipfill.stac.transport import DEFAULT_BACKOFF, DEFAULT_RETRIES, DEFAULT_TIMEOUT, make_stac_io, stac_error

__all__ = ["add_to_static_catalog", "check_catalog_root", "publish_to_api", "publish_item", "absolute_item"]


#: The lock file (or lease object, on object storage) under which a static catalog's
#: collection and catalog documents are read, updated and written: two runs adding items
#: to one output root at once (cron) must not drop each other's item links.
CATALOG_LOCK = ".dipfill-catalog.lock"


def _read(path: "Path | ObjectPath", default: dict[str, Any]) -> dict[str, Any]:
    try:
        return read_json(path)
    except FileNotFoundError:
        return default


def _write(path: "Path | ObjectPath", doc: Mapping[str, Any]) -> None:
    write_json(path, doc)


def remote_hrefs(item: Mapping[str, Any], item_dir: ObjectPath) -> dict[str, Any]:
    """``item`` with each relative asset href made the object's URL (``s3://bucket/...``):
    what odc-stac, stackstac and GDAL (``/vsis3/``) open directly, and what stays right when
    the item JSON is read without its location (a STAC API, ``pystac.Item.from_dict``)."""
    out = json.loads(json.dumps(item))
    for asset in out.get("assets", {}).values():
        href = asset.get("href", "")
        if "://" not in href and not href.startswith("/"):
            asset["href"] = f"{item_dir.url}/{href[2:] if href.startswith('./') else href}"
    return out


def check_catalog_root(root: str | Path, collection_id: str, *, flag: str = "--catalog") -> Path:
    """The static catalog root ``root`` stands for, checked before any work: a directory
    (existing or to be created) we can write in, whose ``catalog.json`` and
    ``<collection_id>/collection.json``, where present, are a STAC catalog and collection.
    The path of a ``catalog.json`` itself stands for its directory. Anything else is an
    :class:`~dipfill.errors.InputError` naming ``flag``, the path and the fix."""
    path = as_path(root)
    if path.is_file() and path.name == "catalog.json":
        path = path.parent
    elif path.is_file():
        raise InputError(f"{flag} {root} is a file, not a catalog directory; give the directory that holds "
                         "catalog.json (or a new directory to start a catalog in)")
    check_output_dir(path, flag=flag)
    check_output_dir(path / collection_id, flag=flag)
    documents = ((path / "catalog.json", "Catalog"), (path / collection_id / "collection.json", "Collection"))
    for doc_path, kind in documents:
        if not doc_path.exists():
            continue
        try:
            doc = json.loads(doc_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"{flag} {root}: {doc_path} is not a STAC {kind.lower()} ({exc}); "
                             f"give another {flag} directory") from None
        if not isinstance(doc, dict) or doc.get("type") != kind:
            found = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
            raise InputError(f"{flag} {root}: {doc_path} is not a STAC {kind.lower()} (type {found!r}); "
                             f"give another {flag} directory")
    return path


def add_to_static_catalog(root: "str | Path | ObjectPath", item_dir: "str | Path | ObjectPath",
                          collection_id: str) -> "Path | ObjectPath":
    """Add the item written in ``item_dir`` (its ``<id>.json`` and assets) to the catalog at
    ``root`` (a directory or an object-storage URL) under ``collection_id``; returns the
    item's path in the catalog.

    When ``item_dir`` is not already ``ROOT/<collection>/<id>/``, its files are copied there
    first. The item JSON is written last, then the collection, then the catalog; the two
    shared documents are read and rewritten under :data:`CATALOG_LOCK` (a lease on object
    storage), so concurrent runs into one root lose no item. On object storage the item's
    asset hrefs become the objects' URLs (:func:`remote_hrefs`).
    """
    root, item_dir = as_path(root), as_path(item_dir)
    src_item = next(p for p in list_files(item_dir, "*.json") if not p.name.endswith("_patches.json"))
    item = read_json(src_item)
    dest = root / collection_id / item["id"]
    if dest.resolve() != item_dir.resolve():
        copy_tree(item_dir, dest, skip=src_item.name)
    item_path = dest / f"{item['id']}.json"
    doc = with_item_links(item, collection_id)
    _write(item_path, remote_hrefs(doc, dest) if isinstance(dest, ObjectPath) else doc)
    with exclusive(root / CATALOG_LOCK):
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


def _fix(status: int) -> str | None:
    """What to do about a refused upsert, where there is something to do."""
    if status in (401, 403):
        return "check the credentials the API expects"
    if status in (404, 405):
        return "is the API's Transactions extension enabled (stac-fastapi: ENABLE_TRANSACTIONS_EXTENSIONS=true)?"
    if status in (400, 422):
        return "the API rejected the document as invalid STAC"
    return None


def publish_to_api(
    url: str,
    collection: Mapping[str, Any],
    items: list[Mapping[str, Any]],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff_factor: float = DEFAULT_BACKOFF,
) -> None:
    """Upsert ``collection`` and ``items`` into the STAC API at ``url`` (Transactions extension):
    POST, and PUT where the resource exists (409).

    Sent through the search transport (:func:`~dipfill.stac.transport.make_stac_io`): HTTP
    429/502/503/504, connection errors and timeouts are retried ``retries`` times with
    backoff, each request waits at most ``timeout`` s. A failure raises
    :class:`~dipfill.errors.StacError` with the HTTP status in ``.status``.
    """
    import requests

    base = url.rstrip("/")
    session = make_stac_io(timeout=timeout, retries=retries, backoff_factor=backoff_factor).session

    def send(method: str, target: str, doc: Mapping[str, Any]) -> requests.Response:
        try:
            return session.request(method, target, json=doc, timeout=timeout)
        except requests.RequestException as exc:
            raise stac_error(f"{method} {target}", "publishing", status=None, text=str(exc), retries=retries,
                             timeout=timeout) from None

    def upsert(post_url: str, put_url: str, doc: Mapping[str, Any]) -> None:
        method, r = "POST", send("POST", post_url, doc)
        if r.status_code == 409:
            method, r = "PUT", send("PUT", put_url, doc)
        if r.status_code >= 400:
            raise stac_error(f"{method} {r.url}", "publishing", status=r.status_code, text=r.text, retries=retries,
                             timeout=timeout, fix=_fix(r.status_code))

    cid = collection["id"]
    upsert(f"{base}/collections", f"{base}/collections/{cid}", collection)
    for item in items:
        doc = {**item, "collection": cid}
        upsert(f"{base}/collections/{cid}/items", f"{base}/collections/{cid}/items/{item['id']}", doc)


def publish_item(url: str, item_path: str | Path, collection_id: str) -> None:
    """Upsert the item written at ``item_path`` and its collection ``collection_id`` into the
    STAC API at ``url``. Asset hrefs become ``file://`` URIs of the written files: readers
    resolve a bare ``/path`` against the API's URL, and an API has no directory to resolve
    relative ones against."""
    item_path = as_path(item_path)
    item = read_json(item_path)
    doc = absolute_item(item, item_path.parent.resolve().as_uri())
    publish_to_api(url, collection_with_item(new_collection(collection_id), item), [doc])
