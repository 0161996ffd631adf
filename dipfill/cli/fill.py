"""`dipfill fill INPUT... --out DIR`: fill one raster (or a stack of single-band files)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from dipfill.errors import InputError

log = logging.getLogger("dipfill")

from dipfill.engines import ENGINES


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
    g.add_argument("--steps", type=int, help="Adam steps per patch (default: 1500, paper 000)")
    g.add_argument("--channels", type=int, help="channels per encoder/decoder level (default: 128)")
    g.add_argument("--skip-channels", type=int, help="channels of the 1x1 skip convolutions (default: 128)")
    g.add_argument("--depth", type=int, help="encoder/decoder levels (default: 5)")
    g.add_argument("--lr", type=float, help="Adam learning rate (default: 0.01)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="torch device (default: auto)")
    o = p.add_argument_group("output naming")
    o.add_argument("--id", dest="item_id", help="item id (default: from the input file name); '-dipfill' is appended")
    o.add_argument("--datetime", help="acquisition date/time, ISO 8601 (default: from tags or file name)")
    o.add_argument("--rgb", default="1,2,3", help="1-based bands for the quicklook's R,G,B (default: 1,2,3)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def dip_options(args: argparse.Namespace) -> dict[str, Any]:
    """DIPConfig fields from the CLI flags that were given (the rest keep their defaults)."""
    opts: dict[str, Any] = {"device": args.device}
    depth = args.depth or 5
    if args.steps is not None:
        opts["steps"] = args.steps
    if args.lr is not None:
        opts["lr"] = args.lr
    if args.channels is not None or args.depth is not None:
        ch = args.channels or 128
        opts["channels_down"] = (ch,) * depth
        opts["channels_up"] = (ch,) * depth
    if args.skip_channels is not None or args.depth is not None:
        sk = args.skip_channels if args.skip_channels is not None else 128
        opts["channels_skip"] = (sk,) * depth
    return opts


def run(args: argparse.Namespace) -> int:
    from dipfill.masks import DEFAULT_COLLAR_CLOSING
    from dipfill.pipeline.fill import FillOptions, fill_files

    try:
        rgb = tuple(int(b) - 1 for b in args.rgb.split(","))
    except ValueError:
        raise InputError(f"--rgb must be three 1-based band numbers like 3,2,1, got {args.rgb!r}") from None
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
    if args.json:
        doc = {**report.__dict__, "filled_fraction": report.filled_fraction}
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
    print(f"wall time {report.seconds:.1f} s")
    return 0
