"""``--product ndvi``: fill NDVI instead of reflectance (paper 001, DIP for cloud-gapped MODIS NDVI).

The scene becomes one float32 NDVI band before any stage sees it (:mod:`dipfill.raster.ndvi`
computes or reads it); everything after — windows, engines, blending, compositing, COG,
Zarr, quicklook, item — is the ordinary fill pipeline, so observed NDVI pixels are written
bit-exact to the computed NDVI and outside pixels stay NaN. What the mode adds:

* **gaps** from the product's own quality layer: MODIS pixel reliability (or VI Quality's
  MODLAND bits) with configurable accepted classes, by default only "good" (0), as the
  paper kept only good-quality pixels; its fill class is outside;
* **the paper's configuration by default**: preset ``ndvi2024`` (64 channels, input-noise
  injection, held-out early stopping) and the vegetation-only loss, ``loss_min_value`` =
  ``--ndvi-threshold`` (0: pixels with NDVI <= 0, water mostly, stay out of the loss and of
  the held-out scoring; they are still observed and copied, and gaps over them are still
  filled);
* **the item** records ``dipfill:mode = ndvi`` and ``dipfill:ndvi`` (how the index was made,
  scale/offset and where they came from, the quality layer and accepted classes, the
  threshold), and each NDVI band's ``raster:bands`` states the index, nodata ``nan``, the
  accepted classes and the threshold.

:class:`NdviMode` is the :func:`~dipfill.pipeline.fill.fill_files` hook (files); ``dipfill
run`` reads NDVI through the scene source (:func:`~dipfill.raster.scene.open_scene` with
``product="ndvi"``) and describes it with :func:`ndvi_item_fields`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.errors import InputError
from dipfill.raster.masks import OBSERVED, OUTSIDE, decode_qa
from dipfill.raster.ndvi import (
    NDVI_BAND, NdviInputs, compute_ndvi, direct_scale, file_scale_offset, read_class_layer, scale_index,
)
from dipfill.raster.read import Scene
from dipfill.stac.item import ItemExtras
from dipfill.stac.profiles import LANDSAT_C2_L2

__all__ = ["NdviMode", "ndvi_engine_options", "ndvi_item_fields", "parse_classes", "NDVI_ENGINES",
           "DEFAULT_THRESHOLD"]

log = logging.getLogger(__name__)

#: Engines whose loss takes the vegetation threshold (``loss_min_value``).
NDVI_ENGINES = ("dip", "mcpn")
#: Paper 001: NDVI <= 0 is excluded from optimisation and evaluation.
DEFAULT_THRESHOLD = 0.0
#: USGS Collection 2 Level-2 surface reflectance file names (LC08_L2SP_..._SR_B4.TIF).
_LANDSAT_C2_SR = re.compile(r"^L[COTE]0\d_L2S[PR]_.*_SR_B\d+\.TIF$", re.IGNORECASE)
_QA_LAYERS = {"reliability": ("modis_reliability", "MODIS pixel reliability"),
              "vi_quality": ("modis_vi_quality", "MODIS VI Quality (MODLAND bits 0-1)")}


def parse_classes(value: Any) -> tuple[int, ...]:
    """``--accept 0,1`` (or a YAML list) as the accepted QA classes."""
    items = value.split(",") if isinstance(value, str) else ([value] if isinstance(value, int) else value)
    try:
        classes = tuple(sorted({int(str(c).strip()) for c in items if str(c).strip()}))
    except (TypeError, ValueError):
        classes = ()
    if not classes or any(not 0 <= c <= 3 for c in classes):
        raise InputError(f"--accept takes QA classes 0-3 (0 good, 1 marginal, 2 snow/ice, 3 cloudy), e.g. 0 or 0,1; "
                         f"got {value!r}")
    return classes


def ndvi_engine_options(engine: str, options: Mapping[str, Any], threshold: float | None) -> dict[str, Any]:
    """The engine options NDVI mode uses: for the DIP engines, the vegetation-only loss
    (``loss_min_value`` = ``threshold``) unless ``--dip loss_min_value=...`` set it."""
    opts = dict(options)
    if engine in NDVI_ENGINES and "loss_min_value" not in opts:
        opts["loss_min_value"] = threshold
    return opts


def _threshold(engine: str, engine_options: Mapping[str, Any]) -> float | None:
    return engine_options.get("loss_min_value") if engine in NDVI_ENGINES else None


def ndvi_item_fields(derive: NdviInputs, *, engine: str, engine_options: Mapping[str, Any],
                     accept: Sequence[int] | None, qa_layer: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(item properties, fields of the NDVI band's ``raster:bands`` entry) describing the mode."""
    threshold = _threshold(engine, engine_options)
    classes = list(accept) if accept is not None else [0]
    record = {**derive.record(), "output": "float32 NDVI, nodata NaN; observed pixels the computed NDVI bit-exact",
              "quality_layer": qa_layer, "accepted_classes": classes if qa_layer else None,
              "vegetation_threshold": threshold,
              "vegetation_only": (f"pixels with NDVI <= {threshold} are left out of the {engine} loss and its "
                                  "held-out scoring (paper 001)") if threshold is not None else
                                 f"the {engine} engine has no loss: every observed pixel is used"}
    band = {"nodata": "nan", "unit": "1", "description": f"NDVI ({derive.kind}): "
            + ("(nir - red) / (nir + red) of surface reflectance" if derive.kind == "computed"
               else "the product's index, DN x scale + offset"),
            "dipfill:index": NDVI_BAND, "dipfill:accepted_classes": classes if qa_layer else None,
            "dipfill:vegetation_threshold": threshold}
    return {"dipfill:mode": "ndvi", "dipfill:ndvi": record}, band


