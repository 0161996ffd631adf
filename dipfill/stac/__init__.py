"""STAC in and out.

* :mod:`dipfill.stac.search` — find scenes in a STAC API (pystac-client, retries) or a
  static catalog (walked and filtered here with the same semantics);
* :mod:`dipfill.stac.profiles` — one declarative record per collection: asset keys,
  nodata, scale/offset, the QA layer and its decoding into observed / gap / outside;
* :mod:`dipfill.stac.item` — the STAC item describing a filled scene.

Reading an item's pixels is :mod:`dipfill.pipeline.scene`.
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
