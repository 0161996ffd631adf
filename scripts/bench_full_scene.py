"""make bench (full scene): `dipfill run` on a full-size Landsat scene, end to end, against the I/O floor.

No real 7000x7000 scene is in ../shared, so one is built from real pixels: the two ARG25
Landsat-7 SLC-off rasters of Menindee (2700x1000x3, int16, nodata -999; MANIFEST 1a) are
tiled onto one SIZE x SIZE grid (25 m, EPSG:3577), January's tiles with February's (its
cloud-like masked blobs, 62 % nodata) at every fifth tile, so the gaps are the real SLC-off
stripes and masks, never noise. As a Landsat scene is a tilted swath in a north-up frame,
pixels outside a rectangle rotated by 12 degrees (the frame's corners) are set to nodata:
the collar the pipeline must recognise as outside the footprint and leave alone. Each band
is written as its own COG (as Landsat items on Planetary Computer or AWS are) with dipfill's
own COG writer, and published as one item of a static STAC catalog.

For each size (default 3500 and 7000; ``--sizes``):

* **floor**: one process reads the scene (one rasterio read per band file) and writes it
  as one COG with the same writer (``dipfill.raster.write.write_cog``); seconds split into
  read and write, and that process's peak RSS;
* **run**: ``dipfill run --engine fillnodata --json`` as a subprocess with ``--ray-address``
  to a Ray head started once beforehand on 127.0.0.1 (a long-lived cluster: its engine
  actors are warmed by a first run of the small committed demo catalog). Reported: wall
  time, the scene's own seconds and per-stage seconds from the run record, the engine's
  own seconds (sum of the patches' diagnostics), patches, peak RSS of the driver (its
  process tree, sampled every 0.1 s, and ``ru_maxrss`` per stage from the run record) and
  of the Ray head's process tree above its idle level (the engine actors);
* **validity** of the products: observed pixels bit-exact (every band's valid input pixel
  equals the output), every gap pixel the QA calls filled holds a value, every pixel the QA
  calls outside is nodata in every band, how much of the built collar the QA calls
  outside, and how much of the built footprint it calls outside too (nodata regions that
  touch the collar, such as February's masked blobs, join it: the footprint is derived
  from the data for this collection; observed pixels are kept whatever it says).

Pipeline overhead = scene seconds − engine seconds / actors (the engine runs on the actors
in parallel); the goal (issue 14) is overhead ≤ 1.5 × the floor. Floor and run of one size
run back to back, so their ratio shares the machine's load; the load average is printed.

Optional ``--dip-window N``: a N x N crop of the largest scene through ``dipfill run
--engine dip --steps 5`` (the engine path, not a quality claim).

Run with ``nice -n 10 .venv/bin/python scripts/bench_full_scene.py`` (needs ../shared, about
1 GiB of free disk in /tmp per 7000² scene; everything is removed at the end).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.warp import transform_bounds
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_run_scale import Head, tree_rss_mb  # noqa: E402
from make_demo_catalog import BANDS, COLLECTION  # noqa: E402

from dipfill.raster.masks import QA_ENGINE, QA_FALLBACK, QA_OBSERVED, QA_OUTSIDE, QA_UNFILLED  # noqa: E402
from dipfill.raster.read import Grid  # noqa: E402
from dipfill.raster.write import write_cog  # noqa: E402
from dipfill.stac.catalog import (  # noqa: E402
    catalog_with_collection,
    collection_with_item,
    new_catalog,
    new_collection,
    with_item_links,
)

DATA = REPO.parent / "shared" / "data" / "landsat7_slcoff" / "arg25_p095r082_menindee_2010"
JAN = DATA / "LS7_ETM_095_082_20100116_B3B4B5.tif"
FEB = DATA / "LS7_ETM_095_082_20100201_B3B4B5.tif"
DEMO = REPO / "data" / "arg25_menindee" / "stac" / "catalog.json"
BIN = REPO / ".venv" / "bin"
NODATA = -999
ACTORS = os.cpu_count() or 1  # the Ray head's CPUs: one one-CPU engine actor each
TILT = 12.0  # degrees: a WRS-2 swath's heading in a north-up frame at mid latitudes

FLOOR = """
import sys, time, numpy as np, rasterio
from dipfill.raster.read import Grid
from dipfill.raster.write import write_cog
t = time.perf_counter()
bands = []
for path in sys.argv[2:]:
    with rasterio.open(path) as ds:
        bands.append(ds.read(1)); grid = Grid(ds.crs, ds.transform, ds.width, ds.height); nodata = ds.nodata
