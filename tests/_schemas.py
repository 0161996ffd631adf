"""Validate STAC JSON against the schemas it declares, offline: the schema files are
vendored under tests/schemas/ by URL (``https://HOST/PATH`` is ``tests/schemas/HOST/PATH``).

A reference to a URL that is not vendored is an error (``referencing`` raises
``Unresolvable``), never a download.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

SCHEMAS = Path(__file__).resolve().parent / "schemas"
STAC_CORE = {
    "Feature": "https://schemas.stacspec.org/v{v}/item-spec/json-schema/item.json",
    "Catalog": "https://schemas.stacspec.org/v{v}/catalog-spec/json-schema/catalog.json",
    "Collection": "https://schemas.stacspec.org/v{v}/collection-spec/json-schema/collection.json",
}


def vendored_path(url: str) -> Path:
    """The file under tests/schemas/ that holds the schema at ``url``."""
    bare = url.split("#", 1)[0]
    scheme, sep, rest = bare.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise NoSuchResource(ref=url)
    return SCHEMAS / rest


def _retrieve(url: str) -> Resource:
    path = vendored_path(url)
    if not path.is_file():
        raise NoSuchResource(ref=url)  # offline: not vendored means not there
    return Resource.from_contents(json.loads(path.read_text()))


@lru_cache(maxsize=None)
def _registry() -> Registry:
    from jsonschema_specifications import REGISTRY as METASCHEMAS  # draft-07 etc., shipped with jsonschema

    return METASCHEMAS.combine(Registry(retrieve=_retrieve))


def schema_urls(doc: Mapping[str, Any]) -> list[str]:
    """The core schema of a STAC object (by its ``type`` and ``stac_version``) and every
    extension schema it declares."""
    core = STAC_CORE[doc["type"]].format(v=doc["stac_version"])
    return [core, *doc.get("stac_extensions", [])]


def validation_errors(doc: Mapping[str, Any]) -> list[str]:
    """``url: path: message`` for every way ``doc`` fails one of its schemas (empty: valid)."""
    errors = []
    for url in schema_urls(doc):
        path = vendored_path(url)
        assert path.is_file(), f"{url} is declared but not vendored in tests/schemas/ ({path})"
        schema = json.loads(path.read_text())
        validator = Draft7Validator(schema, registry=_registry())
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            where = "/".join(map(str, err.absolute_path)) or "(root)"
            reasons = "; ".join(c.message for c in (err.context or [])[:4])
            errors.append(f"{url}: {where}: {err.message[:300]}" + (f" [{reasons[:400]}]" if reasons else ""))
    return errors
