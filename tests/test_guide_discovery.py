"""Guides found through STAC for `dipfill run` (issue 11, item 2): candidates searched by time
window and footprint, measured by how many of the target's gap pixels they observe (at low
resolution, from their nodata/QA), ranked, and chosen — or the reason there is none.

Against a static catalog built in tmp from the committed ARG25 demo catalog (two real SLC-off
dates of the same place, 16 days apart) plus items made to probe each rule, and against the
real STAC API server fixture holding the same items: the same choice from both.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from dipfill.errors import InputError
from dipfill.pipeline.guides import choose_guides
from dipfill.raster.coverage import (
    gap_fraction_observed,
    lowres_state,
    median_composite,
    observed_fraction_of_gaps,
    observed_on_grid,
)
from dipfill.raster.masks import GAP
from dipfill.raster.scene import open_scene
from dipfill.raster.scene_mask import scene_mask
from dipfill.stac.catalog import collection_with_item, with_item_links
from dipfill.stac.guides import (
    GuideQuery,
    datetime_distance,
    find_guide_candidates,
    footprint_overlap,
    guide_windows,
    search_guide_candidates,
)
from dipfill.stac.publish import absolute_item
from tests._data import DATA

COLLECTION = "ga-arg25-nbar"
JAN = "LS7_ETM_095_082_20100116_crop512"  # the target
FEB = "LS7_ETM_095_082_20100201_crop512"  # the real guide, 16 days later
DECOY = "LS7_ETM_095_082_20100128_decoy"  # 12 days: the target's own files, so it observes none of its gaps
SHIFTED = "LS7_ETM_095_082_20100129_shifted"  # 13 days, footprint moved east: covers ~30 % of the target
LATER = "LS7_ETM_095_082_20100220_later"  # 35 days: February's pixels again, farther in time
FAR = "LS7_ETM_095_082_20100120_far"  # 4 days, 5° east: never found by the footprint search
LAST_YEAR = "LS7_ETM_095_082_20090120_lastyear"  # the same season a year earlier
EXTRAS = (DECOY, SHIFTED, LATER, FAR, LAST_YEAR)


def _moved(geometry: dict, dlon: float) -> dict:
    return {"type": "Polygon", "coordinates": [[[x + dlon, y] for x, y in geometry["coordinates"][0]]]}


def _extra(base: dict, item_id: str, when: str, assets_dir: Path, dlon: float = 0.0) -> dict:
    """A copy of ``base`` with another id and date, its footprint moved ``dlon`` degrees east
    and its assets the band files in ``assets_dir`` (absolute paths)."""
    item = copy.deepcopy(base)
    item["id"] = item_id
    item["properties"]["datetime"] = f"{when}T00:00:00Z"
    if dlon:
        item["geometry"] = _moved(item["geometry"], dlon)
        w, s, e, n = item["bbox"]
        item["bbox"] = [w + dlon, s, e + dlon, n]
    for key, asset in item["assets"].items():
        asset["href"] = str(assets_dir / f"{key}.vrt")
    item["links"] = [ln for ln in item["links"] if ln.get("rel") == "license"]
    return item


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    """The demo catalog copied to tmp (scenes included) with the probing items added."""
    root = tmp_path_factory.mktemp("guides") / "arg25_menindee"
    shutil.copytree(DATA / "arg25_menindee", root)
    coll_dir = root / "stac" / COLLECTION
    items = {i: json.loads((coll_dir / i / f"{i}.json").read_text()) for i in (JAN, FEB)}
    width = items[JAN]["bbox"][2] - items[JAN]["bbox"][0]
    extras = [
        _extra(items[FEB], DECOY, "2010-01-28", coll_dir / JAN),
        _extra(items[FEB], SHIFTED, "2010-01-29", coll_dir / FEB, dlon=0.7 * width),
        _extra(items[FEB], LATER, "2010-02-20", coll_dir / FEB),
        _extra(items[FEB], FAR, "2010-01-20", coll_dir / FEB, dlon=5.0),
        _extra(items[FEB], LAST_YEAR, "2009-01-20", coll_dir / FEB),
    ]
    collection = json.loads((coll_dir / "collection.json").read_text())
    for item in extras:
        (coll_dir / item["id"]).mkdir()
        (coll_dir / item["id"] / f"{item['id']}.json").write_text(json.dumps(with_item_links(item, COLLECTION)))
        collection = collection_with_item(collection, item)
    (coll_dir / "collection.json").write_text(json.dumps(collection))
    return root / "stac" / "catalog.json"


def _item(catalog: Path, item_id: str) -> dict:
    import pystac

    item = pystac.read_file(str(catalog.parent / COLLECTION / item_id / f"{item_id}.json"))
    return item.to_dict(include_self_link=True, transform_hrefs=True)


@pytest.fixture(scope="module")
def target(catalog: Path):
    """The January item, its one-byte state as `dipfill run` masks it, and its grid."""
    item = _item(catalog, JAN)
    source = open_scene(item)
    return item, scene_mask(source).state, source.grid


@pytest.fixture(scope="module")
def truth(catalog: Path, target) -> float:
    """Share of January's gap pixels February observes, at full resolution, every pixel."""
    _, state, _ = target
    valid = open_scene(_item(catalog, FEB)).read().valid.all(axis=0)
    return float(valid[state == GAP].mean())


