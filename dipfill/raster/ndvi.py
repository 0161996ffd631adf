"""NDVI as the scene to fill (``--product ndvi``, paper 001): the index from a scene's pixels.

Two ways to an NDVI band, both ending in one float32 band with NaN where there is none:

* **computed** from the red and NIR bands: reflectance = DN × scale + offset per band
  (Landsat C2 L2 2.75e-5 and -0.2; Sentinel-2 L2A 1e-4 and, from processing baseline 04.00
  on, -0.1 for BOA_ADD_OFFSET; the collection profile and the item decide,
  :func:`dipfill.stac.profiles.band_scale_offset`), then NDVI = (NIR − red) / (NIR + red)
  in float64, clipped to [-1, 1] (an offset can make a dark pixel's reflectance negative)
  and stored as float32. A pixel is observed when both bands are and NIR + red > 0;
* **read** from a vegetation-index product (MODIS MOD13Q1/MOD13A1/MYD13A1: int16 ×10000,
  scale 1e-4): DN × scale + offset, observed inside the product's valid range (MODIS VI:
  -2000…10000 DN, so its -3000 fill, and a lossy copy's noise around it, are not NDVI).

Observed output pixels are these float32 values bit for bit (the fill pipeline copies
observed pixels unchanged). Which QA classes count as observed (MODIS pixel reliability,
VI Quality) is :mod:`dipfill.raster.masks`' business; this module only does the index.

:class:`NdviInputs` is what :class:`~dipfill.raster.scene.SceneSource` carries to derive the
band when it reads a window, so ``dipfill run``'s workers read NDVI as they read bands.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.errors import InputError

__all__ = ["NDVI_BAND", "MODIS_VALID_RANGE", "NdviInputs", "compute_ndvi", "scale_index", "direct_scale",
           "file_scale_offset", "read_class_layer"]

log = logging.getLogger(__name__)

#: The output band's name and asset key.
NDVI_BAND = "ndvi"
#: MODIS 13Q1/13A1 NDVI valid range, in NDVI units (valid_range -2000, 10000 DN × 1e-4).
MODIS_VALID_RANGE = (-0.2, 1.0)


def compute_ndvi(red: NDArray, nir: NDArray, red_valid: NDArray[np.bool_], nir_valid: NDArray[np.bool_], *,
                 red_scale: float = 1.0, red_offset: float = 0.0, nir_scale: float = 1.0,
                 nir_offset: float = 0.0) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """NDVI of DN arrays (module doc): float32 values (NaN where not observed) and where
    they are observed (both bands valid, NIR + red reflectance > 0)."""
    r = np.asarray(red, dtype=np.float64) * red_scale + red_offset
    n = np.asarray(nir, dtype=np.float64) * nir_scale + nir_offset
    total = n + r
    ok = np.asarray(red_valid, bool) & np.asarray(nir_valid, bool) & (total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.clip((n - r) / np.where(ok, total, 1.0), -1.0, 1.0)
    return np.where(ok, value, np.nan).astype(np.float32), ok


def scale_index(raw: NDArray, valid: NDArray[np.bool_], *, scale: float = 1e-4, offset: float = 0.0,
                valid_range: tuple[float, float] = (-1.0, 1.0)) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """A vegetation-index product's DN as index values: float32 (NaN where not observed) and
    where they are observed (valid, finite, inside ``valid_range``)."""
    value = np.asarray(raw, dtype=np.float64) * scale + offset
    lo, hi = valid_range
    ok = np.asarray(valid, bool) & np.isfinite(value) & (value >= lo - 1e-9) & (value <= hi + 1e-9)
    return np.where(ok, value, np.nan).astype(np.float32), ok


def direct_scale(dtype: Any, gdal_scale: float, gdal_offset: float, tags: Mapping[str, str],
                 given: float | None = None, given_offset: float | None = None
                 ) -> tuple[float, float, tuple[float, float], str]:
    """(scale, offset, valid range, why) for a one-band NDVI file.

    ``given`` (``--ndvi-scale``) wins. Else the file's own scale: GDAL reports an HDF-EOS
    ``scale_factor`` of 10000 as the scale, but MODIS means value = DN / scale_factor, so a
    scale above 1 is taken as that divisor. Else integer data are MODIS VI DN (×10000 →
    1e-4) and floats are NDVI already. The valid range is the file's ``valid_range`` tag
    (in DN), else MODIS VI's for 1e-4-scaled integers, else [-1, 1]."""
    integer = np.issubdtype(np.dtype(dtype), np.integer)
    if given is not None:
        scale, why = float(given), "--ndvi-scale"
    elif gdal_scale not in (0.0, 1.0) and math.isfinite(gdal_scale):
        scale = 1.0 / gdal_scale if gdal_scale > 1 else gdal_scale
        why = (f"the file's scale_factor {gdal_scale:g} (MODIS/HDF-EOS: value = DN / scale_factor)" if gdal_scale > 1
               else f"the file's scale {gdal_scale:g}")
    elif integer:
        scale, why = 1e-4, "integer NDVI without a stated scale: MODIS VI convention (DN x 1e-4)"
    else:
        scale, why = 1.0, "float NDVI without a stated scale: values taken as NDVI"
    offset = float(given_offset) if given_offset is not None else (gdal_offset if math.isfinite(gdal_offset) else 0.0)
    span = tags.get("valid_range")
    valid_range: tuple[float, float] = (-1.0, 1.0)
    if span:
        try:
            lo, hi = (float(v) for v in span.replace(",", " ").split()[:2])
            valid_range = (lo * scale + offset, hi * scale + offset)
        except ValueError:
            pass
    elif integer and math.isclose(scale, 1e-4):
        valid_range = MODIS_VALID_RANGE
    return scale, offset, valid_range, why


