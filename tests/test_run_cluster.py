"""`dipfill run` beyond the static catalog and the driver's own Ray: scenes found through a
real STAC API (stac-fastapi-pgstac, the `stac_api` fixture), and `--ray-address` joining a
Ray cluster that was already running (a `ray start --head` of this test's own, on
127.0.0.1, shut down again without `ray stop`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from dipfill.cli.main import main
from dipfill.stac.publish import absolute_item
from dipfill.pipeline.ray_executor import stop_ray
from tests._data import DATA
from tests._procs import alive, cmdline, descendants, listeners, loopback, start_time
from tests._ray import node_ports, ray_cli, start_node, stop_nodes, token_envs
from tests.stac_server import free_port, require

ARG25 = DATA / "arg25_menindee"
CATALOG = ARG25 / "stac" / "catalog.json"
COLLECTION = "ga-arg25-nbar"
JAN, FEB = "LS7_ETM_095_082_20100116_crop512", "LS7_ETM_095_082_20100201_crop512"
BBOX = ["142.0", "-32.5", "142.3", "-32.2"]  # around both scenes (Menindee)


@pytest.fixture(scope="module", autouse=True)
def _ray_session():
    yield
    stop_ray()  # the in-process Ray that `main(["run", ...])` started


# ---------------------------------------------------------------------------- helpers
def source_tif(scene: str) -> Path:
    return ARG25 / f"{scene.replace('_crop512', '')}_B3B4B5_crop512.tif"


def scene_dir(out: Path, scene: str) -> Path:
    return out / COLLECTION / f"{scene}-dipfill"


def assert_filled(out: Path, scene: str) -> dict:
    """The scene's filled COG keeps every observed pixel bit-exact and has more valid
    pixels than the source; returns its STAC item."""
    d = scene_dir(out, scene)
    with rasterio.open(source_tif(scene)) as a, rasterio.open(d / f"{scene}-dipfill_filled.vrt") as b:
        x, y = a.read(), b.read()
        assert b.crs == a.crs and b.transform == a.transform and y.dtype == x.dtype
        nodata = a.nodata
    valid = x != nodata
    assert np.array_equal(y[valid], x[valid]), f"{scene}: observed pixels changed"
    assert (y != nodata).sum() > valid.sum(), f"{scene}: no gap was filled"
    item = json.loads((d / f"{scene}-dipfill.json").read_text())
    assert item["properties"]["dipfill:source_item"] == scene
    return item


def run_json(capsys, *args: str) -> tuple[int, dict]:
    """`dipfill run ... --json` in this process: exit code and the run record it printed."""
    capsys.readouterr()
    rc = main(["run", *args, "--json"])
    return rc, json.loads(capsys.readouterr().out)


# ------------------------------------------------------------- 1. a real STAC API server
@pytest.fixture(scope="module")
def arg25_api(stac_api):
    """The committed static catalog of two real SLC-off scenes, loaded into the real API
    (Transactions): asset hrefs made absolute file paths (an API has no directory to
    resolve `./B3.vrt` against), the catalog's relative navigation links dropped. Removed
    again at the end so the session's other users of the server see what they loaded."""
    import httpx

    collection = json.loads((CATALOG.parent / COLLECTION / "collection.json").read_text())
    collection["links"] = []
    paths = sorted((CATALOG.parent / COLLECTION).glob("*/*.json"))
    items = []
    for path in paths:
        item = absolute_item(json.loads(path.read_text()), str(path.parent.resolve()))
        item["links"] = [ln for ln in item["links"] if ln.get("rel") != "collection"]
        assert all(Path(a["href"]).is_absolute() and Path(a["href"]).exists() for a in item["assets"].values())
        items.append(item)
    assert {i["id"] for i in items} == {JAN, FEB}
    with httpx.Client(base_url=stac_api.url, timeout=30) as http:
        r = http.post("/collections", json=collection)
        assert r.status_code in (200, 201), r.text
        try:
            for item in items:
                r = http.post(f"/collections/{COLLECTION}/items", json=item)
                assert r.status_code in (200, 201), r.text
            yield stac_api.url
        finally:
            for item in items:
                http.delete(f"/collections/{COLLECTION}/items/{item['id']}")
            http.delete(f"/collections/{COLLECTION}")


