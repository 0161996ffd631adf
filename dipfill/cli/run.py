"""`dipfill run`: region/date runs over STAC scenes on a Ray cluster (or a local one)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from dipfill.engines import ENGINES
from dipfill.errors import InputError

log = logging.getLogger("dipfill")

# Keys a --config YAML may hold: the flags' destinations (flags given on the command line win).
CONFIG_KEYS = (
    "stac", "collection", "bbox", "datetime", "max_cloud", "filter", "mask", "bands", "engine", "preset",
    "steps", "stopping", "strategy", "dip", "fallback", "patch", "overlap", "seed", "batch_size", "out",
    "publish", "ray_address", "max_scenes", "since", "force", "sign",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="fill every scene a STAC search finds, on a Ray cluster; resumable and idempotent",
        description="Search a STAC API or static catalog, fit each scene's gap patches on Ray engine actors, "
        "and write COG, QA COG, zarr mosaic and STAC item per scene plus OUT/runs/<run-id>.json. Scenes whose "
        "output is current are skipped; interrupted scenes resume from their patch store.",
    )
    p.add_argument("--config", metavar="YAML", help="read options from a YAML file (keys as the flags, e.g. max_cloud)")
    p.add_argument("--stac", help="STAC API URL, or a static catalog (catalog.json path or URL)")
    p.add_argument("--collection", action="append", help="collection id (repeatable)")
    p.add_argument("--bbox", nargs=4, type=float, metavar=("W", "S", "E", "N"), help="lon/lat bounding box")
    p.add_argument("--datetime", help="date range, e.g. 2010-01-01/2010-03-31")
    p.add_argument("--max-cloud", type=float, help="largest eo:cloud_cover in percent")
    p.add_argument("--filter", help="CQL2-JSON filter")
    p.add_argument("--mask", choices=("gaps", "clouds"), help="what to fill: missing data only (gaps), or clouds too")
    p.add_argument("--bands", help="comma-separated band names (default: the collection profile's)")
    p.add_argument("--engine", choices=ENGINES, help="fill engine (default: dip)")
    p.add_argument("--preset", help="dip preset (default: landsat2020)")
    p.add_argument("--steps", type=int, help="dip Adam steps per patch")
    p.add_argument("--stopping", choices=("fixed", "holdout", "emv"), help="dip early stopping")
    p.add_argument("--strategy", choices=("auto", "loop", "packed"), help="dip execution strategy")
    p.add_argument("--dip", action="append", metavar="KEY=VALUE", help="any DIPConfig field (repeatable)")
    p.add_argument("--fallback", choices=(*ENGINES[1:], "none"), help="engine for weak patches (default: fillnodata)")
    p.add_argument("--patch", type=int, help="patch size (default: 256)")
    p.add_argument("--overlap", type=int, help="patch overlap (default: 32)")
    p.add_argument("--seed", type=int, help="run seed (default: 0)")
    p.add_argument("--batch-size", type=int, help="patches per engine call (default: 4)")
    p.add_argument("--out", help="output directory")
    p.add_argument("--publish", metavar="URL", help="upsert each output item into this STAC API (Transactions)")
    p.add_argument("--sign", choices=("planetary-computer",),
                   help="sign asset hrefs before reading (Planetary Computer needs it; pip install planetary-computer)")
    p.add_argument("--ray-address", help="join this Ray cluster (default: start a local one on 127.0.0.1)")
    p.add_argument("--max-scenes", type=int, help="process at most N scenes")
    p.add_argument("--since", metavar="DURATION", help="only scenes updated within DURATION (7d, 12h): for cron")
    p.add_argument("--force", action="store_true", default=None, help="reprocess scenes whose output is current")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(func=run)


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
    from dipfill.cli.fill import dip_options
    from dipfill.pipeline.fill import FillOptions
    from dipfill.pipeline.run import RunRequest

    engine = values.get("engine", "dip")
    dip_args = argparse.Namespace(
        preset=values.get("preset", "landsat2020"), device="auto", steps=values.get("steps"), lr=None,
        stopping=values.get("stopping"), patience=None, strategy=values.get("strategy"), channels=None,
        skip_channels=None, depth=None, dip=list(values.get("dip") or []),
    )
    options = FillOptions(
        engine=engine,
        engine_options=dip_options(dip_args) if engine == "dip" else {},
        fallback=values.get("fallback", "fillnodata"),
        patch=int(values.get("patch", 256)),
        overlap=int(values.get("overlap", 32)),
        seed=int(values.get("seed", 0)),
        batch_size=int(values.get("batch_size", 4)),
    )
    collections = values.get("collection") or ()
    if isinstance(collections, str):
        collections = (collections,)
    filt = values.get("filter")
    if isinstance(filt, str):
        try:
            filt = json.loads(filt)
        except json.JSONDecodeError as exc:
            raise InputError(f"--filter is not valid CQL2-JSON: {exc}") from None
    bands = values.get("bands")
    if isinstance(bands, str):
        bands = tuple(b.strip() for b in bands.split(",") if b.strip())
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
    )


def run(args: argparse.Namespace) -> int:
    from dipfill.pipeline.run import run as run_pipeline

    values = merged(args)
    request = build_request(values)
    # Progress events are INFO records of the run module: shown whatever -v says, as text
    # lines or (--log-format json) JSON objects with their fields.
    logging.getLogger("dipfill.pipeline.run").setLevel(logging.INFO)
    summary = run_pipeline(request, ray_address=values.get("ray_address"))
    if args.json:
        print(Path(summary.record).read_text())
    else:
        for s in summary.scenes:
            extra = f"{s.patches_fitted} fitted, {s.patches_resumed} resumed" if s.status == "done" else s.message
            print(f"{s.status:<8} {s.id}  {extra}")
        counts = {k: sum(1 for s in summary.scenes if s.status == k) for k in ("done", "current", "failed")}
        print(f"run {summary.run_id}: {counts['done']} done, {counts['current']} current, {counts['failed']} failed "
              f"in {summary.seconds:.1f} s; record {summary.record}")
    return 1 if summary.failed else 0
