"""`dipfill run`: region/date runs over STAC scenes on a Ray cluster (or a local one)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from dipfill.cli.options import add_dip_flags, add_fill_flags, add_model_flags, add_product_flags, fill_options, ndvi_threshold, product_values
from dipfill.errors import InputError
from dipfill.pipeline.sr import METHODS as SR_METHODS
from dipfill.storage import read_text

log = logging.getLogger("dipfill")

#: The FillOptions a run takes from flags (the footprint comes from the items).
RUN_FILL_FIELDS = ("engine", "fallback", "patch", "overlap", "seed", "batch_size")

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="fill every scene a STAC search finds, on a Ray cluster; resumable and idempotent",
        description="Search a STAC API or static catalog, fit each scene's gap patches on Ray engine actors, "
        "and write COG, QA COG, zarr mosaic and STAC item per scene plus OUT/runs/<run-id>.json. Scenes whose "
        "output is current are skipped; interrupted scenes resume from their patch store.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `dipfill run`. None has a default here: a flag given wins over the
    --config YAML, and what neither gives takes the option records' defaults."""
    p.add_argument("--config", metavar="YAML", help="read options from a YAML file (keys as the flags, e.g. max_cloud)")
    p.add_argument("--stac", help="STAC API URL, or a static catalog (catalog.json path or URL)")
    p.add_argument("--collection", action="append", help="collection id (repeatable)")
    p.add_argument("--bbox", nargs=4, type=float, metavar=("W", "S", "E", "N"), help="lon/lat bounding box")
    p.add_argument("--datetime", help="date range, e.g. 2010-01-01/2010-03-31")
    p.add_argument("--max-cloud", type=float, help="largest eo:cloud_cover in percent")
    p.add_argument("--filter", help="CQL2-JSON filter")
    p.add_argument("--mask", choices=("gaps", "clouds"), help="what to fill: missing data only (gaps), or clouds too")
    p.add_argument("--bands", help="comma-separated band names to fill (default: every band of the collection "
                   "profile that the item has)")
    p.add_argument("--mode", choices=("fill", "anonymise", "sr"),
                   help="fill gaps (default); anonymise --region in every scene (SAR, paper 004: see "
                        "`dipfill anonymise`; DIP preset sar2023 unless --preset); or sr: super-resolve each "
                        "scene's coarser bands onto the grid of its finest (paper 003: see `dipfill sr`)")
    p.add_argument("--region", metavar="REGION.geojson", help="--mode anonymise: the site to hide (lon/lat polygons)")
    p.add_argument("--units", choices=("auto", "db", "linear-amplitude", "linear-power"),
                   help="--mode anonymise: the scenes' units (default: auto, from dtype and values)")
    g = p.add_argument_group("super-resolution (--mode sr, paper 003 §3.2: --bands names the coarse bands, "
                             "default every profile band coarser than the guide)")
    g.add_argument("--sr-method", choices=SR_METHODS,
                   help="bicubic, guided-filter, or paper 003's MCPN Direct / Stacked network, which takes --steps, "
                        "--lr, --preset, --device and --dip (default: mcpn-direct)")
    g.add_argument("--sr-guide-bands", metavar="BANDS",
                   help="comma-separated bands of the same item whose grid the output takes and that guide it "
                        "(default: the profile's finest bands the item has, e.g. Sentinel-2 blue,green,red,nir)")
    add_fill_flags(p, names=RUN_FILL_FIELDS, defaults=False)
    add_dip_flags(p.add_argument_group("dip engine"), defaults=False)
    add_model_flags(p.add_argument_group("convnp engine (paper 002: a model trained by `dipfill train`)"))
    add_product_flags(p.add_argument_group("NDVI (--product ndvi, paper 001: --bands may name RED,NIR)"),
                      files=False, defaults=False)
    p.add_argument("--out", help="output directory")
    p.add_argument("--publish", metavar="URL", help="upsert each output item into this STAC API (Transactions)")
    p.add_argument("--sign", choices=("planetary-computer",),
                   help="sign asset hrefs before reading (Planetary Computer needs it; pip install planetary-computer)")
    p.add_argument("--ray-address", help="join this Ray cluster (default: start a local one on 127.0.0.1)")
    p.add_argument("--max-scenes", type=int, help="process at most N scenes")
    g = p.add_argument_group("guides (engines that fill from other dates or sensors: llhm, regression, guided)")
    g.add_argument("--guides", choices=("auto", "none"),
                   help="auto: search the STAC source for guides of each scene when the engine uses them (default)")
    g.add_argument("--guide-collection", help="collection to find guides in (default: the scene's own)")
    g.add_argument("--guide-window", type=int, metavar="DAYS", help="± days around the scene's date (default: 64)")
    g.add_argument("--guide-years", type=int, metavar="N",
                   help="also the same season of N earlier years (default: 0)")
    g.add_argument("--max-guides", type=int, help="guides per scene, best first (default: 2)")
    g.add_argument("--guide-bands", help="band names in the guide collection (default: the scene's bands)")
    g.add_argument("--guide-composite", choices=("none", "median"),
                   help="median: each time window's clear observations as one per-pixel median guide (default: none)")
    p.add_argument("--since", metavar="DURATION", help="only scenes updated within DURATION (7d, 12h): for cron")
    p.add_argument("--force", action="store_true", default=None, help="reprocess scenes whose output is current")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")


