"""Collection profiles: what dipfill needs to know about each STAC collection, declared once.

One frozen record per collection says which asset holds each band (in Planetary Computer,
Earth Search v1 and older naming), its nominal resolution, nodata, scale and offset, which
bands to use by default, which asset is the QA layer and how it decodes into the three
pixel states of :mod:`dipfill.masks`, and where the scene footprint comes from. Code
elsewhere asks the profile; it never branches on a collection name.

The QA decoders are pure numpy: a QA array in, a ``uint8`` array of ``OUTSIDE`` /
``OBSERVED`` / ``GAP`` out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Final, Literal, Mapping

import numpy as np
from numpy.typing import NDArray

from dipfill.masks import GAP, OBSERVED, OUTSIDE, footprint_from_validity

__all__ = [
    "MaskMode",
    "AssetKeys",
    "BandSpec",
    "QASpec",
    "CollectionProfile",
    "PROFILES",
    "LANDSAT_C2_L2",
    "SENTINEL_2_L2A",
    "MODIS_13Q1",
    "MODIS_13A1",
    "SENTINEL_1_RTC",
    "get_profile",
    "profile_for",
    "decode_landsat_qa_pixel",
    "decode_s2_scl",
    "decode_modis_reliability",
    "LANDSAT_FILL_BIT",
    "LANDSAT_CLOUD_BITS",
    "S2_SCL_OUTSIDE",
    "S2_SCL_ALWAYS_GAP",
    "S2_SCL_CLOUD",
    "MODIS_RELIABILITY_GOOD",
    "MODIS_RELIABILITY_FILL",
]

#: ``fill``: only missing data (fill, no-data classes) is a gap; ``clouds``: clouds, cirrus
#: and cloud shadow are gaps as well.
MaskMode = Literal["fill", "clouds"]

Decoder = Callable[..., NDArray[np.uint8]]


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class AssetKeys:
    """One band's asset key in each provider's naming; ``None`` where a provider lacks it."""

    planetary_computer: str | None = None
    earth_search: str | None = None  # Earth Search v1 (earth-search.aws.element84.com/v1)
    earth_search_v0: str | None = None  # Earth Search v0 (sentinel-s2-l2a-cogs)
    other: tuple[str, ...] = ()  # further aliases (USGS file-named keys, ...)

    def candidates(self) -> tuple[str, ...]:
        """Keys to look for in an item's assets, in order, without repeats."""
        keys = (self.planetary_computer, self.earth_search, self.earth_search_v0, *self.other)
        return tuple(dict.fromkeys(k for k in keys if k))

    def find(self, assets: Mapping[str, Any]) -> str | None:
        """The first candidate key present in ``assets`` (an item's asset mapping)."""
        return next((k for k in self.candidates() if k in assets), None)


@dataclass(frozen=True)
class BandSpec:
    """One band: canonical name, asset keys, nominal resolution (m) and how to read values.

    ``nodata``, ``scale`` and ``offset`` are the collection's documented values; an item's
    own ``raster:bands`` entry wins where it has one (scale/offset change with processing
    baselines).
    """

    name: str
    keys: AssetKeys
    resolution: float
    nodata: float | None = None
    scale: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class QASpec:
    """The QA asset and its decoding into three states (``decode(qa, footprint=, mask=)``)."""

    keys: AssetKeys
    decode: Decoder
    description: str


@dataclass(frozen=True)
class CollectionProfile:
    """Everything collection-specific that reading a scene needs.

    ``footprint`` says where *outside* comes from: ``geometry`` rasterises the item
    geometry (the QA decoder then splits missing pixels into gap inside and outside
    beyond it), ``qa`` trusts the QA layer's own no-data class, ``data`` derives it from
    where any band has data (:func:`dipfill.masks.footprint_from_validity`).
    """

    name: str
    title: str
    collections: tuple[str, ...]
    bands: tuple[BandSpec, ...]
    default_bands: tuple[str, ...]
    qa: QASpec | None
    footprint: Literal["geometry", "qa", "data"]
    cloud_property: str | None = "eo:cloud_cover"
    db_convertible: bool = False  # linear power → 10·log10 on request (SAR)
    notes: str = ""

    def __post_init__(self) -> None:
        names = self.band_names
        if len(set(names)) != len(names):
            raise ValueError(f"profile {self.name}: duplicate band names {names}")
        unknown = [b for b in self.default_bands if b not in names]
        if unknown:
            raise ValueError(f"profile {self.name}: default bands {unknown} are not bands of it")

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    def band(self, name: str) -> BandSpec:
        for b in self.bands:
            if b.name == name:
                return b
        raise KeyError(f"profile {self.name} has no band {name!r}; bands: {', '.join(self.band_names)}")


