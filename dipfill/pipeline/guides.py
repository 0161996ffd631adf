"""Choose a scene's guides: search, measure, rank, take the best few — or say why none.

Wiring only: :mod:`dipfill.stac.guides` finds the candidates (same collection or a guide
collection, within the time windows, footprints covering enough of the target's),
:mod:`dipfill.raster.coverage` measures on a coarse sample grid which share of the target's
gap pixels each observes, and :func:`choose_guides` ranks them — most gap pixels observed
first, then nearest in time, then least cloudy — and takes up to ``max_guides``.

With ``composite="median"`` each time window (around the target's date, and the same season
of each earlier year asked for) makes *one* guide: the per-pixel median of the clear
observations of all its candidates (:func:`dipfill.raster.coverage.median_composite` computes
it from the members). Such a guide observes a gap pixel where any member does.

A scene with no usable guide is filled without one: the :class:`GuideChoice` then has no
guides and a ``reason`` for the log and the run summary.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.errors import DipfillError
from dipfill.raster.coverage import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    gap_fraction_observed,
    lowres_state,
    observed_on_grid,
)
from dipfill.raster.masks import GAP
from dipfill.raster.read import Grid
from dipfill.raster.scene import Signer
from dipfill.stac.guides import (
    GuideCandidate,
    GuideQuery,
    guide_windows,
    item_datetime,
    overlapping,
    search_guide_candidates,
)
from dipfill.stac.item import self_href
from dipfill.stac.search import ApiSource, StaticSource

__all__ = ["GuideRecord", "GuideChoice", "choose_guides", "DEFAULT_MAX_SCORED"]

log = logging.getLogger(__name__)

#: Most candidates (nearest in time first) whose pixels are read to score them.
DEFAULT_MAX_SCORED = 16


def _iso(when: Any) -> str:
    return item_datetime(when).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class GuideRecord:
    """One scored guide: an item, or a median composite of several (``members``).

    ``days_from_target``: signed (negative: before the target; a composite: its window's
    centre). ``observed_gap_fraction``: share of the target's gap pixels it observes (on
    the coarse sample grid). ``cloud_cover``: the item's ``eo:cloud_cover`` (a composite:
    the mean of its members' that have one), ``None`` when unknown. ``items``: the STAC
    item dicts to read (one; a composite: its members, nearest in time first).
    """

    id: str
    datetime: str
    days_from_target: float
    observed_gap_fraction: float
    cloud_cover: float | None
    composite: Literal["none", "median"] = "none"
    members: tuple[str, ...] = ()
    window: tuple[str, str] | None = None
    items: tuple[dict[str, Any], ...] = field(default=(), repr=False, compare=False)

    def rank_key(self) -> tuple[float, float, float, str]:
        """Most gap pixels observed (in whole percent: the sample grid tells no finer),
        then nearest in time, then least cloudy (unknown last), then id."""
        cloud = self.cloud_cover if self.cloud_cover is not None else math.inf
        return (-round(100 * self.observed_gap_fraction), abs(self.days_from_target), cloud, self.id)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for an item's ``dipfill:guides`` and the run summary."""
        out: dict[str, Any] = {
            "id": self.id,
            "datetime": self.datetime,
            "days_from_target": round(self.days_from_target, 3),
            "observed_gap_fraction": round(self.observed_gap_fraction, 4),
            "cloud_cover": self.cloud_cover,
        }
        if self.items and self.items[0].get("collection"):
            out["collection"] = self.items[0]["collection"]
        if self.composite != "none":
            out.update(composite=self.composite, members=list(self.members), window=list(self.window or ()))
        return out

    def to_json(self) -> dict[str, Any]:
        """Every field, unrounded and with the item dicts: what a scene's patch store records,
        so that a resumed scene gets this very guide back (:meth:`from_json`)."""
        return {"id": self.id, "datetime": self.datetime, "days_from_target": self.days_from_target,
                "observed_gap_fraction": self.observed_gap_fraction, "cloud_cover": self.cloud_cover,
                "composite": self.composite, "members": list(self.members),
                "window": list(self.window) if self.window is not None else None, "items": list(self.items)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "GuideRecord":
        """The record :meth:`to_json` wrote (``KeyError``/``TypeError`` on a malformed one)."""
        window = doc["window"]
        return cls(id=str(doc["id"]), datetime=str(doc["datetime"]), days_from_target=float(doc["days_from_target"]),
                   observed_gap_fraction=float(doc["observed_gap_fraction"]), cloud_cover=doc["cloud_cover"],
                   composite=doc["composite"], members=tuple(doc["members"]),
                   window=(str(window[0]), str(window[1])) if window is not None else None,
                   items=tuple(dict(i) for i in doc["items"]))


@dataclass(frozen=True)
class GuideChoice:
    """What :func:`choose_guides` decided for one scene.

    ``guides``: the chosen guides, best first (empty when none is usable). ``reason``:
    why there is none (``None`` when there are guides). ``scored``: every candidate
    measured, in rank order (the chosen ones first; those observing none of the gaps
    last). ``skipped``: candidates that could not be measured, as ``"id: error"``.
    ``found``: items found in the time windows (the target excluded), before the
    footprint filter.
    """

    guides: tuple[GuideRecord, ...]
    reason: str | None
    query: GuideQuery
    scored: tuple[GuideRecord, ...] = ()
    skipped: tuple[str, ...] = ()
    found: int = 0

    def __bool__(self) -> bool:
        return bool(self.guides)

    @property
    def items(self) -> tuple[dict[str, Any], ...]:
        """The chosen guides' item dicts, best first (a composite's members in its place)."""
        return tuple(item for g in self.guides for item in g.items)

    def records(self) -> list[dict[str, Any]]:
        """``{id, datetime, days_from_target, observed_gap_fraction, cloud_cover}`` per guide."""
        return [g.to_dict() for g in self.guides]

    def derived_from(self) -> tuple[str, ...]:
        """Self hrefs of the chosen items, for the output item's ``derived_from`` links."""
        return tuple(h for h in (self_href(i) for i in self.items) if h)

    def item_properties(self) -> dict[str, Any]:
        """The output item's guide properties: ``dipfill:guides`` (a list, empty when
        filled without a guide) and ``dipfill:guides_reason`` when there is none."""
        props: dict[str, Any] = {"dipfill:guides": self.records()}
        if self.reason:
            props["dipfill:guides_reason"] = self.reason
        return props

    def summary(self) -> dict[str, Any]:
        """What the run summary keeps of the choice."""
        return {"guides": self.records(), "reason": self.reason, "found": self.found,
                "scored": [g.to_dict() for g in self.scored], "skipped": list(self.skipped),
                "query": self.query.to_dict()}

    def to_json(self) -> dict[str, Any]:
        """The whole choice as plain JSON values (items included): recorded in the scene's
        patch store when it is made, so a resumed scene reuses it instead of searching a
        catalog that may have changed since (:mod:`dipfill.pipeline.guide_resume`)."""
        return {"guides": [g.to_json() for g in self.guides], "reason": self.reason, "query": self.query.to_dict(),
                "scored": [g.to_json() for g in self.scored], "skipped": list(self.skipped), "found": self.found}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "GuideChoice":
        """The choice :meth:`to_json` wrote; ``KeyError``/``TypeError``/``InputError`` on a malformed one."""
        return cls(tuple(GuideRecord.from_json(g) for g in doc["guides"]), doc["reason"], GuideQuery(**doc["query"]),
                   scored=tuple(GuideRecord.from_json(g) for g in doc["scored"]),
                   skipped=tuple(str(s) for s in doc["skipped"]), found=int(doc["found"]))


def _single(c: GuideCandidate, fraction: float) -> GuideRecord:
    return GuideRecord(id=c.id, datetime=_iso(c.item), days_from_target=c.days_from_target,
                       observed_gap_fraction=fraction, cloud_cover=c.cloud_cover, items=(c.item,))


def _composite(members: Sequence[GuideCandidate], fraction: float, window: tuple[Any, Any],
               target_time: Any) -> GuideRecord:
    start, end = window
    centre = start + (end - start) / 2
    clouds = [m.cloud_cover for m in members if m.cloud_cover is not None]
    span = (_iso(start), _iso(end))
    return GuideRecord(
        id=f"median:{span[0][:10]}/{span[1][:10]}", datetime=_iso(centre),
        days_from_target=(centre - target_time).total_seconds() / 86400.0, observed_gap_fraction=fraction,
        cloud_cover=float(np.mean(clouds)) if clouds else None, composite="median",
        members=tuple(m.id for m in members), window=span, items=tuple(m.item for m in members),
    )


def choose_guides(
    source: str | os.PathLike[str] | ApiSource | StaticSource,
    target_item: Mapping[str, Any],
    target_state: NDArray[np.uint8],
    grid: Grid,
    query: GuideQuery,
    *,
    sign: Signer | None = None,
    bands: Sequence[str] | None = None,
    mask: Literal["fill", "clouds"] = "fill",
    max_side: int = DEFAULT_MAX_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_scored: int = DEFAULT_MAX_SCORED,
    product: Literal["bands", "ndvi"] = "bands",
    accept: Sequence[int] | None = None,
) -> GuideChoice:
    """The guides for ``target_item``, best first, or why there are none.

    ``target_state``: the scene's one-byte OUTSIDE / OBSERVED / GAP state on ``grid``
    (what ``dipfill run`` holds after masking). ``source``: the STAC API or catalog to
    search. ``bands``: the guide bands whose validity counts (default: the guide
    collection profile's default bands); ``mask``: ``fill`` or ``clouds`` (a guide's
    clouds are then no evidence); ``product``/``accept``: read the guides as NDVI, with
    those QA classes observed, as the target (``--product ndvi``). ``sign``: applied to the
    guides' asset hrefs.
    ``max_side``: the sample grid's longest side (:func:`~dipfill.raster.coverage.lowres_state`);
    ``max_pixels``: most pixels read per guide asset; ``max_scored``: most candidates
    measured, nearest in time first (those beyond are not read).

    A candidate that cannot be read (no profile for its collection, a missing asset, an
    unreadable file) is logged, listed in ``skipped`` and left out; search failures
    (:class:`~dipfill.errors.StacError`) propagate. A candidate observing none of the gap
    pixels is scored but never chosen.
    """
    state = np.asarray(target_state)
    if not (state == GAP).any():
        return GuideChoice((), "the scene has no gap pixels: no guide needed", query)

    window_text = query.describe_window()
    collection = query.collection or target_item.get("collection")
    found = search_guide_candidates(source, target_item, query)
    if not found:
        return GuideChoice((), f"no candidate within {window_text} in {collection}", query)
    kept = overlapping(found, query)
    if not kept:
        best = max(c.overlap for c in found)
        return GuideChoice((), f"no candidate covers ≥ {query.min_overlap:.0%} of the footprint "
                               f"({len(found)} within {window_text}, the best covers {best:.0%})",
                           query, found=len(found))

    state_lr, grid_lr = lowres_state(state, grid, max_side)
    measured: list[tuple[GuideCandidate, NDArray[np.bool_]]] = []
    skipped: list[str] = []
    for c in kept[:max_scored]:
        try:
            observed = observed_on_grid(c.item, grid_lr, bands=bands, mask=mask, sign=sign, max_pixels=max_pixels,
                                        product=product, accept=accept)
        except (DipfillError, OSError, ValueError) as exc:
            log.warning("guide candidate %s of %s skipped: %s", c.id, target_item.get("id"), exc)
            skipped.append(f"{c.id}: {exc}")
            continue
        measured.append((c, observed))
    if len(kept) > max_scored:
        log.info("%s: %d guide candidates; the %d nearest in time were measured", target_item.get("id"),
                 len(kept), max_scored)
    if not measured:
        return GuideChoice((), f"no candidate could be read ({len(skipped)} tried; first: {skipped[0]})",
                           query, skipped=tuple(skipped), found=len(found))

    if query.composite == "median":
        windows = guide_windows(item_datetime(target_item), query)
        target_time = item_datetime(target_item)
        scored = []
        for index, window in enumerate(windows):
            group = [(c, o) for c, o in measured if c.window == index]
            if group:
                union = np.logical_or.reduce([o for _, o in group])
                scored.append(_composite([c for c, _ in group], gap_fraction_observed(union, state_lr), window,
                                         target_time))
    else:
        scored = [_single(c, gap_fraction_observed(o, state_lr)) for c, o in measured]
    scored.sort(key=GuideRecord.rank_key)
    useful = [g for g in scored if g.observed_gap_fraction > 0]
    if not useful:
        return GuideChoice((), f"candidates observe none of the gaps ({len(scored)} measured)", query,
                           scored=tuple(scored), skipped=tuple(skipped), found=len(found))
    return GuideChoice(tuple(useful[: query.max_guides]), None, query, scored=tuple(scored),
                       skipped=tuple(skipped), found=len(found))
