"""Guides: other rasters of the same ground (another date, another sensor) read onto the
target grid, with their own gaps known, for engines that use them as evidence.

A guide is any raster GDAL reads, on any grid, CRS or resolution. :func:`open_guide`
checks it once (it exists, GDAL opens it, it can be placed on the target grid, the bands
exist, it overlaps the target) and returns a :class:`GuideSource`: a small frozen
description (href, target grid, bands, resampling) with no open dataset, which pickles to
a worker. :func:`read_guides` reads any target-grid window of one or more guides as
``values float32[G, h, w]`` (0 where not valid) and ``valid bool[G, h, w]``.

Validity. A guide pixel is evidence when GDAL's mask says so (its nodata value, an
internal mask or an alpha band; or ``nodata`` given here instead of the file's) and it is
finite. On resampling, a target pixel is valid only when *every* guide pixel its
resampling kernel draws on (with a weight of at least ``1e-3``) is valid. GDAL's warper
alone does not do that: with a source nodata it renormalises the kernel over the valid
taps, so a target pixel next to a guide gap gets a value made from the pixels on one side
of it (tested in ``tests/test_guides.py``), and a NaN without a declared nodata smears over
the kernel's whole support. So the guide's values (zeroed where invalid) and its 0/1
validity are warped together with the same kernel and no nodata, and a target pixel is
kept where the warped validity is 1; its value is the warped values divided by it (the
kernel's weighted mean of valid taps). Only kernels that are weighted means are offered
(:data:`dipfill.specs.GUIDE_RESAMPLINGS`); nearest keeps the guide's values exactly.

Grids. A guide on the target's own pixel lattice (same CRS and pixel size, an origin a
whole number of pixels away: the same raster, or a larger scene that contains it) is read
directly, bit-exact, no resampling. Any other guide is warped with GDAL (its approximate
transformer, within 1/8 pixel) in fixed 256-pixel blocks of the target grid, each from the
source window its kernel needs, in float32: a target pixel's guide value does not depend on
which window it was read in (tested), so batches, resumed runs, `dipfill fill` and
`dipfill run` see the same bytes. Recent blocks are kept per process, up to 64 MB (a
worker reading overlapping windows warps each block once).

Masks. A guide may come with a mask raster (``--guide-mask``: clouds, shadows of another
date): non-zero marks the guide's own gaps, as ``--mask`` marks the target's. A mask pixel
that is itself nodata or outside the mask file leaves the guide pixel as it is. The mask is
any raster GDAL reads, on any grid or CRS: it is read onto the *guide's* own grid with
nearest resampling (as a one-band nearest :class:`GuideSource` of that grid, by the same
reader) and removes those guide pixels before the guide's kernel sees them, so a target
pixel whose kernel reaches a masked guide pixel is not valid either, as for any guide gap.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.errors import InputError, SceneReadError
from dipfill.raster.gdal import gdal_env
from dipfill.raster.hrefs import redact_href
from dipfill.raster.coverage import median_composite
from dipfill.raster.read import Grid, Scene, acquisition_date, open_raster
from dipfill.raster.scene import open_scene
from dipfill.specs import GUIDE_RESAMPLINGS
from dipfill.stac.item import self_href

__all__ = [
    "GuideSource", "ItemGuide", "open_guide", "open_item_guide", "read_guides", "guide_band_counts", "MIN_SUPPORT",
    "BLOCK",
]

log = logging.getLogger(__name__)

#: A resampled guide pixel is valid when the kernel weight of its valid sources is within
#: this of 1 (all of it): a source gap of smaller weight is ignored.
MIN_SUPPORT = 1.0 - 1e-3

#: Side of the target-grid blocks a warped guide is computed in (pixels).
BLOCK = 256

#: Source pixels a kernel reaches beyond a target pixel's centre, per unit of scale.
_RADIUS = {"nearest": 1, "bilinear": 1, "average": 1, "cubic": 2, "cubic_spline": 2, "lanczos": 3}


@dataclass(frozen=True)
class GuideSource:
    """One guide raster as the target grid sees it. Holds no open dataset: cheap to pickle
    to a worker, hashable; :func:`read_guides` reads its windows.

    ``href`` is what rasterio opens (an absolute path, a URL or a /vsi path; it may carry
    a signature: show :meth:`record`'s href, never this one). ``grid`` is the *target*
    grid. ``bands`` are the guide's 1-based band indexes, in order. ``nodata`` replaces
    the file's nodata when given. ``datetime`` (ISO date, from the file's tags or name)
    and ``band_names`` describe it for the output item.
    """

    href: str
    grid: Grid
    bands: tuple[int, ...]
    resampling: str = "bilinear"
    nodata: float | None = None
    datetime: str | None = None
    band_names: tuple[str, ...] = ()
    gdal_options: tuple[tuple[str, str], ...] = ()
    #: The guide's gap mask (non-zero: not evidence), a one-band nearest source on the
    #: guide's own grid (see the module doc), or None.
    mask: GuideSource | None = None

    @property
    def count(self) -> int:
        """Bands this guide contributes to ``guides[:, G]``."""
        return len(self.bands)

    def record(self) -> dict[str, Any]:
        """How the output item lists this guide (``dipfill:guides``): secrets removed."""
        rec: dict[str, Any] = {
            "href": redact_href(self.href),
            "datetime": self.datetime,
            "bands": list(self.bands),
            "resampling": self.resampling,
        }
        if self.nodata is not None:
            rec["nodata"] = self.nodata
        if self.mask is not None:
            rec["mask"] = redact_href(self.mask.href)
        return rec


def guide_band_counts(guides: Sequence[GuideSource]) -> tuple[int, ...]:
    """The engines' ``guide_bands``: bands per guide, in rank order."""
    return tuple(g.count for g in guides)


