"""make bench (scale): pipeline wall time and peak memory vs the I/O floor, at two scene sizes.

Runs ``dipfill run --engine fillnodata`` (local Ray) as a subprocess over a one-item static
catalog, sampling the resident memory of the whole process tree (driver, raylet, engine
actors) every 0.2 s, for the 512x512 committed crop and for the largest real scene in
../shared/data (ARG25 2010-01-16, 2700x1000x3; skipped without ../shared). The I/O floor
is a plain rasterio read of the same scene plus a COG write of it (same driver options).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from make_demo_catalog import write_catalog  # noqa: E402

FULL = REPO.parent / "shared" / "data" / "landsat7_slcoff" / "arg25_p095r082_menindee_2010" / "LS7_ETM_095_082_20100116_B3B4B5.tif"
CROP = REPO / "data" / "arg25_menindee" / "LS7_ETM_095_082_20100116_B3B4B5_crop512.tif"
FLOOR = """
import sys, time, rasterio, resource
from dipfill.pipeline.read import Grid
from dipfill.pipeline.write import write_cog
t = time.perf_counter()
with rasterio.open(sys.argv[1]) as ds:
    data = ds.read(); grid = Grid(ds.crs, ds.transform, ds.width, ds.height); nodata = ds.nodata
write_cog(sys.argv[2], data, grid, nodata=nodata, band_names=["b1", "b2", "b3"])
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MiB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


def run_pipeline(catalog: Path, out: Path) -> tuple[float, float]:
    cmd = [str(REPO / ".venv" / "bin" / "dipfill"), "run", "--stac", str(catalog), "--out", str(out),
           "--engine", "fillnodata"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"dipfill run failed ({proc.returncode}): {' '.join(cmd)}")
    return time.perf_counter() - start, peak


def main() -> None:
    scenes = [("crop 512x512x3", CROP)] + ([("full 2700x1000x3", FULL)] if FULL.exists() else [])
    if not FULL.exists():
        print(f"(largest scene skipped: {FULL} not found; it is team data in ../shared)")
    print(f"{'scene':<18} {'run s':>7} {'run peak MiB':>13} {'floor s':>8} {'floor MiB':>10} {'run/floor':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, tif in scenes:
            root = Path(tmp) / label.split()[0]
            catalog = write_catalog(root / "stac", [tif], suffix="_" + label.split()[0])
            wall, peak = run_pipeline(catalog, root / "out")
            floor = subprocess.run([sys.executable, "-c", FLOOR, str(tif), str(root / "floor.tif")],
                                   capture_output=True, text=True, check=True, cwd=REPO).stdout.split()
            f_s, f_mb = float(floor[0]), float(floor[1])
            print(f"{label:<18} {wall:>7.1f} {peak:>13.0f} {f_s:>8.2f} {f_mb:>10.0f} {wall / f_s:>9.1f}x", flush=True)
    print("run includes Python + Ray start-up (~3-8 s) and engine actors; the floor is one process.")


if __name__ == "__main__":
    main()
