"""Raster I/O: the only room that opens, reads and writes pixels (rasterio/GDAL, Zarr).

* :mod:`~dipfill.raster.read` — local rasters: grids, validity, user masks, footprints;
* :mod:`~dipfill.raster.scene` — a STAC item's assets as one scene on one grid, read in windows;
* :mod:`~dipfill.raster.masks` — the three-state mask and the QA-layer decoders (numpy);
* :mod:`~dipfill.raster.write` — COG, Zarr mosaic, quicklook, one-band VRTs;
* :mod:`~dipfill.raster.geometry` — a footprint mask as a GeoJSON geometry;
* :mod:`~dipfill.raster.guides` — guide rasters read onto the target grid;
* :mod:`~dipfill.raster.coverage` — which of a scene's gaps a candidate guide observes;
* :mod:`~dipfill.raster.scene_mask`, :mod:`~dipfill.raster.gdal` — the strip-read mask, GDAL settings.

Submodules are imported where used: importing :mod:`dipfill.raster.masks` does not load GDAL.
"""
