"""A resumed scene keeps the guides its fitted patches were fitted with.

Guides are chosen by searching a STAC catalog (:func:`~dipfill.pipeline.guides.choose_guides`),
and a catalog can gain or lose items between an interrupted run and its resume: choosing
again could give the remaining patches other guides than the fitted ones, and the output
item would then describe only some of its patches. So the choice is recorded in the
scene's patch store when it is made, before any patch is fitted
(:meth:`~dipfill.pipeline.patchstore.PatchStore.record_guides`), and a store that holds
fitted patches reopens the recorded guide items instead of searching again: the resumed
scene gives the bytes of an uninterrupted run. When the record cannot be reused (there is
none, it is for another search, a guide item can no longer be read),
:class:`GuidesNotReusable` says why and the caller starts the scene over: patches fitted
with different guides are never mixed.
"""

from __future__ import annotations

from typing import Any, Sequence

from dipfill.errors import DipfillError
from dipfill.pipeline.guides import GuideChoice
from dipfill.pipeline.patchstore import PatchStore
from dipfill.raster.guides import ItemGuide, open_item_guide
from dipfill.raster.read import Grid
from dipfill.stac.guides import GuideQuery

__all__ = ["GuidesNotReusable", "open_guides", "reopen_recorded"]

#: What opening or probing a guide item raises when its assets cannot be read.
_READ_ERRORS = (DipfillError, OSError, ValueError, KeyError)


class GuidesNotReusable(ValueError):
    """The recorded guide choice of a resumed scene cannot be reused; the message says why."""


def open_guides(choice: GuideChoice, grid: Grid, *, bands: Sequence[str] | None = None,
                sign: Any = None, **read: Any) -> tuple[ItemGuide, ...]:
    """The chosen guides read on ``grid``, in rank order: an item each, or a composite's
    members (their median is read per window). ``read``: ``product``/``accept`` of
    :func:`~dipfill.raster.guides.open_item_guide`."""
    return tuple(open_item_guide(record.items, grid, bands=bands, sign=sign, **read) for record in choice.guides)


def reopen_recorded(store: PatchStore, query: GuideQuery, grid: Grid, *, bands: Sequence[str] | None = None,
                    sign: Any = None, **read: Any) -> tuple[GuideChoice, tuple[ItemGuide, ...]]:
    """The guide choice recorded in ``store`` and its guides reopened on ``grid`` (one pixel
    of each read, so a guide whose files are gone is caught here, not in a worker).

    Raises :class:`GuidesNotReusable` when there is no record, it is malformed, it was made
    by another guide search than ``query``, or a recorded guide can no longer be read."""
    doc = store.recorded_guides()
    if doc is None:
        raise GuidesNotReusable("no guide choice was recorded with its fitted patches")
    try:
        choice = GuideChoice.from_json(doc)
    except (DipfillError, KeyError, TypeError, ValueError) as exc:
        raise GuidesNotReusable(f"its recorded guide choice is malformed ({exc})") from exc
    if choice.query != query:
        raise GuidesNotReusable("its guides were chosen by another guide search")
    try:
        sources = open_guides(choice, grid, bands=bands, sign=sign, **read)
        for source in sources:
            source.read(0, 1, 0, 1)
    except _READ_ERRORS as exc:
        raise GuidesNotReusable(f"a recorded guide can no longer be read ({exc})") from exc
    return choice, sources
