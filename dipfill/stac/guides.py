"""Find guide candidates for a target scene: other acquisitions of the same ground.

A guide is another item of the target's collection (or of a given guide collection, e.g.
Sentinel-1 for an optical target) whose footprint covers most of the target's and whose
date is close to the target's: within ``±window_days``, and with ``years=N`` also within
``±window_days`` of the same calendar day in each of the N previous years (the same
season). This module only *searches* and reads metadata — one search per time window
through :func:`dipfill.stac.search.search`, the footprint overlap with shapely — and
returns the candidates in the order of time distance, then cloud cover. Which of them
observes the target's gaps needs pixels: :mod:`dipfill.raster.coverage` measures it and
:mod:`dipfill.pipeline.guides` ranks and chooses.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping

from dipfill.errors import InputError
from dipfill.stac.query import CLOUD_PROPERTY, SearchQuery, item_interval
from dipfill.stac.search import ApiSource, StaticSource, open_source, search

__all__ = [
    "GuideQuery",
    "GuideCandidate",
    "search_guide_candidates",
    "find_guide_candidates",
    "overlapping",
    "guide_windows",
    "footprint_overlap",
    "item_datetime",
    "datetime_distance",
    "cloud_cover",
]

Composite = Literal["none", "median"]
Window = tuple[dt.datetime, dt.datetime]


@dataclass(frozen=True)
class GuideQuery:
    """Which items may guide a target scene.

    ``collection``: where to look (``None``: the target's own collection).
    ``window_days``: ± days around the target's datetime. ``years``: also ± ``window_days``
    around the same calendar day of each of that many previous years (29 February → 28).
    ``max_guides``: how many guides to take. ``min_overlap``: share of the target's
    footprint a candidate's footprint must cover (0 < x ≤ 1). ``max_cloud``: the
    candidates' ``eo:cloud_cover`` upper bound in percent (an item without it then does
    not match, as in a search). ``composite``: ``none`` (each guide is one item) or
    ``median`` (each guide is the per-pixel median of the clear observations of every
    candidate in one time window; see :func:`dipfill.raster.coverage.median_composite`).
    """

    collection: str | None = None
    window_days: int = 64
    years: int = 0
    max_guides: int = 2
    min_overlap: float = 0.5
    max_cloud: float | None = None
    composite: Composite = "none"

    def __post_init__(self) -> None:
        def whole(name: str, value: Any, least: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InputError(f"guide {name} must be a whole number ≥ {least}, got {value!r}")

        whole("window_days", self.window_days, 0)
        whole("years", self.years, 0)
        whole("max_guides", self.max_guides, 1)
        if not isinstance(self.min_overlap, (int, float)) or not 0 < self.min_overlap <= 1:
            raise InputError(f"guide min_overlap must be a share in (0, 1], got {self.min_overlap!r}")
        if self.max_cloud is not None and not (isinstance(self.max_cloud, (int, float))
                                               and 0 <= self.max_cloud <= 100):
            raise InputError(f"guide max_cloud must be a percentage in 0..100, got {self.max_cloud!r}")
        if self.composite not in ("none", "median"):
            raise InputError(f"guide composite must be 'none' or 'median', got {self.composite!r}")
        if self.collection is not None and not str(self.collection).strip():
            raise InputError("guide collection must be a collection id or None (the target's own)")

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for a run record or an item's properties."""
        return {"collection": self.collection, "window_days": self.window_days, "years": self.years,
                "max_guides": self.max_guides, "min_overlap": self.min_overlap, "max_cloud": self.max_cloud,
                "composite": self.composite}

    def describe_window(self) -> str:
        """``±64 days``, ``±64 days (and the same season of the 2 previous years)``."""
        text = f"±{self.window_days} days"
        if self.years:
            text += f" (and the same season of the {self.years} previous year{'s' if self.years > 1 else ''})"
        return text