def _config_keys() -> tuple[str, ...]:
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return tuple(a.dest for a in parser._actions if a.dest not in ("config", "json"))


#: Keys a --config YAML may hold: the flags' destinations (flags given on the command line win).
CONFIG_KEYS = _config_keys()


def merged(args: argparse.Namespace) -> dict[str, Any]:
    """Flags over the --config YAML over defaults."""
    values: dict[str, Any] = {}
    if args.config:
        import yaml

        try:
            doc = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(f"{args.config}: cannot read the run config ({exc})") from None
        if not isinstance(doc, dict):
            raise InputError(f"{args.config}: a run config is a mapping of option names to values")
        unknown = sorted(set(k.replace("-", "_") for k in doc) - set(CONFIG_KEYS))
        if unknown:
            raise InputError(f"{args.config}: unknown option(s) {', '.join(unknown)}; known: {', '.join(CONFIG_KEYS)}")
        values.update({k.replace("-", "_"): v for k, v in doc.items()})
    for key in CONFIG_KEYS:
        flag = getattr(args, key, None)
        if flag is not None and flag != []:
            values[key] = flag
    for required in ("stac", "out"):
        if not values.get(required):
            raise InputError(f"dipfill run needs --{required} (or '{required}:' in --config)")
    return values


def build_request(values: dict[str, Any]):
    from dipfill.specs import RunRequest

    mode = values.get("mode") or "fill"
    if mode == "anonymise" and not values.get("preset"):
        values = {**values, "preset": "sar2023"}
    if mode != "sr" and values.get("sr_method"):
        raise InputError("--sr-method is the method of --mode sr; give --mode sr with it")
    product = values.get("product") or "bands"
    options = sr_options(values) if mode == "sr" else fill_options(product_values(values))
    if product == "ndvi":  # the vegetation-only loss of paper 001, in the hash too
        from dataclasses import replace

        from dipfill.pipeline.ndvi import ndvi_engine_options

        options = replace(options, engine_options=ndvi_engine_options(
            options.engine, options.engine_options, ndvi_threshold(values.get("ndvi_threshold"))))
    elif values.get("ndvi_threshold") is not None:
        raise InputError("--ndvi-threshold is an option of --product ndvi")
    accept = values.get("accept")
    if accept is not None:
        from dipfill.pipeline.ndvi import parse_classes

        accept = parse_classes(accept)
    if mode == "anonymise":  # what the anonymise command uses, in the hash too (no judged blend)
        from dataclasses import replace

        from dipfill.pipeline.anonymise import anonymise_engine_options

        options = replace(options, engine_options=anonymise_engine_options(options.engine,
                                                                           dict(options.engine_options)))
    collections = values.get("collection") or ()
    if isinstance(collections, str):
        collections = (collections,)
    filt = values.get("filter")
    if isinstance(filt, str):
        try:
            filt = json.loads(filt)
        except json.JSONDecodeError as exc:
            raise InputError(f"--filter is not valid CQL2-JSON: {exc}") from None
    bands = _names(values.get("bands"))
    return RunRequest(
        stac=str(values["stac"]),
        out=str(values["out"]),
        collections=tuple(collections),
        bbox=tuple(values["bbox"]) if values.get("bbox") else None,
        datetime=values.get("datetime"),
        max_cloud=values.get("max_cloud"),
        filter=filt,
        mask={"gaps": "fill", "clouds": "clouds"}.get(values.get("mask", "gaps"), values.get("mask", "fill")),
        bands=tuple(bands) if bands else None,
        options=options,
        publish=values.get("publish"),
        max_scenes=values.get("max_scenes"),
        since=values.get("since"),
        force=bool(values.get("force", False)),
        sign=values.get("sign"),
        mode=mode,
        region=str(Path(values["region"]).resolve()) if values.get("region") else None,
        region_sha256=_sha256(values["region"], "--region") if values.get("region") else None,
        units=values.get("units") or "auto",
        product=product,
        accept=accept,
        sr_guide_bands=_names(values.get("sr_guide_bands")) or None,
        **_guide_fields(values),
    )