# ------------------------------------------------------------------------------ opening
def _local(href: str) -> bool:
    return "://" not in href and not href.startswith("/vsi")


def _aligned_offset(crs: Any, transform: Any, grid: Grid) -> tuple[int, int] | None:
    """``(dr, dc)`` when a raster with ``crs``/``transform`` shares the target's pixel lattice
    (guide pixel ``(r + dr, c + dc)`` is target pixel ``(r, c)``), else None."""
    if crs is not None and grid.crs is not None and crs != grid.crs:
        return None
    t, g = transform, grid.transform
    if not all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
               for x, y in zip((t.a, t.b, t.d, t.e), (g.a, g.b, g.d, g.e))):
        return None
    if t.b != 0 or t.d != 0:
        return (0, 0) if t.almost_equals(g, precision=1e-9) else None
    dc, dr = (g.c - t.c) / t.a, (g.f - t.f) / t.e
    if abs(dc - round(dc)) > 1e-6 or abs(dr - round(dr)) > 1e-6:
        return None
    return int(round(dr)), int(round(dc))


def open_guide(
    href: str,
    grid: Grid,
    *,
    bands: Sequence[int] | None = None,
    resampling: str = "bilinear",
    nodata: float | None = None,
    gdal_options: Mapping[str, str] | None = None,
    mask: str | None = None,
) -> GuideSource:
    """Check ``href`` as a guide for the target ``grid`` and describe it.

    ``bands``: 1-based band indexes (default all). ``resampling``: one of
    :data:`~dipfill.specs.GUIDE_RESAMPLINGS`. ``nodata``: use this instead of the file's
    nodata. ``mask``: a raster whose non-zero pixels are the guide's own gaps (any grid or
    CRS; see the module doc), checked like the guide. Raises :class:`SceneReadError`
    (missing, not a raster) or :class:`InputError` (cannot be placed on the grid, bands
    out of range, no overlap) naming the file and the fix. Only the headers are read.
    """
    if resampling not in GUIDE_RESAMPLINGS:
        raise InputError(f"guide resampling must be one of {', '.join(GUIDE_RESAMPLINGS)}, got {resampling!r}")
    options = dict(gdal_options or {})
    source, header = _open_source(href, grid, "guide", bands=bands, resampling=resampling, nodata=nodata,
                                  options=options)
    if mask is None:
        return source
    crs, transform, width, height = header
    # the guide's own grid: where its mask applies (a guide without a CRS lies on the target's lattice)
    own = Grid(crs if crs is not None else grid.crs, transform, width, height)
    checked, (mcrs, mtransform, _, _) = _open_source(mask, grid, "guide mask", bands=(1,), resampling="nearest",
                                                     nodata=None, options=options)
    if _aligned_offset(mcrs, mtransform, own) is None and (mcrs is None or own.crs is None):
        raise InputError(f"guide mask {redact_href(checked.href)}: it has no CRS and is not on the pixel grid of "
                         f"guide {redact_href(source.href)}, so it cannot be placed on it; give it a CRS "
                         "(gdal_edit.py -a_srs EPSG:...)")
    return replace(source, mask=replace(checked, grid=own, datetime=None, band_names=()))


