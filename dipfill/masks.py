"""The three-state pixel mask and the QA codes: the contract every stage shares.

A nodata test alone confuses two different things: the *gap* (inside the scene, missing:
an SLC-off stripe, a cloud, a masked area; to be filled) and the *outside* (the no-data
collar around a tilted scene footprint; never filled). Every stage therefore speaks in
three states, and every output carries a QA layer saying what happened to each pixel.

Pure numpy/scipy: no I/O, no torch.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = [
    "OUTSIDE",
    "OBSERVED",
    "GAP",
    "QA_OUTSIDE",
    "QA_OBSERVED",
    "QA_ENGINE",
    "QA_FALLBACK",
    "QA_UNFILLED",
    "QA_CLASSES",
    "DEFAULT_COLLAR_CLOSING",
    "footprint_from_validity",
    "three_state",
]

# Three states of a pixel (uint8).
OUTSIDE: Final = 0
OBSERVED: Final = 1
GAP: Final = 2

# QA codes written to the QA layer (uint8).
QA_OUTSIDE: Final = 0
QA_OBSERVED: Final = 1
QA_ENGINE: Final = 2
QA_FALLBACK: Final = 3
QA_UNFILLED: Final = 4
QA_CLASSES: Final = {
    QA_OUTSIDE: ("outside", "outside the scene footprint; nodata, never filled"),
    QA_OBSERVED: ("observed", "observed in every band; copied bit-exact from the input"),
    QA_ENGINE: ("filled", "at least one band filled by the configured engine"),
    QA_FALLBACK: ("filled_fallback", "at least one band filled by the fallback engine"),
    QA_UNFILLED: ("unfilled", "inside the footprint, missing, and left nodata"),
}

#: Width (px) of the square closing that bridges SLC-off stripes before the footprint is
#: taken. Landsat-7 SLC-off stripes are at most ~15 px wide at 30 m (wider near scene
#: edges at coarser grids would need more); 31 px bridges anything narrower than 30 px.
DEFAULT_COLLAR_CLOSING: Final = 31


def _close(valid: NDArray[np.bool_], size: int, *, border: str) -> NDArray[np.bool_]:
    """Binary closing of ``valid`` with a ``size``² square (separable min/max filters).

    ``border="bridge"``: beyond the raster counts as valid for the erosion, so nodata
    slivers along the border are bridged. ``border="edge"``: the raster is edge-replicated,
    so nodata touching the border extends beyond it and is not bridged there.
    """
    v = valid.astype(np.uint8)
    if border == "edge":
        v = np.pad(v, size, mode="edge")
        closed = ndimage.minimum_filter(ndimage.maximum_filter(v, size=size, mode="nearest"), size=size, mode="nearest")
        closed = closed[size:-size, size:-size]
    else:
        dil = ndimage.maximum_filter(v, size=size, mode="constant", cval=0)
        closed = ndimage.minimum_filter(dil, size=size, mode="constant", cval=1)
    return ndimage.binary_fill_holes(closed.astype(bool) | valid)


def footprint_from_validity(
    any_valid: NDArray[np.bool_], *, closing: int = DEFAULT_COLLAR_CLOSING
) -> NDArray[np.bool_]:
    """Derive the scene footprint (True inside) from where any band has data.

    Why a closing: SLC-off stripes run from edge to edge, so the nodata region connected
    to the raster border contains the stripes as well as the collar. A morphological
    closing of the valid region with a square wider than the widest stripe bridges the
    stripes but leaves the collar (a large convex region, which a closing does not
    change) alone. Holes left inside the closed region (masked lakes, cloud blobs) are
    inside the scene too.

    The raster border is ambiguous: a thin nodata sliver there is either the end of a
    stripe (valid on both sides across its width) or the tip of the collar where the
    tilted footprint edge meets the border (valid on one side only). Measured on real
    data, neither border rule alone works: treating the border as valid bridged collar
    tips (1.4 % of the real collar of rasterio's RGB.byte.tif called inside; 2 % of a
    USGS SLC-off scene), replicating the edge left shallow stripe ends unbridged (738
    stripe pixels of the ARG25 crop called outside). So: candidates are what stays
    unbridged with edge replication, and a candidate region is outside only if it is
    connected to nodata that stays unbridged even when the border is bridged (the
    certain collar). Isolated stripe ends are then gaps; collar tips stay outside.

    ``closing`` <= 1 disables the bridging (footprint = valid region with holes filled).
    """
    any_valid = np.asarray(any_valid, dtype=bool)
    if any_valid.ndim != 2:
        raise ValueError(f"any_valid must be 2-D, got shape {any_valid.shape}")
    if not any_valid.any():
        return np.zeros_like(any_valid)
    if closing <= 1:
        return ndimage.binary_fill_holes(any_valid)
    certain = ~_close(any_valid, closing, border="bridge")
    candidate = ~_close(any_valid, closing, border="edge") | certain
    labels, _ = ndimage.label(candidate)
    keep = np.unique(labels[certain])
    outside = np.isin(labels, keep[keep > 0])
    return ~outside


def three_state(
    valid: NDArray[np.bool_],
    footprint: NDArray[np.bool_],
) -> NDArray[np.uint8]:
    """Per-pixel state from per-band validity ``valid[C, H, W]`` and the footprint.

    observed: every band valid; gap: some band invalid, inside the footprint; outside:
    some band invalid, outside the footprint. A pixel that is valid somewhere outside a
    given footprint polygon keeps its valid bands (it is a gap only for the others, and
    only inside): known values are never discarded.
    """
    valid = np.asarray(valid, dtype=bool)
    if valid.ndim != 3:
        raise ValueError(f"valid must be [bands, y, x], got shape {valid.shape}")
    return state_from_all_valid(valid.all(axis=0), footprint)


def state_from_all_valid(all_valid: NDArray[np.bool_], footprint: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """:func:`three_state` from the every-band-valid mask: lets a scene be reduced strip by
    strip to one byte per pixel before the (non-local) footprint is known."""
    state = np.full(all_valid.shape, OUTSIDE, dtype=np.uint8)
    state[all_valid] = OBSERVED
    state[~all_valid & footprint] = GAP
    return state
