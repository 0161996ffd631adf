"""`dipfill fill INPUT... --out DIR`: fill one raster (or a stack of single-band files)."""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from typing import Any

from dipfill.engines import ENGINES
from dipfill.errors import InputError

log = logging.getLogger("dipfill")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fill",
        help="fill gaps in one raster (or single-band files on one grid)",
        description="Fill gaps (nodata, NaN, --mask) inside the scene footprint and write a filled "
        "COG, a QA COG, a Zarr mosaic, a quicklook PNG and a STAC item into --out.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="GDAL raster(s); several files must share one grid")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="output directory")
    p.add_argument("--mask", metavar="FILE", help="raster on the same grid; non-zero marks extra gaps (clouds, ...)")
    p.add_argument("--engine", choices=ENGINES, default="dip", help="fill engine (default: dip)")
    p.add_argument("--fallback", choices=(*ENGINES[1:], "none"), default="fillnodata",
                   help="engine for patches with too few observed pixels (default: fillnodata)")
    p.add_argument("--min-observed", type=float, default=0.05, metavar="F",
                   help="patches with a smaller observed fraction go to --fallback (default: 0.05)")
    p.add_argument("--patch", type=int, default=256, help="patch size in pixels (default: 256)")
    p.add_argument("--overlap", type=int, default=32, help="overlap between patches in pixels (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=4, help="patches per engine call (default: 4)")
    p.add_argument("--footprint", default="auto", metavar="auto|all|FILE",
                   help="scene footprint: derived from nodata (auto), whole raster (all), or a GeoJSON "
                   "polygon in lon/lat; pixels outside are never filled (default: auto)")
    p.add_argument("--collar-closing", type=int, default=None, metavar="PX",
                   help="closing width that bridges stripes when deriving the footprint (default: 31)")
    g = p.add_argument_group("dip engine")
    g.add_argument("--preset", default="landsat2020",
                   help="paper configuration: landsat2020 (default, paper 000), sar2023, ndvi2024, mcpn-core")
    g.add_argument("--steps", type=int, help="Adam steps per patch (landsat2020: 1500)")
    g.add_argument("--channels", type=int, help="channels at every encoder/decoder level (landsat2020: 128)")
    g.add_argument("--skip-channels", type=int, help="channels of the 1x1 skip convolutions (landsat2020: 128)")
    g.add_argument("--depth", type=int, help="encoder/decoder levels (landsat2020: 5)")
    g.add_argument("--lr", type=float, help="Adam learning rate (landsat2020: 0.01)")
    g.add_argument("--stopping", choices=("fixed", "holdout", "emv"),
                   help="fixed: all --steps; holdout: stop each patch on gap-shaped held-out pixels; "
                        "emv: stop on the output's moving variance (default: the preset's)")
    g.add_argument("--patience", type=int, help="checks without improvement before a patch stops (default: 8)")
    g.add_argument("--strategy", choices=("auto", "loop", "packed"),
                   help="fit patches one by one or packed into one model; auto measures once per device "
                        "and caches the faster (default: auto)")
    g.add_argument("--dip", action="append", default=[], metavar="KEY=VALUE",
                   help="any other DIPConfig field, value as JSON (e.g. --dip reg_noise_std=0.03 "
                        "--dip input_kind=meshgrid --dip channels_skip=[4,4,4,4,4]); repeatable")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="torch device (default: auto)")
    o = p.add_argument_group("output naming")
    o.add_argument("--id", dest="item_id", help="item id (default: from the input file name); '-dipfill' is appended")
    o.add_argument("--datetime", help="acquisition date/time, ISO 8601 (default: from tags or file name)")
    o.add_argument("--rgb", default="1,2,3", help="1-based bands for the quicklook's R,G,B (default: 1,2,3)")
    c = p.add_argument_group("STAC output")
    c.add_argument("--catalog", metavar="ROOT",
                   help="also add the item to the static catalog at ROOT (ROOT/<collection>/<id>/), "
                        "creating it if needed; other items are not rewritten")
    c.add_argument("--collection", default="dipfill", help="collection id in --catalog / --publish (default: dipfill)")
    c.add_argument("--publish", metavar="URL",
                   help="upsert the collection and item into the STAC API at URL (Transactions extension); "
                        "asset hrefs become file:// URIs of the written files")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def dip_options(args: argparse.Namespace) -> dict[str, Any]:
    """``make_engine('dip', ...)`` options: the preset, then the flags that were given.

    Uniform-width flags (--channels, --skip-channels, --depth) expand to per-level tuples;
    --dip KEY=VALUE sets any other field and wins over everything else.
    """
    from dipfill.engines.dip import preset

    opts: dict[str, Any] = {"preset": args.preset, "device": args.device}
    base = preset(args.preset)
    if args.steps is not None:
        opts["steps"] = args.steps
    for name in ("lr", "stopping", "patience", "strategy"):
        if getattr(args, name) is not None:
            opts[name] = getattr(args, name)
    depth = args.depth or base.depth
    if args.channels is not None or args.depth is not None:
        opts["channels_down"] = (args.channels or base.channels_down[0],) * depth
        opts["channels_up"] = (args.channels or base.channels_up[0],) * depth
    if args.skip_channels is not None or args.depth is not None:
        sk = args.skip_channels if args.skip_channels is not None else base.channels_skip[0]
        opts["channels_skip"] = (sk,) * depth
    for item in args.dip:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"--dip takes KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # bare words: --dip upsample=bilinear
        opts[key.strip()] = tuple(value) if isinstance(value, list) else value
    preset(opts["preset"], **{k: v for k, v in opts.items() if k != "preset"})  # validate now
    return opts


