"""The three-state mask of a whole scene, one byte per pixel, read in strips.

What planning a run needs of a scene, without ever holding its bands: see :func:`scene_mask`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window

from dipfill.errors import InputError
from dipfill.raster.masks import DEFAULT_COLLAR_CLOSING, footprint_from_validity, state_from_all_valid
from dipfill.raster.pixel_cache import CacheWriter, PixelCache
from dipfill.raster.scene import SceneSource, read_pixels

__all__ = ["SceneMask", "scene_mask"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SceneMask:
    """What planning needs of a whole scene, one byte per pixel each: ``state[y, x]``
    (OUTSIDE / OBSERVED / GAP) and ``nvalid[y, x]``, the number of observed bands."""

    state: NDArray[np.uint8]
    nvalid: NDArray[np.uint8]
    bands: int
    dtype: np.dtype  # of the bands as read (after dB conversion where asked)
    pixels: PixelCache | None = None  # the strips as read, when asked to keep them


def scene_mask(source: SceneSource, *, rows: int = 512, closing: int = DEFAULT_COLLAR_CLOSING,
               cache: str | os.PathLike[str] | None = None) -> SceneMask:
    """The three-state mask of the whole scene, read ``rows`` rows at a time.

    Why strips: the bands of a full scene are several bytes per pixel per band; the plan
    needs one byte per pixel. Memory is the strip plus the two one-byte masks. Collections
    whose footprint comes from the data (no QA band, no geometry footprint) also need the
    any-valid mask of the whole scene and, for a moment, the closing and labelling of
    :func:`~dipfill.raster.masks.footprint_from_validity` (about 11 bytes per pixel, measured).
    ``closing``: the width of that closing's square. Equal to
    ``source.read().state`` (tested).

    ``cache``: a local directory where the strips' bands and validity are kept as read
    (:mod:`~dipfill.raster.pixel_cache`), so that a run's fit and merge read them there
    instead of decoding the files again; ``SceneMask.pixels`` then names it.
    """
    height, width = source.shape
    count = len(source.band_names)
    if count > 255:
        raise InputError(f"item {source.item_id}: {count} bands; at most 255 are supported")
    nvalid = np.zeros((height, width), dtype=np.uint8)
    footprint: NDArray[np.bool_] | None = None
    any_valid: NDArray[np.bool_] | None = None
    dtype = None
    writer: CacheWriter | None = None
    if cache is not None:
        try:
            writer = CacheWriter(cache, (count, height, width))
        except OSError as exc:
            log.warning("no local pixel copy of the scene (%s): the workers read its files", exc)
    try:
        for y0 in range(0, height, rows):
            y1 = min(y0 + rows, height)
            data, valid, local, _ = read_pixels(source, Window(0, y0, width, y1 - y0))
            dtype = data.dtype
            if writer is not None:
                writer = _keep(writer, lambda w: w.write(y0, data, valid))
            del data
            np.sum(valid, axis=0, dtype=np.uint8, out=nvalid[y0:y1])
            if local is not None:
                if footprint is None:
                    footprint = np.zeros((height, width), dtype=bool)
                footprint[y0:y1] = local
            else:
                if any_valid is None:
                    any_valid = np.zeros((height, width), dtype=bool)
                any_valid[y0:y1] = nvalid[y0:y1] > 0
        pixels = None
        if writer is not None:
            kept: list[PixelCache] = []
            _keep(writer, lambda w: kept.append(w.commit()))
            pixels = kept[0] if kept else None
        if footprint is None:
            assert any_valid is not None
            footprint = footprint_from_validity(any_valid, closing=closing)
            del any_valid
        state = state_from_all_valid(nvalid == count, footprint)
    except BaseException:
        if writer is not None:
            writer.abort()  # made, or half made: nobody will read it
        raise
    return SceneMask(state=state, nvalid=nvalid, bands=count, dtype=np.dtype(dtype), pixels=pixels)


def _keep(writer: CacheWriter, step: Callable[[CacheWriter], None]) -> CacheWriter | None:
    """Run one step of the pixel copy; a copy that cannot be written (disk full, or too
    little room for it) is dropped, not the mask: the workers then read the source."""
    try:
        step(writer)
    except OSError as exc:
        writer.abort()
        log.warning("no local pixel copy of the scene (%s): the workers read its files", exc)
        return None
    return writer