# ----------------------------------------------------------------------- choosing guides
def test_february_guides_january_with_its_measured_share_of_the_gaps(catalog: Path, target, truth: float) -> None:
    item, state, grid = target
    assert 0.5 < truth < 0.7  # the two dates' stripes differ: February sees ~60 % of January's gaps
    choice = choose_guides(str(catalog), item, state, grid, GuideQuery(max_guides=1))
    assert choice and choice.reason is None
    (guide,) = choice.guides
    assert guide.id == FEB and guide.datetime == "2010-02-01T00:00:00Z" and guide.days_from_target == 16.0
    assert abs(guide.observed_gap_fraction - truth) < 0.03
    assert [i["id"] for i in choice.items] == [FEB]
    record = choice.records()[0]
    assert set(record) >= {"id", "datetime", "days_from_target", "observed_gap_fraction", "cloud_cover"}
    (href,) = choice.derived_from()
    assert href.endswith(f"{FEB}/{FEB}.json")
    assert choice.item_properties()["dipfill:guides"][0]["id"] == FEB
    json.dumps(choice.summary())  # the run summary takes it as it is


def test_ranking_max_guides_and_the_footprint_filter(catalog: Path, target) -> None:
    item, state, grid = target
    choice = choose_guides(str(catalog), item, state, grid, GuideQuery())
    # February and its farther copy observe the same gaps: nearer in time first. The decoy
    # is nearer than both but observes none of the gaps: measured, ranked last, not chosen.
    assert [g.id for g in choice.guides] == [FEB, LATER]
    assert [g.id for g in choice.scored] == [FEB, LATER, DECOY]
    assert choice.scored[-1].observed_gap_fraction == 0.0
    assert choice.scored[0].observed_gap_fraction == choice.scored[1].observed_gap_fraction > 0.5
    # the shifted item is found in the window but covers too little of the footprint; the
    # far one is never found; the target itself is not its own candidate
    found = {c.id: c for c in search_guide_candidates(str(catalog), item, GuideQuery())}
    assert set(found) == {FEB, LATER, DECOY, SHIFTED}
    assert found[SHIFTED].overlap == pytest.approx(0.3, abs=0.02) and found[FEB].overlap == pytest.approx(1.0)
    assert found[DECOY].days_from_target == 12.0
    assert [i["id"] for i in find_guide_candidates(str(catalog), item, GuideQuery())] == [DECOY, FEB, LATER]
    assert [i["id"] for i in find_guide_candidates(str(catalog), item, GuideQuery(min_overlap=0.25))] == [
        DECOY, SHIFTED, FEB, LATER]
    assert choice.found == 4


def test_window_respected_and_reasons_when_no_guide(catalog: Path, target) -> None:
    item, state, grid = target
    none = choose_guides(str(catalog), item, state, grid, GuideQuery(window_days=10))
    assert not none and none.guides == () and none.reason == f"no candidate within ±10 days in {COLLECTION}"
    assert none.item_properties() == {"dipfill:guides": [], "dipfill:guides_reason": none.reason}
    blind = choose_guides(str(catalog), item, state, grid, GuideQuery(window_days=12))
    assert not blind and blind.reason.startswith("candidates observe none of the gaps")
    assert [g.id for g in blind.scored] == [DECOY]
    gapless = choose_guides(str(catalog), item, np.ones_like(state), grid, GuideQuery())
    assert not gapless and "no gap" in gapless.reason


