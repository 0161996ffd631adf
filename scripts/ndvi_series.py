"""Fill an NDVI time series date by date, each date guided by its neighbouring dates (issue 13, item 1).

Paper 001 fills one NDVI image from itself; a time series has a better witness for a cloud:
the same ground two weeks earlier and later. This is the scripted path for that, over files
(one MODIS composite per date, sorted by name = by date):

1. every date's NDVI (MODIS DN × 1e-4, or the file's stated scale; -3000 fill and values
   outside the VI valid range as NaN; float files taken as NDVI) is written once as a float32
   GeoTIFF with nodata NaN under ``OUT/ndvi/`` — what the guides read (a guide's NaN is
   never evidence);
2. each date is filled with ``dipfill fill --product ndvi`` in process
   (:func:`~dipfill.pipeline.fill.fill_files` with :class:`~dipfill.pipeline.ndvi.NdviMode`)
   with the previous and the next date's NDVI as ``--guide`` (the first and last dates get
   their one neighbour), engine ``guided`` by default (judged: a neighbour that does not
   predict this date gets weight ≈ 0) or any other (``--engine mcpn --steps 200`` for
   guided DIP; ``dip``/``fillnodata`` ignore the guides). Outputs go to ``OUT/<date>/``:
   the NDVI COG, QA COG and STAC item as ``dipfill fill`` writes them, with the guides in
   the item (``dipfill:guides``, ``derived_from``).

    .venv/bin/python scripts/ndvi_series.py ../shared/data/modis/sits_MOD13Q1_NDVI_sinop/*.tif --out out/sinop
    .venv/bin/python scripts/ndvi_series.py ../shared/data/modis/modistsp_MOD13A1_NDVI_2016/*.tif --out out/como

Measured on Sinop with transplanted real cloud masks: ``scripts/bench_ndvi_paper.py``
(``guided t±1`` rows), docs/benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dipfill.pipeline.fill import fill_files  # noqa: E402
from dipfill.pipeline.ndvi import NdviMode, ndvi_engine_options  # noqa: E402
from dipfill.raster.ndvi import direct_scale, file_scale_offset, scale_index  # noqa: E402
from dipfill.specs import FillOptions  # noqa: E402


def date_of(path: Path) -> str | None:
    """ISO date from ``..._2013-09-14.tif`` or ``..._2016_353.tif`` (year and day of year)."""
    m = re.search(r"(\d{4})-(\d{2})-(\d{2})", path.name)
    if m:
        return "-".join(m.groups())
    m = re.search(r"(\d{4})[_.A]?(\d{3})(?!\d)", path.stem)
    if m:
        return (dt.date(int(m.group(1)), 1, 1) + dt.timedelta(days=int(m.group(2)) - 1)).isoformat()
    return None


def write_ndvi(src: Path, dst: Path) -> None:
    """``src``'s NDVI as float32 with nodata NaN (the guide a neighbour reads)."""
    import rasterio

    with rasterio.open(src) as ds:
        dn, profile, nodata = ds.read(1), ds.profile, ds.nodata
    g_scale, g_offset, dtype, tags = file_scale_offset([str(src)])[0]
    scale, offset, span, _ = direct_scale(dtype, g_scale, g_offset, tags)
    valid = np.ones(dn.shape, bool) if nodata is None else dn != np.asarray(nodata).astype(dn.dtype)
    value, _ = scale_index(dn, valid, scale=scale, offset=offset, valid_range=span)
    profile.update(dtype="float32", nodata=float("nan"), count=1, compress="deflate")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(value, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="one NDVI raster per date, on one grid")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--engine", default="guided", help="fill engine (default: guided)")
    parser.add_argument("--steps", type=int, help="Adam steps (dip/mcpn)")
    args = parser.parse_args()
    files = sorted(args.files)
    ndvi = [args.out / "ndvi" / f"{f.stem}.tif" for f in files]
    for f, g in zip(files, ndvi):
        write_ndvi(f, g)
    engine_options = {"steps": args.steps} if args.steps and args.engine in ("dip", "mcpn") else {}
    if args.engine == "dip":
        engine_options["preset"] = "ndvi2024"
    base = FillOptions(engine=args.engine)
    for t, f in enumerate(files):
        guides = tuple(str(ndvi[j]) for j in (t - 1, t + 1) if 0 <= j < len(files))
        opts = ndvi_engine_options(args.engine, engine_options, 0.0)
        options = replace(base, guides=guides, engine_options=opts)
        t0 = time.perf_counter()
        report = fill_files([str(f)], args.out / (date_of(f) or f.stem), options=options, datetime=date_of(f),
                            mode=NdviMode(engine=args.engine, engine_options=opts))
        c = report.counts
        print(f"{date_of(f) or f.stem}: {c['filled'] + c['filled_fallback']} of "
              f"{c['filled'] + c['filled_fallback'] + c['unfilled']} gap pixels filled, guides "
              f"{', '.join(Path(g).stem for g in guides)}; {time.perf_counter() - t0:.1f} s -> {report.outputs['item']}")


if __name__ == "__main__":
    main()