def _open_source(href: str, grid: Grid, what: str, *, bands: Sequence[int] | None, resampling: str,
                 nodata: float | None, options: dict[str, str]) -> tuple[GuideSource, tuple[Any, Any, int, int]]:
    """:func:`open_guide`'s checks of one file (``what``: "guide" or "guide mask", for the
    messages) and its ``(crs, transform, width, height)``."""
    if _local(href) and os.path.exists(href):
        href = os.path.abspath(href)
    name = redact_href(href)
    with gdal_env(options), open_raster(href, what) as ds:
        count, crs, transform, tags = ds.count, ds.crs, ds.transform, dict(ds.tags())
        descriptions = ds.descriptions
        bounds, width, height = ds.bounds, ds.width, ds.height
    chosen = tuple(int(b) for b in bands) if bands else tuple(range(1, count + 1))
    outside = [b for b in chosen if not 1 <= b <= count]
    if outside:
        raise InputError(f"{what} {name}: band {outside[0]} does not exist (it has {count} band"
                         f"{'s' if count != 1 else ''}: 1..{count}); fix --guide-bands")
    offset = _aligned_offset(crs, transform, grid)
    if offset is None and (crs is None or grid.crs is None):
        which = "it has no CRS" if crs is None else "the target has no CRS"
        raise InputError(f"{what} {name}: {which} and the {what} is not on the target's pixel grid, so it cannot "
                         f"be placed; give both a CRS (gdal_edit.py -a_srs EPSG:...) or warp the {what} onto the "
                         "target grid")
    if not _overlaps(grid, crs, transform, bounds, width, height, offset):
        where = crs.to_string() if crs else "the target grid units"
        raise InputError(f"{what} {name}: does not overlap the target ({what} bounds "
                         f"{tuple(round(v, 6) for v in bounds)} in {where}); give a {what} of the same place")
    scene = Scene(data=np.empty((0, 0, 0), np.uint8), grid=grid, nodata=None, band_names=[], sources=[href], tags=tags)
    source = GuideSource(
        href=href,
        grid=grid,
        bands=chosen,
        resampling=resampling,
        nodata=None if nodata is None else float(nodata),
        datetime=acquisition_date(scene),
        band_names=tuple(descriptions[b - 1] or f"band{b}" for b in chosen),
        gdal_options=tuple(sorted(options.items())),
    )
    return source, (crs, transform, width, height)


def _overlaps(grid: Grid, crs: Any, transform: Any, bounds: Any, width: int, height: int,
              offset: tuple[int, int] | None) -> bool:
    """Whether the guide's extent meets the target grid's."""
    if offset is not None:  # target pixel (r, c) is guide pixel (r + dr, c + dc)
        dr, dc = offset
        return max(0, dr) < min(height, grid.height + dr) and max(0, dc) < min(width, grid.width + dc)
    from rasterio.warp import transform_bounds
    from rasterio.windows import bounds as window_bounds

    left, bottom, right, top = window_bounds(((0, grid.height), (0, grid.width)), grid.transform)
    try:
        gl, gb, gr, gt = transform_bounds(crs, grid.crs, *bounds, densify_pts=21)
    except Exception:  # noqa: BLE001 - PROJ could not place it at all: it is not here
        return False
    return gl < right and gr > left and gb < top and gt > bottom


