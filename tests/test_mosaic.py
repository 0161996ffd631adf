"""The Zarr mosaic of `dipfill fill` on the real crop, as readers open it: xarray gets a
georeferenced Dataset (x/y pixel-centre coordinates, a CF ``spatial_ref`` grid mapping
that rioxarray and odc-geo read)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio

from dipfill.cli.main import main
from tests._data import ARG25_JAN


def item_of(out: Path, stem: str) -> dict:
    return json.loads((out / f"{stem}-dipfill.json").read_text())


def mosaic_of(out: Path, stem: str) -> tuple[Path, Path]:
    """(mosaic, filled COG) of the scene ``stem`` in ``out``, as its item lists them."""
    assets = item_of(out, stem)["assets"]
    return out / assets["mosaic"]["href"], out / assets["filled"]["href"]


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mosaic") / "out"
    assert main(["fill", str(ARG25_JAN), "--out", str(out), "--engine", "fillnodata"]) == 0
    return out


def test_xarray_opens_a_georeferenced_mosaic(filled: Path) -> None:
    xr = pytest.importorskip("xarray")
    mosaic, cog = mosaic_of(filled, ARG25_JAN.stem)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # e.g. "failed to open with consolidated metadata"
        ds = xr.open_zarr(mosaic)
    with rasterio.open(cog) as f:
        data, crs, transform, (height, width) = f.read(), f.crs, f.transform, f.shape
    assert ds["bands"].dims == ("band", "y", "x") and ds["qa"].dims == ("y", "x")
    assert {"x", "y", "band", "spatial_ref"} <= set(ds.coords)
    # pixel centres of the COG's transform
    assert np.allclose(ds["x"].values, transform.c + transform.a * (np.arange(width) + 0.5), rtol=0, atol=1e-6)
    assert np.allclose(ds["y"].values, transform.f + transform.e * (np.arange(height) + 0.5), rtol=0, atol=1e-6)
    assert ds["band"].values.tolist() == [1, 2, 3]
    ref = ds["spatial_ref"].attrs
    assert rasterio.crs.CRS.from_wkt(ref["crs_wkt"]) == crs and ref["spatial_ref"] == ref["crs_wkt"]
    assert [float(v) for v in ref["GeoTransform"].split()] == list(transform.to_gdal())
    for name in ("bands", "qa"):
        assert ds[name].encoding.get("grid_mapping", ds[name].attrs.get("grid_mapping")) == "spatial_ref"
    assert np.array_equal(ds["bands"].values, data)


def test_odc_geo_and_rioxarray_read_the_grid(filled: Path) -> None:
    xr = pytest.importorskip("xarray")
    mosaic, cog = mosaic_of(filled, ARG25_JAN.stem)
    ds = xr.open_zarr(mosaic)
    with rasterio.open(cog) as f:
        crs, transform, shape = f.crs, f.transform, f.shape
    pytest.importorskip("odc.geo.xr")
    geobox = ds["bands"].odc.geobox
    assert geobox is not None and geobox.crs.epsg == crs.to_epsg() == 3577
    assert geobox.shape == shape and tuple(geobox.affine)[:6] == pytest.approx(tuple(transform)[:6])
    try:
        import rioxarray  # noqa: F401  (optional: not a dependency)
    except ImportError:
        return
    assert ds["bands"].rio.crs == crs
    assert tuple(ds["bands"].rio.transform())[:6] == pytest.approx(tuple(transform)[:6])


def test_two_scenes_filled_into_one_out_each_keep_their_own_mosaic(tmp_path: Path) -> None:
    """One mosaic per scene, named after the item: a second fill into the same --out never
    takes over the first item's mosaic."""
    import zarr

    from tests._data import ARG25_FEB

    out = tmp_path / "out"
    for src in (ARG25_JAN, ARG25_FEB):
        assert main(["fill", str(src), "--out", str(out), "--engine", "fillnodata"]) == 0
    hrefs = set()
    for src in (ARG25_JAN, ARG25_FEB):
        mosaic, cog = mosaic_of(out, src.stem)
        with rasterio.open(cog) as f:
            assert np.array_equal(zarr.open_group(str(mosaic), mode="r")["bands"][...], f.read()), src.name
        assert mosaic.name == f"{src.stem}-dipfill_mosaic.zarr"
        hrefs.add(mosaic.name)
    assert len(hrefs) == 2
