"""What a user asks for and what decides the output bytes: the option records.

The bottom floor: frozen dataclasses every room may import (the CLI builds them, the
pipeline reads them, the STAC item records them). Each field's default and help text live
here once; the CLI's flags and the deploy examples are checked against them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from dipfill.errors import InputError

__all__ = ["FillOptions", "RunRequest", "DEFAULT_COLLAR_CLOSING", "band_list", "GUIDE_FIELDS", "GUIDE_RESAMPLINGS"]

#: Width (px) of the square closing that bridges SLC-off stripes before the footprint is
#: taken. Landsat-7 SLC-off stripes are at most ~15 px wide at 30 m (wider near scene
#: edges at coarser grids would need more); 31 px bridges anything narrower than 30 px.
DEFAULT_COLLAR_CLOSING = 31

#: How a guide not on the target grid is resampled onto it: the GDAL kernels that are a
#: weighted mean of source pixels, so a guide's own gaps can be kept out of it
#: (:mod:`dipfill.raster.guides`). Nearest keeps the guide's values exactly.
GUIDE_RESAMPLINGS = ("bilinear", "nearest", "cubic", "cubic_spline", "lanczos", "average")

#: The FillOptions fields that describe guides; left out of the hash when there are none.
GUIDE_FIELDS = ("guides", "guide_bands", "guide_resampling", "guide_masks")


def _opt(default: Any, help: str, **flag: Any) -> Any:
    """A field whose default and help text are the CLI's (``dipfill.cli.options`` builds the
    flags from them): ``flag`` may name the flag and its metavar."""
    return field(default=default, metadata={"help": help, **flag})


@dataclass(frozen=True)
class FillOptions:
    """Everything that decides the output bytes (hashed into the STAC item), plus naming."""

    engine: str = _opt("dip", "fill engine")
    engine_options: Mapping[str, Any] = field(default_factory=dict)  # the engine's own (DIP: preset, steps, ...)
    fallback: str = _opt("fillnodata", "engine for patches with too few observed pixels ('none': leave them)")
    min_observed_fraction: float = _opt(0.05, "patches with a smaller observed fraction go to --fallback",
                                        flag="--min-observed", metavar="F")
    patch: int = _opt(256, "patch size in pixels")
    overlap: int = _opt(32, "overlap between patches in pixels")
    seed: int = _opt(0, "random seed (per-patch seeds derive from it and the window)")
    batch_size: int = _opt(4, "patches per engine call")
    footprint: str = _opt("auto", "scene footprint: derived from nodata (auto), whole raster (all), or a GeoJSON "
                          "polygon in lon/lat; pixels outside are never filled", metavar="auto|all|FILE")
    collar_closing: int = _opt(DEFAULT_COLLAR_CLOSING, "closing width that bridges stripes when deriving the "
                               "footprint", metavar="PX")
    guides: tuple[str, ...] = _opt((), "another raster of the same ground (any grid, CRS or resolution: "
                                   "reprojected onto the input's grid) that guide-using engines take as "
                                   "evidence; its own nodata/mask is honoured; repeatable",
                                   flag="--guide", metavar="FILE")
    guide_bands: tuple[int, ...] = _opt((), "1-based bands taken from every guide, e.g. 1,2,3",
                                        metavar="B,B,...")
    guide_resampling: str = _opt("bilinear", "resampling of guides not on the input's grid; a pixel is a "
                                 "guide value only where every guide pixel the kernel uses is valid")
    guide_masks: tuple[str, ...] = _opt((), "a raster marking the guide's own gaps (clouds, shadows): non-zero is "
                                        "not evidence, as --mask marks the input's; any grid or CRS (nearest); "
                                        "the k-th --guide-mask belongs to the k-th --guide; repeatable",
                                        flag="--guide-mask", metavar="FILE")

    def __post_init__(self) -> None:
        # "like" types in, canonical tuples out: the CLI gives lists, a YAML "1,2,3"
        guides = (self.guides,) if isinstance(self.guides, str) else tuple(str(g) for g in self.guides)
        object.__setattr__(self, "guides", guides)
        masks = (self.guide_masks,) if isinstance(self.guide_masks, str) else tuple(str(m) for m in self.guide_masks)
        object.__setattr__(self, "guide_masks", masks)
        if len(masks) > len(guides):
            raise InputError(f"--guide-mask {masks[len(guides)]}: more --guide-mask ({len(masks)}) than --guide "
                             f"({len(guides)}); the k-th mask belongs to the k-th --guide, so give its --guide too")
        object.__setattr__(self, "guide_bands", band_list(self.guide_bands))
        if self.guide_resampling not in GUIDE_RESAMPLINGS:
            raise InputError(f"--guide-resampling must be one of {', '.join(GUIDE_RESAMPLINGS)}, "
                             f"got {self.guide_resampling!r}")
        if self.patch < 1:
            raise InputError(f"--patch must be >= 1, got {self.patch}")
        if not 0 <= self.overlap < self.patch:
            raise InputError(f"--overlap must be in [0, patch={self.patch}), got {self.overlap}")
        if not 0.0 <= self.min_observed_fraction <= 1.0:
            raise InputError(f"min_observed_fraction must be in [0, 1], got {self.min_observed_fraction}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")

    def hashable_dict(self) -> dict[str, Any]:
        """The options that determine the pixels (not where they are written)."""
        d = asdict(self)
        d["engine_options"] = dict(sorted(dict(self.engine_options).items()))
        if not self.guides:  # a config without guides hashes as it did before guides existed
            for name in GUIDE_FIELDS:
                d.pop(name)
        else:
            d["guides"], d["guide_bands"] = list(self.guides), list(self.guide_bands)
            if self.guide_masks:
                d["guide_masks"] = list(self.guide_masks)
            else:  # guides without masks hash as they did before masks existed
                d.pop("guide_masks")
        return d


def band_list(value: Any) -> tuple[int, ...]:
    """``"1,2,3"``, ``[1, 2, 3]`` or ``()`` as a tuple of 1-based band numbers."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        bands = tuple(int(b) for b in items if str(b).strip())
    except (TypeError, ValueError):
        bands = (0,)
    if any(b < 1 for b in bands):
        raise InputError(f"--guide-bands must be 1-based band numbers like 1,2,3, got {value!r}")
    return bands


