"""What a run tells its user, found trying dipfill as a new user would (issue 12): a worker's
failure is one line in the summary (the traceback goes to the log), progress shows within
a batch (DIP fits take minutes per batch), `dipfill fill` reports progress when stderr is
no terminal, `--log-format json` prints nothing but JSON (Ray's own notices included), and
a killed driver takes the local Ray cluster it started down with it."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from dipfill.cli.main import main
from dipfill.cli.run import build_request
from dipfill.pipeline import run as run_mod
from dipfill.pipeline import stages
from dipfill.pipeline.executor import FAULT_ENV
from dipfill.pipeline.progress import failure_line
from dipfill.pipeline.ray_executor import stop_ray
from tests._data import ARG25_JAN, DATA, REPO
from tests._procs import alive, cmdline, descendants, start_time

CATALOG = DATA / "arg25_menindee" / "stac" / "catalog.json"
JAN = "LS7_ETM_095_082_20100116_crop512"
ONLY_JAN = ["--datetime", "2010-01-01/2010-01-31"]
ANSI = "\x1b["


@pytest.fixture(scope="module", autouse=True)
def _ray_session():
    yield
    stop_ray()


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0"}


# ------------------------------------------------------------ 1. a failed scene: one line
def test_a_ray_task_error_becomes_the_workers_own_error_with_its_traceback_as_a_note() -> None:
    import traceback

    from ray.exceptions import RayActorError, RayTaskError

    from dipfill.errors import SceneReadError, WorkerError
    from dipfill.pipeline.progress import failure_details
    from dipfill.pipeline.ray_executor import worker_failure

    try:
        try:
            raise OSError("CURL error reading /vsicurl/https://host/B4.tif")
        except OSError as exc:
            raise SceneReadError("item x asset B4: cannot read window\nwhile reading rows 0-256") from exc
    except SceneReadError as cause:
        tb = "".join(traceback.format_exception(cause))
        remote = RayTaskError("EngineWorker.fit", tb, cause).as_instanceof_cause()
    assert "\n" in str(remote) and ANSI in str(remote)  # what the summary used to show
    err = worker_failure(remote)
    assert type(err) is SceneReadError  # as an in-process call raises it
    assert failure_line(err) == "SceneReadError: item x asset B4: cannot read window"
    details = failure_details(err)
    assert "on a Ray worker" in details and "CURL error reading" in details and ANSI not in details
    # a multi-line, coloured message of any exception is still one line
    assert failure_line(RuntimeError(f"{ANSI}31mboom{ANSI}0m\nmore")) == "RuntimeError: boom"
    # an actor that died for good: a WorkerError (a DipfillError: the scene fails, the run goes on)
    died = worker_failure(RayActorError())
    assert isinstance(died, WorkerError) and "\n" not in failure_line(died) and ANSI not in failure_line(died)
    other = ValueError("not Ray's")
    assert worker_failure(other) is other


def test_a_failing_ray_worker_is_one_line_in_the_summary_and_its_traceback_in_the_log(
        tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    monkeypatch.setenv(FAULT_ENV, "error:cannot read window (injected)\\nsecond line of the message")
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    try:
        rc = main(["run", "--stac", str(CATALOG), "--out", str(out), "--engine", "fillnodata", *ONLY_JAN])
    finally:
        stop_ray()  # its raylet has the fault in its environment, and so would later workers
    assert rc == 1
    lines = capsys.readouterr().out.splitlines()
    failed = [ln for ln in lines if ln.startswith("failed")]
    assert failed == [f"failed   {JAN}  OSError: cannot read window (injected)"], lines
    assert len(lines) == 2, lines  # the scene and the run's line: no traceback in the summary
    record = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert record["failures"] == [{"id": JAN, "message": "OSError: cannot read window (injected)"}]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("dipfill")]
    assert f"scene {JAN} failed: OSError: cannot read window (injected)" in errors
    details = "\n".join(errors)
    assert "on a Ray worker" in details and "_maybe_fail" in details  # the remote traceback
    assert "second line of the message" in details and ANSI not in details


def test_log_lines_carry_no_colour_codes() -> None:
    """Ray logs coloured tracebacks (e.g. its unhandled-error notices), now through dipfill's
    handlers: the CLI's formatters strip the codes."""
    from dipfill.cli.logs import TEXT_FORMAT, JsonFormatter, TextFormatter

    record = logging.makeLogRecord({"name": "ray._private.worker", "levelno": logging.ERROR, "levelname": "ERROR",
                                    "msg": f"Unhandled error: {ANSI}36mray::EngineWorker.fit(){ANSI}39m failed"})
    text = TextFormatter(TEXT_FORMAT).format(record)
    doc = json.loads(JsonFormatter().format(record))
    assert text.endswith("Unhandled error: ray::EngineWorker.fit() failed") and ANSI not in text
    assert doc["msg"] == "Unhandled error: ray::EngineWorker.fit() failed"


