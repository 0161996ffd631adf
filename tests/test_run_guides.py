"""`dipfill run` with a guided engine over the committed catalog of two real SLC-off dates
16 days apart: each scene finds the other as its guide through the catalog, the guide
reaches the engine, and the output item says which guide was used; a resumed scene keeps
the guides its fitted patches used, whatever the catalog offers since. In process
(``LocalPool``): the Ray path is the same task with one more field (tests/test_run.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from dipfill.cli.run import build_request
from dipfill.pipeline import run as run_mod
from dipfill.pipeline.executor import LocalPool
from dipfill.raster.masks import QA_ENGINE, QA_FALLBACK, QA_OBSERVED
from dipfill.stac.item import config_hash
from tests._data import DATA

CATALOG = DATA / "arg25_menindee" / "stac" / "catalog.json"
JAN, FEB = "LS7_ETM_095_082_20100116_crop512", "LS7_ETM_095_082_20100201_crop512"
NEAR = "LS7_ETM_095_082_20100120_crop512"  # made by _add_near_guide: 4 days from JAN, FEB's gaps


def _run(out: Path, *, stac: Path = CATALOG, progress=None, stop_after_batches: int | None = None, **values):
    request = build_request({"stac": str(stac), "out": str(out), **values})
    pool = LocalPool(request.options.engine, dict(request.options.engine_options), request.options.fallback)
    return request, run_mod.run(request, pool=pool, progress=progress, stop_after_batches=stop_after_batches)


def _outputs(out: Path, scene: str) -> tuple[dict, np.ndarray, np.ndarray]:
    folder = next(out.glob(f"*/{scene}-dipfill"))
    item = json.loads((folder / f"{scene}-dipfill.json").read_text())
    with rasterio.open(folder / f"{scene}-dipfill_filled.vrt") as ds:
        filled = ds.read()
    with rasterio.open(folder / f"{scene}-dipfill_qa.tif") as ds:
        qa = ds.read(1)
    return item, filled, qa


def test_each_scene_is_guided_by_the_other_date(tmp_path: Path) -> None:
    request, summary = _run(tmp_path / "out", engine="guided", max_guides=1)
    assert [s.status for s in summary.scenes] == ["done", "done"]
    for scene, other in ((JAN, FEB), (FEB, JAN)):
        status = next(s for s in summary.scenes if s.id == scene)
        assert [g["id"] for g in status.guides["guides"]] == [other]
        assert "guides" in status.timings
        item, filled, qa = _outputs(tmp_path / "out", scene)
        props = item["properties"]
        assert [g["id"] for g in props["dipfill:guides"]] == [other]
        assert 0.3 < props["dipfill:guides"][0]["observed_gap_fraction"] <= 1.0
        derived = [ln["href"] for ln in item["links"] if ln["rel"] == "derived_from"]
        assert any(h.endswith(f"{other}.json") for h in derived) and any(h.endswith(f"{scene}.json") for h in derived)
        assert props["dipfill:run_config"]["guide_search"]["max_guides"] == 1
        # the guided engine filled the gaps; observed pixels are the source's, bit for bit
        with rasterio.open(DATA / "arg25_menindee" / f"{scene[:24]}_B3B4B5_crop512.tif") as ds:
            source = ds.read()
        observed = qa == QA_OBSERVED
        assert np.array_equal(filled[:, observed], source[:, observed])
        assert ((qa == QA_ENGINE) | (qa == QA_FALLBACK)).sum() == props["dipfill:counts"]["filled"] + \
            props["dipfill:counts"]["filled_fallback"] > 0
        patches = json.loads(next((tmp_path / "out").glob(f"*/{scene}-dipfill/*_patches.json")).read_text())
        engine_patches = [p for p in patches if p["engine"] == "guided"]
        assert engine_patches and all(p["extra"]["guides"] == 1 for p in engine_patches)
    assert summary.config_hash == config_hash(request.config(with_guides=True))


def test_no_guide_in_the_window_fills_without_one_and_says_why(tmp_path: Path) -> None:
    _, summary = _run(tmp_path / "out", engine="llhm", guide_window=5, max_scenes=1)
    status = summary.scenes[0]
    assert status.status == "done" and status.guides["guides"] == []
    assert "±5 days" in status.guides["reason"]
    item, _, _ = _outputs(tmp_path / "out", status.id)
    assert item["properties"]["dipfill:guides"] == []
    assert "±5 days" in item["properties"]["dipfill:guides_reason"]


def test_engines_without_guides_keep_their_config_hash(tmp_path: Path) -> None:
    request = build_request({"stac": str(CATALOG), "out": str(tmp_path), "engine": "fillnodata"})
    assert run_mod.run_config(request) == request.config()
    assert "guide_search" not in run_mod.run_config(request)
    none = build_request({"stac": str(CATALOG), "out": str(tmp_path), "engine": "guided", "guides": "none"})
    assert "guide_search" not in run_mod.run_config(none)


def test_a_median_composite_guide_is_the_median_of_its_members(tmp_path: Path) -> None:
    from dipfill.raster.coverage import median_composite
    from dipfill.raster.guides import open_item_guide, read_guides
    from dipfill.raster.scene import open_scene

    items = {}
    for path in CATALOG.parent.glob("*/*/*.json"):
        if path.parent.name in (JAN, FEB):
            item = json.loads(path.read_text())
            item["links"] = [ln for ln in item.get("links", []) if ln.get("rel") != "self"]
            item["links"].append({"rel": "self", "href": str(path)})  # relative asset hrefs resolve here
            items[path.parent.name] = item
    grid = open_scene(items[JAN]).grid
    both = open_item_guide([items[FEB], items[JAN]], grid)
    window = ((100, 300), (50, 260))
    values, valid = read_guides([both], window)
    reads = [open_scene(items[k], grid=grid).read_pixels(window) for k in (FEB, JAN)]
    want, want_valid = median_composite(np.stack([r[0] for r in reads]), np.stack([r[1] for r in reads]))
    assert np.array_equal(valid, want_valid)
    assert np.array_equal(values[valid], want[valid].astype(np.float32))
    assert valid.mean() > (reads[0][1].mean() + 0.05)  # the members fill each other's stripes

    # and through dipfill run: the window's items as one guide, recorded as a composite
    _, summary = _run(tmp_path / "out", engine="guided", guide_composite="median", max_scenes=1)
    status = summary.scenes[0]
    assert status.status == "done"
    (guide,) = status.guides["guides"]
    assert guide["composite"] == "median" and guide["members"] == [FEB if status.id == JAN else JAN]


# ---------------------------------------------------------------- resume with a changed catalog
#: JAN alone as the scene (the guide search is not limited by --datetime), one guide,
#: one patch per batch so that an interrupted run leaves some patches fitted.
RESUMABLE = {"engine": "guided", "max_guides": 1, "batch_size": 1, "datetime": "2010-01-10/2010-01-18"}


def _writable_catalog(root: Path) -> Path:
    """A copy of the committed catalog under ``root`` (its VRTs point three levels up, at
    the crops, which are copied there too)."""
    shutil.copytree(CATALOG.parent, root / "stac")
    for tif in (DATA / "arg25_menindee").glob("*.tif"):
        shutil.copy(tif, root / tif.name)
    return root / "stac" / "catalog.json"


def _add_near_guide(catalog: Path) -> None:
    """Add NEAR: FEB's pixels plus noise, dated 4 days after JAN. It observes JAN's gaps as
    FEB does and is nearer in time, so it ranks first; its pixels differ, so a scene guided
    by it differs."""
    collection = catalog.parent / "ga-arg25-nbar"
    with rasterio.open(catalog.parent.parent / f"{FEB[:24]}_B3B4B5_crop512.tif") as ds:
        data, profile = ds.read(), ds.profile
    noise = np.random.default_rng(0).normal(0, 400, data.shape)
    data = np.where(data == -999, data, np.clip(data + noise, 0, 10000)).astype(data.dtype)
    with rasterio.open(catalog.parent.parent / f"{NEAR[:24]}_B3B4B5_crop512.tif", "w", **profile) as ds:
        ds.write(data)
    folder = collection / NEAR
    folder.mkdir()
    for vrt in (collection / FEB).glob("*.vrt"):
        (folder / vrt.name).write_text(vrt.read_text().replace(FEB[:24], NEAR[:24]))
    item = json.loads((collection / FEB / f"{FEB}.json").read_text())
    item["id"], item["properties"]["datetime"] = NEAR, "2010-01-20T00:00:00Z"
    (folder / f"{NEAR}.json").write_text(json.dumps(item))
    doc = json.loads((collection / "collection.json").read_text())
    doc["links"].append({"rel": "item", "href": f"./{NEAR}/{NEAR}.json", "type": "application/geo+json"})
    (collection / "collection.json").write_text(json.dumps(doc))


def _scene_files(out: Path, scene: str) -> tuple[dict, bytes, bytes]:
    """The output item (less what differs between two runs of one request: when it was made
    and the checksum of the per-patch timings) and the bytes of the band and QA COGs."""
    folder = next(out.glob(f"*/{scene}-dipfill"))
    item = json.loads((folder / f"{scene}-dipfill.json").read_text())
    item["properties"].pop("processing:datetime")
    for key in ("file:checksum", "file:size"):
        item["assets"]["patches"].pop(key, None)
    return (item, b"".join((folder / f"{scene}-dipfill_{band}.tif").read_bytes() for band in ("B3", "B4", "B5")),
            (folder / f"{scene}-dipfill_qa.tif").read_bytes())


def test_a_resumed_scene_keeps_its_recorded_guides_when_the_catalog_gains_a_better_one(tmp_path: Path) -> None:
    catalog = _writable_catalog(tmp_path)
    _, whole = _run(tmp_path / "whole", stac=catalog, **RESUMABLE)
    assert [s.id for s in whole.scenes] == [JAN] and [g["id"] for g in whole.scenes[0].guides["guides"]] == [FEB]
    with pytest.raises(run_mod.RunInterrupted):
        _run(tmp_path / "resumed", stac=catalog, stop_after_batches=2, **RESUMABLE)
    (store,) = (tmp_path / "resumed").glob(f"*/{JAN}-dipfill/patches.zarr")
    recorded = json.loads((store / "guides.json").read_text())
    assert [g["id"] for g in recorded["guides"]] == [FEB] and recorded["guides"][0]["items"][0]["id"] == FEB

    _add_near_guide(catalog)
    # the catalog now ranks NEAR first: a scene started afresh takes it and fills differently
    _, fresh = _run(tmp_path / "fresh", stac=catalog, **RESUMABLE)
    assert [g["id"] for g in fresh.scenes[0].guides["guides"]] == [NEAR]
    assert _scene_files(tmp_path / "fresh", JAN)[1] != _scene_files(tmp_path / "whole", JAN)[1]

    events: list[dict] = []
    _, again = _run(tmp_path / "resumed", stac=catalog, progress=events.append, **RESUMABLE)
    (status,) = again.scenes
    assert status.status == "done" and status.patches_resumed >= 2 and 0 < status.patches_fitted < status.patches
    assert status.guides == whole.scenes[0].guides  # the recorded choice, not a new search
    (said,) = [e for e in events if e["event"] == "guides"]
    assert [g["id"] for g in said["guides"]] == [FEB] and not said.get("restarted")
    # the bytes of the uninterrupted run with the original catalog, and an item that says so
    item, filled, qa = _scene_files(tmp_path / "resumed", JAN)
    assert (item, filled, qa) == _scene_files(tmp_path / "whole", JAN)
    assert [g["id"] for g in item["properties"]["dipfill:guides"]] == [FEB]
    derived = [ln["href"] for ln in item["links"] if ln["rel"] == "derived_from"]
    assert any(h.endswith(f"{FEB}.json") for h in derived) and not any(NEAR in h for h in derived)
    assert not store.exists()


def test_a_resumed_scene_whose_recorded_guide_is_gone_starts_over_and_says_so(tmp_path: Path) -> None:
    catalog = _writable_catalog(tmp_path)
    with pytest.raises(run_mod.RunInterrupted):
        _run(tmp_path / "out", stac=catalog, stop_after_batches=2, **RESUMABLE)
    # NEAR arrives; FEB, the recorded guide, leaves the catalog with its files
    _add_near_guide(catalog)
    collection = catalog.parent / "ga-arg25-nbar"
    shutil.rmtree(collection / FEB)
    doc = json.loads((collection / "collection.json").read_text())
    doc["links"] = [ln for ln in doc["links"] if FEB not in ln["href"]]
    (collection / "collection.json").write_text(json.dumps(doc))

    events: list[dict] = []
    _, again = _run(tmp_path / "out", stac=catalog, progress=events.append, **RESUMABLE)
    (status,) = again.scenes
    # nothing fitted with FEB is kept: every patch is fitted again, with the guide chosen now
    assert status.status == "done" and status.patches_resumed == 0 and status.patches_fitted == status.patches
    restarted, chosen = [e for e in events if e["event"] == "guides"]
    assert restarted["restarted"] and restarted["patches_discarded"] >= 2
    assert "starts over" in restarted["msg"] and "can no longer be read" in restarted["reason"]
    assert [g["id"] for g in chosen["guides"]] == [NEAR] == [g["id"] for g in status.guides["guides"]]
    # the same bytes as a scene that never saw FEB
    _, fresh = _run(tmp_path / "fresh", stac=catalog, **RESUMABLE)
    assert [g["id"] for g in fresh.scenes[0].guides["guides"]] == [NEAR]
    assert _scene_files(tmp_path / "out", JAN) == _scene_files(tmp_path / "fresh", JAN)


def test_a_guide_choice_survives_its_json_record(tmp_path: Path) -> None:
    from dipfill.pipeline.guides import GuideChoice, GuideRecord
    from dipfill.pipeline.patchstore import PatchStore
    from dipfill.stac.guides import GuideQuery

    items = [{"id": i, "collection": "c", "links": [{"rel": "self", "href": f"/cat/{i}.json"}],
              "properties": {"datetime": "2010-01-01T00:00:00Z"}} for i in ("a", "b", "c")]
    median = GuideRecord("median:2009-12-01/2010-01-31", "2010-01-01T00:00:00Z", -15.333333333333334, 0.8123456789,
                         12.5, "median", ("a", "b"), ("2009-12-01T00:00:00Z", "2010-01-31T00:00:00Z"), tuple(items[:2]))
    single = GuideRecord("c", "2010-01-02T00:00:00Z", 1 / 3, 0.1, None, items=(items[2],))
    choice = GuideChoice((median, single), None, GuideQuery(max_guides=2, composite="median", years=1),
                         scored=(median, single), skipped=("d: unreadable",), found=4)
    store = PatchStore.open(tmp_path / "patches.zarr", 2, 3, 8, "hash")
    assert store.recorded_guides() is None
    store.record_guides(choice.to_json())
    back = GuideChoice.from_json(PatchStore.open(tmp_path / "patches.zarr", 2, 3, 8, "hash").recorded_guides())
    assert back == choice and back.summary() == choice.summary() and back.items == choice.items
    assert back.derived_from() == ("/cat/a.json", "/cat/b.json", "/cat/c.json")
    assert [g.window for g in back.guides] == [median.window, None]
    # a store reset for another configuration forgets the choice with its patches
    assert PatchStore.open(tmp_path / "patches.zarr", 2, 3, 8, "other").recorded_guides() is None
