"""Collection profiles: what dipfill needs to know about each STAC collection, declared once.

One frozen record per collection says which asset holds each band (in Planetary Computer,
Earth Search v1 and older naming), its nominal resolution, nodata, scale and offset, which
bands a run fills by default (every reflectance band: a complete product, ``--bands``
narrows it), which bands a quicklook shows, which asset is the QA layer and how it decodes
into the three pixel states of :mod:`dipfill.raster.masks`, and where the scene footprint
comes from. Code elsewhere asks the profile; it never branches on a collection name.

Profiles are metadata only: a QA layer is named here and decoded by
:func:`dipfill.raster.masks.decode_qa` (raster/ decodes pixels, stac/ describes collections).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, Mapping, Sequence


__all__ = [
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
    "band_scale_offset",
    "S2_BOA_OFFSET_BASELINE",
]


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
    """The QA asset and the name of the decoder that turns it into three states."""

    keys: AssetKeys
    decoder: str  # a name of :data:`dipfill.raster.masks.QA_DECODERS`: raster/ decodes pixels
    description: str


@dataclass(frozen=True)
class CollectionProfile:
    """Everything collection-specific that reading a scene needs.

    ``default_bands`` are what a run fills when ``--bands`` does not say: every band of the
    product (all reflectance bands; both backscatter polarisations; both vegetation
    indices), so the filled product replaces the input scene. Those an item lacks are left
    out (Landsat TM/ETM+ have no ``coastal``); asking for them by name is an error.
    ``quicklook`` names the bands shown as red, green, blue in the before/after picture
    (true colour where the product has it); bands the scene lacks fall back to the first
    three (or the first as grey).

    ``footprint`` says where *outside* comes from: ``geometry`` rasterises the item
    geometry (the QA decoder then splits missing pixels into gap inside and outside
    beyond it), ``qa`` trusts the QA layer's own no-data class, ``data`` derives it from
    where any band has data (:func:`dipfill.raster.masks.footprint_from_validity`).
    """

    name: str
    title: str
    collections: tuple[str, ...]
    bands: tuple[BandSpec, ...]
    default_bands: tuple[str, ...]
    qa: QASpec | None
    footprint: Literal["geometry", "qa", "data"]
    quicklook: tuple[str, ...] = ()
    cloud_property: str | None = "eo:cloud_cover"
    db_convertible: bool = False  # linear power → 10·log10 on request (SAR)
    notes: str = ""
    # NDVI (``--product ndvi``): the (red, NIR) bands it is computed from, or the band that
    # holds it already (a vegetation-index product: MODIS 13Q1/13A1)
    ndvi_from: tuple[str, str] | None = None
    ndvi_band: str | None = None
    # Sentinel-2 processing baseline >= 04.00 adds BOA_ADD_OFFSET (-1000 DN): the offset in
    # reflectance units that such items need when they do not state one (band_scale_offset)
    baseline_offset: float | None = None

    def __post_init__(self) -> None:
        names = self.band_names
        if len(set(names)) != len(names):
            raise ValueError(f"profile {self.name}: duplicate band names {names}")
        unknown = [b for b in (*self.default_bands, *self.quicklook, *(self.ndvi_from or ()),
                               *((self.ndvi_band,) if self.ndvi_band else ())) if b not in names]
        if unknown:
            raise ValueError(f"profile {self.name}: default or quicklook bands {unknown} are not bands of it")

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    def quicklook_indices(self, band_names: Sequence[str]) -> tuple[int, int, int]:
        """0-based indexes of the bands a quicklook shows as R, G, B among ``band_names``:
        the profile's ``quicklook`` bands when the scene has them, else the first three (or
        the first as grey)."""
        wanted = self.quicklook
        if wanted and all(n in band_names for n in wanted):
            idx = [list(band_names).index(n) for n in wanted]
            return (idx[0], idx[0], idx[0]) if len(idx) < 3 else (idx[0], idx[1], idx[2])
        return (0, 1, 2) if len(band_names) >= 3 else (0, 0, 0)

    def band(self, name: str) -> BandSpec:
        for b in self.bands:
            if b.name == name:
                return b
        raise KeyError(f"profile {self.name} has no band {name!r}; bands: {', '.join(self.band_names)}")


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
    default_bands=("coastal", "blue", "green", "red", "nir08", "swir16", "swir22"),  # coastal: OLI only
    qa=QASpec(
        keys=_keys("qa_pixel", "qa_pixel", None, "QA_PIXEL.TIF", "QA_PIXEL"),
        decoder="landsat_qa_pixel",
        description="QA_PIXEL: bit 0 fill → gap inside the footprint (SLC-off stripes), outside "
        "beyond it; clouds: dilated cloud, cirrus, cloud, cloud shadow bits → gap",
    ),
    footprint="geometry",
    quicklook=("red", "green", "blue"),
    notes="red/nir08/swir16 are ETM+ B3/B4/B5 and OLI B4/B5/B6 (paper 000 used B3/B4/B5); coastal is OLI's only",
    ndvi_from=("red", "nir08"),
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
    default_bands=tuple(name for name, *_ in _S2),  # all twelve L2A reflectance bands
    qa=QASpec(
        keys=_keys("SCL", "scl", "SCL"),
        decoder="s2_scl",
        description="SCL: 0 → outside, 1 → gap; clouds: 3, 8, 9, 10 → gap",
    ),
    footprint="qa",
    quicklook=("red", "green", "blue"),
    notes="10/20/60 m bands are resampled onto one grid (resolution selectable; the finest by default)",
    ndvi_from=("red", "nir"),  # B04 and B08, both 10 m
    baseline_offset=-0.1,
)


def _modis(product: str, metres: int, title: str) -> CollectionProfile:
    pre = f"{metres}m_16_days_"
    # Planetary Computer keys, then the Astraea/rio-tiler-pds COG naming (B01 NDVI, B02 EVI,
    # B03 VI Quality, B12 pixel reliability) and plain names
    return CollectionProfile(
        name=f"modis-{product}-061",
        title=title,
        collections=(f"modis-{product}-061", *(f"{sat}{product}.{v}" for sat in ("MOD", "MYD")
                                                for v in ("061", "v061", "006", "v006"))),
        bands=(
            BandSpec("ndvi", _keys(f"{pre}NDVI", None, None, "NDVI", "ndvi", "B01"), float(metres), nodata=-3000,
                     scale=1e-4),
            BandSpec("evi", _keys(f"{pre}EVI", None, None, "EVI", "evi", "B02"), float(metres), nodata=-3000,
                     scale=1e-4),
        ),
        default_bands=("ndvi", "evi"),
        qa=QASpec(
            keys=_keys(f"{pre}pixel_reliability", None, None, "pixel_reliability", "PR", "B12"),
            decoder="modis_reliability",
            description="pixel reliability: 0 (good) observed, or the --accept classes; the other ranks "
            "(1 marginal, 2 snow/ice, 3 cloudy) → gap; fill (-1/255) → outside",
        ),
        footprint="qa",
        cloud_property=None,  # composites carry no scene cloud cover
        ndvi_band="ndvi",
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
    quicklook=("B3", "B4", "B5"),  # no blue/green: red, NIR, SWIR as R, G, B (as the demo always showed)
    cloud_property=None,
    ndvi_from=("B3", "B4"),  # ETM+ red, NIR
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


#: The first Sentinel-2 processing baseline whose L2A DN carry BOA_ADD_OFFSET (-1000).
S2_BOA_OFFSET_BASELINE: Final = (4, 0)

#: Item properties that say a Sentinel-2 item's DN were harmonised (the offset taken out).
_OFFSET_APPLIED = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")
_BASELINE = ("s2:processing_baseline", "sentinel:processing_baseline", "processing:version")


def _baseline(properties: Mapping[str, Any]) -> tuple[int, int] | None:
    for key in _BASELINE:
        value = properties.get(key)
        if value is None:
            continue
        try:
            major, _, minor = str(value).strip().lstrip("N").partition(".")
            return int(major), int(minor or 0)
        except ValueError:
            continue
    return None


def band_scale_offset(profile: CollectionProfile, spec: BandSpec | None, asset_band: Mapping[str, Any],
                      properties: Mapping[str, Any]) -> tuple[float, float, str]:
    """A band's (scale, offset) — value = DN × scale + offset — and where they come from.

    An item's own ``raster:bands`` scale/offset win over the profile's documented values
    (they change with processing). Sentinel-2 L2A (``baseline_offset``): from processing
    baseline 04.00 on, DN carry BOA_ADD_OFFSET = -1000, so reflectance = DN × 1e-4 - 0.1.
    An item that says its DN were harmonised (``earthsearch:boa_offset_applied: true``)
    gets offset 0 whatever its ``raster:bands`` say (Earth Search's maintainers call that
    flag the truth where the two disagree, element84/earth-search#9); an item that states
    no offset but a baseline >= 04.00 (Planetary Computer) gets -0.1."""
    scale = float(asset_band.get("scale", spec.scale if spec else 1.0))
    offset = float(asset_band.get("offset", spec.offset if spec else 0.0))
    why = "item raster:bands" if "scale" in asset_band or "offset" in asset_band else "collection profile"
    if profile.baseline_offset is None:
        return scale, offset, why
    if any(properties.get(k) is True for k in _OFFSET_APPLIED):
        return scale, 0.0, "DN harmonised by the provider (boa_offset_applied): no offset"
    if "offset" in asset_band:
        return scale, offset, why
    baseline = _baseline(properties)
    if baseline is not None and baseline >= S2_BOA_OFFSET_BASELINE:
        return scale, profile.baseline_offset, (f"processing baseline {baseline[0]:02d}.{baseline[1]:02d} >= 04.00: "
                                                "BOA_ADD_OFFSET -1000 DN")
    return scale, offset, why