# ------------------------------------------------------------------------------ reading
def _span(window: Any, grid: Grid) -> tuple[int, int, int, int]:
    """``(row0, row1, col0, col1)`` of a target-grid window given as two slices, two
    ``(start, stop)`` pairs or a rasterio ``Window``; it must lie inside the grid."""
    if hasattr(window, "col_off"):
        r0, c0 = int(window.row_off), int(window.col_off)
        r1, c1 = r0 + int(window.height), c0 + int(window.width)
    else:
        rows, cols = window
        r0, r1 = (rows.start, rows.stop) if isinstance(rows, slice) else rows
        c0, c1 = (cols.start, cols.stop) if isinstance(cols, slice) else cols
        r0, r1, c0, c1 = int(r0 or 0), int(grid.height if r1 is None else r1), int(c0 or 0), int(
            grid.width if c1 is None else c1)
    if not (0 <= r0 < r1 <= grid.height and 0 <= c0 < c1 <= grid.width):
        raise InputError(f"guide window rows {r0}:{r1}, cols {c0}:{c1} is not inside the target grid "
                         f"{grid.width}x{grid.height}")
    return r0, r1, c0, c1


@dataclass(frozen=True)
class ItemGuide:
    """A STAC item — or several, as their per-pixel median (paper 003's "historical mean")
    — as a guide: bands read onto the target grid through
    :class:`~dipfill.raster.scene.SceneSource` (``grid=`` the target's, nearest resampling),
    so each item's QA layer decides validity: clouds, shadows and fill of a guide are never
    evidence, whatever the target's own mask mode."""

    scenes: tuple[Any, ...]  # SceneSource of each member, opened on the target grid
    href: str  # the item's self href (or id; a composite: its first member's): for messages
    datetime: str | None = None

    @property
    def scene(self) -> Any:
        return self.scenes[0]

    @property
    def grid(self) -> Grid:
        return self.scene.grid

    @property
    def count(self) -> int:
        return len(self.scene.band_names)

    def read(self, r0: int, r1: int, c0: int, c1: int) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        reads = [scene.read_pixels(((r0, r1), (c0, c1))) for scene in self.scenes]
        if len(reads) == 1:
            data, valid = reads[0]
        else:
            data, valid = median_composite(np.stack([d for d, _ in reads]), np.stack([v for _, v in reads]))
        return np.where(valid, data, 0).astype(np.float32), valid

    def record(self) -> dict[str, Any]:
        return {"href": redact_href(self.href), "datetime": self.datetime, "bands": list(self.scene.band_names),
                "resampling": self.scene.resampling, "mask": self.scene.mask, "members": len(self.scenes)}


def open_item_guide(items: Mapping[str, Any] | Sequence[Mapping[str, Any]], grid: Grid, *,
                    bands: Sequence[str] | None = None, sign: Any = None, product: str = "bands",
                    accept: Sequence[int] | None = None) -> ItemGuide:
    """A STAC item (or several: their median composite) as a guide on ``grid``: each with its
    cloud mask where the collection has a QA layer (a cloud in a guide is not evidence),
    else its nodata. ``product="ndvi"``: the item's NDVI (computed or read, as the target's:
    :func:`~dipfill.raster.scene.open_scene`), its QA classes ``accept`` observed."""
    members = [items] if isinstance(items, Mapping) else list(items)
    if not members:
        raise InputError("a guide needs at least one STAC item")
    scenes = []
    for item in members:
        try:
            scenes.append(open_scene(dict(item), bands=bands, mask="clouds", sign=sign, grid=grid,
                                     product=product, accept=accept))  # type: ignore[arg-type]
        except InputError:  # no QA asset: nodata is all there is
            scenes.append(open_scene(dict(item), bands=bands, mask="fill", sign=sign, grid=grid,
                                     product=product, accept=accept))  # type: ignore[arg-type]
    props = members[0].get("properties") or {}
    return ItemGuide(tuple(scenes), self_href(members[0]) or str(members[0].get("id")),
                     props.get("datetime") or props.get("start_datetime"))