# ---------------------------------------------------------------------------- decoders
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


def decode_modis_reliability(
    reliability: NDArray[np.integer],
    *,
    footprint: NDArray[np.bool_] | None = None,
    mask: MaskMode = "fill",
) -> NDArray[np.uint8]:
    """MODIS 13Q1/13A1 pixel reliability → three states.

    0 (good) is observed; 1 (marginal), 2 (snow/ice), 3 (cloudy) are gaps in either mask
    mode (paper 001 keeps only "good" NDVI); fill (-1, or 255 read as uint8) is outside —
    it is where the product has no land retrieval at all (ocean, beyond the tile).
    """
    rel = np.asarray(reliability)
    if mask not in ("fill", "clouds"):
        raise ValueError(f"mask must be 'fill' or 'clouds', got {mask!r}")
    rel = rel.astype(np.int32, copy=False)
    state = np.full(rel.shape, GAP, dtype=np.uint8)
    state[rel == MODIS_RELIABILITY_GOOD] = OBSERVED
    outside = np.isin(rel, MODIS_RELIABILITY_FILL)
    if footprint is not None:
        # fill inside a given footprint stays a gap: the footprint is the authority
        outside &= ~np.asarray(footprint, dtype=bool)
    state[outside] = OUTSIDE
    return state


# ---------------------------------------------------------------------------- profiles
def _keys(pc: str | None, es: str | None = None, es0: str | None = None, *other: str) -> AssetKeys:
    return AssetKeys(planetary_computer=pc, earth_search=es, earth_search_v0=es0, other=tuple(other))


# Landsat C2 L2 surface reflectance: DN × 2.75e-5 − 0.2 (USGS), nodata 0. PC and Earth
# Search v1 both use common names; USGS landsatlook items too (older ones key by file).
_LS_SCALE, _LS_OFFSET = 2.75e-05, -0.2
LANDSAT_C2_L2: Final = CollectionProfile(
    name="landsat-c2-l2",
    title="Landsat Collection 2 Level-2 (TM, ETM+, OLI)",
    collections=("landsat-c2-l2", "landsat-c2l2-sr", "landsat-c2l2-st"),
    bands=tuple(
        BandSpec(name, _keys(name, name), 30.0, nodata=0, scale=_LS_SCALE, offset=_LS_OFFSET)
        for name in ("coastal", "blue", "green", "red", "nir08", "swir16", "swir22")
    ),
    default_bands=("red", "nir08", "swir16"),
    qa=QASpec(
        keys=_keys("qa_pixel", "qa_pixel", None, "QA_PIXEL.TIF", "QA_PIXEL"),
        decode=decode_landsat_qa_pixel,
        description="QA_PIXEL: bit 0 fill → gap inside the footprint (SLC-off stripes), outside "
        "beyond it; clouds: dilated cloud, cirrus, cloud, cloud shadow bits → gap",
    ),
    footprint="geometry",
    notes="red/nir08/swir16 are ETM+ B3/B4/B5 and OLI B4/B5/B6 (paper 000 used B3/B4/B5)",
)

# Sentinel-2 L2A: PC and Earth Search v0 key by band number, Earth Search v1 by common
# name. Reflectance DN × 1e-4 (baseline ≥ 04.00 adds an offset of -0.1: items say so in
# raster:bands, which wins).
_S2 = (
    # name, PC / ES v0 key, ES v1 key, metres
    ("coastal", "B01", "coastal", 60.0),
    ("blue", "B02", "blue", 10.0),
    ("green", "B03", "green", 10.0),
    ("red", "B04", "red", 10.0),
    ("rededge1", "B05", "rededge1", 20.0),
    ("rededge2", "B06", "rededge2", 20.0),
    ("rededge3", "B07", "rededge3", 20.0),
    ("nir", "B08", "nir", 10.0),
    ("nir08", "B8A", "nir08", 20.0),
    ("nir09", "B09", "nir09", 60.0),
    ("swir16", "B11", "swir16", 20.0),
    ("swir22", "B12", "swir22", 20.0),
)
SENTINEL_2_L2A: Final = CollectionProfile(
    name="sentinel-2-l2a",
    title="Sentinel-2 Level-2A",
    collections=("sentinel-2-l2a", "sentinel-s2-l2a-cogs", "sentinel-s2-l2a"),
    bands=tuple(
        BandSpec(name, _keys(num, es1, num), res, nodata=0, scale=1e-4) for name, num, es1, res in _S2
    ),
    default_bands=("red", "nir", "swir16"),
    qa=QASpec(
        keys=_keys("SCL", "scl", "SCL"),
        decode=decode_s2_scl,
        description="SCL: 0 → outside, 1 → gap; clouds: 3, 8, 9, 10 → gap",
    ),
    footprint="qa",
    notes="10/20/60 m bands are resampled onto one grid (resolution selectable)",
)


