"""`dipfill run` on local Ray over the committed static catalog of real SLC-off scenes:
outputs per scene, resume after a driver kill, idempotent reruns, a failing scene, a
killed engine actor, and Ray listening on 127.0.0.1 only."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from dipfill.cli.logs import JsonFormatter
from dipfill.cli.main import main
from dipfill.cli.run import build_request
from dipfill.pipeline import run as run_mod
from dipfill.pipeline.executor import FAULT_ENV
from dipfill.pipeline.ray_executor import stop_ray
from tests._data import DATA
from tests._procs import cmdline, descendants, listeners, loopback

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
    """The scene's ``filled`` VRT: all bands, read through to the per-band COGs."""
    return next(out.glob(f"*/{scene}-dipfill/{scene}-dipfill_filled.vrt"))


def test_run_fills_every_scene_and_listens_on_loopback_only(tmp_path: Path) -> None:
    events: list[dict] = []
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("dipfill.pipeline.run")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        summary = run_mod.run(request(tmp_path / "out", engine="fillnodata"), num_cpus=2, progress=events.append)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert {s.id for s in summary.scenes} == SCENES and all(s.status == "done" for s in summary.scenes)
    record = json.loads(Path(summary.record).read_text())
    assert record["counts"] == {"pending": 0, "done": 2, "current": 0, "failed": 0} and record["config_hash"]
    assert record["state"] == "finished"
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
        bands = [item["assets"][key]["raster:bands"][0] for key in ("B3", "B4", "B5")]  # the input's keys
        assert [(b["data_type"], b["nodata"], b["scale"]) for b in bands] == [("int16", -999, 1e-4)] * 3
        assert any(ln["rel"] == "derived_from" for ln in item["links"])
    catalog = json.loads((tmp_path / "out" / "catalog.json").read_text())
    assert any(ln["rel"] == "child" for ln in catalog["links"])
    # progress: structured events, as JSON lines in the log with the same fields
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_done" and kinds.count("scene_done") == 2
    patches = [e for e in events if e["event"] == "patches"]
    for scene in SCENES:
        mine = [e for e in patches if e["scene"] == scene]
        done = [e["patches_done"] for e in mine]
        assert done == sorted(done) and done[-1] == mine[-1]["patches_total"] > 0
        assert all(e["patches_per_s"] > 0 and e["eta_s"] >= 0 and e["scenes_total"] == 2 for e in mine)
    assert "eta_run_s" in patches[-1]  # the second scene knows how long the first took
    finished = [e for e in events if e["event"] == "scene_done"]
    assert all(set(e["timings"]) == {"open", "mask", "plan", "fit", "merge", "write", "describe"}
               and e["status"] == "done" for e in finished)
    assert events[-1]["counts"] == {"done": 2, "current": 0, "failed": 0}
    lines = [json.loads(ln) for ln in stream.getvalue().splitlines()]
    assert [(ln["event"], ln["msg"]) for ln in lines] == [(e["event"], e["msg"]) for e in events]
    assert lines[-1]["level"] == "info" and lines[-1]["logger"] == "dipfill.pipeline.run" and lines[-1]["ts"]
    assert {"patches_done", "patches_total", "patches_per_s", "eta_s", "run_id"} <= set(lines[2])
    # Ray (still running: this process started it, so GCS, raylet and workers are below it)
    # listens on 127.0.0.1 only
    tree = descendants(os.getpid())
    names = " ".join(cmdline(p) for p in tree)
    assert "gcs_server" in names and "raylet" in names and "EngineWorker" in names
    found = listeners(tree)
    assert len(found) >= 3, found
    assert all(loopback(local) for local, _ in found), [ln for local, ln in found if not loopback(local)]


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
        # the item too, but for when it was made and the per-patch timings (patches.json)
        items = [stable_item(next((tmp_path / d).glob(f"*/{scene}-dipfill/{scene}-dipfill.json")))
                 for d in ("whole", "resumed")]
        assert items[0] == items[1]
        # every patch is reported, resumed ones included, with the same fit
        records = [json.loads(next((tmp_path / d).glob(f"*/{scene}-dipfill/*_patches.json")).read_text())
                   for d in ("whole", "resumed")]
        assert [(r["window"], r["steps"], r["final_loss"]) for r in records[0]] == \
               [(r["window"], r["steps"], r["final_loss"]) for r in records[1]]
        assert len(records[0]) == next(s for s in whole.scenes if s.id == scene).patches
    assert not list((tmp_path / "resumed").glob("*/*/patches.zarr"))  # checkpoints removed once done


