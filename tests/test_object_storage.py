"""`dipfill run --out s3://bucket/prefix` (and `dipfill fill`) against a real S3 API on
127.0.0.1: moto's server mode, started in this module (the ``s3`` fixture of conftest).

One local Ray for the module (started by the first run, stopped at the end; its workers
inherit the AWS variables the fixture set, as a cluster's nodes take theirs from their
own environment). Covered: everything a run writes lands in the bucket (COGs, Zarr mosaic,
items with s3:// hrefs, collection/catalog, run record), observed pixels bit-exact, resume
after a killed driver from the patch store on S3, an idempotent rerun (no engine, no byte
changed), two concurrent runs into one prefix losing no item, leases taken over after their
holder died, odc-stac reading an output item over S3, and no credential in anything written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio

from dipfill.cli.main import main
from dipfill.cli.run import build_request
from dipfill.pipeline import run as run_mod
from dipfill.pipeline.ray_executor import stop_ray
from dipfill import storage
from dipfill.storage.owners import host
from tests._data import ARG25_JAN, DATA, REPO
from tests._s3 import SECRET
from tests._schemas import validation_errors

CATALOG = DATA / "arg25_menindee" / "stac" / "catalog.json"
SCENES = {"LS7_ETM_095_082_20100116_crop512", "LS7_ETM_095_082_20100201_crop512"}
COLLECTION = "ga-arg25-nbar"
BUCKET = "dipfill-out"


@pytest.fixture(scope="module", autouse=True)
def _ray_session(s3):
    """The AWS variables are set (``s3``) before this module's Ray starts, so its workers have them."""
    yield
    stop_ray()


def request(out: str, **values):
    return build_request({"stac": str(CATALOG), "out": out, **values})


