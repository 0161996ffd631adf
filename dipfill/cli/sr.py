"""`dipfill sr LOWRES... --guide HIGHRES... --out DIR`: guided super-resolution onto the guide's
grid (paper 003 §3.2); the work is :func:`dipfill.pipeline.sr.sr_files`."""

from __future__ import annotations

import argparse
import logging
from typing import Any, Mapping

from dipfill.engines.config import preset
from dipfill.keyvalue import parse_pairs
from dipfill.pipeline.sr import METHODS
from dipfill.tiling.resample import KERNELS

log = logging.getLogger("dipfill.cli.sr")


def register(sub: argparse._SubParsersAction) -> None:
    base = preset("mcpn")
    p = sub.add_parser(
        "sr",
        help="super-resolve a low-resolution raster onto the grid of a finer guide (paper 003 guided SR)",
        description="The output lies on the guide's grid (CRS, transform, size) in the low-resolution input's "
        "dtype; pixels outside the low-resolution footprint are nodata. mcpn-direct/-stacked fit paper 003's "
        "networks so that the output's bilinear downsample matches LOWRES and the guide heads match the guide. "
        "Writes one COG per band, QA, VRT, Zarr mosaic, quicklook and a STAC item recording mode, factor, "
        "guide and variant.",
    )
    p.add_argument("inputs", nargs="+", metavar="LOWRES", help="low-resolution raster(s) on one grid")
    p.add_argument("--guide", action="append", required=True, metavar="HIGHRES",
                   help="finer raster(s) on one grid covering LOWRES's footprint (same CRS); all their bands form "
                        "one guide; repeatable (e.g. the 10 m B02 B03 B04 B08 files)")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="output directory")
    p.add_argument("--method", choices=METHODS, default="mcpn-direct",
                   help="bicubic, guided-filter (bicubic then He et al.'s guided filter), or paper 003's "
                        "MCPN Direct / Stacked network (default: mcpn-direct, the paper's best)")
    p.add_argument("--scale", default="auto", metavar="auto|FACTOR",
                   help="auto: the factor from the two grids (any non-integer value); FACTOR: checked against them, "
                        "or places a LOWRES without georeference at the guide's origin (default: auto)")
    p.add_argument("--operator", choices=KERNELS, default="bilinear",
                   help="downsampling between the network's output and LOWRES: antialiased bilinear (the paper) "
                        "or area average (default: bilinear)")
    p.add_argument("--consistency", choices=("project", "none"), default="project",
                   help="project: correct each patch by the least change that makes its downsample equal LOWRES "
                        "(one exact back-projection); none: the method's output as it is, as paper 003 "
                        "(default: project)")
    p.add_argument("--patch", type=int, default=256, help="HR patch size in pixels (default: 256)")
    p.add_argument("--overlap", type=int, default=32, help="overlap between HR patches in pixels (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="random seed (per-patch seeds derive from it and the window)")
    p.add_argument("--steps", type=int, help=f"Adam steps per patch for mcpn-* (default: {base.steps}, the paper's)")
    p.add_argument("--lr", type=float, help=f"Adam learning rate for mcpn-* (default: {base.lr})")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="torch device (default: auto)")
    p.add_argument("--dip", action="append", default=[], metavar="KEY=VALUE",
                   help="any other DIPConfig/MCPNConfig field for mcpn-*, value as JSON (e.g. --dip "
                        "guide_weight=0.5); repeatable")
    p.add_argument("--eps", type=float, help="guided-filter regularisation on the [0, 1]-scaled guide (default: 1e-3)")
    p.add_argument("--item-id", help="id of the output item (default: from the LOWRES file name, + '-sr')")
    p.add_argument("--datetime", help="acquisition date-time for the item (default: from the input's tags)")
    p.set_defaults(func=run)


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine's options from the flags: only those given (the report and item list them)."""
    return sr_engine_options(args.method, vars(args))


def sr_engine_options(method: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The SR method's engine options from flag values (``dipfill sr``'s, or a run's merged
    flags and config): ``eps`` for the guided filter; ``device``, ``preset``, ``steps``,
    ``lr`` and the ``--dip`` pairs for paper 003's networks, checked now."""
    if method == "guided-filter":
        return {"eps": values["eps"]} if values.get("eps") is not None else {}
    if not method.startswith("mcpn"):
        return {}
    opts: dict[str, Any] = {"device": values.get("device") or "auto"}
    for key in ("preset", "steps", "lr"):
        if values.get(key) is not None:
            opts[key] = values[key]
    opts.update(parse_pairs(values.get("dip") or [], flag="--dip"))
    from dipfill.engines.sr import make_sr_engine

    make_sr_engine(method.split("-", 1)[1], **dict(opts))  # a wrong field or value: one line, before any work
    return opts


def run(args: argparse.Namespace) -> int:
    from dipfill.pipeline.sr import sr_files

    def progress(done: int, total: int) -> None:
        log.info("patches %d/%d", done, total)

    report = sr_files(args.inputs, args.guide, args.out, method=args.method, scale=args.scale, kernel=args.operator,
                      patch=args.patch, overlap=args.overlap, seed=args.seed, engine_options=engine_options(args),
                      item_id=args.item_id, datetime=args.datetime, consistency=args.consistency == "project",
                      progress=progress)
    geo = report.geometry
    print(f"item      {report.item_id}")
    for key, path in report.outputs.items():
        print(f"{key:<9} {path}")
    print(f"factor    {geo.scale[0]:g} x {geo.scale[1]:g} ({geo.lr_shape[1]}x{geo.lr_shape[0]} -> "
          f"{geo.hr_shape[1]}x{geo.hr_shape[0]}), {report.method}, {report.windows} patch(es)")
    rmse = ", ".join(f"{v:.4g}" for v in report.lowres_rmse)
    print(f"check     RMSE of the output's {args.operator} downsample against LOWRES: {rmse} (data units, per band)")
    print(f"wall time {report.seconds:.1f} s")
    return 0
