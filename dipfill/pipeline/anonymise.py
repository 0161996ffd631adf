"""`dipfill anonymise`: replace a region of a SAR scene by synthetic content (paper 004).

The region is the gap mask of the ordinary fill pipeline (:func:`~dipfill.pipeline.fill.fill_files`
with this module's :class:`AnonymiseMode`): same reading, validation, engines, tiling,
outputs and STAC item. What the mode changes:

* **Nothing of the original inside the region reaches any stage.** :meth:`AnonymiseMode.prepare`
  overwrites the region's pixels in the scene array (with nodata, or 0) before anything
  else reads it, so engines, their normalisation percentiles, the judged blend, the
  fallback, the quicklook's stretch and panels, the Zarr mosaic and the item's statistics
  all see a blank there; the units decision (``--units auto``) reads pixels outside the
  region only. The one thing the output takes from inside the region is which pixels are
  nodata (the footprint stays the footprint). ``tests/test_anonymise.py`` proves it by
  changing the original inside the region and comparing the outputs byte for byte.
* **The fit is in dB** (as the paper): amplitude DN, linear power or dB in, ``10·log10``
  intensity for the engines, and back to the input's units and dtype (DN rounded and
  clipped to 1…65535) for the region only; every pixel outside it is the input's, bit-exact.
* **Regions wider than a patch** are filled coarse-to-fine (:mod:`dipfill.engines.sar`
  argues why): the engine fills block means of the dB image with the whole region in
  context, upsampled as the local mean, plus synthetic speckle with the ENL of the ring
  around the region; within half a patch of the region's edge the engine's own
  full-resolution fill (plus that speckle for the smooth interpolators; DIP makes its own
  texture) takes over, linearly over a quarter patch.

The item records ``dipfill:mode = anonymise`` and ``dipfill:anonymise`` (units and how they
were decided, the ENL per band, the coarse factor, the edge reach, the region's size).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.engines.base import Engine
from dipfill.engines.sar import (
    UNITS, block_average, coarse_factor, correlated_speckle, detect_units, edge_weight, estimate_enl, from_db,
    lag1_correlation, ring, to_db, upsample,
)
from dipfill.errors import InputError
from dipfill.raster.masks import QA_ENGINE, QA_OBSERVED, QA_OUTSIDE
from dipfill.raster.read import Scene, data_validity
from dipfill.raster.region import gcp_outline, region_mask
from dipfill.specs import FillOptions
from dipfill.stac.item import ItemExtras

__all__ = ["AnonymiseMode", "anonymise_files", "anonymise_scene", "TEXTURED_ENGINES", "anonymise_engine_options"]

log = logging.getLogger(__name__)

#: Engines whose fill carries its own texture (a network fitted with an SSIM loss); the
#: others interpolate a smooth surface, which gets synthetic speckle on top.
TEXTURED_ENGINES = ("dip", "mcpn")


def anonymise_engine_options(engine: str, options: dict[str, Any]) -> dict[str, Any]:
    """The engine options anonymise uses: for ``dip``, preset ``sar2023`` and no judged blend
    with ``fillnodata`` unless asked (the paper writes the network's output; a blend with a
    smooth interpolation would flatten the speckle it reproduces)."""
    if engine != "dip":
        return dict(options)
    return {"preset": "sar2023", "blend": "none", **options}


@dataclass
class AnonymiseMode:
    """The anonymise hooks of :func:`~dipfill.pipeline.fill.fill_files` (see the module doc).

    ``region``/``mask``: a GeoJSON file in lon/lat or a mask raster on the scene's grid.
    ``units``: ``auto`` or one of :data:`~dipfill.engines.sar.UNITS`."""

    region: str | None = None
    mask: str | None = None
    units: str = "auto"
    record: dict[str, Any] = field(default_factory=dict)
    _region: NDArray[np.bool_] | None = None
    _units: str = "db"
    _enl: list[float] = field(default_factory=list)
    _gcp_outline: dict[str, Any] | None = None
    item_extras: ItemExtras | None = None  # a run's: the source item's geometry, lineage, versions

    def __post_init__(self) -> None:
        if self.units not in ("auto", *UNITS):
            raise InputError(f"--units {self.units!r}: choose auto, {', '.join(UNITS)}")
        if (self.region is None) == (self.mask is None):
            raise InputError("give the region to anonymise as exactly one of --region REGION.geojson or --mask FILE")

    # -- fill_files hooks ---------------------------------------------------------------
    def prepare(self, scene: Scene, valid: NDArray[np.bool_], footprint: NDArray[np.bool_]
                ) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        """Rasterise the region, decide the units from outside it, blank it in ``scene.data``;
        returns the observed pixels (the region excluded) and the footprint (exactly the
        input's valid pixels, so nothing outside the region is ever filled)."""
        region = region_mask(scene.grid, source=scene.sources[0], geojson=self.region, mask=self.mask)
        what = self.region or self.mask
        if np.issubdtype(scene.dtype, np.integer) and scene.nodata is None:
            # Sentinel-1 GRD DN 0 is no data (border noise removal, outside the swath)
            scene.nodata = 0
            log.info("%s declares no nodata: DN 0 taken as nodata (Sentinel-1 GRD convention)", scene.sources[0])
        data_valid = data_validity(scene.data, scene.nodata)
        footprint = data_valid.any(axis=0)
        inside = region & footprint
        if not inside.any():
            raise InputError(f"{what}: the region covers no valid pixel of {scene.sources[0]}; "
                             "check its coordinates (lon/lat) against the scene")
        outside = data_valid & ~region[None]
        if not outside.any():
            raise InputError(f"{what}: the region covers the whole scene; nothing to continue from")
        units, why = self._decide_units(scene, outside)
        # Blank the region before any stage reads the scene (engines, percentiles, quicklook, mosaic).
        blank = scene.nodata if scene.nodata is not None and not np.isnan(scene.nodata) else 0
        scene.data[:, region] = np.asarray(blank).astype(scene.dtype)
        self._region, self._units = region, units
        log.info("anonymise: %d pixels in the region; units %s (%s)", int(inside.sum()), units, why)
        self.record = {"units": units, "units_decided_by": why, "region_pixels": int(inside.sum()),
                       "region": str(what), "fit_domain": "dB = 10*log10(intensity)"}
        if scene.grid.crs is None:
            self._gcp_outline = gcp_outline(scene.grid)
            self.record["georeferencing"] = ("GCPs (no CRS): outputs on the scene's pixel grid with its GCPs; the "
                                             "item's geometry is the scene outline through them" if self._gcp_outline else
                                             "none")
        return outside, footprint

    def _decide_units(self, scene: Scene, outside: NDArray[np.bool_]) -> tuple[str, str]:
        if self.units != "auto":
            return self.units, "--units"
        sample = scene.data[outside][:: max(1, int(outside.sum()) // 200_000)]
        return detect_units(scene.dtype, np.asarray(sample, dtype=np.float64))

    def fill(self, data: NDArray, valid: NDArray[np.bool_], footprint: NDArray[np.bool_], *, engine: Engine,
             fallback: Engine | None, options: FillOptions, nodata: float | None,
             progress: Callable[[int, int], None] | None = None, guides: Sequence[Any] = (),
             on_steps: Callable[..., None] | None = None, executor: Any = None) -> Any:
        """Fill the region in dB coarse-to-fine (module doc) and write it back in the input's
        units; returns a :class:`~dipfill.pipeline.fill.FillResult`. ``executor``: a run's
        engine actors, which fill the patches of both stages (the region's statistics, the
        speckle and the blend stay here: they need the whole region)."""
        from dipfill.pipeline.fill import FillResult, fill_arrays

        assert self._region is not None, "prepare() first"
        region = self._region & footprint
        usable = valid & footprint[None]
        db = np.where(usable, to_db(data, self._units), 0.0)  # type: ignore[arg-type]
        name = getattr(engine, "name", "")
        # DIP continues textures and edges over half a patch; an interpolator's streaks
        # (fillnodata's line-of-sight search) only over a thin band: the coarse mean beyond
        reach = max(options.patch / 2.0, 8.0) if name in TEXTURED_ENGINES else min(16.0, options.patch / 2.0)
        weight = edge_weight(region, reach)
        # 1. full resolution: the engine where patches have context (the others: fallback / NaN)
        full = fill_arrays(db.astype(np.float32), usable, footprint, engine=engine, fallback=fallback,
                           options=options, nodata=None, progress=progress, on_steps=on_steps, executor=executor)
        near = full.data.astype(np.float64)
        # 2. coarse-to-fine where the full-resolution fill does not reach
        f = coarse_factor(region, options.patch)
        deep = bool((weight[region] < 1).any())
        mean = near
        if deep:
            f = max(f, 2)
            cdb, cok = block_average(db, usable, f)
            _, cfp = block_average(footprint[None].astype(np.float64), footprint[None], f, min_fraction=1e-9)
            coarse = fill_arrays(cdb.astype(np.float32), cok, cfp[0], engine=engine, fallback=fallback,
                                 options=replace(options, overlap=min(options.overlap, options.patch // 4)),
                                 nodata=None, executor=executor)
            mean = upsample(np.where(np.isfinite(coarse.data), coarse.data, np.nan).astype(np.float64), f,
                            region.shape)
        rng = np.random.default_rng([options.seed, 0xA11])
        width = max(16, options.patch // 8)
        around = ring(region, usable.all(axis=0), width)
        out = data.copy()
        self._enl, rhos = [], []
        rows, cols = np.nonzero(region)
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        in_box = region[box]
        for b in range(data.shape[0]):
            near_ring = around & usable[b]
            enl = estimate_enl(db[b], near_ring)
            rho = lag1_correlation(db[b], near_ring)
            self._enl.append(round(enl, 3))
            rhos.append(round(rho, 3))
            speckle = correlated_speckle(in_box.shape, enl, rho, rng)[in_box]
            synthetic = mean[b][region] + speckle
            engine_part = near[b][region] + (0.0 if name in TEXTURED_ENGINES else speckle)
            # where a fill is missing (no coarse block reached, no patch fitted): the ring's mean
            level = float(db[b][near_ring].mean()) if near_ring.any() else 0.0
            synthetic = np.where(np.isfinite(synthetic), synthetic, level + speckle)
            w = np.where(np.isfinite(engine_part), weight[region], 0.0)
            value = w * np.nan_to_num(engine_part) + (1 - w) * synthetic
            # an unbounded network head (sar2023: no sigmoid) may overshoot: keep the band's observed range
            seen = db[b][usable[b]]
            value = np.clip(value, seen.min() - 3.0, seen.max() + 3.0)
            band = out[b]
            band[region] = from_db(value, self._units, data.dtype)  # type: ignore[arg-type]
        if nodata is not None:
            out[:, ~footprint] = np.asarray(nodata).astype(data.dtype)
        qa = np.full(region.shape, QA_OUTSIDE, dtype=np.uint8)
        qa[footprint] = QA_OBSERVED
        qa[region] = QA_ENGINE
        self.record.update({"enl": self._enl, "speckle_lag1_correlation": rhos, "coarse_factor": f if deep else 1,
                            "edge_reach_px": reach,
                            "speckle": "" if name in TEXTURED_ENGINES and not deep else
                            "synthetic: log-Gamma(ENL) in dB, correlated like the ring's", "engine": name})
        return FillResult(out, qa, full.diagnostics, full.windows_total, full.windows_filled)

    def extras(self) -> ItemExtras:
        """What the output item records about the mode; for a scene placed by GCPs only (no
        CRS), its footprint from the GCPs (an item needs a geometry)."""
        props = {"dipfill:mode": "anonymise", "dipfill:anonymise": dict(self.record)}
        if self.item_extras is not None:
            return replace(self.item_extras, properties={**self.item_extras.properties, **props})
        if self._gcp_outline is not None:
            geometry = self._gcp_outline
            xs = [p[0] for p in geometry["coordinates"][0]]
            ys = [p[1] for p in geometry["coordinates"][0]]
            return ItemExtras(geometry=geometry, bbox=(min(xs), min(ys), max(xs), max(ys)), properties=props)
        return ItemExtras(properties=props)


def anonymise_files(inputs: Sequence[str], out_dir: str, *, region: str | None = None, mask: str | None = None,
                    units: str = "auto", options: FillOptions = FillOptions(), **kwargs: Any) -> Any:
    """Anonymise ``region`` (GeoJSON) or ``mask`` (raster) of the scene ``inputs`` into
    ``out_dir``: :func:`~dipfill.pipeline.fill.fill_files` with :class:`AnonymiseMode`.
    ``options.engine_options`` are completed by :func:`anonymise_engine_options`."""
    from dipfill.pipeline.fill import fill_files

    mode = AnonymiseMode(region=region, mask=mask, units=units)
    opts = replace(options, engine_options=anonymise_engine_options(options.engine, dict(options.engine_options)))
    return fill_files(inputs, out_dir, options=opts, mode=mode, **kwargs)


def anonymise_scene(job: Any, extras: ItemExtras, out: Any, executor: Any = None) -> Any:
    """One scene of ``dipfill run --mode anonymise`` (called by ``stages.process_scene`` with
    the scene opened and described as the run's other stages do): the item's bands
    anonymised in the driver by :func:`~dipfill.pipeline.fill.fill_files` with
    :class:`AnonymiseMode` into the scene's directory, with the item id, lineage, source
    version and config hash a run's item has (so a rerun finds it current), then added to
    the static catalog. The scene is held and anonymised in the driver (the coarse stage and
    the ring statistics need the whole region at once); its patches, at both resolutions,
    are filled on the ``executor``'s engine actors when there is one. Returns the scene's
    status."""
    from dipfill.pipeline.fill import fill_files
    from dipfill.pipeline.progress import SceneStatus
    from dipfill.stac.publish import add_to_static_catalog, publish_item

    item, request = job.item, job.request
    mode = AnonymiseMode(region=request.region, units=request.units, item_extras=extras)
    props = item.get("properties") or {}
    when = props.get("datetime") or props.get("start_datetime")
    report = fill_files(list(job.source.band_hrefs), job.scene_dir, options=request.options, mode=mode,
                        item_id=str(item["id"]), datetime=when, executor=executor)
    add_to_static_catalog(out, job.scene_dir, job.scene_dir.parent.name)
    if request.publish:
        publish_item(request.publish, report.outputs["item"], f"{item.get('collection') or 'items'}-dipfill")
    return SceneStatus(str(item["id"]), "done", output=report.outputs["item"], patches=report.windows_total,
                       patches_fitted=report.windows_filled, counts=report.counts)