@dataclass(frozen=True)
class GuideCandidate:
    """One item found in a guide window, before any pixel is read.

    ``days_from_target``: signed (negative: before the target). ``overlap``: share of the
    target's footprint this item's footprint covers. ``window``: index into
    :func:`guide_windows` (0 = around the target's own date; merged windows share one).
    """

    item: dict[str, Any]
    days_from_target: float
    overlap: float
    window: int
    cloud_cover: float | None

    @property
    def id(self) -> str:
        return str(self.item.get("id"))

    def sort_key(self) -> tuple[float, float, str]:
        """Time distance, then cloud cover (unknown last), then id: the order before pixels."""
        cloud = self.cloud_cover if self.cloud_cover is not None else math.inf
        return (abs(self.days_from_target), cloud, self.id)


# ------------------------------------------------------------------------------ time
def _utc(value: dt.datetime) -> dt.datetime:
    return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).astimezone(dt.timezone.utc)


def item_datetime(item: Mapping[str, Any] | dt.datetime | str) -> dt.datetime:
    """The instant an item stands for (aware UTC): its ``datetime``, else the middle of
    ``start_datetime``..``end_datetime``. Datetimes and RFC 3339 text pass through."""
    if isinstance(item, dt.datetime):
        return _utc(item)
    if isinstance(item, str):
        start, _ = item_interval({"properties": {"datetime": item}})
        if start is None:
            raise InputError(f"not an RFC 3339 datetime: {item!r}")
        return start
    props = item.get("properties") or {}
    if props.get("datetime"):
        start, _ = item_interval({"properties": {"datetime": props["datetime"]}})
        if start is not None:
            return start
    start, end = item_interval(item)
    if start is None or end is None:
        raise InputError(f"item {item.get('id', '?')} has no datetime (nor start_datetime/end_datetime)")
    return start + (end - start) / 2


def datetime_distance(a: Mapping[str, Any] | dt.datetime | str, b: Mapping[str, Any] | dt.datetime | str
                      ) -> dt.timedelta:
    """How far apart two items (or datetimes, or RFC 3339 texts) are in time: ≥ 0."""
    return abs(item_datetime(b) - item_datetime(a))


def _same_day(when: dt.datetime, years_back: int) -> dt.datetime:
    year = when.year - years_back
    try:
        return when.replace(year=year)
    except ValueError:  # 29 February in a year that has none
        return when.replace(year=year, day=28)


def guide_windows(target_time: dt.datetime, query: GuideQuery) -> tuple[Window, ...]:
    """The time windows to search, nearest first: ± ``window_days`` around the target's
    datetime, then around the same day in each of ``years`` previous years. Windows that
    overlap (``window_days`` over about half a year) are merged: one search each."""
    half = dt.timedelta(days=query.window_days)
    centres = [_same_day(_utc(target_time), k) for k in range(query.years + 1)]
    merged: list[list[dt.datetime]] = []
    for c in centres:  # newest first; each window ends before the previous one starts or touches it
        if merged and c + half >= merged[-1][0]:
            merged[-1][0] = c - half
        else:
            merged.append([c - half, c + half])
    return tuple((a, b) for a, b in merged)


# ------------------------------------------------------------------------- footprints
def _footprint(item: Mapping[str, Any]) -> Any:
    """The item's footprint (geometry, else bbox) as a shapely geometry in an equal-area
    plane: x = longitude, y = sin(latitude) (Lambert's cylindrical equal-area projection,
    up to a constant), so area ratios are true ratios on the sphere."""
    import numpy as np
    import shapely
    from shapely.geometry import box, shape

    if item.get("geometry"):
        geom = shape(item["geometry"])
    elif item.get("bbox"):
        b = item["bbox"]
        half = len(b) // 2
        w, s, e, n = b[0], b[1], b[half], b[half + 1]
        geom = box(w, s, e, n) if w <= e else box(w, s, 180, n).union(box(-180, s, e, n))
    else:
        return None
    geom = shapely.force_2d(geom)
    geom = shapely.transform(geom, lambda xy: np.column_stack([xy[:, 0], np.sin(np.radians(xy[:, 1]))]))
    return geom if geom.is_valid else shapely.make_valid(geom)


