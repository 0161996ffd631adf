"""`dipfill anonymise SCENE... --out DIR (--region REGION.geojson | --mask FILE)`: hide a site in a
SAR scene (paper 004); the work is :func:`dipfill.pipeline.anonymise.anonymise_files`."""

from __future__ import annotations

import argparse
import sys

from dipfill.cli.options import FILL_FIELDS, GUIDE_FIELDS, add_dip_flags, add_fill_flags, fill_options
from dipfill.engines.sar import UNITS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "anonymise",
        help="replace a region of a SAR scene by synthetic content continuing its surroundings (paper 004)",
        description="Every pixel of the region is replaced by synthetic SAR content fitted in dB to the pixels "
        "around it; nothing of the original inside the region reaches the outputs, every pixel outside it is "
        "kept bit-exact. Writes the same outputs and STAC item as `dipfill fill`.",
    )
    p.add_argument("inputs", nargs="+", metavar="SCENE", help="SAR raster(s) on one grid (VV, VH, ...)")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="output directory")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--region", metavar="REGION.geojson",
                       help="polygon(s) in lon/lat (EPSG:4326); every pixel they touch is replaced. Scenes "
                            "without a CRS are placed through their GCPs (Sentinel-1 GRD)")
    where.add_argument("--mask", metavar="FILE", help="raster on the scene's grid; non-zero marks the region")
    p.add_argument("--units", choices=("auto", *UNITS), default="auto",
                   help="the scene's units: auto decides from dtype and the values outside the region (integer: "
                        "amplitude DN; negative floats: dB; else linear power) and says so (default: auto)")
    add_fill_flags(p, names=tuple(n for n in FILL_FIELDS if n not in GUIDE_FIELDS))
    add_dip_flags(p.add_argument_group("dip engine (preset sar2023 by default)"))
    p.set_defaults(preset="sar2023", func=run)


def run(args: argparse.Namespace) -> int:
    from dipfill.pipeline.anonymise import anonymise_files

    report = anonymise_files(args.inputs, args.out, region=args.region, mask=args.mask, units=args.units,
                             options=fill_options(vars(args)))
    print(f"item      {report.item_id}")
    for key, path in report.outputs.items():
        print(f"{key:<9} {path}")
    c = report.counts
    print(f"region    {c['filled']} pixels replaced; {c['observed']} kept bit-exact; {c['outside']} nodata")
    print(f"wall time {report.seconds:.1f} s", file=sys.stdout)
    return 0