data = np.stack(bands); del bands
t_read = time.perf_counter() - t
write_cog(sys.argv[1], data, grid, nodata=nodata, band_names=[f"b{i}" for i in range(1, len(data) + 1)])
t_all = time.perf_counter() - t
hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print(t_all, t_read, t_all - t_read, hwm / 1024)
"""


# ------------------------------------------------------------------------ the scene
def collar(size: int, rows: tuple[int, int] | None = None, tilt: float = TILT) -> np.ndarray:
    """True inside the largest square tilted by ``tilt`` degrees that fits a ``size``² frame
    (``rows``: only those rows, so the check needs no scene-sized temporaries)."""
    a = math.radians(tilt)
    side = size / (math.cos(a) + math.sin(a))
    y0, y1 = rows or (0, size)
    y = np.arange(y0, y1, dtype=np.float32)[:, None] - (size - 1) / 2
    x = np.arange(size, dtype=np.float32)[None, :] - (size - 1) / 2
    u = x * math.cos(a) + y * math.sin(a)
    v = -x * math.sin(a) + y * math.cos(a)
    return (np.abs(u) <= side / 2) & (np.abs(v) <= side / 2)


def build_scene(size: int, folder: Path) -> list[Path]:
    """One COG per band of a ``size``² scene tiled from the two real ARG25 dates (see the
    module docstring); returns the band files."""
    with rasterio.open(JAN) as ds:
        jan, transform, crs = ds.read(), ds.transform, ds.crs
    with rasterio.open(FEB) as ds:
        feb = ds.read()
    th, tw = jan.shape[1:]
    data = np.empty((3, size, size), dtype=np.int16)
    for r in range(math.ceil(size / th)):
        for c in range(math.ceil(size / tw)):
            tile = feb if (r * 3 + c) % 5 == 4 else jan
            h, w = min(th, size - r * th), min(tw, size - c * tw)
            data[:, r * th : r * th + h, c * tw : c * tw + w] = tile[:, :h, :w]
    inside = collar(size)
    data[:, ~inside] = NODATA
    grid = Grid(crs, Affine(transform.a, 0, transform.c, 0, transform.e, transform.f), size, size)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for b, (key, *_rest) in enumerate(BANDS):
        path = folder / f"{key}.tif"
        write_cog(path, data[b], grid, nodata=NODATA, band_names=[key])
        paths.append(path)
    return paths


def write_catalog(root: Path, item_id: str, bands: list[Path]) -> Path:
    """A static catalog with one item whose band assets are the band COGs (absolute hrefs)."""
    with rasterio.open(bands[0]) as ds:
        w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
        shape, transform, epsg = [ds.height, ds.width], list(ds.transform)[:6], ds.crs.to_epsg()
    assets = {
        key: {"href": str(path), "type": "image/tiff; application=geotiff; profile=cloud-optimized",
              "roles": ["data"], "title": f"ETM+ {key} NBAR x10000",
              "raster:bands": [{"data_type": "int16", "nodata": NODATA, "scale": 1e-4, "spatial_resolution": 25}],
              "eo:bands": [{"name": key, "common_name": common, "center_wavelength": round((lo + hi) / 2, 3)}]}
        for (key, common, lo, hi), path in zip(BANDS, bands)
    }
    item = {
        "type": "Feature", "stac_version": "1.1.0", "id": item_id, "collection": COLLECTION,
        "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json",
                            "https://stac-extensions.github.io/raster/v1.1.0/schema.json"],
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "bbox": [w, s, e, n],
        "properties": {"datetime": "2010-01-16T00:00:00Z", "platform": "landsat-7", "instruments": ["etm+"],
                       "proj:code": f"EPSG:{epsg}", "proj:shape": shape, "proj:transform": transform,
                       "description": "ARG25 NBAR SLC-off (2010-01-16 and 2010-02-01) tiled onto one frame for "
                                      "scripts/bench_full_scene.py; CC BY 3.0 AU"},
        "links": [{"rel": "license", "href": "https://creativecommons.org/licenses/by/3.0/au/"}],
        "assets": assets,
    }
    catalog = new_catalog("dipfill-bench", "Full-size benchmark scene built from ARG25 Landsat-7 SLC-off pixels")
    collection = new_collection(COLLECTION, "ARG25 Landsat-7 NBAR (CC BY 3.0 AU, Geoscience Australia)", "CC-BY-3.0-AU")
    path = root / COLLECTION / item_id / f"{item_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(with_item_links(item, COLLECTION), indent=2) + "\n")
    (root / COLLECTION / "collection.json").write_text(
        json.dumps(collection_with_item(collection, item), indent=2) + "\n")
    (root / "catalog.json").write_text(json.dumps(catalog_with_collection(catalog, COLLECTION), indent=2) + "\n")
    return root / "catalog.json"


# ------------------------------------------------------------------------ measuring
def floor(bands: list[Path], out: Path) -> dict:
    fields = subprocess.run([sys.executable, "-c", FLOOR, str(out), *map(str, bands)], capture_output=True,
                            text=True, check=True, cwd=REPO).stdout.split()
    out.unlink()
    total, read, write, mib = map(float, fields)
    return {"s": total, "read": read, "write": write, "mib": mib}


def run_pipeline(catalog: Path, out: Path, head: Head, *extra: str) -> dict:
    cmd = [str(BIN / "dipfill"), "run", "--stac", str(catalog), "--out", str(out), "--json",
           "--ray-address", head.address, *extra]
    start = time.perf_counter()
    # files, not pipes: a pipe nobody reads while polling fills up (progress lines) and blocks the run
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True)
        driver, actors = 0.0, 0.0
        while proc.poll() is None:
            driver = max(driver, tree_rss_mb(proc.pid))
            actors = max(actors, tree_rss_mb(head.proc.pid) - head.idle_mb)
            time.sleep(0.1)
        stdout.seek(0)
        stderr.seek(0)
        out_text, err_text = stdout.read(), stderr.read()
    if proc.returncode:
        raise SystemExit(f"dipfill run failed ({proc.returncode}): {' '.join(cmd)}\n{err_text[-3000:]}")
    scene = json.loads(out_text)["scenes"][0]
    if scene["status"] != "done":
        raise SystemExit(f"scene not done: {scene}")
    item = json.loads(Path(scene["output"]).read_text())
    patches = json.loads((Path(scene["output"]).parent / item["assets"]["patches"]["href"]).read_text())
    return {"wall": time.perf_counter() - start, "scene": scene["seconds"], "timings": scene["timings"],
            "driver_stages": scene["driver_peak_mib"], "driver_mb": driver, "actors_mb": actors,
            "patches": scene["patches"], "engine_s": sum(p["seconds"] for p in patches),
            "item": Path(scene["output"]), "counts": scene["counts"]}


def validate(item_path: Path, bands: list[Path], rows: int = 512) -> dict:
    """Products against the input, strip by strip (see the module docstring)."""
    item = json.loads(item_path.read_text())
    folder = item_path.parent
    outs = [rasterio.open(folder / item["assets"][key]["href"]) for key, *_ in BANDS]
    qa_ds = rasterio.open(folder / item["assets"]["qa"]["href"])
    ins = [rasterio.open(p) for p in bands]
    bad_observed = unfilled_claimed = outside_not_nodata = 0
    counts = {"observed": 0, "filled": 0, "unfilled": 0, "outside": 0}
    collar_pixels = collar_called_outside = inside_called_outside = 0
    try:
        height, width = qa_ds.height, qa_ds.width
        for y0 in range(0, height, rows):
            win = Window(0, y0, width, min(rows, height - y0))
            qa = qa_ds.read(1, window=win)
            src = np.stack([d.read(1, window=win) for d in ins])
            dst = np.stack([d.read(1, window=win) for d in outs])
            valid = src != NODATA
            bad_observed += int((dst[valid] != src[valid]).sum())
            filled = (qa == QA_ENGINE) | (qa == QA_FALLBACK)
            unfilled_claimed += int((dst[:, filled] == NODATA).sum())
            outside = qa == QA_OUTSIDE
            outside_not_nodata += int((dst[:, outside] != NODATA).sum())
            counts["observed"] += int((qa == QA_OBSERVED).sum())
            counts["filled"] += int(filled.sum())
            counts["unfilled"] += int((qa == QA_UNFILLED).sum())
            counts["outside"] += int(outside.sum())
            built_collar = ~collar(width, (y0, y0 + win.height))
            collar_pixels += int(built_collar.sum())
            collar_called_outside += int((built_collar & outside).sum())
            inside_called_outside += int((~built_collar & outside).sum())
    finally:
        for d in (*outs, qa_ds, *ins):
            d.close()
    ok = bad_observed == 0 and unfilled_claimed == 0 and outside_not_nodata == 0
    return {"ok": ok, "observed_changed": bad_observed, "filled_but_nodata": unfilled_claimed,
            "outside_not_nodata": outside_not_nodata, "collar_outside": collar_called_outside / max(collar_pixels, 1),
            "inside_outside": inside_called_outside / max(height * width - collar_pixels, 1),
            **counts}


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3500,7000", help="scene sizes (pixels a side), comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="floor + run pairs per size (the pair with the lowest run/floor ratio is kept)")
    parser.add_argument("--dip-window", type=int, default=0, help="also run DIP (5 steps) on an N x N crop")
    parser.add_argument("--tmp", default="/tmp", help="where the scenes and outputs are written (removed after)")
    parser.add_argument("--build", nargs=2, metavar=("SIZE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build_scene(int(args.build[0]), Path(args.build[1]))
        return
    if not JAN.exists():  # skipped, not failed: make bench runs the other benchmarks on
        print(f"bench_full_scene skipped: {JAN} not found (the ARG25 rasters are team data in ../shared, MANIFEST 1a)")
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    free = shutil.disk_usage(args.tmp).free / 2**30
    need = sum(s * s * 3 * 2 * 1.5 / 2**30 for s in sizes) + 1
    if free < need:
        raise SystemExit(f"{args.tmp}: {free:.1f} GiB free, about {need:.1f} GiB needed")
    print(__doc__.split("\n\n")[0])
    print(f"machine: {os.cpu_count()} CPUs; load average at start {loadavg()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="dffull-", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        head_dir = Path(tempfile.mkdtemp(prefix="dfhead-", dir=args.tmp))
        head = Head(head_dir)
        try:
            warm = run_pipeline(DEMO, tmp / "warmup", head, "--engine", "fillnodata")
            print(f"Ray head up; actors warmed on the demo catalog ({warm['wall']:.1f} s)", flush=True)
            for size in sizes:
                t = time.perf_counter()
                # built in a process of its own: a child's peak RSS (ru_maxrss) starts at its
                # parent's, so this process stays small for the driver's per-stage figures
                subprocess.run([sys.executable, __file__, "--build", str(size), str(tmp / f"scene{size}")], check=True)
                bands = [tmp / f"scene{size}" / f"{key}.tif" for key, *_ in BANDS]
                catalog = write_catalog(tmp / f"stac{size}", f"LS7_ETM_095_082_20100116_full{size}", bands)
                mb = sum(p.stat().st_size for p in bands) / 2**20
                print(f"\n{size}x{size}x3 built in {time.perf_counter() - t:.1f} s ({mb:.0f} MiB of COGs)", flush=True)
                best = None
                for i in range(args.repeat):
                    load0 = loadavg()
                    fl = floor(bands, tmp / "floor.tif")
                    out = tmp / f"out{size}_{i}"
                    run = run_pipeline(catalog, out, head, "--engine", "fillnodata")
                    run.update(floor=fl, load=f"{load0} -> {loadavg()}")
                    print(f"  floor {fl['s']:.1f} s (read {fl['read']:.1f}, write {fl['write']:.1f}); run wall "
                          f"{run['wall']:.1f} s, scene {run['scene']:.1f} s, engine {run['engine_s']:.1f} s; "
                          f"{run['timings']}; load {run['load']}", flush=True)
                    if best is None or run["scene"] / fl["s"] < best["scene"] / best["floor"]["s"]:
                        if best is not None:
                            shutil.rmtree(best["item"].parents[2], ignore_errors=True)
                        best = run
                    else:
                        shutil.rmtree(out, ignore_errors=True)
                assert best is not None
                best["valid"] = validate(best["item"], bands)
                print(f"  validity: {best['valid']}", flush=True)
                rows.append((size, best))
                shutil.rmtree(best["item"].parents[2], ignore_errors=True)
                if args.dip_window and size == max(sizes):
                    rows.append((f"dip {args.dip_window}", dip_window(tmp, bands, args.dip_window, head)))
                shutil.rmtree(tmp / f"scene{size}", ignore_errors=True)
        finally:
            head.stop()
            shutil.rmtree(head_dir, ignore_errors=True)
    report(rows)


def dip_window(tmp: Path, bands: list[Path], n: int, head: Head) -> dict:
    """``n``² from the middle of the scene through DIP (5 steps): the engine path at full scale."""
    folder = tmp / f"crop{n}"
    folder.mkdir()
    crops = []
    for p in bands:
        with rasterio.open(p) as ds:
            y0, x0 = (ds.height - n) // 2, (ds.width - n) // 2
            data = ds.read(1, window=Window(x0, y0, n, n))
            t = ds.window_transform(Window(x0, y0, n, n))
            grid = Grid(ds.crs, t, n, n)
        crops.append(folder / p.name)
        write_cog(crops[-1], data, grid, nodata=NODATA, band_names=[p.stem])
    catalog = write_catalog(tmp / f"stac_crop{n}", f"LS7_ETM_095_082_20100116_crop{n}", crops)
    run = run_pipeline(catalog, tmp / f"out_crop{n}", head, "--engine", "dip", "--preset", "mcpn-core",
                       "--steps", "5")
    print(f"  DIP 5 steps on {n}x{n}: wall {run['wall']:.1f} s, scene {run['scene']:.1f} s, "
          f"{run['patches']} patches, {run['timings']}", flush=True)
    return run


def report(rows: list) -> None:
    print(f"\n{'scene':>10} | {'floor s':>7} {'MiB':>5} | {'scene s':>7} {'engine s':>8} {'overhead':>8} "
          f"{'x floor':>7} | {'patches':>7} | {'driver MiB':>10} {'actors MiB':>10} | valid | load")
    for size, r in rows:
        if "floor" not in r:
            print(f"{size:>10} | {'':>7} {'':>5} | {r['scene']:>7.1f} {r['engine_s']:>8.1f} {'':>8} {'':>7} | "
                  f"{r['patches']:>7} | {r['driver_mb']:>10.0f} {r['actors_mb']:>10.0f} |")
            continue
        overhead = r["scene"] - r["engine_s"] / ACTORS
        print(f"{size:>10} | {r['floor']['s']:>7.1f} {r['floor']['mib']:>5.0f} | {r['scene']:>7.1f} "
              f"{r['engine_s']:>8.1f} {overhead:>8.1f} {overhead / r['floor']['s']:>6.2f}x | {r['patches']:>7} | "
              f"{r['driver_mb']:>10.0f} {r['actors_mb']:>10.0f} | {'yes' if r['valid']['ok'] else 'NO'} | {r['load']}")
    print("\nstages (seconds / driver ru_maxrss MiB at the end of each):")
    for size, r in rows:
        print(f"  {size}: " + ", ".join(f"{k} {v:.1f} / {r['driver_stages'].get(k, 0):.0f}"
                                        for k, v in r["timings"].items()))
    print(f"\noverhead = scene seconds - engine seconds / {ACTORS} actors; actors MiB = the Ray head's process tree "
          "above idle; driver MiB = the dipfill run process tree (sampled every 0.1 s).")


if __name__ == "__main__":
    main()
