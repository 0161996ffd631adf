"""The three-state pixel mask and the QA codes: the contract every stage shares.

A nodata test alone confuses two different things: the *gap* (inside the scene, missing:
an SLC-off stripe, a cloud, a masked area; to be filled) and the *outside* (the no-data
collar around a tilted scene footprint; never filled). Every stage therefore speaks in
three states, and every output carries a QA layer saying what happened to each pixel.

Also the decoders of the collections' QA layers into the three states (the profiles in
:mod:`dipfill.stac.profiles` name them). Pure numpy/scipy: no I/O, no torch.
"""

from __future__ import annotations

from typing import Callable, Final, Literal, Mapping, Sequence

import cv2
import numpy as np
from numpy.typing import NDArray

from dipfill.specs import DEFAULT_COLLAR_CLOSING

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
    "MaskMode",
    "QA_DECODERS",
    "decode_qa",
    "decode_landsat_qa_pixel",
    "decode_s2_scl",
    "decode_modis_reliability",
    "decode_modis_vi_quality",
    "LANDSAT_FILL_BIT",
    "LANDSAT_CLOUD_BITS",
    "S2_SCL_OUTSIDE",
    "S2_SCL_ALWAYS_GAP",
    "S2_SCL_CLOUD",
    "MODIS_RELIABILITY_GOOD",
    "MODIS_RELIABILITY_FILL",
    "MODIS_VIQ_FILL",
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


def _label(mask: NDArray[np.bool_]) -> tuple[NDArray[np.int32], int]:
    """4-connected components of ``mask`` (0 where False) and their count: what
    ``scipy.ndimage.label`` gives with its default structure, up to the numbering, from
    OpenCV's ~4x faster labelling (a 7000x7000 scene's footprint needs three)."""
    count, labels = cv2.connectedComponents(np.ascontiguousarray(mask, dtype=bool).view(np.uint8), connectivity=4,
                                            ltype=cv2.CV_32S)
    return labels, count - 1


