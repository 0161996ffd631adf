"""Object storage for dipfill's outputs: obstore or s3fs, and what S3 output costs a run.

Against a real S3 API on 127.0.0.1 (moto's server mode, as in the tests; a local server
measures the client's own cost per request, not a WAN), on the demo's data:

1. put + get of one of the demo's output COGs (a 512x512 3-band int16 crop, COG-encoded
   first), obstore vs s3fs, median of ``--repeat`` rounds;
2. a Zarr v3 write and read back of a run's mosaic shape (3 x 512 x 512 int16 in 128²
   chunks: 48 chunks, the many-small-objects case of the patch store and mosaic) through
   ``zarr.storage.ObjectStore`` (obstore) vs ``zarr.storage.FsspecStore`` (s3fs);
3. ``dipfill run`` over the demo catalog (both scenes) with ``--out`` a local directory vs
   ``s3://``: fillnodata (and, with ``--dip``, the demo's DIP configuration with
   ``--dip-steps`` steps), on local Ray, Ray started before the clock; local, s3, s3,
   local, the faster of each kept.

    .venv/bin/python scripts/bench_store.py [--repeat 5] [--dip] [--dip-steps 250]

Needs the test extra (moto[server], boto3) and s3fs (bench extra). Prints a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests._s3 import s3_server  # noqa: E402  (the tests' moto server on 127.0.0.1)

CATALOG = REPO / "data" / "arg25_menindee" / "stac" / "catalog.json"
COG_SOURCE = REPO / "data" / "arg25_menindee" / "LS7_ETM_095_082_20100116_B3B4B5_crop512.tif"
DEMO_DIP = {"engine": "dip", "preset": "mcpn-core", "dip": ["reg_noise_std=0.03"], "strategy": "loop",
            "patch": 256, "overlap": 32, "seed": 0}


def median_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def demo_cog(folder: Path) -> Path:
    """The demo crop as a COG (what a run writes per band, here all three bands in one)."""
    import rasterio

    from dipfill.raster.read import Grid
    from dipfill.raster.write import write_cog

    with rasterio.open(COG_SOURCE) as src:
        data, grid = src.read(), Grid(crs=src.crs, transform=src.transform, width=src.width, height=src.height)
        nodata = src.nodata
    path = folder / "demo.tif"
    write_cog(path, data, grid, nodata=nodata)
    return path


def bench_clients(bucket: str, cog: Path, repeat: int) -> list[tuple[str, float, float]]:
    import obstore
    import s3fs
    import zarr
    from zarr.storage import FsspecStore, ObjectStore

    from dipfill.storage.objects import _bucket_store

    body = cog.read_bytes()
    ob = _bucket_store(f"s3://{bucket}")
    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"], key=os.environ["AWS_ACCESS_KEY_ID"],
                           secret=os.environ["AWS_SECRET_ACCESS_KEY"], asynchronous=False)
    rows = []
    rows.append(("COG put (%d KiB)" % (len(body) // 1024),
                 median_s(lambda: obstore.put(ob, "bench/ob.tif", cog), repeat),
                 median_s(lambda: fs.put_file(str(cog), f"{bucket}/bench/fs.tif"), repeat)))
    rows.append(("COG get",
                 median_s(lambda: bytes(obstore.get(ob, "bench/ob.tif").bytes()), repeat),
                 median_s(lambda: fs.cat_file(f"{bucket}/bench/fs.tif"), repeat)))
    data = np.random.default_rng(0).integers(0, 10000, (3, 512, 512), dtype=np.int16)

    def zarr_roundtrip(store) -> None:
        g = zarr.open_group(store, mode="w")
        a = g.create_array("bands", shape=data.shape, chunks=(1, 128, 128), dtype=data.dtype)
        a[:] = data
        assert np.array_equal(zarr.open_group(store, mode="r")["bands"][...], data)

    from obstore.store import from_url

    ob_z = from_url(f"s3://{bucket}/bench/ob.zarr", endpoint=os.environ["AWS_ENDPOINT_URL"],
                    client_options={"allow_http": True}, region=os.environ.get("AWS_REGION", "us-east-1"))
    fs_async = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"], key=os.environ["AWS_ACCESS_KEY_ID"],
                                 secret=os.environ["AWS_SECRET_ACCESS_KEY"], asynchronous=True)
    rows.append(("Zarr write+read, 48 chunks",
                 median_s(lambda: zarr_roundtrip(ObjectStore(ob_z)), repeat),
                 median_s(lambda: zarr_roundtrip(FsspecStore(fs_async, path=f"{bucket}/bench/fs.zarr")), repeat)))
    return rows


def bench_runs(bucket: str, dip: bool, dip_steps: int, rounds: int = 2) -> list[tuple[str, float, float]]:
    from dipfill.cli.run import build_request
    from dipfill.pipeline import run as run_mod
    from dipfill.pipeline.ray_executor import start_ray, stop_ray

    start_ray(None, num_cpus=2)  # Ray's start-up is the same for both: outside the clock
    configs = [("fillnodata", {"engine": "fillnodata"})]
    if dip:
        configs.append((f"demo DIP ({dip_steps} steps)", {**DEMO_DIP, "steps": dip_steps}))
    rows = []
    try:
        for name, values in configs:
            # a first, unmeasured run warms the engine actors of this configuration
            with tempfile.TemporaryDirectory() as warm:
                run_mod.run(build_request({"stac": str(CATALOG), "out": warm, **values,
                                           **({"steps": 1} if name != "fillnodata" else {})}), num_cpus=2)
            times: dict[str, list[float]] = {"local": [], "s3": []}
            # local, s3, s3, local: a machine that gets busier or quieter meanwhile (other
            # jobs) weighs on both alike; the faster of each pair is kept
            for n, kind in enumerate(("local", "s3", "s3", "local")[: 4 if rounds > 1 else 2]):
                with tempfile.TemporaryDirectory() as local:
                    out = local if kind == "local" else f"s3://{bucket}/run-{name.split()[0]}-{n}"
                    t0 = time.perf_counter()
                    summary = run_mod.run(build_request({"stac": str(CATALOG), "out": out, **values}), num_cpus=2)
                    times[kind].append(time.perf_counter() - t0)
                    assert all(s.status == "done" for s in summary.scenes), summary.scenes
                    print(f"  {name}: {kind} {times[kind][-1]:.2f} s", flush=True)
            rows.append((f"dipfill run, 2 scenes, {name}", min(times["local"]), min(times["s3"])))
    finally:
        stop_ray()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--dip", action="store_true", help="also the demo's DIP configuration (minutes)")
    p.add_argument("--dip-steps", type=int, default=250)
    p.add_argument("--skip-runs", action="store_true")
    p.add_argument("--rounds", type=int, default=2, help="2: local, s3, s3, local (the faster of each kept); 1: local, s3")
    args = p.parse_args()
    server = s3_server()
    s3 = next(server)
    try:
        bucket = s3.bucket("bench")[len("s3://"):]
        with tempfile.TemporaryDirectory() as tmp:
            cog = demo_cog(Path(tmp))
            clients = bench_clients(bucket, cog, args.repeat)
        print(f"{'operation (moto on 127.0.0.1, median of %d)' % args.repeat:<44} {'obstore s':>10} {'s3fs s':>10}")
        for name, a, b in clients:
            print(f"{name:<44} {a:>10.4f} {b:>10.4f}")
        if not args.skip_runs:
            runs = bench_runs(bucket, args.dip, args.dip_steps, args.rounds)
            print(f"\n{'run (local Ray, 2 CPUs)':<44} {'local s':>10} {'s3 s':>10} {'overhead':>10}")
            for name, a, b in runs:
                print(f"{name:<44} {a:>10.2f} {b:>10.2f} {100 * (b - a) / a:>9.0f}%")
    finally:
        next(server, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
