"""`dipfill fill INPUT... --out DIR`: fill one raster (or a stack of single-band files)."""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import replace
from typing import Any

from dipfill.cli.options import (
    FILL_FIELDS, GUIDE_FIELDS, add_dip_flags, add_fill_flags, add_model_flags, add_product_flags, fill_options,
    ndvi_threshold, product_values,
)
from dipfill.errors import InputError

log = logging.getLogger("dipfill")

#: Seconds between two progress lines when stderr is no terminal (a log file, CI, a pipe).
PROGRESS_EVERY = 10.0


class FillProgress:
    """What `dipfill fill` shows while it works: patches done and, while a DIP batch is
    fitted, its Adam steps. On a terminal one line rewritten in place; elsewhere (or with
    ``--log-format json``) an INFO record of ``dipfill.cli.fill`` every ``PROGRESS_EVERY``
    seconds at most, and the last one, shown whatever ``-v`` says."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.log = logging.getLogger("dipfill.cli.fill")
        if not tty:
            self.log.setLevel(logging.INFO)
        self.last = time.monotonic()
        self.width = 0

    def patches(self, done: int, total: int) -> None:
        self._show(f"patches {done}/{total}", done == total, patches_done=done, patches_total=total)

    def steps(self, done: int, total: int, batch: Any) -> None:
        self._show(f"patches {done}/{total}, batch {batch.steps_done}/{batch.steps_total} steps", False,
                   patches_done=done, patches_total=total, steps_done=batch.steps_done,
                   steps_total=batch.steps_total)

    def _show(self, text: str, last: bool, **fields: Any) -> None:
        if self.tty:
            self.width = max(self.width, len(text))
            print("\r" + text.ljust(self.width), end="\n" if last else "", file=sys.stderr, flush=True)
            return
        now = time.monotonic()
        if last or now - self.last >= PROGRESS_EVERY:
            self.last = now
            self.log.info("%s", text, extra={"fields": {"event": "progress", **fields}})


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
    add_fill_flags(p, names=tuple(n for n in FILL_FIELDS if n not in GUIDE_FIELDS))
    add_fill_flags(p.add_argument_group("guides (other dates or sensors of the same ground)"), names=GUIDE_FIELDS)
    add_dip_flags(p.add_argument_group("dip engine"))
    add_model_flags(p.add_argument_group("convnp engine (paper 002: a model trained by `dipfill train`)"))
    add_product_flags(p.add_argument_group("NDVI (--product ndvi, paper 001)"), files=True)
    o = p.add_argument_group("output naming")
    o.add_argument("--id", dest="item_id", help="item id (default: from the input file name); '-dipfill' is appended. "
                   "An id that is not a safe file name is cleaned and gets a short hash of itself (a/b -> a_b-<hash>)")
    o.add_argument("--datetime", help="acquisition date/time, ISO 8601 (default: from tags or file name)")
    o.add_argument("--rgb", help="1-based bands for the quicklook's R,G,B (default: 1,2,3; band 1 as grey "
                                 "with fewer than 3 bands)")
    c = p.add_argument_group("STAC output")
    c.add_argument("--catalog", metavar="ROOT",
                   help="also add the item to the static catalog at ROOT (ROOT/<collection>/<id>/), "
                        "creating it if needed; other items are not rewritten")
    c.add_argument("--collection", default="dipfill", help="collection id in --catalog / --publish (default: dipfill)")
    c.add_argument("--publish", metavar="URL",
                   help="upsert the collection and item into the STAC API at URL (Transactions extension); "
                        "asset hrefs become file:// URIs of the written files")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    # --preset unset means the mode's default (landsat2020; ndvi2024 for --product ndvi)
    p.set_defaults(func=run, preset=None)


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
    from dipfill.pipeline.fill import fill_files

    from dipfill.stac.item import sanitize_id
    from dipfill.stac.publish import check_catalog_root

    rgb = parse_rgb(args.rgb) if args.rgb is not None else None
    options = fill_options(product_values(vars(args)))
    mode = _ndvi_mode(args, options) if args.product == "ndvi" else None
    if mode is not None:
        options = replace(options, engine_options=mode.engine_options)
    else:
        given = [f"--{k.replace('_', '-')}" for k in ("accept", "ndvi_threshold", "ndvi_bands", "ndvi_scale",
                                                      "ndvi_offset", "reliability", "vi_quality")
                 if getattr(args, k) is not None]
        if given:
            raise InputError(f"{given[0]} is an option of --product ndvi; add --product ndvi (or mark other "
                             "gaps with --mask)")
    if args.catalog:  # before any work: a catalog that cannot take the item must not cost a fill
        args.catalog = str(check_catalog_root(args.catalog, sanitize_id(args.collection)))

    shown = FillProgress(sys.stderr.isatty() and not args.json and getattr(args, "log_format", "text") != "json")
    report = fill_files(
        args.inputs,
        args.out,
        options=options,
        mask=args.mask,
        item_id=args.item_id,
        datetime=args.datetime,
        rgb=rgb,
        progress=shown.patches,
        on_steps=shown.steps,
        mode=mode,
    )
    _publish(args, report)
    if args.json:
        from dipfill.pipeline.outputs import patch_records

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
    for i, g in enumerate(report.guides, start=1):
        print(f"guide {i:<3} {g['href']}  {g['datetime'] or 'date unknown'}  bands {','.join(map(str, g['bands']))}  "
              f"{g['resampling']}{'  mask ' + g['mask'] if g.get('mask') else ''}")
    steps = [d.steps for d in report.diagnostics.values() if d.engine == args.engine and d.steps]
    if steps:
        print(f"steps     per patch: min {min(steps)}, median {int(statistics.median(steps))}, max {max(steps)}")
    print(f"wall time {report.seconds:.1f} s")
    return 0


def _ndvi_mode(args: argparse.Namespace, options: Any) -> Any:
    """The NDVI mode the flags ask for, with the vegetation-only loss in its engine options."""
    from dipfill.pipeline.ndvi import NdviMode, ndvi_engine_options

    bands = None
    if args.ndvi_bands:
        try:
            bands = tuple(int(b) for b in args.ndvi_bands.split(","))
        except ValueError:
            raise InputError(f"--ndvi-bands takes 1-based band numbers like 3,4, got {args.ndvi_bands!r}") from None
    engine_options = ndvi_engine_options(options.engine, options.engine_options, ndvi_threshold(args.ndvi_threshold))
    return NdviMode(bands=bands, scale=args.ndvi_scale, offset=args.ndvi_offset, reliability=args.reliability,
                    vi_quality=args.vi_quality, accept=args.accept if args.accept is not None else (0,),
                    engine=options.engine, engine_options=engine_options)


def _publish(args: argparse.Namespace, report: Any) -> None:
    """--catalog and --publish, after the outputs and their item are complete."""
    from dipfill.stac.item import sanitize_id
    from dipfill.stac.publish import add_to_static_catalog, publish_item
    from dipfill.storage import as_path

    collection = sanitize_id(args.collection)
    item_path = as_path(report.outputs["item"])
    if args.catalog:
        item_path = add_to_static_catalog(args.catalog, item_path.parent, collection)
        report.outputs["catalog_item"] = str(item_path)
    if args.publish:
        publish_item(args.publish, item_path, collection)
