"""Paths to real test rasters: the small crops committed in data/, and ../shared/data.

Tests that need ../shared/data (not shipped to users) say so and skip cleanly without it
via :func:`shared_file`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
ARG25_JAN = DATA / "arg25_menindee" / "LS7_ETM_095_082_20100116_B3B4B5_crop512.tif"
ARG25_FEB = DATA / "arg25_menindee" / "LS7_ETM_095_082_20100201_B3B4B5_crop512.tif"
SHARED = Path(os.environ.get("DIPFILL_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or skip the test (users of the project do not have it)."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"needs ../shared/data/{relative} (team test data, not shipped)")
    return path


def arg25_transplant(rows: slice = slice(128, 384), cols: slice = slice(128, 384), *, reverse: bool = False):
    """The February crop with January's real SLC-off gaps transplanted onto it (or, with
    ``reverse``, January with February's gaps and cloud shadows): truth known under the gaps."""
    import rasterio

    from dipfill.eval.cases import transplant_gaps

    stacks = []
    for path in (ARG25_JAN, ARG25_FEB):
        with rasterio.open(path) as src:
            data = src.read(window=((rows.start, rows.stop), (cols.start, cols.stop)))
            stacks.append((data, data != src.nodata))
    (jan, jan_valid), (feb, feb_valid) = stacks
    if reverse:
        return transplant_gaps(jan, jan_valid, feb_valid)
    return transplant_gaps(feb, feb_valid, jan_valid)


def static_catalog(root: Path, collection: str, items: list) -> Path:
    """``items`` (pystac Items) as one collection of a self-contained static catalog written
    under ``root``; returns its catalog.json (what ``dipfill run --stac`` takes)."""
    import pystac

    cat = pystac.Catalog("test", "test scenes as a static catalog")
    coll = pystac.Collection(collection, collection, extent=pystac.Extent.from_items(items))
    cat.add_child(coll)
    coll.add_items(items)
    cat.normalize_hrefs(str(root))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"