def test_run_over_a_stac_api_fills_every_matching_scene(arg25_api: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc, record = run_json(capsys, "--stac", arg25_api, "--collection", COLLECTION, "--bbox", *BBOX,
                          "--datetime", "2010-01-01/2010-02-28", "--engine", "fillnodata", "--out", str(out))
    assert rc == 0, record
    assert {s["id"]: s["status"] for s in record["scenes"]} == {JAN: "done", FEB: "done"}
    assert record["counts"] == {"pending": 0, "done": 2, "current": 0, "failed": 0}
    assert record["request"]["stac"] == arg25_api and record["request"]["collections"] == [COLLECTION]
    assert (out / "runs" / f"{record['run_id']}.json").is_file()
    for scene in (JAN, FEB):
        item = assert_filled(out, scene)
        # the source is the API's item, not the static catalog's file
        derived = [ln["href"] for ln in item["links"] if ln["rel"] == "derived_from"]
        assert derived == [f"{arg25_api}/collections/{COLLECTION}/items/{scene}"], derived
    catalog = json.loads((out / "catalog.json").read_text())
    assert any(ln["rel"] == "child" and COLLECTION in ln["href"] for ln in catalog["links"])


def test_run_over_a_stac_api_processes_only_what_the_search_matches(arg25_api: str, tmp_path: Path,
                                                                    capsys) -> None:
    out = tmp_path / "out"
    common = ["--stac", arg25_api, "--collection", COLLECTION, "--engine", "fillnodata", "--out", str(out)]
    # a datetime range that holds only the January scene
    rc, record = run_json(capsys, *common, "--bbox", *BBOX, "--datetime", "2010-01-10/2010-01-20")
    assert rc == 0, record
    assert [(s["id"], s["status"]) for s in record["scenes"]] == [(JAN, "done")]
    assert record["counts"] == {"pending": 0, "done": 1, "current": 0, "failed": 0}
    assert_filled(out, JAN)
    assert not scene_dir(out, FEB).exists()
    # a bbox away from both scenes: nothing to do, and nothing written but the record
    rc, record = run_json(capsys, *common, "--bbox", "150", "-30", "151", "-29", "--datetime", "2010")
    assert rc == 0 and record["scenes"] == []
    assert record["counts"] == {"pending": 0, "done": 0, "current": 0, "failed": 0}
    assert sorted(p.name for p in (out / COLLECTION).iterdir()) == [f"{JAN}-dipfill", "collection.json"]


def test_run_with_a_collection_the_api_lacks_is_one_line(arg25_api: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(["run", "--stac", arg25_api, "--collection", f"{COLLECTION}-typo", "--engine", "fillnodata",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert f"no collection '{COLLECTION}-typo'" in err and arg25_api in err
    assert not out.exists()


# ------------------------------------------------------ 2. --ray-address: an existing cluster
class _Watch:
    """What the head's and the driver's process trees held at any sample: processes (pid ->
    (start time, command line)) and TCP listeners."""

    def __init__(self) -> None:
        self.head: dict[int, tuple[int | None, str]] = {}
        self.driver: dict[int, tuple[int | None, str]] = {}
        self.listen: list[tuple[str, str]] = []

    def sample(self, head_pid: int, driver_pid: int | None = None) -> None:
        for root, seen in ((head_pid, self.head), (driver_pid, self.driver)):
            if root is None:
                continue
            for pid in descendants(root):
                start, cmd = start_time(pid), cmdline(pid)
                if start is not None and cmd:
                    seen[pid] = (start, cmd)
        self.listen += listeners(set(self.head) | set(self.driver))

    def named(self, tree: dict[int, tuple[int | None, str]], word: str) -> list[str]:
        return [cmd for _, cmd in tree.values() if word in cmd]


def test_ray_address_joins_an_existing_cluster_on_loopback(tmp_path: Path) -> None:
    cli = ray_cli()
    if cli is None:
        pytest.skip("the `ray` command line (Ray's CLI) is not installed")
    require("`ss` (iproute2)", [] if shutil.which("ss") else ["ss not found"])
    # A short temp dir: Ray's unix sockets live under it (108-byte path limit), and a
    # temp dir of its own keeps this cluster out of /tmp/ray, where other drivers
    # (ray.init() without an address) would find and join it.
    temp = Path(tempfile.mkdtemp(prefix="dfray-", dir="/tmp"))
    port = free_port()
    watch = _Watch()
    head = None
    left: dict = {}
    early_exit = None
    try:
        # Token authentication, with a token of this test's own (tests._ray.token_envs). The
        # driver gets only the token's path, not RAY_AUTH_MODE nor
        # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER: dipfill must switch token mode on and keep the
        # loopback address itself (Ray rewrites 127.0.0.1 to the machine's IP otherwise,
        # where this head is not). Agent and worker ports picked free (tests._ray.node_ports).
        driver_env, env = token_envs(temp)
        head = start_node(cli, ["--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                                "--include-dashboard=false", "--num-cpus=2", *node_ports()],
                          temp=temp, env=env, name="head", timeout=60)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the GCS accepts
        watch.sample(head.proc.pid)
        gcs_before = watch.named(watch.head, "gcs_server")
        assert len(gcs_before) == 1 and f"--gcs_server_port={port}" in gcs_before[0], gcs_before

        # the driver: a separate process (this one may run a local Ray of its own)
        out = tmp_path / "out"
        t0 = time.perf_counter()
        driver = subprocess.Popen(
            [sys.executable, "-m", "dipfill.cli.main", "run", "--stac", str(CATALOG), "--out", str(out),
             "--engine", "fillnodata", "--ray-address", f"127.0.0.1:{port}", "--json"],
            env=driver_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )
        try:
            while driver.poll() is None and time.perf_counter() - t0 < 120:
                watch.sample(head.proc.pid, driver.pid)
                time.sleep(0.1)
            stdout, stderr = driver.communicate(timeout=5)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
        seconds = time.perf_counter() - t0
        assert driver.returncode == 0, f"dipfill run exited {driver.returncode}:\n{stdout}\n{stderr[-5000:]}"
        print(f"driver on the existing cluster: {seconds:.1f} s")

        # outputs, as with a local Ray
        record = json.loads(stdout)
        assert record["counts"] == {"pending": 0, "done": 2, "current": 0, "failed": 0}, record
        assert (out / "runs" / f"{record['run_id']}.json").is_file()
        for scene in (JAN, FEB):
            assert_filled(out, scene)

        # it ran on that cluster: the engine actors were processes of the head's raylet,
        # and the driver started no Ray of its own (no GCS or raylet below it) ...
        actors = watch.named(watch.head, "EngineWorker")
        assert actors, f"no engine actor ran under the head: {sorted(c[:60] for _, c in watch.head.values())}"
        assert not watch.named(watch.driver, "gcs_server") and not watch.named(watch.driver, "raylet"), watch.driver
        assert not watch.named(watch.driver, "EngineWorker"), watch.driver
        # ... the same GCS throughout, which recorded the driver's job
        watch.sample(head.proc.pid)
        assert watch.named(watch.head, "gcs_server") == gcs_before
        gcs_logs = "".join(p.read_text(errors="replace") for p in temp.glob("session_*/logs/gcs_server*"))
        # ("Registering job. job_id=... driver_pid=N"; Ray < 2.5x: "Adding job, ..., driver pid = N")
        assert re.search(rf"driver[ _]pid\s*=\s*{driver.pid}\b", gcs_logs), "the head's GCS has no job of the " \
            "driver:\n" + "\n".join(ln for ln in gcs_logs.splitlines() if "job" in ln.lower())[-5000:]

        # every TCP listener of the cluster's and the driver's processes, sampled all
        # through the run, is on 127.0.0.1
        ports = {local.rsplit(":", 1)[1] for local, _ in watch.listen}
        assert str(port) in ports, watch.listen
        remote = sorted({ln for local, ln in watch.listen if not loopback(local)})
        assert not remote, "listening beyond 127.0.0.1:\n" + "\n".join(remote)
        assert any(f"pid={driver.pid}," in ln for _, ln in watch.listen), "the driver's listener was not seen"
    finally:
        # Shut this cluster down, and only this one (tests._ray.stop_nodes: SIGTERM to
        # `ray start --block`, then its process group and anything of its tree killed;
        # `ray stop` would kill every Ray on the machine).
        if head is not None:
            watch.sample(head.proc.pid)
            head.seen.update(watch.head)
            early_exit = head.proc.poll()  # None: it ran until now, as it should
            left = stop_nodes([head], grace=20)
        tree = {**watch.head, **watch.driver}
        left.update({pid: v for pid, v in watch.driver.items() if alive(pid, v[0])})
        for pid in left:  # the driver's: don't leave them behind for the next test, but fail below
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        still_listening = listeners(set(tree)) if tree else []
        shutil.rmtree(temp, ignore_errors=True)
    assert early_exit is None, f"ray start --block exited {early_exit} before it was stopped"
    # Ray's SIGTERM handler stops the node's processes, then exits 1
    assert head.proc.returncode in (0, 1, -signal.SIGTERM), f"ray start --block exited {head.proc.returncode}"
    assert not left, "left running after the head stopped: " + "; ".join(c[:120] for _, c in left.values())
    assert not still_listening, still_listening
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_unreachable_cluster_stops_the_run_once_without_blaming_scenes(tmp_path: Path) -> None:
    """Nothing listens at the address: one clear error, exit 1, a run record saying why,
    and no scene marked failed (ray.init alone would retry forever)."""
    out = tmp_path / "out"
    port = free_port()  # nothing listens on it
    env = {**os.environ, "DIPFILL_RAY_CONNECT_TIMEOUT": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dipfill.cli.main", "run", "--stac", str(CATALOG), "--out", str(out),
         "--engine", "fillnodata", "--ray-address", f"127.0.0.1:{port}"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"dipfill: error: cannot join the Ray cluster at 127.0.0.1:{port}" in proc.stderr
    assert time.perf_counter() - t0 < 60
    (record_path,) = (out / "runs").glob("*.json")
    record = json.loads(record_path.read_text())
    assert f"127.0.0.1:{port}" in record["error"] and record["state"] == "stopped"
    # the scenes it never got to are pending (dipfill status shows them so), none failed
    assert {s["status"] for s in record["scenes"]} == {"pending"} and len(record["scenes"]) == 2
    assert record["counts"] == {"pending": 2, "done": 0, "current": 0, "failed": 0}


def test_engine_pool_grows_when_a_node_joins(tmp_path: Path) -> None:
    """A second node joins a one-CPU cluster during a run: the pool adds an actor for it and
    every batch is still fitted exactly once into the store."""
    import ray
    from ray.cluster_utils import Cluster

    from dipfill.pipeline.plan import patch_seed, plan_from_mask
    from dipfill.specs import FillOptions
    from dipfill.pipeline.patchstore import PatchStore
    from dipfill.pipeline.executor import FitTask
    from dipfill.pipeline.ray_executor import EnginePool
    from dipfill.raster.scene import open_scene
    from dipfill.raster.scene_mask import scene_mask

    stop_ray()  # this test's own two-node cluster, not the module's local Ray
    cluster = Cluster(initialize_head=True, connect=True,
                      head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    try:
        item_path = next((CATALOG.parent / COLLECTION).glob(f"{JAN}/*.json"))
        item = json.loads(item_path.read_text())
        item["links"] = [{"rel": "self", "href": str(item_path)}]
        source = open_scene(item)
        mask = scene_mask(source)
        opts = FillOptions(engine="fillnodata", patch=64, overlap=8, batch_size=2)
        plan = plan_from_mask(mask.state, mask.nvalid, mask.bands, opts, with_fallback=False)
        store = PatchStore.open(tmp_path / "p.zarr", len(plan.windows), 3, opts.patch, "h")
        index = {w.id: i for i, w in enumerate(plan.windows)}
        tasks = [FitTask("s", source, store.path, b.index, False, b.windows,
                         tuple(index[w.id] for w in b.windows), tuple(patch_seed(0, w) for w in b.windows))
                 for b in plan.batches]
        assert len(tasks) > 20

        pool = EnginePool("fillnodata", {}, "none", grow_every=0.2)
        assert len(pool.actors) == 1
        seen: list[int] = []

        def on_done(task, _):
            seen.append(task.batch_index)
            if len(seen) == 3:  # mid-run: a node with one more CPU joins
                cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
                cluster.wait_for_nodes()

        pool.run(tasks, on_done)
        assert len(pool.actors) == 2
        assert sorted(seen) == [t.batch_index for t in tasks]
        assert store.done().all()
        found = listeners(descendants(os.getpid()))  # both nodes are this process's children
        assert found and all(loopback(local) for local, _ in found), found
        pool.close()
    finally:
        ray.shutdown()
        cluster.shutdown()