def footprint_overlap(target: Mapping[str, Any], candidate: Mapping[str, Any]) -> float:
    """Share of ``target``'s footprint that ``candidate``'s footprint covers (0..1);
    0 when either has no footprint or the target's has no area."""
    a, b = _footprint(target), _footprint(candidate)
    if a is None or b is None or a.area <= 0:
        return 0.0
    return float(min(1.0, a.intersection(b).area / a.area))


def _search_boxes(target: Mapping[str, Any]) -> list[tuple[float, float, float, float]]:
    """The target's bbox in lon/lat (two boxes across the antimeridian)."""
    b = target.get("bbox")
    if not b:
        if not target.get("geometry"):
            raise InputError(f"item {target.get('id', '?')} has neither geometry nor bbox: no place to search")
        from shapely.geometry import shape

        w, s, e, n = shape(target["geometry"]).bounds
    else:
        half = len(b) // 2
        w, s, e, n = (float(v) for v in (b[0], b[1], b[half], b[half + 1]))
    if w > e:
        return [(w, s, 180.0, n), (-180.0, s, e, n)]
    return [(w, s, e, n)]


def cloud_cover(item: Mapping[str, Any]) -> float | None:
    """``eo:cloud_cover`` in percent, when the item says."""
    value = (item.get("properties") or {}).get(CLOUD_PROPERTY)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ---------------------------------------------------------------------------- search
def _is_target(item: Mapping[str, Any], target: Mapping[str, Any]) -> bool:
    return str(item.get("id")) == str(target.get("id")) and (
        not item.get("collection") or not target.get("collection") or item.get("collection") == target.get("collection")
    )


def search_guide_candidates(
    source: str | os.PathLike[str] | ApiSource | StaticSource,
    target: Mapping[str, Any],
    query: GuideQuery,
) -> list[GuideCandidate]:
    """Every item of the guide collection in the guide windows whose footprint meets the
    target's bbox, the target itself excluded, with its overlap and time distance; in
    the order of time distance, then cloud cover, then id. Not filtered by overlap (see
    :func:`find_guide_candidates`), so a caller can say why none was kept.

    One search per time window (and per side of the antimeridian). ``source`` is a STAC
    API or static catalog (anything :func:`~dipfill.stac.search.open_source` opens), or
    one already opened.
    """
    collection = query.collection or target.get("collection")
    if not collection:
        raise InputError(f"item {target.get('id', '?')} names no collection; give the guide collection")
    when = item_datetime(target)
    if not isinstance(source, (ApiSource, StaticSource)):
        source = open_source(source)
    found: dict[tuple[str, str], GuideCandidate] = {}
    for index, (start, end) in enumerate(guide_windows(when, query)):
        for bbox in _search_boxes(target):
            sq = SearchQuery(collections=(str(collection),), bbox=bbox, datetime=(start, end),
                             max_cloud=query.max_cloud)
            for item in search(source, sq):
                key = (str(item.get("collection") or collection), str(item.get("id")))
                if key in found or _is_target(item, target):
                    continue
                days = (item_datetime(item) - when).total_seconds() / 86400.0
                found[key] = GuideCandidate(item=dict(item), days_from_target=days,
                                            overlap=footprint_overlap(target, item), window=index,
                                            cloud_cover=cloud_cover(item))
    return sorted(found.values(), key=GuideCandidate.sort_key)


def find_guide_candidates(
    source: str | os.PathLike[str] | ApiSource | StaticSource,
    target: Mapping[str, Any],
    query: GuideQuery,
) -> list[dict[str, Any]]:
    """The items that may guide ``target``: in the guide windows, covering at least
    ``min_overlap`` of its footprint, not the target itself; nearest in time first, then
    least cloudy. Item dicts as the source returns them."""
    return [c.item for c in overlapping(search_guide_candidates(source, target, query), query)]


def overlapping(candidates: Iterable[GuideCandidate], query: GuideQuery) -> list[GuideCandidate]:
    """The candidates whose footprint covers at least ``query.min_overlap`` of the target's."""
    return [c for c in candidates if c.overlap >= query.min_overlap - 1e-9]