def file_scale_offset(paths: Sequence[str]) -> list[tuple[float, float, str, dict[str, str]]]:
    """Per band of the files ``paths`` (in order): GDAL's scale and offset, the dtype and the
    file's tags (what :func:`direct_scale` and the computed NDVI take when no flag says)."""
    from dipfill.raster.read import open_raster

    out = []
    for path in paths:
        with open_raster(path) as ds:
            tags = dict(ds.tags())
            for b in range(ds.count):
                out.append((float(ds.scales[b]), float(ds.offsets[b]), ds.dtypes[b], tags))
    return out


def read_class_layer(path: str, grid: Any, what: str) -> NDArray:
    """A QA class layer (MODIS pixel reliability, VI Quality) on the scene's own grid, as
    stored (one band): it must share the grid, as ``--mask`` must."""
    from dipfill.errors import GridMismatchError
    from dipfill.raster.read import _grid_of, describe_grid_difference, open_raster

    with open_raster(path, what) as ds:
        diff = describe_grid_difference(grid, _grid_of(ds))
        if diff is not None:
            raise GridMismatchError(f"{what} {path}: {diff} of the input; it must share the input's grid")
        return ds.read(1)


@dataclass(frozen=True)
class NdviInputs:
    """How a scene's NDVI band is derived from its assets when a window is read.

    ``kind``: ``computed`` (``names`` = red, NIR) or ``product`` (``names`` = the index
    band). ``keys``/``hrefs``/``nodata``/``scale``/``offset``: those assets, in that order;
    ``why``: where each scale/offset came from; ``valid_range`` for a product."""

    kind: Literal["computed", "product"]
    names: tuple[str, ...]
    keys: tuple[str, ...]
    hrefs: tuple[str, ...]
    nodata: tuple[float | None, ...]
    scale: tuple[float, ...]
    offset: tuple[float, ...]
    why: tuple[str, ...] = ()
    valid_range: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self) -> None:
        want = 2 if self.kind == "computed" else 1
        if len(self.names) != want:
            raise InputError(f"NDVI {self.kind} from {want} band(s), got {list(self.names)}")

    def apply(self, data: NDArray, valid: NDArray[np.bool_]) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """``data[inputs, y, x]`` (DN) and their validity → ``[1, y, x]`` NDVI and validity."""
        if self.kind == "computed":
            value, ok = compute_ndvi(data[0], data[1], valid[0], valid[1], red_scale=self.scale[0],
                                     red_offset=self.offset[0], nir_scale=self.scale[1], nir_offset=self.offset[1])
        else:
            value, ok = scale_index(data[0], valid[0], scale=self.scale[0], offset=self.offset[0],
                                    valid_range=self.valid_range)
        return value[None], ok[None]

    def record(self) -> dict[str, Any]:
        """What the item states about the derivation (no hrefs: they may be signed)."""
        bands = [{"band": n, "asset": k, "scale": s, "offset": o, **({"from": w} if w else {})}
                 for n, k, s, o, w in zip(self.names, self.keys, self.scale, self.offset,
                                          self.why or ("",) * len(self.names))]
        doc: dict[str, Any] = {"index": NDVI_BAND, "source": self.kind, "inputs": bands}
        if self.kind == "computed":
            doc["formula"] = "(nir - red) / (nir + red), reflectance = DN * scale + offset; clipped to [-1, 1]"
        else:
            doc["valid_range"] = list(self.valid_range)
        return doc