def _sha256(path: str, flag: str) -> str:
    """The content hash of the file ``path`` given as ``flag``, or one line saying it cannot be read."""
    import hashlib

    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise InputError(f"{flag} {path}: cannot read it ({exc.strerror or exc}); give an existing GeoJSON file") \
            from None


def _names(value: Any) -> tuple[str, ...]:
    """Band names from a comma-separated flag or a YAML list."""
    if isinstance(value, str):
        value = value.split(",")
    return tuple(str(b).strip() for b in value or () if str(b).strip())


#: Flags of the gap-filling engines that ``--mode sr`` does not take (its method has its own).
_NOT_SR = ("engine", "fallback", "batch_size", "channels", "skip_channels", "depth", "stopping", "patience",
           "strategy", "model", "product", "accept", "ndvi_threshold", "region", "units", "mask")


def sr_options(values: dict[str, Any]):
    """The FillOptions of ``--mode sr``: the SR method as the engine with its options
    (:func:`~dipfill.cli.sr.sr_engine_options`) and the consistency projection that
    ``dipfill sr`` applies by default, no fallback; patch, overlap and seed as given."""
    from dipfill.cli.sr import sr_engine_options
    from dipfill.specs import FillOptions

    given = [k for k in _NOT_SR if values.get(k) not in (None, [], False)]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise InputError(f"--mode sr does not take {flags}: choose the method with --sr-method and tune it with "
                         "--steps, --lr, --preset, --device, --dip")
    method = values.get("sr_method") or "mcpn-direct"
    opts = {**sr_engine_options(method, values), "consistency": True}
    picked = {k: values[k] for k in ("patch", "overlap", "seed") if values.get(k) is not None}
    return FillOptions(engine=method, engine_options=opts, fallback="none", **picked)


def _guide_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The RunRequest's guide-search fields that were given (the record's defaults otherwise)."""
    out = {k: values[k] for k in ("guides", "guide_collection", "guide_window", "guide_years", "max_guides",
                                  "guide_composite")
           if values.get(k) is not None}
    bands = values.get("guide_bands")
    if isinstance(bands, str):
        bands = [b.strip() for b in bands.split(",") if b.strip()]
    if bands:
        out["guide_bands"] = tuple(bands)
    return out


def run(args: argparse.Namespace) -> int:
    from dipfill.pipeline.run import run as run_pipeline

    values = merged(args)
    request = build_request(values)
    # Progress events are INFO records of the run module: shown whatever -v says, as text
    # lines or (--log-format json) JSON objects with their fields; -vv adds its DEBUG
    # records (a failed scene's traceback when dipfill's own message says what is wrong).
    logging.getLogger("dipfill.pipeline.run").setLevel(min(logging.INFO, logging.getLogger().getEffectiveLevel()))
    summary = run_pipeline(request, ray_address=values.get("ray_address"))
    if args.json:
        print(read_text(summary.record))
    else:
        for s in summary.scenes:
            extra = f"{s.patches_fitted} fitted, {s.patches_resumed} resumed" if s.status == "done" else s.message
            print(f"{s.status:<8} {s.id}  {extra}")
        counts = {k: sum(1 for s in summary.scenes if s.status == k) for k in ("done", "current", "failed")}
        print(f"run {summary.run_id}: {counts['done']} done, {counts['current']} current, {counts['failed']} failed "
              f"in {summary.seconds:.1f} s; record {summary.record}")
    return 1 if summary.failed else 0