# ------------------------------------------------------------ 3. progress within a batch
def test_steps_are_reported_while_batches_are_fitted_on_ray(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stages, "STEPS_EVERY", 0.0)
    events: list[dict] = []
    request = build_request({"stac": str(CATALOG), "out": str(tmp_path / "out"), "datetime": ONLY_JAN[1],
                             "engine": "dip", "preset": "mcpn-core", "steps": 30, "dip": ["check_every=10"],
                             "strategy": "loop", "batch_size": 2, "patch": 128, "overlap": 32})
    with pytest.raises(run_mod.RunInterrupted):  # the first finished batch is enough
        run_mod.run(request, num_cpus=2, progress=events.append, stop_after_batches=1)
    kinds = [e["event"] for e in events]
    assert "steps" in kinds and kinds.index("steps") < kinds.index("patches"), kinds
    steps = [e for e in events if e["event"] == "steps"]
    for e in steps:
        assert e["scene"] == JAN and e["patches_total"] > 9 and e["batches_fitting"] >= 1
        assert 0 < e["steps_done"] <= e["steps_total"] == 2 * 30 * e["batches_fitting"]
        assert f"patches {e['patches_done']}/{e['patches_total']}, fitting " in e["msg"] and "steps" in e["msg"]


def small_raster(tmp_path: Path, size: int = 96) -> Path:
    """The top-left corner of the January crop (SLC-off stripes in it): a fill of 4 windows."""
    with rasterio.open(ARG25_JAN) as src:
        profile = {**src.profile, "width": size, "height": size,
                   "transform": src.window_transform(((0, size), (0, size)))}
        profile.pop("blockxsize", None), profile.pop("blockysize", None), profile.pop("tiled", None)
        data = src.read(window=((0, size), (0, size)))
    assert (data == profile["nodata"]).any()
    path = tmp_path / "small.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


FILL_DIP = ["--engine", "dip", "--preset", "mcpn-core", "--steps", "20", "--dip", "check_every=10", "--strategy",
            "loop", "--patch", "64", "--overlap", "32"]


def test_fill_reports_steps_within_a_batch_when_stderr_is_not_a_terminal(tmp_path: Path, monkeypatch,
                                                                         caplog) -> None:
    from dipfill.cli import fill as fill_cmd

    monkeypatch.setattr(fill_cmd, "PROGRESS_EVERY", 0.0)
    caplog.set_level(logging.INFO)
    assert main(["fill", str(small_raster(tmp_path)), "--out", str(tmp_path / "out"), *FILL_DIP]) == 0
    shown = [r for r in caplog.records if r.name == "dipfill.cli.fill"]
    texts = [r.getMessage() for r in shown]
    within = [t for t in texts if "steps" in t]
    assert within and texts.index(within[0]) < texts.index(texts[-1]), texts
    assert texts[-1] == "patches 4/4"
    # the 4 windows are one batch of 4 x 20 steps, counted every check_every (10) steps
    assert texts[:2] == ["patches 0/4, batch 10/80 steps", "patches 0/4, batch 20/80 steps"], texts
    fields = shown[0].fields  # type: ignore[attr-defined]
    assert fields["event"] == "progress" and fields["patches_total"] == 4 and 0 < fields["steps_done"]


