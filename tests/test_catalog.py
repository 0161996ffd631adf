"""The static output catalog grows item by item; pystac reads it back whole."""

from __future__ import annotations

import json
from pathlib import Path

import pystac
import rasterio

from dipfill.cli.main import main
from tests._data import ARG25_FEB, ARG25_JAN


def fill_into(tmp_path: Path, src: Path, root: Path, name: str) -> None:
    rc = main(["fill", str(src), "--out", str(tmp_path / name), "--engine", "fillnodata",
               "--catalog", str(root), "--collection", "arg25 filled"])
    assert rc == 0


def test_catalog_grows_without_rewriting_other_items(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    fill_into(tmp_path, ARG25_JAN, root, "jan")
    first = root / "arg25_filled" / "LS7_ETM_095_082_20100116_B3B4B5_crop512-dipfill"
    first_item = first / f"{first.name}.json"
    before = first_item.read_bytes()
    fill_into(tmp_path, ARG25_FEB, root, "feb")
    assert first_item.read_bytes() == before  # untouched by the second addition

    catalog = pystac.Catalog.from_file(str(root / "catalog.json"))
    items = sorted(catalog.get_items(recursive=True), key=lambda i: i.id)
    assert [i.id for i in items] == [
        "LS7_ETM_095_082_20100116_B3B4B5_crop512-dipfill",
        "LS7_ETM_095_082_20100201_B3B4B5_crop512-dipfill",
    ]
    collection = json.loads((root / "arg25_filled" / "collection.json").read_text())
    assert collection["extent"]["temporal"]["interval"][0] == ["2010-01-16T00:00:00Z", "2010-02-01T00:00:00Z"]
    w, s, e, n = collection["extent"]["spatial"]["bbox"][0]
    assert 141.9 < w < e < 142.8 and -32.5 < s < n < -32.1
    # assets resolve inside the catalog: it is self-contained
    for item in items:
        href = item.assets["filled"].get_absolute_href()
        assert href.startswith(str(root))
        with rasterio.open(href) as ds:
            assert ds.count == 3
    # adding the same item again is idempotent
    fill_into(tmp_path, ARG25_FEB, root, "feb2")
    again = json.loads((root / "arg25_filled" / "collection.json").read_text())
    assert sum(1 for ln in again["links"] if ln["rel"] == "item") == 2