def test_the_mask_pass_keeps_a_local_copy_that_fit_and_merge_read_with_the_same_bytes(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    """The driver's mask pass keeps the scene's pixels (raster.pixel_cache) for the fit and
    merge of a local --out; the bytes equal those of a run whose workers cannot see the copy
    (they read the files: another node, object storage), the copy goes when the scene stops
    (interrupted, or done), and a resumed scene makes its own. In process: LocalPool."""
    from dipfill.pipeline.executor import LocalPool
    from dipfill.raster.pixel_cache import CACHE_NAME, PixelCache

    reads: list = []
    read = PixelCache.read
    monkeypatch.setattr(PixelCache, "read", lambda self, window: reads.append(window) or read(self, window))
    req = request(tmp_path / "cached", engine="fillnodata")
    pool = LocalPool("fillnodata", {}, req.options.fallback)
    with pytest.raises(run_mod.RunInterrupted):
        run_mod.run(req, pool=pool, stop_after_batches=1)
    assert reads and not list((tmp_path / "cached").rglob(CACHE_NAME))  # read, then removed with the scene
    assert list((tmp_path / "cached").rglob("patches.zarr"))  # the checkpoint stays for the resume
    reads.clear()
    resumed = run_mod.run(req, pool=pool)
    assert all(s.status == "done" for s in resumed.scenes) and any(s.patches_resumed for s in resumed.scenes)
    assert reads and not list((tmp_path / "cached").rglob(CACHE_NAME))
    reads.clear()
    monkeypatch.setattr(PixelCache, "usable", lambda self: False)  # workers that cannot see it
    run_mod.run(request(tmp_path / "source", engine="fillnodata"), pool=pool)
    assert not reads
    for scene in SCENES:
        names = sorted(p.name for p in (tmp_path / "source").glob(f"*/{scene}-dipfill/*.tif"))
        assert len(names) == 4  # three bands and the QA layer
        for name in names:
            a, b = (next((tmp_path / d).glob(f"*/{scene}-dipfill/{name}")).read_bytes() for d in ("cached", "source"))
            assert a == b, name


def stable_item(path: Path) -> dict:
    """An output item without what differs between two runs of the same request: when it
    was processed, and the file facts of the per-patch diagnostics (which hold timings)."""
    item = json.loads(path.read_text())
    item["properties"].pop("processing:datetime")
    for key in ("file:checksum", "file:size"):
        item["assets"]["patches"].pop(key, None)
    return item


def test_rerun_of_current_scenes_does_no_engine_work(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    run_mod.run(request(out, engine="fillnodata"), num_cpus=2)

    def no_engine(*a, **k):
        raise AssertionError("engine work on a current scene")

    monkeypatch.setattr("dipfill.pipeline.ray_executor.engine_pool", no_engine)
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


def test_a_dip_run_hashes_its_presets_contents_not_its_name(monkeypatch) -> None:
    """A preset whose contents change between versions (sar2023's normalisation did) must make
    the next run redo its scenes: the hash holds the resolved DIP configuration; other engines
    hash as before."""
    from dipfill.cli.run import build_request
    from dipfill.engines import config as dip_config
    from dipfill.pipeline.stages import run_config
    from dipfill.stac.item import config_hash

    values = {"stac": "x", "out": "y", "engine": "dip", "preset": "sar2023"}
    before = config_hash(run_config(build_request(values)))
    assert before == config_hash(run_config(build_request(values)))
    assert run_config(build_request(values))["dip_config"]["target_range"] == [-1.0, 1.0]
    monkeypatch.setitem(dip_config.PRESETS, "sar2023", {**dip_config.PRESETS["sar2023"], "steps": 2999})
    assert config_hash(run_config(build_request(values))) != before
    plain = build_request({"stac": "x", "out": "y", "engine": "fillnodata"})
    assert "dip_config" not in run_config(plain) and run_config(plain) == plain.config()
