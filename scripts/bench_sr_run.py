"""`dipfill run --mode sr` on a whole Sentinel-2 scene: wall time, stages, driver memory, LR consistency.

The scene: the real Earth Search item of tile 29RKH (2020-02-19; tests/fixtures/stac) with its
assets pointing at the reduced-resolution files of ../shared/data/sentinel2 (10 m bands at
100 m: 1098² px; B11 and B12 at 200 m: 549² px), published as a one-item static catalog. Per
method, ``dipfill run --mode sr --sr-method METHOD`` runs as a subprocess (the default
bands: blue/green/red/nir guide B11 and B12 by a factor 2); reported: wall seconds, the run
record's stage seconds, the driver's peak RSS (``ru_maxrss`` of the child) and what it
costs per output pixel and band above the idle process, patches, and the RMSE of the
output's bilinear downsample against the LR input (the item's ``dipfill:sr.lowres_rmse``,
in DN, of the written uint16 output: the consistency projection leaves the rounding).
Last, ``super_resolve`` alone under ``tracemalloc``: what the algorithm holds per pixel.

mcpn-direct runs at ``--steps`` (default 5): a timing of the scene path (per patch-step
cost), not a quality claim; quality against paper 003's protocol is scripts/bench_sr.py.

Usage: nice -n 10 python scripts/bench_sr_run.py [--methods bicubic,guided-filter,mcpn-direct] [--steps 5]
Needs ../shared (skips otherwise); everything is written in a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rasterio
from rasterio.warp import transform_bounds

REPO = Path(__file__).resolve().parents[1]
S2 = REPO.parent / "shared" / "data" / "sentinel2" / "earthsearch_S2A_29RKH_20200219_L2A_reduced_res"
FILES = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08", "swir16": "B11", "swir22": "B12"}


def catalog(root: Path) -> str:
    """The one-item static catalog (module doc); returns its catalog.json."""
    import pystac

    doc = json.loads((REPO / "tests/fixtures/stac/items/S2A_29RKH_20200219_0_L2A.json").read_text())
    with rasterio.open(S2 / "B02.tif") as ds:
        w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    item = pystac.Item(doc["id"], {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
                       [w, s, e, n], pystac.utils.str_to_datetime(doc["properties"]["datetime"]),
                       {k: v for k, v in doc["properties"].items() if k != "datetime"})
    for key, band in FILES.items():
        item.add_asset(key, pystac.Asset.from_dict({**doc["assets"][key], "href": str(S2 / f"{band}.tif")}))
    cat = pystac.Catalog("s2", "Sentinel-2 29RKH 2020-02-19, reduced resolution")
    coll = pystac.Collection("sentinel-2-l2a", "S2 L2A", extent=pystac.Extent.from_items([item]))
    cat.add_child(coll)
    coll.add_items([item])
    cat.normalize_hrefs(str(root / "stac"))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    return str(root / "stac" / "catalog.json")


def idle_rss_mib() -> float:
    """Peak RSS of a process that imports what a run imports (torch, rasterio, zarr, ...) and
    does nothing: the part of a run's peak that does not grow with the scene."""
    code = ("import resource, torch, dipfill.cli.main, dipfill.pipeline.run, dipfill.pipeline.sr_run, "
            "dipfill.engines.sr; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)


#: The CLI in a child that reports its own peak RSS (MiB) on its last stderr line.
_CHILD = ("import resource, sys\nfrom dipfill.cli.main import main\ntry:\n    rc = main(sys.argv[1:])\nfinally:\n"
          "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)\nsys.exit(rc)\n")


def run_one(stac: str, out: Path, method: str, steps: int) -> dict:
    args = [sys.executable, "-c", _CHILD, "run", "--stac", stac, "--collection", "sentinel-2-l2a",
            "--mode", "sr", "--sr-method", method, "--out", str(out), "--json"]
    if method.startswith("mcpn"):
        args += ["--steps", str(steps), "--device", "cpu"]
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{method}: dipfill run failed: {proc.stderr.strip()[-2000:]}")
    peak = float(proc.stderr.strip().splitlines()[-1])
    record = json.loads(proc.stdout)
    (scene,) = record["scenes"]
    item = json.loads(Path(scene["output"]).read_text())
    sr = item["properties"]["dipfill:sr"]
    return {"method": method, "wall_s": round(wall, 1), "timings": scene["timings"], "patches": scene["patches"],
            "peak_mib": round(peak, 1), "lowres_rmse": sr["lowres_rmse"],
            "shape": item["properties"]["proj:shape"], "bands": len(sr["lowres"])}


def traced_peak() -> tuple[float, float]:
    """:func:`~dipfill.pipeline.sr.super_resolve` (bicubic) on the scene's files, in this
    process under ``tracemalloc`` (numpy's buffers are traced): its peak above its inputs,
    MiB and bytes per output pixel and band. What the algorithm holds, without the
    process's imports, GDAL's block cache or the writers."""
    import tracemalloc

    sys.path.insert(0, str(REPO))
    from dipfill.pipeline.sr import SRSettings, super_resolve
    from dipfill.raster.read import read_scene

    low = read_scene([str(S2 / "B11.tif"), str(S2 / "B12.tif")])
    high = read_scene([str(S2 / f"{b}.tif") for b in ("B02", "B03", "B04", "B08")])
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    super_resolve([low], high, SRSettings(method="bicubic"))
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak / 2**20, peak / (high.data.shape[1] * high.data.shape[2] * low.data.shape[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="bicubic,guided-filter,mcpn-direct")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    if not S2.exists():
        print(f"skipped: needs {S2}")
        return 0
    idle = idle_rss_mib()
    root = Path(tempfile.mkdtemp(prefix="bench_sr_run_"))
    try:
        stac = catalog(root)
        rows = []
        for method in args.methods.split(","):
            rows.append(run_one(stac, root / f"out-{method}", method, args.steps))
            r = rows[-1]
            print(json.dumps(r), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mib, per = traced_peak()
    load = os.getloadavg()[0]
    print(f"\nload average (1 min) at the end: {load:.1f}; idle process with a run's imports {idle:.0f} MiB\n")
    print("| method | output | patches | wall s | open | fit | write | driver peak MiB | bytes / output px / band "
          "| LR RMSE (DN) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        h, w = r["shape"]
        per = (r["peak_mib"] - idle) * 2**20 / (h * w * r["bands"])
        t = r["timings"]
        print(f"| {r['method']} | {r['bands']} × {w}×{h} | {r['patches']} | {r['wall_s']} | {t.get('open', 0):.1f} | "
              f"{t.get('fit', 0):.1f} | {t.get('write', 0):.1f} | {r['peak_mib']} | {per:.0f} | "
              f"{', '.join(f'{v:.2f}' for v in r['lowres_rmse'])} |")
    print(f"\nsuper_resolve alone (bicubic, tracemalloc): {mib:.1f} MiB above its inputs, {per:.1f} bytes per output "
          "pixel and band")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