def _fill_holes(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """``scipy.ndimage.binary_fill_holes`` (4-connected background not reaching the border
    is a hole), as a labelling of the background instead of an iterated dilation.
    Temporaries go as soon as they are used: a full scene's driver holds this at its peak."""
    labels, count = _label(~mask)
    hole = np.ones(count + 1, dtype=bool)
    hole[0] = False
    hole[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = False
    filled = hole[labels]
    del labels
    filled |= mask
    return filled


def _close(valid: NDArray[np.bool_], size: int, *, border: str) -> NDArray[np.bool_]:
    """Binary closing of ``valid`` with a ``size``² square (OpenCV's dilate/erode: the same
    window as scipy's maximum/minimum filters, several times faster), holes filled.

    ``border="bridge"``: beyond the raster counts as valid for the erosion, so nodata
    slivers along the border are bridged. ``border="edge"``: the raster is edge-replicated,
    so nodata touching the border extends beyond it and is not bridged there.
    """
    v = np.ascontiguousarray(valid, dtype=bool).view(np.uint8)  # 0/1 bytes, no copy
    kernel = np.ones((size, size), dtype=np.uint8)
    if border == "edge":
        closed = cv2.dilate(np.pad(v, size, mode="edge"), kernel, borderType=cv2.BORDER_REPLICATE)
        closed = cv2.erode(closed, kernel, borderType=cv2.BORDER_REPLICATE)
        closed = closed[size:-size, size:-size].astype(bool)
    else:
        closed = cv2.dilate(v, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        closed = cv2.erode(closed, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1).view(bool)
    closed |= valid
    return _fill_holes(closed)


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
        return _fill_holes(any_valid)
    certain = _close(any_valid, closing, border="bridge")
    np.logical_not(certain, out=certain)
    candidate = _close(any_valid, closing, border="edge")
    np.logical_not(candidate, out=candidate)
    candidate |= certain
    labels, count = _label(candidate)
    del candidate
    outside = np.zeros(count + 1, dtype=bool)  # by label: connected to the certain collar
    outside[labels[certain]] = True
    outside[0] = False
    del certain
    footprint = outside[labels]
    del labels
    np.logical_not(footprint, out=footprint)
    return footprint


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


#: ``fill``: only missing data (fill, no-data classes) is a gap; ``clouds``: clouds, cirrus
#: and cloud shadow are gaps as well.
MaskMode = Literal["fill", "clouds"]


# ------------------------------------------------------------------ QA decoders
def _states(shape: tuple[int, ...]) -> NDArray[np.uint8]:
    return np.full(shape, OBSERVED, dtype=np.uint8)


def _split_missing(
    missing: NDArray[np.bool_], footprint: NDArray[np.bool_] | None
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Missing pixels → (gap, outside): inside the footprint a gap, beyond it outside.

    Without a footprint it is derived from the data (the closing in
    :func:`footprint_from_validity` bridges SLC-off stripes but not the collar).
    """
    if footprint is None:
        footprint = footprint_from_validity(~missing)
    footprint = np.asarray(footprint, dtype=bool)
    if footprint.shape != missing.shape:
        raise ValueError(f"footprint shape {footprint.shape} differs from QA shape {missing.shape}")
    return missing & footprint, missing & ~footprint


#: Landsat Collection 2 QA_PIXEL bits (USGS LSDS-1619 / LSDS-1328).
LANDSAT_FILL_BIT: Final = 0
#: dilated cloud (1), cirrus (2), cloud (3), cloud shadow (4).
LANDSAT_CLOUD_BITS: Final = (1, 2, 3, 4)


def decode_landsat_qa_pixel(
    qa: NDArray[np.integer],
    *,
    footprint: NDArray[np.bool_] | None = None,
    mask: MaskMode = "fill",
) -> NDArray[np.uint8]:
    """Landsat Collection 2 QA_PIXEL → three states.

    Bit 0 (fill) is missing data: a gap inside ``footprint`` (this is how Landsat-7
    SLC-off stripes appear), outside beyond it. With ``mask="clouds"``, non-fill pixels
    flagged dilated cloud, cirrus, cloud or cloud shadow are gaps as well. ``footprint``
    (True inside) is normally the item geometry rasterised onto the grid; ``None`` derives
    it from the fill bit.
    """
    qa = np.asarray(qa)
    if not np.issubdtype(qa.dtype, np.integer):
        raise ValueError(f"QA_PIXEL must be an integer array, got {qa.dtype}")
    qa = qa.astype(np.uint32, copy=False)
    fill = (qa >> LANDSAT_FILL_BIT) & 1 == 1
    state = _states(qa.shape)
    gap, outside = _split_missing(fill, footprint)
    if mask == "clouds":
        cloud_mask = sum(1 << b for b in LANDSAT_CLOUD_BITS)
        gap |= ~fill & ((qa & cloud_mask) != 0)
    elif mask != "fill":
        raise ValueError(f"mask must be 'fill' or 'clouds', got {mask!r}")
    state[gap] = GAP
    state[outside] = OUTSIDE
    return state


#: Sentinel-2 L2A scene classification (SCL) classes.
S2_SCL_OUTSIDE: Final = (0,)  # no data
S2_SCL_ALWAYS_GAP: Final = (1,)  # saturated or defective: not a measurement
S2_SCL_CLOUD: Final = (3, 8, 9, 10)  # cloud shadow, cloud medium/high probability, thin cirrus


def decode_s2_scl(
    scl: NDArray[np.integer],
    *,
    footprint: NDArray[np.bool_] | None = None,
    mask: MaskMode = "fill",
) -> NDArray[np.uint8]:
    """Sentinel-2 L2A SCL → three states.

    SCL 0 (no data) is outside the scene; SCL 1 (saturated or defective) is a gap; with
    ``mask="clouds"``, SCL 3 (cloud shadow), 8, 9 (cloud medium/high probability) and 10
    (thin cirrus) are gaps as well. ``footprint``, when given, also puts no-data pixels
    beyond it outside (SCL 0 already does inside a tile).
    """
    scl = np.asarray(scl)
    if mask not in ("fill", "clouds"):
        raise ValueError(f"mask must be 'fill' or 'clouds', got {mask!r}")
    state = _states(scl.shape)
    gap_classes = S2_SCL_ALWAYS_GAP + (S2_SCL_CLOUD if mask == "clouds" else ())
    state[np.isin(scl, gap_classes)] = GAP
    outside = np.isin(scl, S2_SCL_OUTSIDE)
    if footprint is not None:
        outside &= ~np.asarray(footprint, dtype=bool)
    state[outside] = OUTSIDE
    return state


#: MODIS VI pixel reliability: 0 good, 1 marginal, 2 snow/ice, 3 cloudy; -1 fill in the
#: HDF product, 255 (its uint8 reading) in COG conversions.
MODIS_RELIABILITY_GOOD: Final = 0
MODIS_RELIABILITY_FILL: Final = (-1, 255)


def _accepted(accept: Sequence[int] | None, what: str, allowed: range) -> tuple[int, ...]:
    classes = (MODIS_RELIABILITY_GOOD,) if accept is None else tuple(int(c) for c in accept)
    bad = [c for c in classes if c not in allowed]
    if not classes or bad:
        raise ValueError(f"{what}: accepted classes must be some of {allowed.start}..{allowed.stop - 1}, "
                         f"got {list(accept or ())}")
    return classes


def decode_modis_reliability(
    reliability: NDArray[np.integer],
    *,
    footprint: NDArray[np.bool_] | None = None,
    mask: MaskMode = "fill",
    accept: Sequence[int] | None = None,
) -> NDArray[np.uint8]:
    """MODIS 13Q1/13A1 pixel reliability → three states.

    The ``accept`` classes (default: only 0, "good", as paper 001) are observed; the other
    ranks of 0 (good), 1 (marginal), 2 (snow/ice), 3 (cloudy) are gaps in either mask mode;
    fill (-1, or 255 read as uint8) is outside — it is where the product has no land
    retrieval at all (ocean, beyond the tile).
    """
    rel = np.asarray(reliability)
    if mask not in ("fill", "clouds"):
        raise ValueError(f"mask must be 'fill' or 'clouds', got {mask!r}")
    keep = _accepted(accept, "MODIS pixel reliability", range(0, 4))
    rel = rel.astype(np.int32, copy=False)
    state = np.full(rel.shape, GAP, dtype=np.uint8)
    state[np.isin(rel, keep)] = OBSERVED
    outside = np.isin(rel, MODIS_RELIABILITY_FILL)
    if footprint is not None:
        # fill inside a given footprint stays a gap: the footprint is the authority
        outside &= ~np.asarray(footprint, dtype=bool)
    state[outside] = OUTSIDE
    return state


#: MODIS VI Quality (uint16 bit field) fill value; its bits 0-1 are the MODLAND QA: 0 VI
#: produced with good quality, 1 produced but check other QA, 2 produced but most probably
#: cloudy, 3 not produced for other reasons than clouds.
MODIS_VIQ_FILL: Final = 65535


def decode_modis_vi_quality(
    viq: NDArray[np.integer],
    *,
    footprint: NDArray[np.bool_] | None = None,
    mask: MaskMode = "fill",
    accept: Sequence[int] | None = None,
) -> NDArray[np.uint8]:
    """MODIS 13Q1/13A1 VI Quality → three states, from its MODLAND QA bits (0-1).

    The ``accept`` MODLAND classes (default: only 0, "VI produced, good quality", the
    counterpart of pixel reliability 0) are observed, the other classes gaps; the fill
    value 65535 (-1 read as int16) is outside unless ``footprint`` says inside."""
    q = np.asarray(viq)
    if mask not in ("fill", "clouds"):
        raise ValueError(f"mask must be 'fill' or 'clouds', got {mask!r}")
    keep = _accepted(accept, "MODIS VI Quality MODLAND", range(0, 4))
    q = q.astype(np.int64, copy=False)
    fill = (q == MODIS_VIQ_FILL) | (q == -1)
    state = np.full(q.shape, GAP, dtype=np.uint8)
    state[np.isin(q & 0b11, keep) & ~fill] = OBSERVED
    outside = fill if footprint is None else fill & ~np.asarray(footprint, dtype=bool)
    state[outside] = OUTSIDE
    return state


#: QA decoders by the name a collection profile gives (:class:`dipfill.stac.profiles.QASpec`).
QA_DECODERS: Final[Mapping[str, Callable[..., NDArray[np.uint8]]]] = {
    "landsat_qa_pixel": decode_landsat_qa_pixel,
    "s2_scl": decode_s2_scl,
    "modis_reliability": decode_modis_reliability,
    "modis_vi_quality": decode_modis_vi_quality,
}


def decode_qa(decoder: str, qa: NDArray[np.integer], *, footprint: NDArray[np.bool_] | None = None,
              mask: MaskMode = "fill", accept: Sequence[int] | None = None) -> NDArray[np.uint8]:
    """Decode the QA layer ``qa`` into three states with the decoder named ``decoder``;
    ``accept``: the classes kept as observed, for the decoders of class layers (MODIS)."""
    try:
        fn = QA_DECODERS[decoder]
    except KeyError:
        raise ValueError(f"unknown QA decoder {decoder!r}; known: {', '.join(QA_DECODERS)}") from None
    if accept is None:
        return fn(qa, footprint=footprint, mask=mask)
    if decoder not in ACCEPTING_DECODERS:
        raise ValueError(f"QA decoder {decoder!r} has no classes to accept; only {', '.join(ACCEPTING_DECODERS)}")
    return fn(qa, footprint=footprint, mask=mask, accept=accept)


#: The decoders whose accepted classes are configurable (``--accept``).
ACCEPTING_DECODERS: Final = ("modis_reliability", "modis_vi_quality")
