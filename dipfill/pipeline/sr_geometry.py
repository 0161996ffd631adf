"""Where a low-resolution raster sits on its guide's grid: the checked geometry of ``dipfill sr``
and ``dipfill run --mode sr`` (:func:`sr_geometry`), from the two grids' transforms."""

from __future__ import annotations

import math

from dipfill.errors import InputError
from dipfill.raster.read import Grid
from dipfill.tiling.resample import SRGeometry

__all__ = ["SCALE_TOLERANCE", "min_patch", "sr_geometry"]

#: Relative disagreement allowed between ``--scale FACTOR`` and the factor the grids give.
SCALE_TOLERANCE = 1e-3


def sr_geometry(low: Grid, high: Grid, scale: str | float = "auto", *, low_name: str = "LOWRES",
                high_name: str = "the guide") -> SRGeometry:
    """Where the LR grid ``low`` sits on the HR grid ``high``, or an :class:`InputError`.

    ``scale`` ``auto`` reads the factor from the transforms; a number is checked against them
    (it places the LR raster at the guide's origin only when the LR raster has no
    georeference at all). Refused: different CRSs, rotated grids, a factor below 1, an LR
    footprint the guide does not cover."""
    factor = None if str(scale) == "auto" else _factor(scale)
    georef = low.crs is not None and not low.transform.is_identity
    if not georef:
        if factor is None:
            raise InputError(f"{low_name} has no georeference (no CRS/transform); give --scale FACTOR to place it "
                             f"at the origin of {high_name}")
        return _checked((factor, factor), (0.0, 0.0), low, high, low_name, high_name)
    if high.crs is None:
        raise InputError(f"{high_name} has no CRS but {low_name} has one; the guide must be georeferenced")
    if low.crs != high.crs:
        raise InputError(f"{low_name} is in {low.crs} and {high_name} in {high.crs}; reproject the low-resolution "
                         f"raster to the guide's CRS first (gdalwarp -t_srs {high.crs})")
    for name, t in ((low_name, low.transform), (high_name, high.transform)):
        if t.b != 0 or t.d != 0:
            raise InputError(f"{name} is a rotated grid; dipfill sr needs north-up rasters")
    sx, sy = low.transform.a / high.transform.a, low.transform.e / high.transform.e
    if sx <= 0 or sy <= 0:
        raise InputError(f"{low_name} and {high_name} have axes pointing opposite ways; warp one to north-up")
    if factor is not None and (abs(sx - factor) > SCALE_TOLERANCE * sx or abs(sy - factor) > SCALE_TOLERANCE * sy):
        raise InputError(f"--scale {factor:g} disagrees with the grids: {low_name}'s pixels are {sx:g} x {sy:g} of "
                         f"{high_name}'s; leave --scale auto")
    offset = ((low.transform.f - high.transform.f) / high.transform.e,
              (low.transform.c - high.transform.c) / high.transform.a)
    return _checked((sy, sx), offset, low, high, low_name, high_name)


def _factor(scale: str | float) -> float:
    try:
        value = float(scale)
    except ValueError:
        raise InputError(f"--scale must be auto or a number >= 1, got {scale!r}") from None
    if not math.isfinite(value) or value < 1:
        raise InputError(f"--scale {scale}: the factor must be >= 1 (the low-resolution pixels are the larger ones)")
    return value


def _checked(scale: tuple[float, float], offset: tuple[float, float], low: Grid, high: Grid, low_name: str,
             high_name: str) -> SRGeometry:
    if min(scale) < 1:
        raise InputError(f"{low_name} has finer pixels than {high_name} (factor {min(scale):.3g} < 1); "
                         "pass the low-resolution raster first and the finer one as --guide")
    geo = SRGeometry(scale, offset, low.shape, high.shape)
    tol = 0.01  # HR pixels
    for k, axis in ((0, "rows"), (1, "columns")):
        lo = geo.offset[k]
        hi = lo + geo.lr_shape[k] * geo.scale[k]
        if lo < -tol or hi > geo.hr_shape[k] + tol:
            raise InputError(f"{high_name} does not cover the footprint of {low_name}: its {axis} span HR pixels "
                             f"{lo:.1f} to {hi:.1f} of the guide's 0 to {geo.hr_shape[k]}; give a guide that "
                             "covers the whole low-resolution raster (or crop it)")
    return geo


def min_patch(geo: SRGeometry) -> int:
    """The smallest HR patch side that holds a whole LR pixel's kernel at ``geo``'s factor."""
    return int(math.ceil(4 * max(geo.scale)))

