"""Classical single-image fillers behind the engine protocol: baselines and fallbacks for DIP.

- ``fillnodata``: GDAL's inverse-distance-weighted interpolation (via rasterio). On thin
  SLC-off stripes it is a strong baseline (DESIGN.md: mean r² ≈ 0.52 on a real crop).
- ``telea`` / ``ns``: OpenCV's fast-marching (Telea 2004) and Navier–Stokes inpainting.

All work band by band, each band with its own observed mask, in float (no 8-bit round
trip). A band with no observed pixel in a patch is returned all NaN (nothing to
interpolate from: the protocol's "unfilled"), never a made-up constant. Observed pixels are
returned unchanged. Pixels flagged observed but not finite are treated as gaps.

cv2 and rasterio are imported where used, so importing this module (or choosing
``fillnodata``) does not pull in OpenCV. rasterio is used only for ``rasterio.fill``:
GDAL's algorithm on an in-memory array, no dataset and no file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.engines.base import EngineResult, PatchDiagnostics, check_batch
from dipfill.errors import InputError

__all__ = ["FillnodataEngine", "TeleaEngine", "NSEngine", "spatial_fill"]

log = logging.getLogger(__name__)


class _BandwiseEngine:
    """The loop every classical engine shares: one band of one patch at a time.

    Subclasses implement only ``_fill_band(values, observed) -> values``. It sees only bands
    with at least one observed pixel and one gap (the other cases are decided here), gets
    float64 values with gaps set to NaN, and returns float64 values with NaN where it could
    not reach. Why one loop: what counts as unfilled, that observed pixels pass through and
    what the diagnostics say must not drift apart between engines that are compared.
    """

    name: ClassVar[str] = ""
    uses_guides: ClassVar[bool] = False  # single-image methods: guides are accepted and ignored

    def fill(
        self,
        patches: NDArray[np.float32],
        observed: NDArray[np.bool_],
        *,
        seeds: Sequence[int],
        guides: NDArray[np.float32] | None = None,
        guide_observed: NDArray[np.bool_] | None = None,
        guide_bands: Sequence[int] | None = None,
    ) -> EngineResult:
        """Fill every band of every patch; the methods are deterministic, seeds are unused.
        Guides are checked and ignored (``uses_guides`` is False)."""
        check_batch(patches, observed, seeds, guides=guides, guide_observed=guide_observed, guide_bands=guide_bands)
        values = np.asarray(patches, dtype=np.float64)
        usable = np.asarray(observed, dtype=bool) & np.isfinite(values)
        out = np.full(values.shape, np.nan, dtype=np.float32)
        diagnostics = []
        for b in range(values.shape[0]):
            start = time.perf_counter()
            for c in range(values.shape[1]):
                obs = usable[b, c]
                if not obs.any():
                    continue  # nothing to interpolate from: stays NaN (unfilled)
                band = np.where(obs, values[b, c], np.nan)
                filled = band if obs.all() else self._fill_band(band, obs)
                filled = np.where(obs, values[b, c], filled)  # observed pixels pass through
                out[b, c] = np.where(np.isfinite(filled), filled, np.nan)
            unfilled = int(np.isnan(out[b]).sum())
            diagnostics.append(
                PatchDiagnostics(
                    engine=self.name,
                    seconds=time.perf_counter() - start,
                    extra={"unfilled_pixels": unfilled},
                )
            )
            if unfilled:
                log.debug("%s: patch %d left %d band-pixels unfilled", self.name, b, unfilled)
        return EngineResult(values=out, diagnostics=diagnostics)

    def _fill_band(self, band: NDArray[np.float64], obs: NDArray[np.bool_]) -> NDArray[np.float64]:
        raise NotImplementedError


@dataclass(frozen=True)
class FillnodataEngine(_BandwiseEngine):
    """GDAL inverse-distance fill (``rasterio.fill.fillnodata``) per band.

    ``max_search_distance`` (pixels) bounds how far GDAL looks for observed pixels; gap
    pixels farther than that from any observed pixel (in GDAL's quadrant search) stay NaN.
    ``smoothing_iterations`` runs GDAL's 3×3 smoothing over the filled pixels.
    """

    max_search_distance: float = 100.0
    smoothing_iterations: int = 0

    name: ClassVar[str] = "fillnodata"

    def __post_init__(self) -> None:
        if not self.max_search_distance > 0:
            raise InputError(
                f"max_search_distance must be > 0 pixels, got {self.max_search_distance!r}"
            )
        if self.smoothing_iterations < 0:
            raise InputError(
                f"smoothing_iterations must be >= 0, got {self.smoothing_iterations!r}"
            )

    def _fill_band(self, band: NDArray[np.float64], obs: NDArray[np.bool_]) -> NDArray[np.float64]:
        # Imported here: GDAL loads only when this engine runs. This is the one rasterio use
        # the engines allow, an array algorithm (no dataset, no file).
        from rasterio.fill import fillnodata

        # fillnodata writes into its argument and returns it: pass a copy. Gaps hold NaN,
        # so pixels GDAL cannot reach within max_search_distance come back NaN (unfilled).
        return fillnodata(
            band.copy(),
            mask=obs.astype(np.uint8),
            max_search_distance=float(self.max_search_distance),
            smoothing_iterations=int(self.smoothing_iterations),
        )


def spatial_fill(
    values: NDArray, observed: NDArray[np.bool_], *, max_search_distance: float = 100.0
) -> NDArray[np.float64]:
    """``fillnodata`` of ``values [C, H, W]`` from its observed pixels (the one spatial
    predictor, reused rather than re-implemented); NaN where GDAL cannot reach."""
    engine = FillnodataEngine(max_search_distance=max_search_distance)
    out = engine.fill(np.asarray(values, np.float32)[None], observed[None], seeds=[0])
    return out.values[0].astype(np.float64)


# Working range for cv2.inpaint. Measured on this build (opencv-python-headless 5.0.0):
# cv2.inpaint accepts 1-channel uint8, uint16 and float32, and 3-channel uint8 only
# (3-channel uint16/float32, int16 and float64 raise "Unsupported format"). We use
# 1-channel float32, band by band: no quantisation (uint8 would round to 1/255 of the
# band's range, uint16 to 1/65535). But float32 Telea is NOT scale-invariant: on a linear
# ramp with an 8-row gap its maximum error relative to the data range was 1.51 for data
# spanning 1.0, 0.16 for 10, 0.047 for 255, 0.039 for 10,000 and 0.0385 for 65,535 (NS:
# 0.024-0.027 at every scale, offset irrelevant for both). So each band's observed
# [min, max] is mapped affinely (in float64, no rounding) onto [0, _WORK_RANGE] before the
# call and back after it; float32's 24-bit mantissa keeps ~0.004 of a working unit, i.e.
# ~6e-8 of the band's range.
_WORK_RANGE = 65535.0


@dataclass(frozen=True)
class _OpenCVInpaintEngine(_BandwiseEngine):
    """Shared body of the OpenCV engines: ``cv2.inpaint`` per band in float32."""

    radius: float = 5.0

    name: ClassVar[str] = ""
    _method: ClassVar[str] = ""  # attribute of cv2: "INPAINT_TELEA" or "INPAINT_NS"

    def __post_init__(self) -> None:
        if not self.radius > 0:
            raise InputError(f"radius must be > 0 pixels, got {self.radius!r}")

    def _fill_band(self, band: NDArray[np.float64], obs: NDArray[np.bool_]) -> NDArray[np.float64]:
        import cv2  # here: OpenCV loads only when telea/ns run

        vmin = float(np.min(band[obs]))
        span = float(np.max(band[obs])) - vmin
        gain = _WORK_RANGE / span if span > 0 else 1.0
        work = np.where(obs, (band - vmin) * gain, 0.0).astype(np.float32)
        gaps = (~obs).astype(np.uint8)
        result = cv2.inpaint(work, gaps, float(self.radius), getattr(cv2, self._method))
        return result.astype(np.float64) / gain + vmin


@dataclass(frozen=True)
class TeleaEngine(_OpenCVInpaintEngine):
    """OpenCV fast-marching inpainting (Telea 2004); ``radius`` is its neighbourhood in pixels."""

    name: ClassVar[str] = "telea"
    _method: ClassVar[str] = "INPAINT_TELEA"


@dataclass(frozen=True)
class NSEngine(_OpenCVInpaintEngine):
    """OpenCV Navier–Stokes inpainting (Bertalmío et al. 2001); ``radius`` in pixels."""

    name: ClassVar[str] = "ns"
    _method: ClassVar[str] = "INPAINT_NS"