def _modis(product: str, metres: int, title: str) -> CollectionProfile:
    pre = f"{metres}m_16_days_"
    return CollectionProfile(
        name=f"modis-{product}-061",
        title=title,
        collections=(f"modis-{product}-061",),
        bands=(
            BandSpec("ndvi", _keys(f"{pre}NDVI", None, None, "NDVI"), float(metres), nodata=-3000, scale=1e-4),
            BandSpec("evi", _keys(f"{pre}EVI", None, None, "EVI"), float(metres), nodata=-3000, scale=1e-4),
        ),
        default_bands=("ndvi",),
        qa=QASpec(
            keys=_keys(f"{pre}pixel_reliability", None, None, "pixel_reliability", "PR"),
            decode=decode_modis_reliability,
            description="pixel reliability: 0 observed; 1, 2, 3 → gap; fill (-1/255) → outside",
        ),
        footprint="qa",
        cloud_property=None,  # composites carry no scene cloud cover
    )


MODIS_13Q1: Final = _modis("13Q1", 250, "MODIS Vegetation Indices 16-day 250 m (MOD13Q1/MYD13Q1 6.1)")
MODIS_13A1: Final = _modis("13A1", 500, "MODIS Vegetation Indices 16-day 500 m (MOD13A1/MYD13A1 6.1)")

SENTINEL_1_RTC: Final = CollectionProfile(
    name="sentinel-1-rtc",
    title="Sentinel-1 radiometrically terrain corrected backscatter (gamma0, linear power)",
    collections=("sentinel-1-rtc",),
    bands=(
        BandSpec("vv", _keys("vv", None, None, "VV"), 10.0, nodata=-32768),
        BandSpec("vh", _keys("vh", None, None, "VH"), 10.0, nodata=-32768),
    ),
    default_bands=("vv", "vh"),
    qa=None,
    footprint="geometry",
    cloud_property=None,
    db_convertible=True,
    notes="values are linear gamma0 power; db=True converts to 10·log10 (non-positive → gap)",
)

# Geoscience Australia ARG25 NBAR (Landsat-7 ETM+ reflectance x10000, int16, nodata -999):
# the demo and test scenes (data/arg25_menindee/stac). No QA layer: gaps are the nodata
# pixels inside the footprint derived from the data (SLC-off stripes bridged).
GA_ARG25_NBAR: Final = CollectionProfile(
    name="ga-arg25-nbar",
    title="Geoscience Australia ARG25 Landsat NBAR surface reflectance",
    collections=("ga-arg25-nbar",),
    bands=(
        BandSpec("B3", _keys(None, None, None, "B3", "red"), 25.0, nodata=-999, scale=1e-4),
        BandSpec("B4", _keys(None, None, None, "B4", "nir"), 25.0, nodata=-999, scale=1e-4),
        BandSpec("B5", _keys(None, None, None, "B5", "swir16"), 25.0, nodata=-999, scale=1e-4),
    ),
    default_bands=("B3", "B4", "B5"),
    qa=None,
    footprint="data",
    cloud_property=None,
)

#: Profiles by name.
PROFILES: Final[Mapping[str, CollectionProfile]] = {
    p.name: p for p in (LANDSAT_C2_L2, SENTINEL_2_L2A, MODIS_13Q1, MODIS_13A1, SENTINEL_1_RTC, GA_ARG25_NBAR)
}
_BY_COLLECTION: Final = {c: p for p in PROFILES.values() for c in p.collections}


def get_profile(name: str) -> CollectionProfile:
    """The profile named ``name`` or applying to collection id ``name``."""
    profile = PROFILES.get(name) or _BY_COLLECTION.get(name)
    if profile is None:
        raise KeyError(f"no collection profile for {name!r}; known: {', '.join(sorted(_BY_COLLECTION))}")
    return profile


def profile_for(item: Any) -> CollectionProfile:
    """The profile for a STAC item (``pystac.Item`` or dict), from its collection id."""
    collection = item.get("collection") if isinstance(item, Mapping) else getattr(item, "collection_id", None)
    if not collection:
        item_id = item.get("id") if isinstance(item, Mapping) else getattr(item, "id", "?")
        raise KeyError(f"item {item_id} names no collection; pass a profile explicitly")
    return get_profile(collection)
