"""make bench (scale): `dipfill run` wall time and memory vs the I/O floor, at three scene sizes.

Scenes (all real ARG25 Landsat-7 SLC-off pixels):

* ``crop``  the committed 512x512x3 crop;
* ``full``  the largest real scene in ../shared/data (2700x1000x3, 2010-01-16);
* ``tiled`` that scene tiled 2x3 into one 5400x3000x3 raster: real pixels, a larger extent
  than any scene we have, to show how memory grows with the scene.

``full`` and ``tiled`` need ../shared (skipped without it).

Each runs ``dipfill run --engine fillnodata`` over a one-item static catalog, twice:

* **cold**: the CLI starts its own local Ray (what a laptop user sees);
* **warm**: ``--ray-address`` to a Ray head started once beforehand on 127.0.0.1 (how a
  cluster runs it: ``ray job submit`` to a long-lived cluster).

Reported: the process's wall time, the scene's own time from the run record (after the
engine actors are up) with its stages, and peak resident memory sampled every 0.1 s
(the driver's process tree; warm also the head's tree above its idle level, i.e. the
engine actors). The I/O floor is one process reading the scene with rasterio and writing
it as a COG with the same writer.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from make_demo_catalog import write_catalog  # noqa: E402

FULL = (REPO.parent / "shared" / "data" / "landsat7_slcoff" / "arg25_p095r082_menindee_2010"
        / "LS7_ETM_095_082_20100116_B3B4B5.tif")
CROP = REPO / "data" / "arg25_menindee" / "LS7_ETM_095_082_20100116_B3B4B5_crop512.tif"
BIN = REPO / ".venv" / "bin"
FLOOR = """
import sys, time, rasterio, resource
from dipfill.raster.read import Grid
from dipfill.raster.write import write_cog
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


def tiled_scene(src: Path, dst: Path, ny: int = 2, nx: int = 3) -> Path:
    """``src`` repeated ``ny`` x ``nx`` times on one grid (same origin and pixel size)."""
    with rasterio.open(src) as ds:
        data, profile = ds.read(), ds.profile
    big = np.tile(data, (1, ny, nx))
    profile.update(height=big.shape[1], width=big.shape[2], tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", predictor=2)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(big)
    return dst


class Head:
    """A Ray head on 127.0.0.1 (``ray start --head --block``) in its own session, stopped by
    signalling that session: `ray stop` would stop every Ray on the machine."""

    def __init__(self, temp: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        log = open(temp / "head.log", "wb")
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}", "--block"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in (temp / "head.log").read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"ray start failed:\n{(temp / 'head.log').read_text()}")
            time.sleep(0.2)
        time.sleep(2)
        self.idle_mb = tree_rss_mb(self.proc.pid)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)


def run_pipeline(catalog: Path, out: Path, head: Head | None) -> dict:
    cmd = [str(BIN / "dipfill"), "run", "--stac", str(catalog), "--out", str(out), "--engine", "fillnodata",
           "--json"] + (["--ray-address", head.address] if head else [])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    driver, actors = 0.0, 0.0
    while proc.poll() is None:
        if time.perf_counter() - start > 900:
            proc.kill()
            raise SystemExit(f"dipfill run took over 15 min: {' '.join(cmd)}")
        driver = max(driver, tree_rss_mb(proc.pid))
        if head:
            actors = max(actors, tree_rss_mb(head.proc.pid) - head.idle_mb)
        time.sleep(0.1)
    stdout = proc.stdout.read() if proc.stdout else ""
    if proc.returncode:
        raise SystemExit(f"dipfill run failed ({proc.returncode}): {' '.join(cmd)}")
    scene = json.loads(stdout)["scenes"][0]
    return {"wall": time.perf_counter() - start, "scene": scene["seconds"], "timings": scene["timings"],
            "driver_mb": driver, "actors_mb": actors, "driver_stages": scene["driver_peak_mib"]}


def main() -> None:
    print(__doc__.split("\n\n")[0])
    with tempfile.TemporaryDirectory(prefix="dfbench-", dir="/tmp") as tmp:
        tmp = Path(tmp)
        scenes = [("crop", "512x512", CROP)]
        if FULL.exists():
            scenes += [("full", "2700x1000", FULL), ("tiled", "5400x3000", tiled_scene(FULL, tmp / FULL.name.replace(".tif", "_tiled2x3.tif")))]
        else:
            print(f"(full and tiled scenes skipped: {FULL} not found; it is team data in ../shared)")
        head = Head(Path(tempfile.mkdtemp(prefix="dfhead-", dir="/tmp")))
        rows = []
        try:
            for label, size, tif in scenes:
                root = tmp / label
                catalog = write_catalog(root / "stac", [tif], suffix="_" + label)
                cold = run_pipeline(catalog, root / "cold", None)
                warm = run_pipeline(catalog, root / "warm", head)
                floor = subprocess.run([sys.executable, "-c", FLOOR, str(tif), str(root / "floor.tif")],
                                       capture_output=True, text=True, check=True, cwd=REPO).stdout.split()
                rows.append((label, size, cold, warm, float(floor[0]), float(floor[1])))
                print(f"  {label}: floor {float(floor[0]):.2f} s; cold {cold['wall']:.1f} s; warm {warm['wall']:.1f} s, "
                      f"scene {warm['scene']:.2f} s {warm['timings']}", flush=True)
        finally:
            head.stop()
    print(f"\n{'scene':<6} {'size':>9} | {'floor s':>7} {'MiB':>5} | {'cold s':>6} {'MiB':>5} | "
          f"{'warm s':>6} {'scene s':>7} {'x floor':>7} | {'driver MiB':>10} {'actors MiB':>10}")
    for label, size, cold, warm, f_s, f_mb in rows:
        print(f"{label:<6} {size:>9} | {f_s:>7.2f} {f_mb:>5.0f} | {cold['wall']:>6.1f} {cold['driver_mb']:>5.0f} | "
              f"{warm['wall']:>6.1f} {warm['scene']:>7.2f} {warm['scene'] / f_s:>6.1f}x | "
              f"{warm['driver_mb']:>10.0f} {warm['actors_mb']:>10.0f}")
    print("\nstages of the warm scene: seconds, and the driver's peak RSS (MiB) at the end of each")
    for label, _, _, warm, _, _ in rows:
        print(f"  {label:<6} " + ", ".join(f"{k} {v:.2f} s / {warm['driver_stages'][k]:.0f}"
                                          for k, v in warm["timings"].items()))
    print("\ncold = CLI with its own local Ray (process tree peak); warm = --ray-address to a running head: "
          "'scene s' is the scene's work after the engine actors are up, 'actors MiB' the head's tree above idle.")


if __name__ == "__main__":
    main()