def test_same_season_of_earlier_years_and_median_composites(catalog: Path, target) -> None:
    item, state, grid = target
    one = choose_guides(str(catalog), item, state, grid, GuideQuery(window_days=5, years=1))
    assert [g.id for g in one.guides] == [LAST_YEAR] and one.guides[0].days_from_target == -361.0
    median = choose_guides(str(catalog), item, state, grid, GuideQuery(years=1, composite="median"))
    this_year, last_year = median.guides
    assert set(this_year.members) == {FEB, LATER, DECOY} and this_year.days_from_target == 0.0
    assert last_year.members == (LAST_YEAR,) and last_year.days_from_target == -365.0
    # a composite observes a gap where any member does: the decoy adds nothing to February
    assert this_year.observed_gap_fraction == pytest.approx(one.guides[0].observed_gap_fraction)
    record = median.records()[0]
    assert record["composite"] == "median" and record["id"].startswith("median:2009-11-13/2010-03-21")
    assert {i["id"] for i in median.items} == {FEB, LATER, DECOY, LAST_YEAR}


def test_same_choice_from_the_real_stac_api(stac_api, catalog: Path, target) -> None:
    import httpx

    from dipfill.stac.catalog import new_collection
    from dipfill.stac.publish import publish_to_api
    from dipfill.stac.search import search

    base = httpx.get(f"{stac_api.url}/collections/{COLLECTION}", timeout=30)
    existed = base.status_code == 200
    docs = []
    for item_id in (JAN, FEB, *EXTRAS):
        path = catalog.parent / COLLECTION / item_id / f"{item_id}.json"
        doc = absolute_item(json.loads(path.read_text()), path.parent.resolve().as_uri())
        for asset in doc["assets"].values():  # the probes' absolute paths as file:// URIs too
            if asset["href"].startswith("/"):
                asset["href"] = Path(asset["href"]).as_uri()
        docs.append(doc)
    collection = new_collection(COLLECTION, "ARG25 items for the guide discovery test", "CC-BY-3.0-AU")
    for doc in docs:
        collection = collection_with_item(collection, doc)
    publish_to_api(stac_api.url, collection, docs)
    try:
        item, state, grid = target
        api_jan = next(i for i in search(stac_api.url, collections=[COLLECTION], datetime="2010-01-16")
                       if i["id"] == JAN)
        chosen = {}
        for query in (GuideQuery(), GuideQuery(window_days=10), GuideQuery(years=1, composite="median")):
            static = choose_guides(str(catalog), item, state, grid, query)
            api = choose_guides(stac_api.url, api_jan, state, grid, query)
            assert api.reason == static.reason and api.found == static.found
            assert [g.to_dict() for g in api.scored] == [g.to_dict() for g in static.scored]
            assert [g.to_dict() for g in api.guides] == [g.to_dict() for g in static.guides]
            chosen[query] = [g.id for g in api.guides]
        assert chosen[GuideQuery()] == [FEB, LATER] and chosen[GuideQuery(window_days=10)] == []
        # the API's items carry its own self links: those become the derived_from links
        assert all(h.startswith(stac_api.url) for h in
                   choose_guides(stac_api.url, api_jan, state, grid, GuideQuery()).derived_from())
    finally:  # leave the session's server as it was for other modules
        for doc in docs:
            httpx.delete(f"{stac_api.url}/collections/{COLLECTION}/items/{doc['id']}", timeout=30)
        if not existed:
            httpx.delete(f"{stac_api.url}/collections/{COLLECTION}", timeout=30)


# --------------------------------------------------------------- measuring at low resolution
def test_low_res_sample_grid_sits_on_full_res_pixel_centres() -> None:
    from affine import Affine

    from dipfill.raster.read import Grid

    grid = Grid(crs=None, transform=Affine(25, 0, 1000, 0, -25, 5000), width=1000, height=700)
    state = np.arange(700 * 1000, dtype=np.int64).reshape(700, 1000).astype(np.uint8)
    for side, f in ((256, 4), (100, 10), (1000, 1), (333, 4)):
        small, g = lowres_state(state, grid, side)
        assert max(small.shape) <= side and np.array_equal(small, state[::f, ::f])
        for i, j in ((0, 0), (3, 7), (small.shape[0] - 1, small.shape[1] - 1)):
            assert g.transform @ (j + 0.5, i + 0.5) == pytest.approx(grid.transform @ (j * f + 0.5, i * f + 0.5))
    with pytest.raises(InputError):
        lowres_state(state, grid, 0)


def _cogs(src: Path, out: Path) -> Path:
    """One-band COGs of ``src``'s bands with nearest overviews (2×, 4×, 8×), as a remote
    scene would have them."""
    out.mkdir()
    with rasterio.open(src) as ds:
        profile = {**ds.profile, "driver": "COG", "count": 1, "blocksize": 128, "overview_resampling": "nearest"}
        for band, key in enumerate(("B3", "B4", "B5"), start=1):
            with rasterio.open(out / f"{key}.tif", "w", **profile) as dst:
                dst.write(ds.read(band), 1)
    return out


