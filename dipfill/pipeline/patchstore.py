"""Per-scene checkpoint of fitted patches: the unit of resume.

A zarr v3 group with ``values[n, bands, P, P]`` (float32, one chunk per patch) and
``done[n]`` (uint8, one chunk per patch), plus ``diagnostics/<n>.json`` (how the patch was
fitted: kept so that a resumed scene reports every patch, not only the refitted ones) and
``guides.json`` (the scene's guide choice, written before any patch is fitted: a resumed
scene reuses it, so its patches are never fitted with different guides). A
worker writes a batch's values and diagnostics, then their done flags; each chunk has exactly
one writer (zarr loses data when writers share a chunk or a
shard). Chunk keys are flat (``values/c.7.0.0.0``, not ``values/c/7/0/0/0``): one file per
patch in one directory, so a 7000x7000 scene's store (~750 patches) is made and removed
without thousands of nested directories (removing those took ~4 s of the write stage). A rerun reads the flags and fits only what is missing. The group records the
configuration hash it was made for: a store from another configuration is discarded, never
mixed in.

The store may lie on object storage (``s3://...``: a run's ``--out`` there): workers on
other nodes then write their patches straight into it through
:func:`~dipfill.storage.zarr_store`, and a diagnostics record is one PUT.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr
from numpy.typing import NDArray

from dipfill.storage import as_path, list_files, read_json, remove, write_json, zarr_store

__all__ = ["PatchStore"]

_GUIDES = "guides.json"


@dataclass(frozen=True)
class PatchStore:
    """Handle to one scene's store; cheap to pickle to workers."""

    path: str

    @classmethod
    def open(cls, path: str | Path, count: int, bands: int, size: int, config_hash: str) -> "PatchStore":
        """Open the store at ``path`` (a directory or an object-storage URL) for ``count``
        patches, creating or resetting it."""
        path = as_path(path)
        if path.exists():
            try:
                root = zarr.open_group(zarr_store(path, read_only=True), mode="r", zarr_format=3)
                same = (root.attrs.get("config_hash") == config_hash
                        and root["values"].shape == (count, bands, size, size))
            except Exception:  # unreadable leftovers: start over
                same = False
            if same:
                return cls(str(path))
            remove(path)
        root = zarr.open_group(zarr_store(path), mode="w", zarr_format=3)
        root.attrs["config_hash"] = config_hash
        # Uncompressed: fitted float32 values hardly compress (zstd saved ~10 %) and the
        # store is temporary, removed once the scene's item is written; it saves CPU per patch.
        flat = {"name": "default", "separator": "."}
        root.create_array("values", shape=(count, bands, size, size), chunks=(1, bands, size, size),
                          dtype="float32", fill_value=np.nan, compressors=None, chunk_key_encoding=flat)
        root.create_array("done", shape=(count,), chunks=(1,), dtype="uint8", fill_value=0,
                          chunk_key_encoding=flat)
        return cls(str(path))

    def done(self) -> NDArray[np.bool_]:
        return _array(self.path, "done")[...].astype(bool)

    def write(self, index: int, values: NDArray[np.float32], diagnostics: dict | None = None) -> None:
        """Store patch ``index`` (values padded to the store's patch size) and its
        diagnostics, then flag it done."""
        self.write_many([index], [values], None if diagnostics is None else [diagnostics])

    def write_many(self, indices: Sequence[int], values: Sequence[NDArray[np.float32]],
                   diagnostics: Sequence[dict] | None = None) -> None:
        """Store a batch of patches (each as :meth:`write`), then flag them done: each array
        is opened once per batch, not once per patch (an open is a metadata read)."""
        arr = _array(self.path, "values", "r+")
        folder = as_path(self.path) / "diagnostics"
        if diagnostics is not None:
            folder.mkdir(exist_ok=True)  # nothing to make on object storage
        order = {int(i): n for n, i in enumerate(indices)}
        for start, stop in _runs(order):  # one slice per run of consecutive indices (a batch: one)
            full = np.full((stop - start, *arr.shape[1:]), np.nan, dtype=np.float32)
            for k in range(start, stop):
                patch = values[order[k]]
                full[k - start, :, : patch.shape[1], : patch.shape[2]] = patch
            arr[start:stop] = full
        if diagnostics is not None:
            for n, index in enumerate(indices):
                write_json(folder / f"{index}.json", diagnostics[n], indent=0)
        done = _array(self.path, "done", "r+")
        for start, stop in _runs(order):
            done[start:stop] = 1

    def diagnostics(self) -> dict[int, dict]:
        """Diagnostics of every patch written with them, by index."""
        return {int(p.stem): read_json(p) for p in list_files(as_path(self.path) / "diagnostics", "[0-9]*.json")}

    def record_guides(self, choice: dict[str, Any]) -> None:
        """Keep the scene's guide choice (plain JSON values) with its patches, atomically:
        a resumed scene must fit its remaining patches with the same guides."""
        write_json(as_path(self.path) / _GUIDES, choice, indent=1)

    def recorded_guides(self) -> dict[str, Any] | None:
        """The guide choice :meth:`record_guides` kept; None when none was (or it is unreadable)."""
        try:
            doc = read_json(as_path(self.path) / _GUIDES)
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def read(self, index: int, height: int, width: int) -> NDArray[np.float32]:
        return _array(self.path, "values")[index, :, :height, :width]

    def read_many(self, indices: Sequence[int]) -> dict[int, NDArray[np.float32]]:
        """Patches ``indices`` (full patch size) by index, one slice per run of consecutive
        indices: a block's windows are a few such runs (a slice is read ~2× faster than
        its patches one by one; Zarr fetches a slice's chunks together)."""
        out: dict[int, NDArray[np.float32]] = {}
        arr = _array(self.path, "values")
        for start, stop in _runs(indices):
            part = arr[start:stop]
            out.update({start + k: part[k] for k in range(stop - start)})
        return out

    def values(self) -> Any:
        """The ``values[n, bands, P, P]`` array, opened once for many reads (a block's windows)."""
        return _array(self.path, "values")

    def remove(self) -> None:
        remove(self.path)


def _runs(indices: Any) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of consecutive values in ``indices`` (sorted, distinct)."""
    runs: list[tuple[int, int]] = []
    for i in sorted({int(i) for i in indices}):
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _array(path: str, name: str, mode: str = "r") -> Any:
    """One array of the store, opened by itself (Zarr v3 named: on object storage every
    metadata read is a request, and a patch is written and read once each)."""
    return zarr.open_array(zarr_store(path, read_only=mode == "r"), path=name, mode=mode, zarr_format=3)