def parse_rgb(text: str) -> tuple[int, int, int]:
    """``--rgb 3,2,1`` (1-based band numbers) as 0-based indices."""
    try:
        rgb = tuple(int(b) - 1 for b in text.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or min(rgb) < 0:
        raise InputError(f"--rgb must be three 1-based band numbers like 3,2,1, got {text!r}")
    return rgb  # type: ignore[return-value]


def run(args: argparse.Namespace) -> int:
    from dipfill.masks import DEFAULT_COLLAR_CLOSING
    from dipfill.pipeline.fill import FillOptions, fill_files

    rgb = parse_rgb(args.rgb)
    options = FillOptions(
        engine=args.engine,
        engine_options=dip_options(args) if args.engine == "dip" else {},
        fallback=args.fallback,
        min_observed_fraction=args.min_observed,
        patch=args.patch,
        overlap=args.overlap,
        seed=args.seed,
        batch_size=args.batch_size,
        footprint=args.footprint,
        collar_closing=args.collar_closing or DEFAULT_COLLAR_CLOSING,
    )

    tty = sys.stderr.isatty() and not args.json

    def progress(done: int, total: int) -> None:
        if tty:
            print(f"\rpatches {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)
        else:
            log.info("patches %d/%d", done, total)

    report = fill_files(
        args.inputs,
        args.out,
        options=options,
        mask=args.mask,
        item_id=args.item_id,
        datetime=args.datetime,
        rgb=rgb,
        progress=progress,
    )
    _publish(args, report)
    if args.json:
        from dipfill.pipeline.fill import patch_records

        doc = {k: v for k, v in report.__dict__.items() if k != "diagnostics"}
        doc.update(filled_fraction=report.filled_fraction, patches=patch_records(report.diagnostics))
        print(json.dumps(doc, indent=2, default=str))
        return 0
    c = report.counts
    gap = c["filled"] + c["filled_fallback"] + c["unfilled"]
    print(f"item      {report.item_id}")
    for key, path in report.outputs.items():
        print(f"{key:<9} {path}")
    print(f"pixels    {report.pixels}  observed {c['observed']}  outside {c['outside']}  gap {gap}")
    print(
        f"filled    {c['filled'] + c['filled_fallback']} of {gap} gap pixels ({100 * report.filled_fraction:.2f} %): "
        f"engine {c['filled']}, fallback {c['filled_fallback']}, unfilled {c['unfilled']}"
    )
    print(f"patches   {report.windows_filled} of {report.windows_total} windows had gaps and were fitted")
    steps = [d.steps for d in report.diagnostics.values() if d.engine == args.engine and d.steps]
    if steps:
        print(f"steps     per patch: min {min(steps)}, median {int(statistics.median(steps))}, max {max(steps)}")
    print(f"wall time {report.seconds:.1f} s")
    return 0


def _publish(args: argparse.Namespace, report: Any) -> None:
    """--catalog and --publish, after the outputs and their item are complete."""
    from pathlib import Path

    from dipfill.pipeline.publish import absolute_item, add_to_static_catalog, publish_to_api
    from dipfill.stac.catalog import collection_with_item, new_collection
    from dipfill.stac.item import sanitize_id

    collection = sanitize_id(args.collection)
    item_path = Path(report.outputs["item"])
    if args.catalog:
        item_path = add_to_static_catalog(args.catalog, item_path.parent, collection)
        report.outputs["catalog_item"] = str(item_path)
    if args.publish:
        item = json.loads(item_path.read_text())
        # file:// URIs, not bare paths: readers resolve a bare "/path" against the API's URL
        doc = absolute_item(item, item_path.parent.resolve().as_uri())
        publish_to_api(args.publish, collection_with_item(new_collection(collection), item), [doc])
        report.outputs["published"] = f"{args.publish.rstrip('/')}/collections/{collection}/items/{item['id']}"
