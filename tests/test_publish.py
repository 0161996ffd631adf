"""An output item published to a real STAC API, searched back, and loaded by the readers
users have (odc-stac, stackstac): same pixels as the COG, checksums that match the files."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import rasterio

from dipfill.cli.main import main
from dipfill.stac.item import file_checksum
from tests._data import ARG25_JAN


@pytest.fixture(scope="module")
def published(stac_api, tmp_path_factory):
    out = tmp_path_factory.mktemp("publish") / "out"
    rc = main(["fill", str(ARG25_JAN), "--out", str(out), "--engine", "fillnodata",
               "--collection", "dipfill-test", "--publish", stac_api.url])
    assert rc == 0
    return out


def test_item_is_searchable_and_checksums_match(stac_api, published: Path) -> None:
    from pystac_client import Client

    client = Client.open(stac_api.url)
    items = list(client.search(collections=["dipfill-test"], bbox=[142.0, -32.5, 142.8, -32.1],
                               datetime="2010-01-01/2010-01-31").items())
    assert [i.id for i in items] == ["LS7_ETM_095_082_20100116_B3B4B5_crop512-dipfill"]
    item = items[0]
    for key in ("filled", "qa", "quicklook", "patches"):
        asset = item.assets[key]
        assert asset.href.startswith("file:///")
        path = Path(urlparse(asset.href).path)
        assert path.parent == published.resolve()
        assert asset.extra_fields["file:checksum"] == file_checksum(path)
        assert asset.extra_fields["file:size"] == path.stat().st_size
    # republishing is an upsert, not an error or a duplicate
    assert main(["fill", str(ARG25_JAN), "--out", str(published.parent / "again"), "--engine", "fillnodata",
                 "--collection", "dipfill-test", "--publish", stac_api.url]) == 0
    again = list(client.search(collections=["dipfill-test"]).items())
    assert len(again) == 1 and Path(urlparse(again[0].assets["filled"].href).path).parent.name == "again"


def test_odc_stac_and_stackstac_read_the_same_pixels_as_the_cog(stac_api, published: Path) -> None:
    import odc.stac
    import stackstac
    from pystac_client import Client

    item = next(Client.open(stac_api.url).search(collections=["dipfill-test"]).items())
    with rasterio.open(urlparse(item.assets["filled"].href).path) as ds:
        cog = ds.read()
        nodata = ds.nodata
    ds_odc = odc.stac.load([item], bands=["filled"], chunks=None)
    # odc-stac exposes a multi-band asset's first band under the asset name; the others
    # as filled.2, filled.3 when raster:bands lists them
    names = [n for n in ds_odc.data_vars]
    odc_stack = np.stack([ds_odc[n].values[0] for n in names])
    assert odc_stack.shape[-2:] == cog.shape[-2:]
    assert np.array_equal(odc_stack, cog[: len(names)])

    # stackstac takes one band per asset: the item has one-band VRT assets over the COG.
    # It reads proj:epsg, which pystac (>= 1.12) drops on read in favour of proj:code, so
    # hand it the API's JSON as users of pystac-client's items_as_dicts() do.
    raw = next(Client.open(stac_api.url).search(collections=["dipfill-test"]).items_as_dicts())
    assert raw["properties"]["proj:epsg"] == 3577
    arr = stackstac.stack([raw], assets=["filled_1", "filled_2", "filled_3"], dtype="float64",
                          fill_value=np.nan, rescale=False)
    values = arr.isel(time=0).values
    expected = cog.astype("float64")
    expected[cog == nodata] = np.nan
    assert values.shape == expected.shape
    assert np.array_equal(values, expected, equal_nan=True)
