"""What a scene search asks, and what it means for one item.

:class:`SearchQuery` normalises "like" inputs once (``"2020"``, ``"-20,15,-5,30"``, a
CQL2-JSON string) into canonical values, and says how to put them to a STAC API
(:meth:`~SearchQuery.datetime_param`, :meth:`~SearchQuery.combined_filter`).
:func:`item_matches` is the same query applied to one item dict, with the semantics of a
STAC API (pgstac), for sources that have no search endpoint: the footprint test is
shapely's, CQL2-JSON filters are evaluated by the ``cql2`` library, dates are parsed by
pystac (dateutil).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from dipfill.errors import InputError

__all__ = [
    "CLOUD_PROPERTY",
    "CQL2_OPERATORS",
    "SearchQuery",
    "SceneRecord",
    "parse_interval",
    "item_matches",
    "item_interval",
    "updated_at",
    "cloud_ok",
    "updated_ok",
    "filter_matches",
]

CLOUD_PROPERTY = "eo:cloud_cover"
_UTC = dt.timezone.utc
_DATE = re.compile(r"\d{4}(?:-\d{2}){0,2}")  # 2020, 2020-02, 2020-02-19: a period, not an instant

Interval = tuple["dt.datetime | None", "dt.datetime | None"]

# The CQL2 operators the cql2 library evaluates on an item (cql2 takes any other name for
# a function it cannot evaluate, which would make every item "unknown": refused instead).
CQL2_OPERATORS = frozenset({
    "and", "or", "not", "=", "<>", "<", "<=", ">", ">=", "like", "between", "in", "isNull",
    "casei", "accenti", "+", "-", "*", "/", "%", "^", "div",
    "s_intersects", "s_equals", "s_disjoint", "s_touches", "s_within", "s_overlaps", "s_crosses", "s_contains",
    "t_after", "t_before", "t_contains", "t_disjoint", "t_during", "t_equals", "t_finishedby", "t_finishes",
    "t_intersects", "t_meets", "t_metby", "t_overlappedby", "t_overlaps", "t_startedby", "t_starts",
    "a_equals", "a_contains", "a_containedby", "a_overlaps",
})
# Spellings pgstac also takes (any case), as their CQL2 names.
_SPELLINGS = {op.lower(): op for op in CQL2_OPERATORS} | {
    "eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">=",
    "intersects": "s_intersects", "anyinteracts": "t_intersects",
}


# ------------------------------------------------------------------------ time intervals
def _instant(value: str | dt.datetime) -> dt.datetime:
    """RFC 3339 timestamp or date (``Z`` or offset; naive = UTC) → aware UTC datetime."""
    if isinstance(value, str):
        from pystac.utils import str_to_datetime

        try:
            value = str_to_datetime(value.strip())
        except (ValueError, OverflowError):
            raise InputError(f"not an RFC 3339 date or timestamp: {value!r}") from None
    return (value if value.tzinfo else value.replace(tzinfo=_UTC)).astimezone(_UTC)


def _period(text: str) -> tuple[dt.datetime, dt.datetime]:
    """``2020`` → the year, ``2020-02`` → the month, ``2020-02-19`` → the day (ending at
    23:59:59, as pystac-client expands them); a timestamp → that instant."""
    from dateutil.relativedelta import relativedelta

    start = _instant(text)
    text = text.strip()
    if not _DATE.fullmatch(text):
        return start, start
    step = {4: relativedelta(years=1), 7: relativedelta(months=1)}.get(len(text), relativedelta(days=1))
    return start, start + step - dt.timedelta(seconds=1)


def parse_interval(value: Any) -> Interval:
    """Datetime range "like" input → ``(start, end)`` (aware UTC; ``None`` = open).

    Accepts ``"2020"``, ``"2020-02"``, ``"2020-02-19"``, a timestamp, ``"A/B"`` with
    ``..`` or an empty side for an open end, a ``datetime``, or a pair of those.
    """
    if isinstance(value, dt.datetime):
        return _instant(value), _instant(value)
    if isinstance(value, str):
        parts = value.split("/")
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        raise InputError(f"datetime must be a string like 2020-01-01/2020-06-30, got {value!r}")
    if len(parts) == 1:
        if not isinstance(parts[0], (str, dt.datetime)) or parts[0] in ("", ".."):
            raise InputError(f"datetime needs at least one bound, got {value!r}")
        return parse_interval(parts[0]) if isinstance(parts[0], dt.datetime) else _period(parts[0])
    if len(parts) != 2:
        raise InputError(f"datetime has more than two parts: {value!r}")

    def bound(p: Any, which: int) -> dt.datetime | None:
        if p is None or (isinstance(p, str) and p.strip() in ("", "..")):
            return None
        return _instant(p) if isinstance(p, dt.datetime) else _period(str(p))[which]

    start, end = bound(parts[0], 0), bound(parts[1], 1)
    if start is None and end is None:
        raise InputError(f"datetime range is open at both ends: {value!r}")
    if start is not None and end is not None and start > end:
        raise InputError(f"datetime range ends before it starts: {value!r}")
    return start, end


def _rfc3339(t: dt.datetime | None) -> str:
    return ".." if t is None else t.astimezone(_UTC).isoformat().replace("+00:00", "Z")


# ------------------------------------------------------------------------------- query
def _as_collections(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    return tuple(dict.fromkeys(str(c).strip() for c in value if str(c).strip()))


def _as_bbox(value: Any) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    try:
        w, s, e, n = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"bbox must be four numbers W S E N (lon/lat), got {value!r}") from None
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= 90 and -90 <= n <= 90):
        raise InputError(f"bbox {w} {s} {e} {n} is not lon/lat degrees (W S E N)")
    if s > n:
        raise InputError(f"bbox south {s} is north of north {n}; give W S E N")
    if w > e:
        raise InputError(
            f"bbox west {w} is east of east {e}; boxes across the antimeridian are not supported: "
            "search each side separately"
        )
    return (w, s, e, n)


def _as_filter(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InputError(f"filter is not valid CQL2-JSON: {exc}") from None
    if not isinstance(value, Mapping) or "op" not in value:
        raise InputError(f'filter must be a CQL2-JSON expression like {{"op": "<=", "args": [...]}}, got {value!r}')
    return dict(value)


@dataclass(frozen=True)
class SearchQuery:
    """One scene search, normalised at construction ("like" inputs in, canonical out).

    ``collections``: ids (a comma-separated string or a sequence); ``bbox``: W S E N in
    lon/lat; ``datetime``: a range (see :func:`parse_interval`); ``max_cloud``:
    ``eo:cloud_cover`` upper bound in percent; ``filter``: CQL2-JSON (dict or text);
    ``limit``: most items returned; ``updated_since``: only items changed at or after
    this instant (a datetime, naive = UTC, or RFC 3339 text) — see :func:`updated_at`.
    """

    collections: tuple[str, ...] = ()
    bbox: tuple[float, float, float, float] | None = None
    datetime: Interval | None = None
    max_cloud: float | None = None
    filter: dict[str, Any] | None = field(default=None, hash=False)
    limit: int | None = None
    updated_since: dt.datetime | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "collections", _as_collections(self.collections))
        set_(self, "bbox", _as_bbox(self.bbox))
        if self.datetime is not None:
            set_(self, "datetime", parse_interval(self.datetime))
        if self.max_cloud is not None:
            try:
                cloud = float(self.max_cloud)
            except (TypeError, ValueError):
                raise InputError(f"max cloud cover must be a number of percent, got {self.max_cloud!r}") from None
            if not 0 <= cloud <= 100:
                raise InputError(f"max cloud cover must be within 0..100 %, got {cloud}")
            set_(self, "max_cloud", cloud)
        set_(self, "filter", _as_filter(self.filter))
        if self.limit is not None:
            if int(self.limit) != self.limit or self.limit < 1:
                raise InputError(f"limit must be a positive integer, got {self.limit!r}")
            set_(self, "limit", int(self.limit))
        if self.updated_since is not None:
            if not isinstance(self.updated_since, (str, dt.datetime)):
                raise InputError(f"updated_since must be a datetime or RFC 3339 text, got {self.updated_since!r}")
            set_(self, "updated_since", _instant(self.updated_since))

    def datetime_param(self) -> str | None:
        """The range as a STAC API ``datetime`` parameter (``start/end``, ``..`` open)."""
        if self.datetime is None:
            return None
        start, end = self.datetime
        if start is not None and start == end:
            return _rfc3339(start)
        return f"{_rfc3339(start)}/{_rfc3339(end)}"

    def cloud_filter(self) -> dict[str, Any] | None:
        if self.max_cloud is None:
            return None
        return {"op": "<=", "args": [{"property": CLOUD_PROPERTY}, self.max_cloud]}

    def updated_filter(self) -> dict[str, Any] | None:
        """:func:`updated_at` ``>= updated_since`` as CQL2-JSON, for an API to evaluate.

        ``updated`` is tested with ``t_intersects`` an open interval rather than ``>=``:
        pgstac keeps properties that are not queryables as text and has no ``text >=
        timestamp``, but casts them for temporal operators. ``datetime >=`` is what
        pgstac also answers for items with only ``start_datetime`` (its ``datetime``
        column is the start of a range), as :func:`updated_at` does."""
        if self.updated_since is None:
            return None
        t = _rfc3339(self.updated_since)
        updated = {"property": "updated"}
        return {"op": "or", "args": [
            {"op": "t_intersects", "args": [updated, {"interval": [t, ".."]}]},
            {"op": "and", "args": [
                {"op": "isNull", "args": [updated]},
                {"op": ">=", "args": [{"property": "datetime"}, {"timestamp": t}]},
            ]},
        ]}

    def combined_filter(self) -> dict[str, Any] | None:
        """The user's CQL2 filter AND the cloud limit AND the updated bound (those given)."""
        parts = [f for f in (self.filter, self.cloud_filter(), self.updated_filter()) if f is not None]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else {"op": "and", "args": parts}

    def to_dict(self) -> dict[str, Any]:
        return {
            "collections": list(self.collections),
            "bbox": list(self.bbox) if self.bbox else None,
            "datetime": self.datetime_param(),
            "max_cloud": self.max_cloud,
            "filter": self.filter,
            "limit": self.limit,
            "updated_since": _rfc3339(self.updated_since) if self.updated_since else None,
        }