#: What a run's product holds, in the config hash of every run: a scene whose output an
#: earlier layout wrote is not current and is redone once. 2 (issue 12): every band of the
#: collection profile by default, one COG per band under the input item's asset keys, the
#: input's QA asset carried (1: the profile's three default bands in one multi-band COG).
PRODUCT_LAYOUT = 2


@dataclass(frozen=True)
class RunRequest:
    """Everything `dipfill run` was asked, as recorded in ``runs/<run-id>.json``."""

    stac: str
    out: str
    collections: tuple[str, ...] = ()
    bbox: tuple[float, float, float, float] | None = None
    datetime: str | None = None
    max_cloud: float | None = None
    filter: dict[str, Any] | None = None
    mask: str = "fill"
    bands: tuple[str, ...] | None = None
    options: FillOptions = field(default_factory=FillOptions)
    publish: str | None = None
    max_scenes: int | None = None
    since: str | None = None
    force: bool = False
    sign: str | None = None  # "planetary-computer": sign asset hrefs (needs the planetary-computer package)
    # Guides found through STAC (used by engines that take guides; see dipfill.pipeline.guides)
    guides: str = "auto"  # "auto": look for guides when the engine uses them; "none": never
    guide_collection: str | None = None  # default: the target's own collection
    guide_window: int = 64  # ± days around the target's date
    guide_years: int = 0  # also the same season of this many earlier years
    max_guides: int = 2
    guide_bands: tuple[str, ...] | None = None  # band names in the guide collection (default: the target's)
    guide_composite: str = "none"  # "median": each time window's items as one per-pixel median guide
    # The job: "fill" gaps, or "anonymise" the lon/lat GeoJSON `region` of every scene (SAR,
    # paper 004; dipfill.pipeline.anonymise) with `units` auto or as given
    # or "sr": super-resolve each scene's coarser bands (`bands`) onto the grid of its finer
    # `sr_guide_bands` (paper 003 §3.2; dipfill.pipeline.sr_run), the method in options.engine
    mode: str = "fill"
    region: str | None = None
    units: str = "auto"
    region_sha256: str | None = None  # the region file's content: what the config hash holds
    sr_guide_bands: tuple[str, ...] | None = None  # default: the profile's finest bands the item has
    # The scene to fill: its "bands", or "ndvi" (paper 001; dipfill.pipeline.ndvi) computed from
    # the profile's red/NIR or read from its NDVI band; `accept`: the QA classes kept as observed
    # (MODIS pixel reliability; None: the profile's default, only "good")
    product: str = "bands"
    accept: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.product not in ("bands", "ndvi"):
            raise InputError(f"--product must be bands or ndvi, got {self.product!r}")
        if self.product == "ndvi" and self.mode != "fill":
            raise InputError(f"--product ndvi fills NDVI; it does not combine with --mode {self.mode}")
        if self.mode not in ("fill", "anonymise", "sr"):
            raise InputError(f"--mode must be fill, anonymise or sr, got {self.mode!r}")
        if self.sr_guide_bands and self.mode != "sr":
            raise InputError("--sr-guide-bands names the guide of --mode sr; give --mode sr with it")
        if self.mode == "anonymise" and not self.region:
            raise InputError("--mode anonymise needs --region REGION.geojson (the site to hide, lon/lat)")
        if self.region and self.mode != "anonymise":
            raise InputError("--region is the site --mode anonymise hides; give --mode anonymise with it")
        if self.guides not in ("auto", "none"):
            raise InputError(f"--guides must be auto or none, got {self.guides!r}")
        if self.guide_composite not in ("none", "median"):
            raise InputError(f"--guide-composite must be none or median, got {self.guide_composite!r}")

    def guide_query(self) -> dict[str, Any]:
        """The guide search as recorded in the config (decides which guides a scene gets)."""
        return {"guides": self.guides, "guide_collection": self.guide_collection, "guide_window": self.guide_window,
                "guide_years": self.guide_years, "max_guides": self.max_guides,
                "guide_bands": list(self.guide_bands or []),
                **({"guide_composite": self.guide_composite} if self.guide_composite != "none" else {})}

    def config(self, *, with_guides: bool = False) -> dict[str, Any]:
        """What decides the output bytes: fill options, mask mode, bands, the product layout
        (:data:`PRODUCT_LAYOUT`) and, for an engine that uses guides, the guide search (left
        out otherwise: old hashes stay valid)."""
        cfg = {**self.options.hashable_dict(), "mask": self.mask, "bands": list(self.bands or []),
               "product_layout": PRODUCT_LAYOUT}
        if with_guides and self.guides != "none":
            cfg["guide_search"] = self.guide_query()
        if self.mode == "sr":
            cfg["mode"] = {"mode": "sr", "guide_bands": list(self.sr_guide_bands or [])}
        elif self.mode != "fill":  # a fill's hash stays what it was
            # the region by content, not path: an edited file must redo the scenes, a moved one not
            cfg["mode"] = {"mode": self.mode, "region_sha256": self.region_sha256, "units": self.units}
        if self.product != "bands" or self.accept is not None:  # so does a run of the bands
            cfg["product"] = {"product": self.product, "accept": list(self.accept) if self.accept else None}
        return cfg