def read_guides(guides: Sequence[GuideSource | ItemGuide], window: Any) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """The guides' bands on target-grid ``window`` (two slices, two ``(start, stop)`` pairs
    or a rasterio ``Window``), stacked in order: ``values float32[G, h, w]``, 0 where not
    valid, and ``valid bool[G, h, w]``."""
    if not guides:
        raise InputError("read_guides needs at least one guide")
    r0, r1, c0, c1 = _span(window, guides[0].grid)
    values, valid = [], []
    for guide in guides:
        if guide.grid != guides[0].grid:
            raise InputError(f"guide {redact_href(guide.href)} was opened for another target grid")
        if isinstance(guide, ItemGuide):
            v, ok = guide.read(r0, r1, c0, c1)
        else:
            with gdal_env(dict(guide.gdal_options)):
                v, ok = _read_guide(guide, r0, r1, c0, c1)
        values.append(v)
        valid.append(ok)
    return np.concatenate(values), np.concatenate(valid)


def _read_guide(guide: GuideSource, r0: int, r1: int, c0: int,
                c1: int) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    with open_raster(guide.href, "guide") as ds:
        offset = _aligned_offset(ds.crs, ds.transform, guide.grid)
        if offset is not None:
            v, ok = _read_source(ds, guide, r0 + offset[0], r1 + offset[0], c0 + offset[1], c1 + offset[1])
            return v.astype(np.float32), ok
        values = np.zeros((guide.count, r1 - r0, c1 - c0), np.float32)
        valid = np.zeros(values.shape, bool)
        stamp = _stamp(guide.href) if guide.mask is None else (_stamp(guide.href), _stamp(guide.mask.href))
        for br in range(r0 // BLOCK, (r1 - 1) // BLOCK + 1):
            for bc in range(c0 // BLOCK, (c1 - 1) // BLOCK + 1):
                key = (guide, stamp, br, bc)
                block = _CACHE.get(key)
                if block is None:
                    block = _warp_block(ds, guide, br, bc)
                    _CACHE.put(key, block)
                top, left = br * BLOCK, bc * BLOCK
                rs, cs = slice(max(r0, top), min(r1, top + BLOCK)), slice(max(c0, left), min(c1, left + BLOCK))
                dst = (slice(None), slice(rs.start - r0, rs.stop - r0), slice(cs.start - c0, cs.stop - c0))
                src = (slice(None), slice(rs.start - top, rs.stop - top), slice(cs.start - left, cs.stop - left))
                values[dst], valid[dst] = block[0][src], block[1][src]
        return values, valid


def _stamp(href: str) -> tuple[int, int] | None:
    """A local file's modification time and size: a guide rewritten in place is re-read."""
    try:
        st = os.stat(href)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _read_source(ds: Any, guide: GuideSource, r0: int, r1: int, c0: int, c1: int) -> tuple[NDArray, NDArray[np.bool_]]:
    """Source pixels ``[r0:r1, c0:c1]`` of the guide (the window may reach past its edges:
    those pixels are not valid) as float64 values, 0 where not valid, and validity."""
    from rasterio.enums import MaskFlags
    from rasterio.errors import RasterioIOError

    values = np.zeros((guide.count, r1 - r0, c1 - c0), np.float64)
    valid = np.zeros(values.shape, bool)
    rr0, rr1, cc0, cc1 = max(r0, 0), min(r1, ds.height), max(c0, 0), min(c1, ds.width)
    if rr0 >= rr1 or cc0 >= cc1:
        return values, valid
    win = ((rr0, rr1), (cc0, cc1))
    try:
        data = ds.read(list(guide.bands), window=win)
        if guide.nodata is None:
            ok = ds.read_masks(list(guide.bands), window=win) != 0
        else:
            ok = data != np.asarray(guide.nodata).astype(data.dtype) if not math.isnan(guide.nodata) else \
                np.ones(data.shape, bool)
            for i, b in enumerate(guide.bands):  # an internal mask or alpha still counts; a nodata mask is replaced
                flags = ds.mask_flag_enums[b - 1]
                if MaskFlags.per_dataset in flags or MaskFlags.alpha in flags:
                    ok[i] &= ds.read_masks(b, window=win) != 0
    except RasterioIOError as exc:
        raise SceneReadError(f"guide {redact_href(guide.href)}: cannot read rows {rr0}:{rr1}, cols {cc0}:{cc1} "
                             f"({redact_href(str(exc))})") from exc
    if np.issubdtype(data.dtype, np.floating):
        ok &= np.isfinite(data)
    if guide.mask is not None:  # the mask on the guide's own grid: non-zero where it is valid is a gap
        flags, flagged = _read_guide(guide.mask, rr0, rr1, cc0, cc1)
        ok &= ~(flagged[0] & (flags[0] != 0))
    sl = (slice(None), slice(rr0 - r0, rr1 - r0), slice(cc0 - c0, cc1 - c0))
    values[sl] = np.where(ok, data, 0)
    valid[sl] = ok
    return values, valid


def _warp_block(ds: Any, guide: GuideSource, br: int, bc: int) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """One ``BLOCK``-square block of the target grid, warped from the guide window its
    kernel needs: normalised convolution of the valid guide pixels (see the module doc)."""
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.warp import reproject, transform_bounds
    from rasterio.windows import bounds as window_bounds

    grid = guide.grid
    top, left = br * BLOCK, bc * BLOCK
    h, w = min(BLOCK, grid.height - top), min(BLOCK, grid.width - left)
    dst_transform = grid.transform @ Affine.translation(left, top)
    empty = (np.zeros((guide.count, h, w), np.float32), np.zeros((guide.count, h, w), bool))
    bounds = window_bounds(((top, top + h), (left, left + w)), grid.transform)
    try:
        sl, sb, sr, st = transform_bounds(grid.crs, ds.crs, *bounds, densify_pts=21)
    except Exception:  # noqa: BLE001 - PROJ cannot map this block into the guide's CRS: nothing there
        return empty
    inv = ~ds.transform
    cols, rows = zip(*(inv @ (x, y) for x, y in ((sl, sb), (sl, st), (sr, sb), (sr, st))))
    if not all(map(math.isfinite, cols + rows)):
        return empty
    scale = max(1.0, (max(cols) - min(cols)) / w, (max(rows) - min(rows)) / h)
    pad = (_RADIUS[guide.resampling] + 1) * math.ceil(scale) + 1
    c0, c1 = math.floor(min(cols)) - pad, math.ceil(max(cols)) + pad
    r0, r1 = math.floor(min(rows)) - pad, math.ceil(max(rows)) + pad
    if c1 <= 0 or r1 <= 0 or c0 >= ds.width or r0 >= ds.height:
        return empty
    values, valid = _read_source(ds, guide, r0, r1, c0, c1)
    if not valid.any():
        return empty
    # float32 (2-3x faster than float64 here; the engines take float32): values, then validity
    src = np.concatenate([values.astype(np.float32), valid.astype(np.float32)])
    dst = np.zeros((src.shape[0], h, w), np.float32)
    reproject(
        src, dst,
        src_transform=ds.transform @ Affine.translation(c0, r0), src_crs=ds.crs,
        dst_transform=dst_transform, dst_crs=grid.crs,
        resampling=Resampling[guide.resampling],
    )
    total, support = dst[: guide.count], dst[guide.count:]
    ok = np.abs(support - 1.0) <= 1.0 - MIN_SUPPORT
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(ok, total / np.where(ok, support, np.float32(1)), np.float32(0))
    ok &= np.isfinite(out)
    return np.where(ok, out, np.float32(0)).astype(np.float32), ok


class _BlockCache:
    """Warped blocks recently computed in this process, up to ``max_bytes``: neighbouring
    windows (patch overlaps, row unions) share blocks."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.items: OrderedDict[Any, tuple[NDArray, NDArray]] = OrderedDict()
        self.size = 0
        self.lock = threading.Lock()

    def get(self, key: Any) -> tuple[NDArray, NDArray] | None:
        with self.lock:
            item = self.items.get(key)
            if item is not None:
                self.items.move_to_end(key)
            return item

    def put(self, key: Any, item: tuple[NDArray, NDArray]) -> None:
        for a in item:
            a.setflags(write=False)
        with self.lock:
            if key in self.items:
                return
            self.items[key] = item
            self.size += sum(a.nbytes for a in item)
            while self.size > self.max_bytes and self.items:
                _, old = self.items.popitem(last=False)
                self.size -= sum(a.nbytes for a in old)


_CACHE = _BlockCache(64 << 20)