@dataclass(frozen=True)
class SceneRecord:
    """What a search result says about one scene (the full item is kept in ``item``)."""

    id: str
    collection: str | None
    datetime: str | None
    cloud_cover: float | None
    bbox: tuple[float, ...] | None
    href: str | None
    item: dict[str, Any] = field(repr=False, compare=False, hash=False)

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> "SceneRecord":
        props = item.get("properties") or {}
        when = props.get("datetime") or props.get("start_datetime")
        cloud = props.get(CLOUD_PROPERTY)
        href = next((link.get("href") for link in item.get("links", []) if link.get("rel") == "self"), None)
        bbox = item.get("bbox")
        return cls(
            id=str(item.get("id")),
            collection=item.get("collection"),
            datetime=str(when) if when is not None else None,
            cloud_cover=float(cloud) if isinstance(cloud, (int, float)) else None,
            bbox=tuple(bbox) if bbox else None,
            href=href,
            item=dict(item),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "collection": self.collection,
            "datetime": self.datetime,
            "cloud_cover": self.cloud_cover,
            "bbox": list(self.bbox) if self.bbox else None,
            "href": self.href,
        }


# ------------------------------------------------------------------ one item, one query
def _time_or_none(text: Any) -> dt.datetime | None:
    try:
        return _instant(str(text)) if text else None
    except InputError:
        return None


