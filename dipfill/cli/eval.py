"""`dipfill eval TRUTH DONOR --out DIR`: score fill methods on one date's real gaps laid over another."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

log = logging.getLogger("dipfill")


def register(sub: argparse._SubParsersAction) -> None:
    from dipfill.eval.methods import DEFAULT_METHODS
    from dipfill.specs import GUIDE_RESAMPLINGS

    p = sub.add_parser(
        "eval",
        help="score fill methods on real gaps with known truth (two dates of one place)",
        description="Lay the donor date's real gaps (its nodata) over the truth date's valid pixels, fill a "
        "few tiles with each method and score them per band over the hidden pixels only (RMSE, r2, PSNR, "
        "SSIM); write report.md, report.json, quicklooks and DIP convergence plots into --out (the plots need "
        "matplotlib: pip install dipfill[plots]).",
    )
    p.add_argument("truth", metavar="TRUTH_DATE_RASTER", help="the date whose pixels are the truth")
    p.add_argument("donor", metavar="DONOR_RASTER", help="the date whose gap mask (nodata) is transplanted; same grid")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--reverse-too", action=argparse.BooleanOptionalAction, default=True,
                   help="also swap the dates' roles (default: on; --no-reverse-too for one direction)")
    p.add_argument("--tiles", metavar="R,C[,R,C...]",
                   help="top-left row,col of each tile (default: choose --n-tiles automatically)")
    p.add_argument("--tile-size", type=int, default=256, metavar="PX", help="tile side in pixels (default: 256)")
    p.add_argument("--n-tiles", type=int, default=3, metavar="N", help="tiles to choose automatically (default: 3)")
    p.add_argument("--method", action="append", metavar="SPEC",
                   help="ENGINE[:PRESET][:KEY=VALUE,...], e.g. dip:mcpn-core:steps=300,stopping=holdout, "
                        "fillnodata, telea:radius=3, guided, llhm, regression, mcpn:variant=input,steps=100 "
                        "(the last four use --guide); repeatable (default: " + " ".join(DEFAULT_METHODS) + ")")
    p.add_argument("--steps", type=int, metavar="N",
                   help="Adam steps for every dip method that does not set its own steps= (the paper "
                        "network costs ~1.2 s/step per 256-px tile on 2 CPU cores)")
    p.add_argument("--seed", type=int, default=0, help="run seed; each tile's seed derives from it (default: 0)")
    p.add_argument("--check-every", type=int, default=25, metavar="N",
                   help="dip: record held-out and true RMSE every N steps (default: 25)")
    p.add_argument("--data-range", type=float, default=10000.0, metavar="PEAK",
                   help="PSNR peak value (default: 10000, reflectance x 10^4)")
    p.add_argument("--rgb", default="3,2,1", help="1-based bands for the quicklooks' R,G,B (default: 3,2,1)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="torch device for dip (default: auto)")
    g = p.add_argument_group("guides (other dates or sensors of the same ground, for the guided methods)")
    g.add_argument("--guide", action="append", default=None, metavar="FILE",
                   help="a raster of the same ground (any grid, CRS or resolution: read onto the truth's grid) "
                        "given to the methods that take guides (guided, llhm, regression, mcpn); repeatable, in "
                        "rank order; single-image methods ignore it (default: none)")
    g.add_argument("--guide-bands", metavar="B,B,...", help="1-based bands taken from every guide (default: all)")
    g.add_argument("--guide-resampling", default="bilinear", choices=GUIDE_RESAMPLINGS,
                   help="resampling of guides not on the truth's grid (default: bilinear)")
    g.add_argument("--guide-mask", action="append", default=None, metavar="FILE",
                   help="a raster marking the guide's own gaps (non-zero: not evidence; any grid or CRS); the "
                        "k-th belongs to the k-th --guide; repeatable (default: none)")
    g.add_argument("--shift-mask", type=int, default=0, metavar="ROWS",
                   help="shift the donor's gap mask down ROWS rows before hiding, so the donor date itself "
                        "observes the hidden pixels and can be a guide (default: 0)")
    p.add_argument("--json", action="store_true", help="print report.json instead of the summary table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dipfill.cli.fill import parse_rgb
    from dipfill.eval.experiments import EvalOptions, evaluate_files
    from dipfill.eval.inputs import parse_tiles
    from dipfill.specs import band_list

    rgb = parse_rgb(args.rgb)
    options = EvalOptions(
        methods=tuple(args.method) if args.method else EvalOptions.methods,
        tiles=parse_tiles(args.tiles) if args.tiles else None,
        tile_size=args.tile_size,
        n_tiles=args.n_tiles,
        both_directions=args.reverse_too,
        steps=args.steps,
        seed=args.seed,
        check_every=args.check_every,
        data_range=args.data_range,
        rgb=rgb,  # type: ignore[arg-type]
        device=args.device,
        guides=tuple(args.guide or ()),
        guide_bands=band_list(args.guide_bands or ()),
        guide_resampling=args.guide_resampling,
        guide_masks=tuple(args.guide_mask or ()),
        shift_mask=args.shift_mask,
    )

    def progress(msg: str) -> None:
        if args.json:
            log.info("%s", msg)
        else:
            print(msg, file=sys.stderr, flush=True)

    doc = evaluate_files(args.truth, args.donor, args.out, options=options, progress=progress)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    _print_summary(doc)
    print(f"\nreport    {args.out}/report.md  (means over bands above; per band in the report)")
    return 0


def _band_mean(values: list[float | None], fmt: str) -> str:
    """The mean over bands, right-aligned in 7 characters; ``nan`` when a band has no value."""
    vals = [v for v in values if v is not None]
    return format(sum(vals) / len(vals), fmt) if len(vals) == len(values) else f"{'nan':>7}"


def _print_summary(doc: dict[str, Any]) -> None:
    """The tiles, then per direction one line per method: metrics as means over bands."""
    from dipfill.eval.report import FLOOR

    for t in doc["tiles"]:
        print(f"tile {t['row']},{t['col']} ({t['size']} px): {t['why']}")
    for d in doc["directions"]:
        print(f"\n{d['key']}: {d['label']}  (hidden pixels per band: {', '.join(map(str, d['hidden_pixels']))})")
        if "guides" in d:
            cov = d["guide_coverage"]
            print(f"guides: {', '.join(d['guides']) or 'none'}"
                  + (f"  (observe {cov:.1%} of the hidden pixels)" if cov is not None else ""))
        width = max([len("method"), *map(len, d["summary"])])
        print(f"{'method':<{width}} {'RMSE':>7} {'r2':>7} {'PSNR':>7} {'SSIM':>7} {'steps':>6} {'CPU s':>8}")
        for label, s in d["summary"].items():
            steps = f"{s['steps_per_patch']:6.0f}" if s.get("steps_per_patch") else f"{'-':>6}"
            cpu = f"{s['cpu_seconds_per_patch']:8.2f}" if label != FLOOR else f"{'-':>8}"
            print(f"{label:<{width}} {_band_mean(s['rmse'], '7.1f')} {_band_mean(s['r2'], '7.3f')} "
                  f"{_band_mean(s['psnr'], '7.3f')} {_band_mean(s['ssim'], '7.3f')} {steps} {cpu}")
