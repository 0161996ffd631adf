"""Two processes writing into one --out at once, as cron does: neither fails, neither
removes the other's temporaries or patch store, and every item describes its own files.

`dipfill run` twice over the demo catalog (one scene, fillnodata): one run processes the
scene, the other waits for its lock and finds it current. `dipfill fill` three times at
once (the same scene twice, another once): all succeed, one mosaic per scene."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
import zarr

from tests._data import ARG25_FEB, ARG25_JAN, DATA, REPO
from tests._schemas import validation_errors

CATALOG = DATA / "arg25_menindee" / "stac" / "catalog.json"
CLI = "import sys; from dipfill.cli.main import main; sys.exit(main(sys.argv[1:]))"


def start(*args: str) -> subprocess.Popen:
    """`dipfill ARGS` in its own process, on this checkout."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", CLI, *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err[-4000:]}"
    return out


def leftovers(directory: Path) -> list[str]:
    """Temporaries, set-aside old copies and patch stores left in ``directory``."""
    return sorted(p.name for p in directory.iterdir()
                  if ".tmp-" in p.name or ".old-" in p.name or p.name == "patches.zarr")


def assert_consistent(item_path: Path) -> dict:
    """The item validates, and its mosaic holds the pixels of its own COG."""
    item = json.loads(item_path.read_text())
    assert validation_errors(item) == []
    assets = item["assets"]
    mosaic = zarr.open_group(str(item_path.parent / assets["mosaic"]["href"]), mode="r")
    with rasterio.open(item_path.parent / assets["filled"]["href"]) as f:
        assert np.array_equal(mosaic["bands"][...], f.read())
    return item


def test_two_runs_into_one_out_at_once_both_succeed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ("run", "--stac", str(CATALOG), "--datetime", "2010-01-01/2010-01-31", "--out", str(out),
            "--engine", "fillnodata", "--json")
    procs = [start(*args), start(*args)]
    summaries = [json.loads(finish(p)) for p in procs]
    statuses = sorted(s["scenes"][0]["status"] for s in summaries)
    assert statuses == ["current", "done"], summaries  # one did the work; the other found it done
    (item_path,) = out.glob("*/*-dipfill/*-dipfill.json")
    assert_consistent(item_path)
    assert leftovers(item_path.parent) == []


def test_three_fills_into_one_out_at_once_all_succeed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    procs = [start("fill", str(src), "--out", str(out), "--engine", "fillnodata")
             for src in (ARG25_JAN, ARG25_JAN, ARG25_FEB)]
    for p in procs:
        finish(p)
    for src in (ARG25_JAN, ARG25_FEB):
        item = assert_consistent(out / f"{src.stem}-dipfill.json")
        assert item["assets"]["mosaic"]["href"] == f"{src.stem}-dipfill_mosaic.zarr"
    assert leftovers(out) == []
