"""`dipfill run` as a Ray Job on a two-node cluster of this module's own.

One cluster for the module (a Ray head with the dashboard costs the most here): a head
(`ray start --head`, dashboard and Jobs API on 127.0.0.1) and a second node (`ray start
--address`), each with one CPU, a temp dir of its own and a private token, everything on
127.0.0.1, stopped by process tree at the end (never `ray stop`, which would stop every
Ray on the machine). The job is submitted with `ray job submit --working-dir .` from the
repository root, exactly as README.md documents it (tests._ray.JOB_COMMAND): once on the
demo catalog into a local --out, once with the catalog read over HTTP from a bucket and
--out s3://... (moto's S3 API on 127.0.0.1, the ``s3`` fixture), the nodes sharing no
path. Both runs' engine actors must be found on both nodes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests._data import REPO
from tests._procs import listeners, loopback
from tests._ray import (JOB_COMMAND, JOIN_NODE, RayNode, node_ports, ray_cli, spawn_node, stop_nodes, token_envs,
                        wait_node)
from tests.stac_server import free_port
from tests.test_run_cluster import FEB, JAN, assert_filled

pytestmark = pytest.mark.skipif(ray_cli() is None, reason="the `ray` command line (Ray's CLI) is not installed")


class Cluster:
    """The module's two nodes and how to reach them."""

    def __init__(self) -> None:
        self.nodes: list[RayNode] = []
        self.temps: list[Path] = []
        self.env: dict[str, str] = {}
        self.port = self.dashboard = 0

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.dashboard}"

    def get(self, path: str, *, token: bool = True) -> object:
        """GET ``path`` of the dashboard's HTTP API (Jobs, State) with the cluster's token:
        the JSON it answers. What the `ray job` / `ray list` commands ask, without paying
        their seconds of start-up per call."""
        headers = {"Authorization": f"Bearer {Path(self.env['RAY_AUTH_TOKEN_PATH']).read_text().strip()}"} \
            if token else {}
        with urllib.request.urlopen(urllib.request.Request(self.api + path, headers=headers), timeout=30) as r:
            return json.loads(r.read())

    def listed(self, what: str, **filters: str) -> list[dict]:
        """The State API's records of ``what`` (`ray list WHAT --detail --filter k=v`)."""
        query = {"detail": "1", "limit": "10000"}
        for k, v in filters.items():
            query.update(filter_keys=k, filter_predicates="=", filter_values=v)  # one filter at most
        doc = self.get(f"/api/v0/{what}?{urllib.parse.urlencode(query)}")
        assert doc["result"], doc
        return doc["data"]["result"]["result"]

    def job(self, submission_id: str) -> dict:
        """The Jobs API's record of a job (`ray job status`)."""
        return self.get(f"/api/jobs/{submission_id}")

    def sample(self) -> None:
        for node in self.nodes:
            node.sample()