def item_interval(item: Mapping[str, Any]) -> Interval:
    """The item's time: ``start_datetime``..``end_datetime``, else ``datetime`` twice."""
    props = item.get("properties") or {}
    return (_time_or_none(props.get("start_datetime") or props.get("datetime")),
            _time_or_none(props.get("end_datetime") or props.get("datetime")))


def updated_at(item: Mapping[str, Any]) -> dt.datetime | None:
    """When the item last changed: ``updated``, else ``datetime``, else ``start_datetime``
    (None when it has none that parses)."""
    props = item.get("properties") or {}
    return _time_or_none(props.get("updated") or props.get("datetime") or props.get("start_datetime"))


def cloud_ok(item: Mapping[str, Any], max_cloud: float | None) -> bool:
    """``eo:cloud_cover <= max_cloud``; an item without it does not match a limit."""
    if max_cloud is None:
        return True
    cloud = (item.get("properties") or {}).get(CLOUD_PROPERTY)
    return isinstance(cloud, (int, float)) and not isinstance(cloud, bool) and cloud <= max_cloud


def updated_ok(item: Mapping[str, Any], since: dt.datetime | None) -> bool:
    if since is None:
        return True
    when = updated_at(item)
    return when is not None and when >= since


def _intervals_intersect(a: Interval, b: Interval) -> bool:
    (a0, a1), (b0, b1) = a, b
    if a0 is None and a1 is None:
        return False  # an item without a time matches no time range
    return (a1 is None or b0 is None or b0 <= a1) and (a0 is None or b1 is None or a0 <= b1)


