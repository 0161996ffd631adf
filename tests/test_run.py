"""`dipfill run` on local Ray over the committed static catalog of real SLC-off scenes:
outputs per scene, resume after a driver kill, idempotent reruns, a failing scene, a
killed engine actor, and Ray listening on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio

from dipfill.cli.main import main
from dipfill.cli.run import build_request
from dipfill.pipeline import run as run_mod
from dipfill.pipeline.ray_exec import FAULT_ENV, stop_ray
from tests._data import DATA

CATALOG = DATA / "arg25_menindee" / "stac" / "catalog.json"
SCENES = {"LS7_ETM_095_082_20100116_crop512", "LS7_ETM_095_082_20100201_crop512"}
DIP = {"engine": "dip", "preset": "mcpn-core", "steps": 2, "strategy": "loop", "batch_size": 2}


@pytest.fixture(scope="module", autouse=True)
def _ray_session():
    yield
    stop_ray()


def request(out: Path, **values):
    return build_request({"stac": str(CATALOG), "out": str(out), **values})


def filled_cog(out: Path, scene: str) -> Path:
    return next(out.glob(f"*/{scene}-dipfill/{scene}-dipfill_filled.tif"))


def test_run_fills_every_scene_and_listens_on_loopback_only(tmp_path: Path) -> None:
    summary = run_mod.run(request(tmp_path / "out", engine="fillnodata"), num_cpus=2)
    assert {s.id for s in summary.scenes} == SCENES and all(s.status == "done" for s in summary.scenes)
    record = json.loads(Path(summary.record).read_text())
    assert record["counts"] == {"done": 2, "current": 0, "failed": 0} and record["config_hash"]
    for scene in SCENES:
        src = next((DATA / "arg25_menindee").glob(f"{scene.replace('_crop512', '')}_B3B4B5_crop512.tif"))
        with rasterio.open(src) as a, rasterio.open(filled_cog(tmp_path / "out", scene)) as b:
            x, y = a.read(), b.read()
            assert b.crs == a.crs and b.transform == a.transform
        valid = x != -999
        assert np.array_equal(y[valid], x[valid])  # observed pixels bit-exact
        assert (y != -999).mean() > valid.mean()  # gaps filled
        item = json.loads(next((tmp_path / "out").glob(f"*/{scene}-dipfill/{scene}-dipfill.json")).read_text())
        assert item["properties"]["dipfill:source_item"] == scene
        bands = item["assets"]["filled"]["raster:bands"]
        assert [(b["data_type"], b["nodata"], b["scale"]) for b in bands] == [("int16", -999, 1e-4)] * 3
        assert any(ln["rel"] == "derived_from" for ln in item["links"])
    catalog = json.loads((tmp_path / "out" / "catalog.json").read_text())
    assert any(ln["rel"] == "child" for ln in catalog["links"])
    # Ray (still running in this process) listens on 127.0.0.1 only
    ss = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True, check=True).stdout
    me = f"pid={os.getpid()},"
    ray_lines = [ln for ln in ss.splitlines() if any(k in ln for k in ("raylet", "gcs_server", "ray::", me))]
    assert ray_lines
    for ln in ray_lines:
        local = ln.split()[3]
        assert local.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")), ln


def test_resume_after_driver_kill_gives_identical_bytes(tmp_path: Path) -> None:
    whole = run_mod.run(request(tmp_path / "whole", **DIP), num_cpus=2)
    assert all(s.status == "done" for s in whole.scenes)
    with pytest.raises(run_mod.RunInterrupted):
        run_mod.run(request(tmp_path / "resumed", **DIP), num_cpus=2, stop_after_batches=2)
    again = run_mod.run(request(tmp_path / "resumed", **DIP), num_cpus=2)
    first = next(s for s in again.scenes if s.status == "done" and s.patches_resumed)
    assert first.patches_resumed >= 2 and first.patches_fitted < first.patches
    for scene in SCENES:
        a = filled_cog(tmp_path / "whole", scene).read_bytes()
        b = filled_cog(tmp_path / "resumed", scene).read_bytes()
        assert a == b
    assert not list((tmp_path / "resumed").glob("*/*/patches.zarr"))  # checkpoints removed once done


def test_rerun_of_current_scenes_does_no_engine_work(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    run_mod.run(request(out, engine="fillnodata"), num_cpus=2)

    def no_engine(*a, **k):
        raise AssertionError("engine work on a current scene")

    monkeypatch.setattr("dipfill.pipeline.ray_exec.engine_pool", no_engine)
    again = run_mod.run(request(out, engine="fillnodata"), num_cpus=2)
    assert [s.status for s in again.scenes] == ["current", "current"]
    assert "no engine work" in again.scenes[0].message
    monkeypatch.undo()
    forced = run_mod.run(request(out, engine="fillnodata", force=True), num_cpus=2)
    assert [s.status for s in forced.scenes] == ["done", "done"]


def test_a_corrupt_scene_fails_cleanly_while_the_others_finish(tmp_path: Path, capsys) -> None:
    cat = tmp_path / "stac"
    shutil.copytree(CATALOG.parent, cat)
    for tif in (DATA / "arg25_menindee").glob("*.tif"):
        shutil.copy(tif, tmp_path / tif.name)  # the VRTs point three levels up
    bad = next(cat.glob("*/LS7_ETM_095_082_20100116_crop512/B4.vrt"))
    bad.write_text("this is not a raster")
    rc = main(["run", "--stac", str(cat / "catalog.json"), "--out", str(tmp_path / "out"), "--engine", "fillnodata"])
    assert rc == 1
    out = capsys.readouterr().out
    assert "failed   LS7_ETM_095_082_20100116_crop512" in out and "B4" in out
    assert "done     LS7_ETM_095_082_20100201_crop512" in out
    record = json.loads(next((tmp_path / "out" / "runs").glob("*.json")).read_text())
    assert record["counts"]["failed"] == 1 and "B4.vrt" in record["failures"][0]["message"]


def test_a_killed_engine_actor_is_restarted_and_its_batch_retried(tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "killed-once"
    monkeypatch.setenv(FAULT_ENV, f"exit-once:{marker}")
    summary = run_mod.run(request(tmp_path / "out", engine="fillnodata", max_scenes=1), num_cpus=2)
    assert marker.exists()  # an actor process did die mid-run
    assert [s.status for s in summary.scenes] == ["done"]
    assert summary.scenes[0].patches_fitted == summary.scenes[0].patches


def test_sign_option_names_what_it_needs(tmp_path: Path) -> None:
    from dipfill.errors import InputError

    assert run_mod.signer(None) is None
    with pytest.raises(InputError, match="unknown --sign"):
        run_mod.signer("aws")
    try:
        import planetary_computer  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="pip install planetary-computer"):
            run_mod.signer("planetary-computer")
    assert request(tmp_path, sign="planetary-computer").sign == "planetary-computer"
