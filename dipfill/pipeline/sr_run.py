"""`dipfill run --mode sr`: guided super-resolution of every scene a search finds (paper 003 §3.2).

A multi-resolution item carries its own guide: Sentinel-2's 10 m bands (B02, B03, B04, B08)
see the same ground on the same date as its 20 m and 60 m bands. Per item:

* **bands** — the guide is ``--sr-guide-bands`` (default: the profile's bands of the finest
  nominal resolution that the item has), the low-resolution (LR) input ``--bands``
  (default: every profile band coarser than the guide), each read on its own native grid
  and grouped by grid (Sentinel-2: the 20 m group and the 60 m group);
* **fit** — :func:`~dipfill.pipeline.sr.super_resolve` takes every group onto the guide's
  grid with ``--sr-method`` (the same tiling, engines, consistency projection and checks
  as ``dipfill sr``);
* **write** — the scene's directory gets a run's product: one COG per band under the input's
  asset key (its metadata mirrored, ``gsd`` the guide's), QA, VRT, Zarr mosaic, quicklook and,
  last, the item with the run's source version and config hash (a rerun finds it current),
  ``dipfill:mode = sr`` and ``dipfill:sr`` (method, factors per grid, guide, LR consistency);
  then the static catalog and ``--publish``.

The patches are computed on the run's engine actors, a row at a time
(:class:`~dipfill.pipeline.sr_patch.SRPatch` tasks); the driver reads the scene, streams
merged strips of rows into the output (:func:`~dipfill.pipeline.sr.sr_arrays`) and computes
the operators a block at a time, so it holds the output in its dtype, the guide and the
masks (scripts/bench_sr_run.py; ~4 GB projected for a full 10980² Sentinel-2 tile's eight
coarse bands).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from dipfill.errors import InputError
from dipfill.pipeline.fill import _write_or_undo
from dipfill.pipeline.progress import Progress, SceneStatus, StageClock
from dipfill.pipeline.sr import SRProduct, SRSettings, super_resolve
from dipfill.raster.gdal import gdal_env
from dipfill.raster.hrefs import redact_href, signer
from dipfill.raster.read import Scene, read_scene
from dipfill.raster.scene import SceneSource, open_scene
from dipfill.specs import RunRequest
from dipfill.stac.item import ItemExtras, self_href
from dipfill.stac.profiles import CollectionProfile, profile_for
from dipfill.stac.publish import add_to_static_catalog, publish_item

__all__ = ["SceneSR", "sr_band_names", "sr_item", "write_sr", "group_by_grid"]

log = logging.getLogger(__name__)

#: Seconds between two ``patches`` events of a scene at most.
PROGRESS_EVERY = 5.0


def sr_band_names(item: Mapping[str, Any], request: RunRequest,
                  profile: CollectionProfile | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(guide bands, LR bands)`` of ``item``: as asked, or the profile's finest bands the item
    has as the guide and every coarser one as the LR input (module doc)."""
    item_id = str(item.get("id"))
    try:
        profile = profile or profile_for(dict(item))
    except KeyError as exc:
        raise InputError(f"item {item_id}: {exc.args[0]}") from None
    assets = item.get("assets") or {}
    present = [n for n in profile.default_bands if profile.band(n).keys.find(assets)]
    metres = {b.name: b.resolution for b in profile.bands}
    guide = tuple(request.sr_guide_bands or ())
    if not guide:
        finest = min((metres[n] for n in present), default=None)
        guide = tuple(n for n in present if metres[n] == finest)
    low = tuple(request.bands or ())
    if not low:
        if any(n not in metres for n in guide):
            raise InputError(f"item {item_id}: --sr-guide-bands {','.join(guide)} are not bands of profile "
                             f"{profile.name}; name the low-resolution bands with --bands")
        coarsest_guide = max(metres[n] for n in guide)
        low = tuple(n for n in present if n not in guide and metres[n] > coarsest_guide)
    both = [n for n in low if n in guide]
    if both:
        raise InputError(f"--mode sr: {','.join(both)} is both a low-resolution band (--bands) and a guide band "
                         "(--sr-guide-bands); a band cannot guide itself")
    if not guide or not low:
        sizes = ", ".join(f"{n} {metres[n]:g} m" for n in present) or "none"
        raise InputError(f"item {item_id}: no band of profile {profile.name} is coarser than the guide "
                         f"({sizes}); --mode sr needs --bands (coarse) and --sr-guide-bands (fine)")
    return guide, low


def group_by_grid(scenes: Sequence[Scene]) -> list[Scene]:
    """One-band scenes joined into one scene per grid (and dtype, nodata), in order of first
    appearance: the LR groups of :func:`~dipfill.pipeline.sr.super_resolve`."""
    groups: dict[tuple, list[Scene]] = {}
    for s in scenes:
        g = s.grid
        key = (g.crs.to_wkt() if g.crs is not None else None, tuple(g.transform)[:6], g.width, g.height, str(s.dtype),
               repr(s.nodata))
        groups.setdefault(key, []).append(s)
    return [Scene(np.concatenate([s.data for s in members]), members[0].grid, members[0].nodata,
                  [n for s in members for n in s.band_names], [h for s in members for h in s.sources],
                  dict(members[0].tags)) for members in groups.values()]


