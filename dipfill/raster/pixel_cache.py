"""A scene's pixels as the driver's mask pass read them, kept uncompressed on local disk for one run.

Why: ``dipfill run`` reads the scene's files three times — the driver's mask pass (full-width
strips), the fit (every gap window again, 1.3× their area with the overlap) and the merge
(every block again) — and the windowed reads are the dear ones: each opens every band file
and decodes every compressed tile it touches (at 3500² ×3 they cost ~1.8 s of CPU against
0.36 s for the strips). The mask pass already holds each strip's bands and per-band
validity (after QA decoding, NDVI derivation or dB conversion: what
:meth:`~dipfill.raster.scene.SceneSource.read_pixels` returns), so it writes them into two
raw arrays on disk (:class:`CacheWriter`) and the fit and merge read their windows from there
(:class:`CachedScene`: a slice of a memory map, no decoding).

Bounded memory: the writer holds one strip (plain ``write`` calls: the pages go to the OS's
page cache, not to the driver's memory), a reader maps the files only for the copy of its
window. Where a worker cannot see the cache — another node without the run's disk, or an
object-storage ``--out``, for which the driver makes none — it reads the source as before:
the cache holds exactly what the source gives for every window (read pixel for pixel,
without resampling between windows), so the bytes do not depend on who read what. A cache
is valid for the run that made it only (a random token, written last: a half-written or
another run's cache is never read); the scene removes it when it ends, done or not.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dipfill.raster.scene import SceneSource, _window

__all__ = ["CACHE_NAME", "PixelCache", "CacheWriter", "CachedScene"]

#: The cache's directory in a scene's output directory: hidden, so never listed as a scene
#: or output (:func:`~dipfill.pipeline.status.list_dirs` skips dot names).
CACHE_NAME = ".dipfill-pixels"

_META = "meta.json"

#: A copy is made only where the disk keeps this many times its size free: the scene's patch
#: store and outputs are written beside it, and a run must not fail for a copy it can do without.
FREE_FACTOR = 2.0


@dataclass(frozen=True)
class PixelCache:
    """A finished cache: ``data[band, y, x]`` and ``valid[band, y, x]`` in raw files under
    ``path``; ``token`` is the run's (readers check it against the directory's)."""

    path: str
    token: str
    shape: tuple[int, int, int]
    dtype: str

    def usable(self) -> bool:
        """Whether this process sees this very cache, complete (its metadata is written last)."""
        try:
            meta = json.loads((Path(self.path) / _META).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(meta, dict) and meta.get("token") == self.token

    def read(self, window: Any) -> tuple[NDArray, NDArray[np.bool_]]:
        """Bands and validity of a rasterio ``Window`` (already clipped to the scene)."""
        r0, c0 = int(window.row_off), int(window.col_off)
        rows, cols = slice(r0, r0 + int(window.height)), slice(c0, c0 + int(window.width))
        return (_copy(Path(self.path) / "data.raw", np.dtype(self.dtype), self.shape, rows, cols),
                _copy(Path(self.path) / "valid.raw", np.dtype(bool), self.shape, rows, cols))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _copy(path: Path, dtype: np.dtype, shape: tuple[int, int, int], rows: slice, cols: slice) -> NDArray:
    """A window of a raw file, copied out of a memory map that is closed at once (an actor
    lives on after the scene: a map it kept would keep the removed file's disk space)."""
    mapped = np.memmap(path, dtype=dtype, mode="r", shape=shape)
    try:
        return np.array(mapped[:, rows, cols])
    finally:
        mapped._mmap.close()  # type: ignore[attr-defined]


class CacheWriter:
    """Writes a cache strip by strip (full-width rows, top to bottom, any strip height).

    The files are made on the first strip (its dtype is the scene's), when the disk has
    :data:`FREE_FACTOR` times their size free (else ``OSError``, as a full disk later);
    :meth:`commit` writes the metadata with the token last and returns the :class:`PixelCache`."""

    def __init__(self, path: str | os.PathLike[str], shape: tuple[int, int, int]) -> None:
        self.path = Path(os.path.abspath(path))  # workers may run in another directory
        self.shape = tuple(int(s) for s in shape)
        self.dtype: np.dtype | None = None
        self._files: list[Any] = []
        shutil.rmtree(self.path, ignore_errors=True)  # a killed run's leftover
        self.path.mkdir(parents=True)

    def write(self, row0: int, data: NDArray, valid: NDArray[np.bool_]) -> None:
        count, height, width = self.shape
        if self.dtype is None:
            need = count * height * width * (data.dtype.itemsize + 1)
            free = shutil.disk_usage(self.path).free
            if free < FREE_FACTOR * need:
                raise OSError(errno.ENOSPC, f"{need / 2**30:.2f} GiB for the pixel copy, {free / 2**30:.2f} GiB "
                              f"free in {self.path.parent}")
            self.dtype = data.dtype
            for name in ("data.raw", "valid.raw"):
                f = open(self.path / name, "wb")
                self._files.append(f)
        assert data.dtype == self.dtype and data.shape[0] == count and data.shape[2] == width
        for f, array, itemsize in ((self._files[0], data, data.dtype.itemsize), (self._files[1], valid, 1)):
            for b in range(count):  # a band's strip is contiguous in [band, y, x]
                f.seek((b * height + row0) * width * itemsize)
                f.write(np.ascontiguousarray(array[b]).tobytes())

    def commit(self) -> PixelCache:
        count, height, width = self.shape
        for f, itemsize in zip(self._files, (self.dtype.itemsize if self.dtype else 1, 1)):
            f.truncate(count * height * width * itemsize)
            f.close()
        self._files = []
        token = uuid.uuid4().hex
        tmp = self.path / (_META + ".tmp")
        tmp.write_text(json.dumps({"token": token, "shape": list(self.shape), "dtype": str(self.dtype)}))
        os.replace(tmp, self.path / _META)
        return PixelCache(str(self.path), token, self.shape, str(self.dtype))  # type: ignore[arg-type]

    def abort(self) -> None:
        for f in self._files:
            f.close()
        self._files = []
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass(frozen=True)
class CachedScene:
    """A :class:`~dipfill.raster.scene.SceneSource` whose windows are read from ``cache``
    where this process sees it, from the source otherwise; everything else is the source's."""

    source: SceneSource
    cache: PixelCache

    def read_pixels(self, window: Any = None) -> tuple[NDArray, NDArray[np.bool_]]:
        if self.cache.usable():
            return self.cache.read(_window(window, self.source.grid))
        return self.source.read_pixels(window)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("source", "cache"):  # unpickling looks these up first
            raise AttributeError(name)
        return getattr(self.source, name)