@dataclass
class NdviMode:
    """The NDVI hooks of :func:`~dipfill.pipeline.fill.fill_files` (see the module doc).

    ``bands``: 1-based (red, NIR) band numbers of the input stack, or one band number of an
    NDVI product; default: an input of one band is NDVI already, else bands 1 and 2.
    ``scale``/``offset``: DN → reflectance (or index) for every input band; default the
    file's own (GDAL scale/offset; MODIS ``scale_factor`` as its divisor), Landsat C2 L2 file
    names get 2.75e-5 / -0.2, else 1 / 0 (integer one-band NDVI: MODIS 1e-4).
    ``reliability``/``vi_quality``: a MODIS quality layer on the input's grid whose
    ``accept`` classes are observed. ``engine``/``engine_options`` only describe the run."""

    bands: tuple[int, ...] | None = None
    scale: float | None = None
    offset: float | None = None
    reliability: str | None = None
    vi_quality: str | None = None
    accept: tuple[int, ...] = (0,)
    engine: str = "dip"
    engine_options: Mapping[str, Any] = field(default_factory=dict)
    derive: NdviInputs | None = None

    def __post_init__(self) -> None:
        if self.reliability and self.vi_quality:
            raise InputError("give one quality layer: --reliability FILE or --vi-quality FILE, not both")
        if self.bands is not None and len(self.bands) not in (1, 2):
            raise InputError(f"--ndvi-bands takes RED,NIR (two band numbers) or the NDVI band, got {self.bands}")
        self.accept = parse_classes(self.accept)

    @property
    def qa_layer(self) -> str | None:
        return "reliability" if self.reliability else "vi_quality" if self.vi_quality else None

    # -- fill_files hooks ---------------------------------------------------------------
    def prepare(self, scene: Scene, valid: NDArray[np.bool_], footprint: NDArray[np.bool_]
                ) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        """Replace the scene's bands by NDVI (float32, NaN nodata); the observed pixels are
        where the index is (and the quality layer accepts); the quality layer's fill is
        outside the footprint."""
        count = scene.data.shape[0]
        bands = self.bands or ((1,) if count == 1 else (1, 2))
        bad = [b for b in bands if not 1 <= b <= count]
        if bad:
            raise InputError(f"--ndvi-bands {','.join(map(str, bands))}: band {bad[0]} is out of range; the input has "
                             f"{count} band(s)")
        infos = file_scale_offset(scene.sources)
        idx = [b - 1 for b in bands]
        names = tuple(scene.band_names[i] for i in idx)
        if len(idx) == 1:
            g_scale, g_offset, dtype, tags = infos[idx[0]]
            scale, offset, span, why = direct_scale(dtype, g_scale, g_offset, tags, self.scale, self.offset)
            value, ok = scale_index(scene.data[idx[0]], valid[idx[0]], scale=scale, offset=offset, valid_range=span)
            self.derive = NdviInputs("product", names, names, (), (scene.nodata,), (scale,), (offset,), (why,), span)
        else:
            so = [self._reflectance_scale(scene, infos, i) for i in idx]
            value, ok = compute_ndvi(scene.data[idx[0]], scene.data[idx[1]], valid[idx[0]], valid[idx[1]],
                                     red_scale=so[0][0], red_offset=so[0][1], nir_scale=so[1][0], nir_offset=so[1][1])
            self.derive = NdviInputs("computed", names, names, (), (scene.nodata,) * 2, (so[0][0], so[1][0]),
                                     (so[0][1], so[1][1]), (so[0][2], so[1][2]))
        if self.qa_layer:
            decoder, what = _QA_LAYERS[self.qa_layer]
            path = self.reliability or self.vi_quality
            layer = read_class_layer(str(path), scene.grid, f"--{self.qa_layer.replace('_', '-')}")
            state = decode_qa(decoder, layer, accept=self.accept)
            log.info("ndvi: %s %s: %.1f %% of the pixels in accepted classes %s", what, path,
                     100 * float((state == OBSERVED).mean()), list(self.accept))
            ok &= state == OBSERVED
            footprint = footprint & (state != OUTSIDE)
        log.info("ndvi: %s NDVI from %s; %d observed pixels", self.derive.kind, ", ".join(names), int(ok.sum()))
        scene.data = value[None]
        scene.band_names = [NDVI_BAND]
        scene.nodata = float("nan")
        return ok[None], footprint

    def _reflectance_scale(self, scene: Scene, infos: list, i: int) -> tuple[float, float, str]:
        if self.scale is not None or self.offset is not None:
            return (1.0 if self.scale is None else self.scale), (self.offset or 0.0), "--ndvi-scale/--ndvi-offset"
        g_scale, g_offset = infos[i][0], infos[i][1]
        if (g_scale, g_offset) != (1.0, 0.0):
            return g_scale, g_offset, "the file's scale/offset"
        source = scene.sources[i] if len(scene.sources) == scene.data.shape[0] else scene.sources[0]
        if _LANDSAT_C2_SR.match(Path(source).name):
            spec = LANDSAT_C2_L2.band("red")
            return spec.scale, spec.offset, "Landsat C2 L2 surface reflectance (file name): collection profile"
        return 1.0, 0.0, "none stated: DN taken as reflectance (give --ndvi-scale/--ndvi-offset)"

    def fill(self, *args: Any, **kwargs: Any) -> Any:
        """The ordinary fill (:func:`~dipfill.pipeline.fill.fill_arrays`) on the NDVI band."""
        from dipfill.pipeline.fill import fill_arrays

        return fill_arrays(*args, **kwargs)

    def extras(self) -> ItemExtras:
        assert self.derive is not None, "prepare() first"
        props, band = ndvi_item_fields(self.derive, engine=self.engine, engine_options=self.engine_options,
                                       accept=self.accept, qa_layer=self.qa_layer)
        if self.qa_layer:
            props["dipfill:ndvi"]["quality_layer_file"] = Path(str(self.reliability or self.vi_quality)).name
        return ItemExtras(properties=props, band_fields=band)