def _read(hrefs: Sequence[str], names: Sequence[str], nodata: Sequence[float | None],
          options: Mapping[str, str]) -> list[Scene]:
    """Each band on its own native grid, its nodata the item's where the file has none."""
    scenes = []
    with gdal_env(dict(options)):
        for href, name, nd in zip(hrefs, names, nodata):
            s = read_scene([href])
            s.band_names = [name]
            if s.nodata is None:
                s.nodata = nd
            scenes.append(s)
    return scenes


@dataclass
class SceneSR:
    """One item super-resolved (:func:`sr_item`), before it is written (:func:`write_sr`)."""

    source: SceneSource  # the LR bands in the output's order (asset keys, nodata, scale/offset)
    made: SRProduct
    band_assets: list[tuple[str, dict[str, Any]]]
    clock: StageClock


def sr_item(item: Mapping[str, Any], request: RunRequest, say: Progress, executor: Any = None) -> SceneSR:
    """Read the item's LR and guide bands on their own grids and super-resolve them (module
    doc); ``executor``: the run's engine actors, which compute each row's patches side by side."""
    clock = StageClock()
    opts = request.options
    engine_options = dict(opts.engine_options)
    consistency = bool(engine_options.pop("consistency", True))
    settings = SRSettings(opts.engine, "bilinear", opts.patch, opts.overlap, opts.seed, engine_options, consistency)
    item_id = str(item["id"])
    sign = signer(request.sign)
    guide_names, low_names = sr_band_names(item, request)
    found = open_scene(dict(item), bands=low_names, sign=sign)  # headers: hrefs, nodata, scale/offset
    lows = group_by_grid(_read(found.band_hrefs, low_names, found.nodata, dict(found.gdal_options)))
    ordered = [n for low in lows for n in low.band_names]  # the output's band order: grid by grid
    source = open_scene(dict(item), bands=ordered, sign=sign) if tuple(ordered) != low_names else found
    guide_src = open_scene(dict(item), bands=guide_names, sign=sign)
    highs = group_by_grid(_read(guide_src.band_hrefs, guide_names, guide_src.nodata, dict(guide_src.gdal_options)))
    if len(highs) > 1:
        sizes = ", ".join(f"{','.join(h.band_names)} {abs(h.grid.transform.a):g}" for h in highs)
        raise InputError(f"item {item_id}: the --sr-guide-bands are on different grids ({sizes}); the guide must be "
                         "bands of one grid")
    clock.lap("open")

    last = [0.0]
    t0 = time.perf_counter()

    def progress(done: int, windows: int) -> None:
        now = time.perf_counter()
        if done == windows or now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            rate = done / max(now - t0, 1e-9)
            say("patches", f"  {item_id}: patches {done}/{windows} of one grid, {rate:.2f} patches/s", scene=item_id,
                patches_done=done, patches_total=windows, patches_per_s=round(rate, 3),
                eta_s=round((windows - done) / max(rate, 1e-9), 1))

    made = super_resolve(lows, highs[0], settings, progress=progress, executor=executor)
    clock.lap("fit")
    assets = item.get("assets") or {}
    guide_gsd = next((assets[k].get("gsd") for k in guide_src.band_keys if assets.get(k, {}).get("gsd")), None)
    band_assets = [(key, _on_guide_grid(assets.get(key) or {}, guide_gsd)) for key in source.band_keys]
    return SceneSR(source, made, band_assets, clock)


def write_sr(job: Any, done: SceneSR, extras: ItemExtras, out: Path) -> SceneStatus:
    """Write one item's super-resolved product into its scene directory, the item last (with
    the run's ``extras``: source version, config hash, lineage), add it to the static catalog
    and publish it when asked; ``job`` is the run's :class:`~dipfill.pipeline.stages.SceneJob`
    with ``done.source`` as its source. Returns the scene's status."""
    item, request, clock, made = job.item, job.request, done.clock, done.made
    extras = replace(extras, properties={**extras.properties, "dipfill:mode": "sr", "dipfill:sr": made.record,
                                         "processing:lineage": f"{made.lineage} (dipfill run --mode sr)"})
    product = replace(made.product, band_assets=done.band_assets,
                      sources=[redact_href(self_href(item) or str(item["id"]))])
    clock.lap("describe")
    props = item.get("properties") or {}
    when = props.get("datetime") or props.get("start_datetime")
    outputs = _write_or_undo(job.scene_dir, job.item_id, product, request.options,
                             when.replace("Z", "+00:00") if when else None,
                             done.source.profile.quicklook_indices(done.source.band_names), extras)
    clock.lap("write")
    add_to_static_catalog(out, job.scene_dir, job.scene_dir.parent.name)
    clock.lap("describe")
    if request.publish:
        publish_item(request.publish, outputs["item"], f"{item.get('collection') or 'items'}-dipfill")
        clock.lap("publish")
    return SceneStatus(str(item["id"]), "done", output=outputs["item"], patches=made.windows,
                       patches_fitted=made.windows, counts=made.product.counts, timings=clock.laps,
                       driver_peak_mib=clock.peaks)


def _on_guide_grid(asset: Mapping[str, Any], gsd: Any) -> dict[str, Any]:
    """An LR band's asset JSON for its super-resolved COG: ``gsd`` is the guide's now."""
    doc = {k: v for k, v in asset.items() if k != "gsd"}
    if gsd is not None:
        doc["gsd"] = gsd
    return doc