@pytest.fixture(scope="module")
def cluster(request):
    """A Ray head with the dashboard (Jobs API) and a second node, one CPU each, on 127.0.0.1.

    Two nodes on one machine: each gets its own --temp-dir (Ray allows one per node; short,
    under /tmp, for Ray's unix sockets' 108-byte limit, and away from /tmp/ray, where
    other drivers' ray.init() would find and join it) and its own agent ports (Ray's
    defaults would collide). The nodes' PATH starts with this Python's bin directory, where
    `dipfill` is installed, as in the image the deploy/ manifests use. With moto installed,
    the module's S3 server (the ``s3`` fixture) runs beside it and both nodes get its AWS
    variables in their environment, as deploy/'s pods get theirs from a Secret: a job's
    driver and actors inherit them, and nothing secret travels with the job."""
    c = Cluster()
    t0 = time.perf_counter()
    try:
        for prefix in ("dfjh-", "dfjw-"):
            c.temps.append(Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp")))
        _, env = token_envs(c.temps[0])
        if importlib.util.find_spec("moto") is not None:
            env.update(request.getfixturevalue("s3").env())
        env["PATH"] = f"{Path(ray_cli()).parent}{os.pathsep}{env.get('PATH', '')}"
        c.env = env
        c.port, c.dashboard = free_port(), free_port()
        head = spawn_node(ray_cli(), [
            "--head", "--node-ip-address=127.0.0.1", f"--port={c.port}", "--num-cpus=1",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={c.dashboard}", "--include-dashboard=true",
            f"--ray-client-server-port={free_port()}", *node_ports()], temp=c.temps[0], env=env, name="head")
        c.nodes.append(head)
        # The second node joins as soon as the GCS accepts, while the head's dashboard starts.
        # `ray start --address` through JOIN_NODE: plain `ray start` refuses to join while
        # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 and moves off 127.0.0.1 with 1 (tests/_ray_node.py).
        wait_node(head, port=c.port)
        c.nodes.append(spawn_node(JOIN_NODE, [
            f"--address=127.0.0.1:{c.port}", "--node-ip-address=127.0.0.1", "--num-cpus=1", *node_ports()],
            temp=c.temps[1], env=env, name="worker"))
        for node in c.nodes:
            wait_node(node)
        # the Jobs API answers, and both nodes are in the cluster before anything is submitted
        deadline = time.monotonic() + 60
        while True:
            try:
                if [n["state"] for n in c.listed("nodes")] == ["ALIVE", "ALIVE"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no two nodes at {c.api}:\n{c.nodes[0].log.read_text()}"
            time.sleep(0.5)
        # the Jobs API is not open to whoever reaches the port: it wants the cluster's token
        with pytest.raises(urllib.error.HTTPError) as denied:
            c.get("/api/jobs/", token=False)
        assert denied.value.code in (401, 403), denied.value
        print(f"two-node cluster up in {time.perf_counter() - t0:.1f} s")
        yield c
    finally:
        left = stop_nodes(c.nodes)
        tree = {pid for node in c.nodes for pid in node.seen}
        still_listening = listeners(tree) if tree else []
        for temp in c.temps:
            shutil.rmtree(temp, ignore_errors=True)
    assert not left, "left running after the nodes stopped: " + "; ".join(cmd[:120] for _, cmd in left.values())
    assert not still_listening, still_listening


def job_command(c: Cluster, submission_id: str, out: str, stac: str | None = None) -> list[str]:
    """README's command (JOB_COMMAND) with this cluster's address, a submission id and an
    output root of the test's (and another --stac)."""
    tokens = shlex.split(JOB_COMMAND)
    for flag, value in (("--address", c.api), ("--submission-id", submission_id), ("--out", out), ("--stac", stac)):
        if value is not None:
            tokens[tokens.index(flag) + 1] = value
    return tokens


def submit(c: Cluster, submission_id: str, out: str, *, stac: str | None = None
           ) -> tuple[subprocess.CompletedProcess, list[tuple[str, str]]]:
    """Submit the job from the repository root and follow it to its end (`ray job submit`
    waits and prints the job's logs); returns that and the TCP listeners of the nodes'
    processes, sampled all through the job."""
    tokens = job_command(c, submission_id, out, stac)
    assert tokens[0] == "ray"
    t0 = time.perf_counter()
    proc = subprocess.Popen([ray_cli(), *tokens[1:]], env=c.env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    listening: list[tuple[str, str]] = []
    try:
        while proc.poll() is None and time.perf_counter() - t0 < 300:
            listening += listeners({pid for node in c.nodes for pid in node.sample()})
            time.sleep(0.5)
        stdout, stderr = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    job = c.job(submission_id)
    seconds = (job.get("end_time") or 0) / 1000 - (job.get("start_time") or 0) / 1000
    print(f"ray job submit {submission_id}: {time.perf_counter() - t0:.1f} s, the job itself {seconds:.1f} s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), listening


@pytest.fixture(scope="module")
def demo_job(cluster: Cluster, tmp_path_factory):
    """The README's `ray job submit --working-dir . -- ... dipfill run` on the demo catalog:
    (submission id, --out, the submit command's output, listeners seen during the job)."""
    out = tmp_path_factory.mktemp("job-out")
    done, listening = submit(cluster, "dipfill-demo-test", str(out))
    assert done.returncode == 0, f"ray job submit exited {done.returncode}:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    return "dipfill-demo-test", out, done, listening


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


def test_ray_job_submit_runs_dipfill_on_the_demo_catalog(cluster: Cluster, demo_job) -> None:
    sid, out, done, _ = demo_job
    assert f"Job '{sid}' succeeded" in done.stdout, done.stdout[-3000:]
    job = cluster.job(sid)
    command = job_command(cluster, sid, str(out))
    assert job["status"] == "SUCCEEDED" and job["entrypoint"] == shlex.join(command[command.index("--") + 1:]), job

    # outputs: both scenes filled (observed pixels bit-exact), items, the run record
    for scene in (JAN, FEB):
        assert_filled(out, scene)
    (record_path,) = (out / "runs").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["state"] == "finished" and record["request"]["options"]["engine"] == "fillnodata", record
    print(f"dipfill run (local --out): {record['seconds']:.1f} s; per scene "
          f"{[(s['id'][-20:], s.get('timings')) for s in record['scenes']]}")
    assert {s["id"]: s["status"] for s in record["scenes"]} == {JAN: "done", FEB: "done"}, record
    assert (out / "catalog.json").is_file()

    # the job's logs (what `ray job logs` shows an operator): JSON progress events per scene
    # (DIPFILL_LOG_FORMAT=json), then the run's summary on stdout
    logs = cluster.get(f"/api/jobs/{sid}/logs")["logs"]
    assert logs.strip() and logs.strip() in done.stdout, "the submit command did not show the job's logs"
    events = [e for e in json_lines(logs) if e.get("run_id") == record["run_id"]]
    assert {e["scene"] for e in events if e.get("event") == "scene_done"} == {JAN, FEB}, logs[-4000:]
    assert {e.get("scene") for e in events if e.get("event") == "patches"} >= {JAN, FEB}, logs[-4000:]
    assert re.search(rf"^done +{JAN} ", logs, re.M) and re.search(rf"^done +{FEB} ", logs, re.M), logs[-3000:]
    assert re.search(rf"^run {record['run_id']}: 2 done, 0 current, 0 failed in [0-9.]+ s; record ", logs, re.M), \
        logs[-3000:]

    # What --working-dir . uploaded: the repository as git sees it. Ray leaves out its
    # default excludes (.git, .venv, venv, __pycache__) and what .gitignore (and a
    # .rayignore) lists; both nodes unpacked the package (the actors run in the job's
    # runtime env), with the code and the demo catalog and nothing git ignores.
    pkgs = [p for temp in cluster.temps for p in temp.glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*")
            if p.is_dir()]
    assert {p.parents[3] for p in pkgs} == set(cluster.temps), pkgs
    for pkg in pkgs:
        files = sorted(p.relative_to(pkg).as_posix() for p in pkg.rglob("*") if p.is_file())
        assert "dipfill/cli/main.py" in files and "data/arg25_menindee/stac/catalog.json" in files, files[:50]
        assert not [f for f in files if {".git", ".venv", "__pycache__"} & set(f.split("/"))], files
        ignored = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, input="\n".join(files),
                                 capture_output=True, text=True).stdout.split()
        assert not ignored, f"uploaded although .gitignore lists them: {ignored[:20]}"


def assert_actors_on_both_nodes(cluster: Cluster, sid: str) -> None:
    """The job's engine actors were placed on both nodes (one CPU each: one actor per node),
    as the State API records them."""
    job_id = cluster.job(sid)["job_id"]
    nodes = {n["node_id"]: n for n in cluster.listed("nodes")}
    assert len(nodes) == 2 and sum(n["is_head_node"] for n in nodes.values()) == 1, nodes
    assert {n["node_ip"] for n in nodes.values()} == {"127.0.0.1"}, nodes
    actors = [a for a in cluster.listed("actors", class_name="EngineWorker") if a["job_id"] == job_id]
    assert {a["node_id"] for a in actors} == set(nodes), (actors, nodes)


def test_engine_actors_run_on_both_nodes(cluster: Cluster, demo_job) -> None:
    """The run's engine actors ran on both nodes (State API, and processes under each node's
    `ray start`); no process of either node listened beyond 127.0.0.1 during the job."""
    sid, _, _, listening = demo_job
    assert_actors_on_both_nodes(cluster, sid)
    for node in cluster.nodes:
        assert node.named("EngineWorker"), f"no engine actor process under {node.log.stem}"
    assert listening and all(loopback(local) for local, _ in listening), sorted(set(listening))


def test_two_nodes_share_no_filesystem_with_s3_in_and_out(cluster: Cluster, request, tmp_path: Path) -> None:
    """The job on two nodes with nothing shared but the object store (moto's S3 API on
    127.0.0.1): the demo catalog and its rasters read over HTTP from a bucket (`--stac
    http://.../catalog.json`, GDAL's /vsicurl/), the outputs written with `--out s3://...`
    (patch stores, COGs, Zarr mosaic, items, catalog, run record: all objects). What the
    actors on both nodes and the driver wrote is the product: downloaded, every observed
    pixel is bit-exact."""
    s3 = request.getfixturevalue("s3")
    client = s3.client()
    s3.bucket("dipfill-input")
    for path in sorted((REPO / "data" / "arg25_menindee").rglob("*")):
        if path.is_file():
            # public-read, as the open collections dipfill reads (anonymous GETs over HTTP)
            client.upload_file(str(path), "dipfill-input", path.relative_to(REPO / "data").as_posix(),
                               ExtraArgs={"ACL": "public-read"})
    catalog = f"{s3.endpoint}/dipfill-input/arg25_menindee/stac/catalog.json"
    bucket, prefix = "dipfill-jobs", "demo"
    url = f"{s3.bucket(bucket)}/{prefix}"
    done, _ = submit(cluster, "dipfill-s3-test", url, stac=catalog)
    assert done.returncode == 0, f"ray job submit exited {done.returncode}:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    assert_actors_on_both_nodes(cluster, "dipfill-s3-test")

    keys = s3.keys(bucket, f"{prefix}/")
    (record_key,) = [k for k in keys if re.fullmatch(rf"{prefix}/runs/[^/]+\.json", k)]
    record = json.loads(client.get_object(Bucket=bucket, Key=record_key)["Body"].read())
    assert record["state"] == "finished" and record["request"]["stac"] == catalog, record
    print(f"dipfill run (HTTP in, S3 out): {record['seconds']:.1f} s; per scene "
          f"{[(s['id'][-20:], s.get('timings')) for s in record['scenes']]}")
    assert {s["id"]: s["status"] for s in record["scenes"]} == {JAN: "done", FEB: "done"}, record
    assert f"{prefix}/catalog.json" in keys
    assert not [k for k in keys if "patches.zarr" in k or ".tmp-" in k], "patch stores or temporaries left behind"
    # the product, downloaded as it is in the bucket
    local = tmp_path / "from-s3"
    for key in keys:
        dest = local / key[len(prefix) + 1:]
        dest.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(dest))
    for scene in (JAN, FEB):
        item = assert_filled(local, scene)
        hrefs = [a["href"] for a in item["assets"].values()]
        assert all(not Path(h).is_absolute() for h in hrefs), hrefs  # no node's local path
    # nothing of the run landed on a node's disk: no local directory named after the URL
    # (e.g. in the job's unpacked working dir, where a relative "s3:/..." path would go)
    assert not [p for temp in cluster.temps for p in temp.glob("**/s3:*")]