def test_fill_prints_progress_lines_to_a_pipe(tmp_path: Path) -> None:
    """A real process whose stderr is a pipe: the last progress line at least (a fill
    shorter than PROGRESS_EVERY has no other), as a plain log line."""
    proc = subprocess.run([sys.executable, "-m", "dipfill.cli.main", "fill", str(small_raster(tmp_path)),
                           "--out", str(tmp_path / "out"), "--engine", "fillnodata", "--patch", "64",
                           "--overlap", "32"], env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any(ln.endswith("INFO dipfill.cli.fill: patches 4/4") for ln in proc.stderr.splitlines()), proc.stderr


def test_a_monitor_does_not_change_a_dip_fill() -> None:
    """Steps are counted through the engine's monitor: the fill's bytes stay the same."""
    from dipfill.engines import make_engine
    from dipfill.pipeline.executor import BatchProgress, fill_batch
    from dipfill.tiling import PatchWindow

    rng = np.random.default_rng(0)
    data = rng.normal(100, 10, (2, 64, 64)).astype(np.float32)
    valid = np.ones_like(data, dtype=bool)
    valid[:, 20:30, :] = False
    windows = [PatchWindow(0, 0, 64, 64)]

    def read(span):
        (r0, r1), (c0, c1) = span
        return data[:, r0:r1, c0:c1], valid[:, r0:r1, c0:c1]

    for options in ({}, {"exp_weight": 0.0}):  # with and without the output average
        engine = make_engine("dip", preset="mcpn-core", steps=30, check_every=10, strategy="loop", **options)
        seen: list[BatchProgress] = []
        plain = fill_batch(engine, read, windows, [7])
        watched = fill_batch(engine, read, windows, [7], on_steps=seen.append)
        assert np.array_equal(plain.values, watched.values, equal_nan=True)
        assert [p.steps_done for p in seen] == [10, 20, 30] and {p.steps_total for p in seen} == {30}


# ------------------------------------------------------------ 4. --log-format json
def test_json_log_format_prints_only_json_lines(tmp_path: Path) -> None:
    """Ray's own notices (token authentication at start-up) came as plain text among them."""
    proc = subprocess.run(
        [sys.executable, "-m", "dipfill.cli.main", "--log-format", "json", "run", "--stac", str(CATALOG),
         "--out", str(tmp_path / "out"), "--engine", "fillnodata", *ONLY_JAN],
        env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert not not_json(lines), not_json(lines)
    events = [json.loads(ln).get("event") for ln in lines]
    assert "run_start" in events and "run_done" in events


def not_json(lines: list[str]) -> list[str]:
    bad = []
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            bad.append(line)
    return bad


def test_json_log_format_gives_the_error_line_as_json(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "dipfill.cli.main", "--log-format", "json", "fill",
                           str(tmp_path / "missing.tif"), "--out", str(tmp_path / "out")],
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert not not_json(lines), lines
    (error,) = [json.loads(ln) for ln in lines if json.loads(ln)["level"] == "error"]
    assert error["msg"].startswith("dipfill: error: ") and "missing.tif" in error["msg"]


# ------------------------------------------------------------ 2. a killed driver's cluster
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_local_ray_cluster_with_the_driver(tmp_path: Path, sig: int) -> None:
    """SIGTERM (or Ctrl-C) while engine actors fit: the driver stops the cluster it started
    (GCS, raylet, agents, workers) and exits non-zero on its own, without Ray's crash dump,
    every stderr line still JSON."""
    env = cli_env()
    driver = subprocess.Popen(
        [sys.executable, "-m", "dipfill.cli.main", "--log-format", "json", "run", "--stac", str(CATALOG),
         "--out", str(tmp_path / "out"), *ONLY_JAN, "--engine", "dip", "--preset", "mcpn-core",
         "--steps", "5000", "--strategy", "loop"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    tree: dict[int, tuple[int | None, str]] = {}
    try:
        deadline = time.monotonic() + 480
        while time.monotonic() < deadline and driver.poll() is None:
            for pid in descendants(driver.pid) - {driver.pid}:
                tree[pid] = (start_time(pid), cmdline(pid))
            if any("EngineWorker.fit" in c for _, c in tree.values()):
                break
            time.sleep(0.2)
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        names = " ".join(c for _, c in tree.values())
        assert "EngineWorker.fit" in names and "raylet" in names and "gcs_server" in names, names
        time.sleep(2)
        for pid in descendants(driver.pid) - {driver.pid}:
            tree.setdefault(pid, (start_time(pid), cmdline(pid)))
        t0 = time.monotonic()
        driver.send_signal(sig)
        _, stderr = driver.communicate(timeout=120)
        exited = time.monotonic() - t0
        left = {pid: c for pid, (start, c) in tree.items() if alive(pid, start)}
        while left and time.monotonic() - t0 < 60:
            time.sleep(0.5)
            left = {pid: c for pid, c in left.items() if alive(pid, tree[pid][0])}
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for pid, (start, _) in tree.items():
            if alive(pid, start):
                os.kill(pid, signal.SIGKILL)
    assert not left, "still running after the driver's signal: " + "; ".join(c[:100] for c in left.values())
    assert driver.returncode > 0, (driver.returncode, stderr[-3000:])  # exited non-zero, not killed
    assert exited < 60
    assert "SIGTERM received" not in stderr, stderr[-3000:]  # no crash dump of Ray's signal handler
    assert not not_json(stderr.splitlines()), stderr[-3000:]
    if sig == signal.SIGINT:
        assert driver.returncode == 130 and json.loads(stderr.splitlines()[-1])["msg"] == "dipfill: interrupted"