def objects(s3, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` of the test bucket, by key."""
    client = s3.client()
    return {k: client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in s3.keys(BUCKET, prefix)}


def item_key(prefix: str, scene: str) -> str:
    return f"{prefix}/{COLLECTION}/{scene}-dipfill/{scene}-dipfill.json"


@pytest.fixture(scope="module")
def first_run(s3):
    """`dipfill run --stac <demo> --out s3://dipfill-out/run --engine fillnodata --json`, once."""
    s3.bucket(BUCKET)
    t0 = time.perf_counter()
    code = main(["run", "--stac", str(CATALOG), "--out", f"s3://{BUCKET}/run", "--engine", "fillnodata", "--json"])
    assert code == 0
    return {"seconds": time.perf_counter() - t0, "objects": objects(s3, "run/")}


def test_run_writes_every_output_to_the_bucket(s3, first_run, capsys) -> None:
    keys = set(first_run["objects"])
    assert f"run/catalog.json" in keys and f"run/{COLLECTION}/collection.json" in keys
    runs = [k for k in keys if k.startswith("run/runs/") and k.endswith(".json")]
    assert len(runs) == 1
    record = json.loads(first_run["objects"][runs[0]])
    assert record["state"] == "finished" and record["counts"]["done"] == 2
    assert all(s["output"].startswith(f"s3://{BUCKET}/run/") for s in record["scenes"])
    # no patch store, no lease, no temporary left behind
    assert not [k for k in keys if "patches.zarr" in k or ".lock" in k or ".tmp-" in k or "write-check" in k
                or ".dipfill-pixels" in k]  # the local pixel copy is never made for object storage
    collection = json.loads(first_run["objects"][f"run/{COLLECTION}/collection.json"])
    assert collection["dipfill:items"] == 2 and validation_errors(collection) == []
    for scene in SCENES:
        item = json.loads(first_run["objects"][item_key("run", scene)])
        assert validation_errors(item) == []
        base = f"s3://{BUCKET}/{item_key('run', scene).rpartition('/')[0]}/"
        assert all(a["href"].startswith(base) for a in item["assets"].values()), item["assets"]
        mosaic = item["assets"]["mosaic"]["href"]
        assert f"{mosaic[len(f's3://{BUCKET}/'):]}/zarr.json" in keys
        # observed pixels bit-exact: each band's COG read back over S3 (GDAL /vsis3/)
        src = next((DATA / "arg25_menindee").glob(f"{scene.replace('_crop512', '')}_B3B4B5_crop512.tif"))
        with rasterio.open(src) as a:
            x = a.read()
        with rasterio.Env(**s3.rasterio_env()):
            for b, key in enumerate(("B3", "B4", "B5")):
                with rasterio.open(item["assets"][key]["href"]) as f:
                    y = f.read(1)
                    assert f.crs == a.crs and f.transform == a.transform
                valid = x[b] != -999
                assert np.array_equal(y[valid], x[b][valid])
                assert (y != -999).mean() > valid.mean()  # gaps filled
    # what the run printed (--json: its record) and wrote holds no credential
    assert all(SECRET.encode() not in body for body in first_run["objects"].values())
    assert SECRET not in capsys.readouterr().out


def test_mosaic_on_s3_opens_with_xarray(s3, first_run) -> None:
    import xarray as xr

    scene = sorted(SCENES)[0]
    item = json.loads(first_run["objects"][item_key("run", scene)])
    ds = xr.open_zarr(storage.zarr_store(item["assets"]["mosaic"]["href"], read_only=True))
    with rasterio.Env(**s3.rasterio_env()), rasterio.open(item["assets"]["B4"]["href"]) as f:
        assert np.array_equal(ds["bands"].sel(band=2).values, f.read(1))


def test_odc_stac_reads_an_output_item_over_s3(s3, first_run) -> None:
    import odc.stac
    import pystac

    scene = sorted(SCENES)[1]
    item = pystac.Item.from_dict(json.loads(first_run["objects"][item_key("run", scene)]))
    with rasterio.Env(**s3.rasterio_env()):
        ds = odc.stac.load([item], bands=["B3", "B4", "B5"], chunks=None)
        for key in ("B3", "B4", "B5"):
            with rasterio.open(item.assets[key].href) as f:
                assert np.array_equal(ds[key].isel(time=0).values, f.read(1))


def test_rerun_skips_current_scenes_and_changes_no_byte(s3, first_run, monkeypatch) -> None:
    def no_engine(*a, **k):
        raise AssertionError("engine work on a current scene")

    monkeypatch.setattr("dipfill.pipeline.ray_executor.engine_pool", no_engine)
    again = run_mod.run(request(f"s3://{BUCKET}/run", engine="fillnodata"))
    assert sorted(s.status for s in again.scenes) == ["current", "current"]
    after = objects(s3, "run/")
    new = {k for k in after if k not in first_run["objects"]}
    assert all(k.startswith("run/runs/") for k in new) and len(new) == 1  # only the new run record
    assert {k: v for k, v in after.items() if k not in new} == first_run["objects"]


def test_resume_after_a_killed_driver_reuses_the_patch_store_on_s3(s3, first_run) -> None:
    out = f"s3://{BUCKET}/resumed"
    with pytest.raises(run_mod.RunInterrupted):
        run_mod.run(request(out, engine="fillnodata", batch_size=1), stop_after_batches=2)
    left = s3.keys(BUCKET, "resumed/")
    assert any("/patches.zarr/done/" in k for k in left)  # the checkpoint is in the bucket
    assert not [k for k in left if k.endswith(".lock")]  # the lease went with the driver
    again = run_mod.run(request(out, engine="fillnodata", batch_size=1))
    assert all(s.status == "done" for s in again.scenes)
    assert sum(s.patches_resumed for s in again.scenes) >= 2
    after = objects(s3, "resumed/")
    assert not [k for k in after if "patches.zarr" in k]
    for scene in SCENES:  # the same pixels as the uninterrupted run
        for band in ("B3", "B4", "B5"):
            name = f"{COLLECTION}/{scene}-dipfill/{scene}-dipfill_{band}.tif"
            assert after[f"resumed/{name}"] == first_run["objects"][f"run/{name}"]


def test_a_driver_killed_with_sigkill_leaves_its_lease_and_patches_and_a_rerun_resumes(s3, first_run) -> None:
    """A real kill: the driver process (LocalPool, one patch per batch) is SIGKILLed once its
    patch store on S3 holds two done flags. Its scene lease stays behind (no code ran to
    release it); the rerun on this host takes it over at once (the holder's process is gone),
    resumes from the patch store and writes the same pixels as the uninterrupted run."""
    out, scene = f"s3://{BUCKET}/killed", "LS7_ETM_095_082_20100116_crop512"
    values = {"engine": "fillnodata", "batch_size": 1, "datetime": "2010-01-01/2010-01-31"}
    code = ("import sys, json; from dipfill.cli.run import build_request; from dipfill.pipeline import run; "
            "from dipfill.pipeline.executor import LocalPool; "
            "r = build_request({'stac': sys.argv[1], 'out': sys.argv[2], **json.loads(sys.argv[3])}); "
            "run.run(r, pool=LocalPool('fillnodata', {}, r.options.fallback))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(CATALOG), out, json.dumps(values)], cwd=REPO,
                            env={**os.environ, **s3.env(), "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len([k for k in s3.keys(BUCKET, "killed/") if "/patches.zarr/done/c." in k]) < 2:
            assert proc.poll() is None, f"the driver ended before it was killed: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no patch reached the bucket in 120 s"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.communicate()
    left = s3.keys(BUCKET, "killed/")
    assert any(k.endswith("/.dipfill.lock") for k in left)  # SIGKILL: nothing released it
    assert not any(k.endswith(f"{scene}-dipfill.json") for k in left)  # no item: the scene is not done
    t0 = time.perf_counter()
    again = run_mod.run(request(out, **values))
    assert time.perf_counter() - t0 < 60  # the lease was not waited out (120 s)
    (status,) = again.scenes
    assert status.status == "done" and status.patches_resumed >= 2
    after = objects(s3, "killed/")
    assert not [k for k in after if "patches.zarr" in k or k.endswith(".lock")]
    for band in ("B3", "B4", "B5"):
        name = f"{COLLECTION}/{scene}-dipfill/{scene}-dipfill_{band}.tif"
        assert after[f"killed/{name}"] == first_run["objects"][f"run/{name}"]


def test_two_concurrent_runs_into_one_prefix_lose_no_item(s3) -> None:
    """Two driver processes at once (no Ray: LocalPool), one scene each: both items and both
    collection links survive the shared collection.json (updated under the catalog lease)."""
    s3.bucket(BUCKET)
    code = ("import sys; from dipfill.cli.run import build_request; from dipfill.pipeline import run; "
            "from dipfill.pipeline.executor import LocalPool; "
            "r = build_request({'stac': sys.argv[1], 'out': sys.argv[2], 'engine': 'fillnodata', 'datetime': sys.argv[3]}); "
            "s = run.run(r, pool=LocalPool('fillnodata', {}, r.options.fallback)); "
            "sys.exit(0 if all(x.status == 'done' for x in s.scenes) else 1)")
    env = {**os.environ, **s3.env(), "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(CATALOG), f"s3://{BUCKET}/shared", when],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for when in ("2010-01-01/2010-01-31", "2010-02-01/2010-02-28")]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    collection = storage.read_json(f"s3://{BUCKET}/shared/{COLLECTION}/collection.json")
    links = sorted(ln["href"] for ln in collection["links"] if ln["rel"] == "item")
    assert links == sorted(f"./{s}-dipfill/{s}-dipfill.json" for s in SCENES)
    for scene in SCENES:
        assert storage.exists(f"s3://{BUCKET}/{item_key('shared', scene)}")


def test_a_dead_holders_lease_is_taken_over_once_expired(s3, monkeypatch) -> None:
    s3.bucket(BUCKET)
    monkeypatch.setenv(storage.LEASE_ENV, "2")
    lock = storage.as_path(f"s3://{BUCKET}/leases/scene/.dipfill.lock")
    # a holder that was killed: its lease stays until it expires
    lock.write_bytes(json.dumps({"owner": "deadhost 4242 0", "expires": time.time() + 1.5}).encode())
    waited: list[str] = []
    t0 = time.perf_counter()
    with storage.exclusive(lock, on_wait=waited.append):
        took = time.perf_counter() - t0
        assert json.loads(lock.read_bytes())["owner"] != "deadhost 4242 0"
    assert waited == ["deadhost 4242 0"] and 1.0 < took < 10
    assert not lock.exists()  # released
    # a holder on this host whose process is gone (a driver killed here): taken over at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_bytes(json.dumps({"owner": f"{host()} {dead.stdout.strip()} 0",
                                 "expires": time.time() + 60}).encode())
    t0 = time.perf_counter()
    with storage.exclusive(lock):
        assert time.perf_counter() - t0 < 5


def test_fill_writes_its_product_to_the_bucket(s3) -> None:
    s3.bucket(BUCKET)
    code = main(["fill", str(ARG25_JAN), "--out", f"s3://{BUCKET}/fill", "--engine", "fillnodata"])
    assert code == 0
    keys = s3.keys(BUCKET, "fill/")
    item = storage.read_json(next(f"s3://{BUCKET}/{k}" for k in keys if k.endswith("-dipfill.json")))
    assert validation_errors(item) == []
    assert all(a["href"].startswith(f"s3://{BUCKET}/fill/") for a in item["assets"].values())
    with rasterio.open(ARG25_JAN) as a:
        x = a.read()
    with rasterio.Env(**s3.rasterio_env()), rasterio.open(item["assets"]["filled"]["href"]) as f:
        y = f.read()
    assert np.array_equal(y[x != -999], x[x != -999])


def test_an_unwritable_bucket_is_one_line(s3, capsys) -> None:
    code = main(["run", "--stac", str(CATALOG), "--out", "s3://no-such-bucket/x", "--engine", "fillnodata"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "s3://no-such-bucket/x" in err[0] and "bucket does not exist" in err[0]
    assert "Traceback" not in err[0] and SECRET not in err[0]