def test_overviews_are_read_and_sample_the_same_pixels(catalog: Path, target, truth: float, tmp_path: Path,
                                                       monkeypatch) -> None:
    item, state, grid = target
    feb, jan = _item(catalog, FEB), _item(catalog, JAN)
    for it, name in ((feb, "feb"), (jan, "jan")):
        tif = next((catalog.parents[1]).glob(f"LS7_ETM_095_082_2010{'0201' if name == 'feb' else '0116'}_*.tif"))
        cogs = _cogs(tif, tmp_path / name)
        for key, asset in it["assets"].items():
            asset["href"] = str(cogs / f"{key}.tif")
    levels: list[int] = []
    real_open = rasterio.open

    def spy(*args, **kwargs):
        if "overview_level" in kwargs:
            levels.append(kwargs["overview_level"])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(rasterio, "open", spy)
    small, g = lowres_state(state, grid, 64)  # 8×8 blocks
    full = observed_fraction_of_gaps(feb, small, g, max_pixels=1 << 30)
    assert levels == []  # within the budget: full resolution
    cheap = observed_fraction_of_gaps(feb, small, g, max_pixels=20_000)  # 514² px → the 4× overview
    assert levels == [1] * 3  # the second overview (4×) of each band
    assert cheap == full and abs(cheap - truth) < 0.03
    assert observed_fraction_of_gaps(jan, small, g, max_pixels=20_000) == 0.0  # same pixels sampled
    observed = observed_on_grid(feb, g, bands=["B4"], max_pixels=20_000)
    assert observed.shape == small.shape and gap_fraction_observed(observed, small) == pytest.approx(cheap, abs=0.05)


# --------------------------------------------------------------------- pieces, on tiny input
def test_median_composite_of_clear_observations() -> None:
    values = np.array([[[[1, 5]]], [[[3, 7]]], [[[100, 9]]], [[[4, -1]]]], dtype=np.int16)  # K=4, C=1, 1×2
    valid = np.array([[[[1, 1]]], [[[1, 1]]], [[[0, 1]]], [[[1, 0]]]], dtype=bool)
    med, ok = median_composite(values, valid)
    assert med.dtype == np.float32 and med.shape == (1, 1, 2) and ok.all()
    assert med[0, 0, 0] == 3.0  # 1, 3, 4: the odd middle (100 is not clear)
    assert med[0, 0, 1] == 7.0  # 5, 7, 9
    med, ok = median_composite(values[:2], valid[:2] & np.array([True, False])[None, None, None])
    assert med[0, 0, 0] == 2.0 and not ok[0, 0, 1] and np.isnan(med[0, 0, 1])  # even count: mean of the middle two
    with pytest.raises(InputError):
        median_composite(values[0], valid[0])


def test_query_windows_overlap_and_time_distance() -> None:
    utc = dt.timezone.utc
    when = dt.datetime(2012, 2, 29, 12, tzinfo=utc)
    windows = guide_windows(when, GuideQuery(window_days=10, years=2))
    assert windows == (
        (dt.datetime(2012, 2, 19, 12, tzinfo=utc), dt.datetime(2012, 3, 10, 12, tzinfo=utc)),
        (dt.datetime(2011, 2, 18, 12, tzinfo=utc), dt.datetime(2011, 3, 10, 12, tzinfo=utc)),  # 29 Feb → 28
        (dt.datetime(2010, 2, 18, 12, tzinfo=utc), dt.datetime(2010, 3, 10, 12, tzinfo=utc)),
    )
    assert len(guide_windows(when, GuideQuery(window_days=200, years=2))) == 1  # overlapping: one search
    assert datetime_distance({"properties": {"datetime": "2010-01-16T00:00:00Z"}}, "2010-02-01") == dt.timedelta(16)
    square = {"type": "Polygon", "coordinates": [[[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]]]}
    half = {"geometry": _moved(square, 1.0)}
    assert footprint_overlap({"geometry": square}, half) == pytest.approx(0.5)
    assert footprint_overlap({"geometry": square}, {"bbox": [0, 0, 2, 2]}) == pytest.approx(1.0)
    for bad in ({"max_guides": 0}, {"min_overlap": 0}, {"window_days": -1}, {"composite": "mean"},
                {"max_cloud": 101}, {"years": 1.5}):
        with pytest.raises(InputError):
            GuideQuery(**bad)
