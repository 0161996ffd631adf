"""STAC in and out.

* :mod:`dipfill.stac.search` — find scenes in a STAC API (pystac-client) or a static
  catalog (read with pystac, filtered here with the same semantics);
* :mod:`dipfill.stac.query` — what a search asks (:class:`SearchQuery`) and what it means
  for one item (shapely footprints, cql2 filters);
* :mod:`dipfill.stac.transport` — the one HTTP transport (retries, timeout, errors that
  keep the status) that searching and publishing share;
* :mod:`dipfill.stac.catalog`, :mod:`dipfill.stac.publish` — a static catalog grown one
  item at a time, and items put into it or into a STAC API;
* :mod:`dipfill.stac.profiles` — one declarative record per collection: asset keys,
  nodata, scale/offset, the QA layer and its decoding into observed / gap / outside;
* :mod:`dipfill.stac.item` — the STAC item describing a filled scene.

Reading an item's pixels is :mod:`dipfill.raster.scene`.
"""

from dipfill.stac.profiles import PROFILES, CollectionProfile, get_profile, profile_for
from dipfill.stac.search import SceneRecord, SearchQuery, open_source, search

__all__ = [
    "PROFILES",
    "CollectionProfile",
    "get_profile",
    "profile_for",
    "SceneRecord",
    "SearchQuery",
    "open_source",
    "search",
]
