"""Ray nodes of the tests' own: `ray start ... --block` processes on 127.0.0.1, each in a
session of its own, with a private token and temp dir, stopped by process tree.

Why not `ray stop`: it stops every Ray on the machine, including other tests' clusters and
a developer's. Why `--block` in a new session: the `ray start` process is then the root of
its node's processes (GCS, raylet, agents, dashboard, workers), so the test can stop that
node and find what it left by walking the tree (tests/_procs.py), and kill its process
group without touching anything else.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests._procs import alive, cmdline, descendants, start_time
from tests.stac_server import free_port

#: Printed by `ray start` once the node's processes are up.
STARTED = "Ray runtime started"

#: The Ray Jobs command README.md documents, run by tests/test_ray_jobs.py from the
#: repository root with its own --address, --submission-id and --out; tests/test_deploy.py
#: checks that it has the form of deploy/'s `ray job submit` (cronjob.yaml). --out is
#: absolute: a relative one would land in the job's unpacked copy of the working dir.
JOB_COMMAND = ("ray job submit --address http://127.0.0.1:8265 --submission-id dipfill-demo --working-dir . -- "
               "DIPFILL_LOG_FORMAT=json dipfill run --stac data/arg25_menindee/stac --engine fillnodata "
               "--ray-address auto --out /tmp/dipfill-job-out")


#: `ray start` for a node that joins a head on 127.0.0.1 (tests/_ray_node.py says why).
JOIN_NODE = [sys.executable, str(Path(__file__).with_name("_ray_node.py"))]


def ray_cli() -> str | None:
    """The `ray` command of this Python environment (else one on PATH), or None."""
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else shutil.which("ray")


def token_envs(temp: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(driver environment, node environment) for a cluster with a token of its own.

    `ray start` turns token authentication on by itself when ~/.ray/auth_token exists
    (ray.init() writes one); a private token in ``temp`` makes the cluster independent of
    ~/.ray in both directions. The driver environment has only the token's path (no RAY_*
    settings of the test process); the nodes' adds token mode and keeps Ray's own address
    lookups on 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), which the `ray` CLI needs
    as well to talk to such a cluster.
    """
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    driver = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    driver.update({"RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"})
    return driver, {**driver, "RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def node_ports() -> list[str]:
    """Ports of one node's agents, picked free on 127.0.0.1. Two nodes on one machine must
    not share them (Ray's defaults are fixed: the dashboard agent's HTTP port is 52365 on
    every node), and workers get ports the OS picks (--min/max-worker-port=0), not Ray's
    default range 10002-19999 that every other local Ray on this machine draws from too."""
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            "--min-worker-port=0", "--max-worker-port=0"]


@dataclass
class RayNode:
    """A `ray start --block` process and what its tree held whenever it was sampled."""

    proc: subprocess.Popen
    log: Path
    temp: Path
    seen: dict[int, tuple[int | None, str]] = field(default_factory=dict)  # pid -> (start time, cmdline)

    def sample(self) -> dict[int, tuple[int | None, str]]:
        """Record the node's live processes now; returns them."""
        now = {}
        for pid in descendants(self.proc.pid):
            start, cmd = start_time(pid), cmdline(pid)
            if start is not None and cmd:
                now[pid] = (start, cmd)
        self.seen.update(now)
        return now

    def named(self, word: str) -> list[str]:
        """Command lines of every process seen so far that contain ``word``."""
        return [cmd for _, cmd in self.seen.values() if word in cmd]


def spawn_node(cli: str | list[str], args: list[str], *, temp: Path, env: dict[str, str], name: str) -> RayNode:
    """`ray start ARGS --temp-dir=TEMP --block` in a session of its own, its output in
    TEMP/NAME.log, not waited for (:meth:`wait_node`). ``cli``: the `ray` command, or a
    command line standing for it (:data:`JOIN_NODE`)."""
    log_path = temp / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*([cli] if isinstance(cli, str) else cli), "start", *args, f"--temp-dir={temp}",
                                 "--disable-usage-stats", "--block"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return RayNode(proc, log_path, temp)


def wait_node(node: RayNode, timeout: float = 90, *, port: int | None = None) -> RayNode:
    """Wait until `ray start` says the node is up (or, with ``port``, only until something
    accepts connections there on 127.0.0.1: a head's GCS, enough for nodes to join);
    fails with its log if it exits or takes longer than ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if port is None:
            if STARTED in node.log.read_text(errors="replace"):
                break
        else:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                pass
        assert node.proc.poll() is None, f"ray start ({node.log.stem}) exited {node.proc.returncode}:\n" \
                                         f"{node.log.read_text()}"
        assert time.monotonic() < deadline, f"ray start ({node.log.stem}) not up in {timeout:.0f} s:\n" \
                                            f"{node.log.read_text()}"
        time.sleep(0.2)
    node.sample()
    return node


def start_node(cli: str | list[str], args: list[str], *, temp: Path, env: dict[str, str], name: str,
               timeout: float = 90) -> RayNode:
    """:func:`spawn_node` and :func:`wait_node`; the node is stopped again if it does not come up."""
    node = spawn_node(cli, args, temp=temp, env=env, name=name)
    try:
        return wait_node(node, timeout)
    except BaseException:
        stop_nodes([node])
        raise


def stop_nodes(nodes: list[RayNode], grace: float = 30) -> dict[int, tuple[int | None, str]]:
    """Stop ``nodes`` (last started first) and everything they started; returns what was
    still running ``grace`` seconds after the stop (killed then, for the caller to fail on).

    SIGTERM to `ray start --block` stops its node (GCS, raylet, and the raylet's workers);
    its process group, and any process of its tree seen at any sample, still there after
    that is killed. Only these nodes' processes: never `ray stop`.
    """
    for node in reversed(nodes):
        node.sample()
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
        try:
            node.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait(timeout=10)
    tree = {pid: v for node in nodes for pid, v in node.seen.items()}
    deadline = time.monotonic() + grace
    left = {pid: v for pid, v in tree.items() if alive(pid, v[0])}
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = {pid: v for pid, v in left.items() if alive(pid, v[0])}
    for node in nodes:
        try:
            os.killpg(node.proc.pid, signal.SIGKILL)  # its session's process group (= its pid)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in left:  # don't leave them behind for the next test, but report them
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left
