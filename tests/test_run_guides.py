"""`dipfill run` with a guided engine over the committed catalog of two real SLC-off dates
16 days apart: each scene finds the other as its guide through the catalog, the guide
reaches the engine, and the output item says which guide was used. In process
(``LocalPool``): the Ray path is the same task with one more field (tests/test_run.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio

from dipfill.cli.run import build_request
from dipfill.pipeline import run as run_mod
from dipfill.pipeline.executor import LocalPool
from dipfill.raster.masks import QA_ENGINE, QA_FALLBACK, QA_OBSERVED
from dipfill.stac.item import config_hash
from tests._data import DATA

CATALOG = DATA / "arg25_menindee" / "stac" / "catalog.json"
JAN, FEB = "LS7_ETM_095_082_20100116_crop512", "LS7_ETM_095_082_20100201_crop512"


def _run(out: Path, **values):
    request = build_request({"stac": str(CATALOG), "out": str(out), **values})
    pool = LocalPool(request.options.engine, dict(request.options.engine_options), request.options.fallback)
    return request, run_mod.run(request, pool=pool)


def _outputs(out: Path, scene: str) -> tuple[dict, np.ndarray, np.ndarray]:
    folder = next(out.glob(f"*/{scene}-dipfill"))
    item = json.loads((folder / f"{scene}-dipfill.json").read_text())
    with rasterio.open(folder / f"{scene}-dipfill_filled.tif") as ds:
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
