"""Every STAC document dipfill writes validates against the JSON schemas it declares,
offline (tests/schemas/, tests/_schemas.py): the item of `dipfill fill` on the real crop,
and the item, collection and catalog of `dipfill run` over the demo's static catalog."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from dipfill.cli.main import main
from tests._data import ARG25_JAN, DATA
from tests._schemas import schema_urls, validation_errors

CATALOG = DATA / "arg25_menindee" / "stac" / "catalog.json"
PROJECTION_V2 = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"


def item_json(out: Path) -> dict:
    (path,) = [p for p in out.glob("*.json") if not p.name.endswith("_patches.json")]
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def fill_item(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("schemas") / "out"
    assert main(["fill", str(ARG25_JAN), "--out", str(out), "--engine", "fillnodata"]) == 0
    return item_json(out)


def test_fill_item_validates_against_every_schema_it_declares(fill_item: dict) -> None:
    urls = schema_urls(fill_item)
    assert PROJECTION_V2 in urls and len(urls) == 6  # core + projection, raster, processing, file, classification
    assert validation_errors(fill_item) == []


def test_projection_is_proj_code_not_the_removed_proj_epsg(fill_item: dict) -> None:
    """projection v2.0.0 removed ``proj:epsg``; its schema forbids unknown ``proj:`` fields."""
    assert fill_item["properties"]["proj:code"] == "EPSG:3577"
    assert "proj:epsg" not in fill_item["properties"]
    assert not [k for a in fill_item["assets"].values() for k in a if k == "proj:epsg"]


def test_the_validator_rejects_what_the_schemas_forbid(fill_item: dict) -> None:
    """The check is not vacuous: ``proj:epsg`` under projection v2, a missing core field and
    a bad ``file:checksum`` each fail."""
    with_epsg = copy.deepcopy(fill_item)
    with_epsg["properties"]["proj:epsg"] = 3577
    assert any(e.startswith(PROJECTION_V2) for e in validation_errors(with_epsg))
    no_datetime = copy.deepcopy(fill_item)
    del no_datetime["properties"]["datetime"]
    assert validation_errors(no_datetime)
    bad_checksum = copy.deepcopy(fill_item)
    bad_checksum["assets"]["filled"]["file:checksum"] = "not hex"
    assert any("file/v2.1.0" in e for e in validation_errors(bad_checksum))


def test_run_outputs_validate(tmp_path: Path) -> None:
    """`dipfill run` over the demo catalog (one scene, fillnodata): item, collection, catalog."""
    from dipfill.pipeline.ray_executor import stop_ray

    out = tmp_path / "out"
    try:
        rc = main(["run", "--stac", str(CATALOG), "--datetime", "2010-01-01/2010-01-31", "--out", str(out),
                   "--engine", "fillnodata"])
    finally:
        stop_ray()
    assert rc == 0
    (item_path,) = out.glob("*/*-dipfill/*-dipfill.json")
    item = json.loads(item_path.read_text())
    assert "proj:epsg" not in item["properties"] and item["properties"]["proj:code"] == "EPSG:3577"
    assert validation_errors(item) == []
    catalog = json.loads((out / "catalog.json").read_text())
    assert validation_errors(catalog) == []
    (collection_path,) = out.glob("*/collection.json")
    assert validation_errors(json.loads(collection_path.read_text())) == []