def _footprint_intersects(item: Mapping[str, Any], bbox: Sequence[float]) -> bool:
    """The item's *geometry* (its bbox only when it has none) meets ``bbox`` (planar
    lon/lat, touching counts: PostGIS ``ST_Intersects`` on geometry)."""
    from shapely.geometry import box, shape

    if item.get("geometry"):
        footprint = shape(item["geometry"])
    elif item.get("bbox"):
        b = item["bbox"]
        half = len(b) // 2  # 2-D [w, s, e, n] or 3-D [w, s, z0, e, n, z1]
        footprint = box(b[0], b[1], b[half], b[half + 1])
    else:
        return False
    return footprint.intersects(box(*bbox))


def _standard(node: Any, ops: set[str]) -> Any:
    """``node`` with operators spelled as pgstac also takes them (``eq``, ``lte``,
    ``intersects``, ``ISNULL``, ...) renamed to their CQL2 names, which go into ``ops``."""
    if isinstance(node, Mapping):
        out = {k: _standard(v, ops) for k, v in node.items()}
        if "op" in out:
            out["op"] = _SPELLINGS.get(str(out["op"]).lower(), out["op"])
            ops.add(str(out["op"]))
        return out
    if isinstance(node, list):
        return [_standard(v, ops) for v in node]
    return node


@functools.lru_cache(maxsize=16)
def _cql2(text: str) -> Any:
    """The parsed filter (``text``: its JSON), refusing operators cql2 cannot evaluate."""
    import cql2

    ops: set[str] = set()
    expr = _standard(json.loads(text), ops)
    unsupported = sorted(ops - CQL2_OPERATORS)
    if unsupported:
        raise InputError(
            f"CQL2 operator {unsupported[0]!r} is not supported for static catalogs; "
            f"supported: {', '.join(sorted(CQL2_OPERATORS))}"
        )
    try:
        return cql2.Expr(expr)
    except Exception as exc:  # cql2 raises bare Exception / ValueError on what it cannot parse
        raise InputError(f"filter is not CQL2-JSON that can be evaluated here: {exc}") from None


def filter_matches(expr: Mapping[str, Any], item: Mapping[str, Any]) -> bool:
    """Is the CQL2-JSON ``expr`` true for ``item``? SQL three-valued logic, as cql2 gives
    it: what stays unknown (a comparison with a missing property) does not match.

    An item with only ``start_datetime`` is seen with ``datetime`` = its start, as pgstac
    sees it."""
    props = item.get("properties") or {}
    if props.get("datetime") is None and props.get("start_datetime"):
        item = {**item, "properties": {**props, "datetime": props["start_datetime"]}}
    return _cql2(json.dumps(expr, sort_keys=True)).reduce(item).to_json() is True


def item_matches(item: Mapping[str, Any], query: SearchQuery) -> bool:
    """Does ``item`` (a dict) match ``query`` with STAC API semantics? (static catalogs)

    bbox intersects the item geometry; the datetime range intersects the item's time
    (bounds inclusive); ``eo:cloud_cover <= max_cloud``; :func:`updated_at` ``>=
    updated_since``; the CQL2 filter is true."""
    return (
        (not query.collections or item.get("collection") in query.collections)
        and (query.bbox is None or _footprint_intersects(item, query.bbox))
        and (query.datetime is None or _intervals_intersect(item_interval(item), query.datetime))
        and cloud_ok(item, query.max_cloud)
        and updated_ok(item, query.updated_since)
        and (query.filter is None or filter_matches(query.filter, item))
    )
