"""What a user asks for and what decides the output bytes: the option records.

The bottom floor: frozen dataclasses every room may import (the CLI builds them, the
pipeline reads them, the STAC item records them). Each field's default and help text live
here once; the CLI's flags and the deploy examples are checked against them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from dipfill.errors import InputError

__all__ = ["FillOptions", "RunRequest", "DEFAULT_COLLAR_CLOSING"]

#: Width (px) of the square closing that bridges SLC-off stripes before the footprint is
#: taken. Landsat-7 SLC-off stripes are at most ~15 px wide at 30 m (wider near scene
#: edges at coarser grids would need more); 31 px bridges anything narrower than 30 px.
DEFAULT_COLLAR_CLOSING = 31


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

    def __post_init__(self) -> None:
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
        return d


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

    def config(self) -> dict[str, Any]:
        """What decides the output bytes: fill options, mask mode, bands."""
        return {**self.options.hashable_dict(), "mask": self.mask, "bands": list(self.bands or [])}


