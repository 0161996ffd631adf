"""Per-scene checkpoint of fitted patches: the unit of resume.

A zarr v3 group with ``values[n, bands, P, P]`` (float32, one chunk per patch) and
``done[n]`` (uint8, one chunk per patch), plus ``diagnostics/<n>.json`` (how the patch was
fitted: kept so that a resumed scene reports every patch, not only the refitted ones) and
``guides.json`` (the scene's guide choice, written before any patch is fitted: a resumed
scene reuses it, so its patches are never fitted with different guides). A
worker writes a patch's values and diagnostics, then its done flag; each chunk has exactly
one writer (zarr loses data when writers share a chunk or a
shard). A rerun reads the flags and fits only what is missing. The group records the
configuration hash it was made for: a store from another configuration is discarded, never
mixed in.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from dipfill.storage import write_json

__all__ = ["PatchStore"]

_GUIDES = "guides.json"


@dataclass(frozen=True)
class PatchStore:
    """Handle to one scene's store; cheap to pickle to workers."""

    path: str

    @classmethod
    def open(cls, path: str | Path, count: int, bands: int, size: int, config_hash: str) -> "PatchStore":
        """Open the store at ``path`` for ``count`` patches, creating or resetting it."""
        path = Path(path)
        if path.exists():
            try:
                root = zarr.open_group(str(path), mode="r")
                same = (root.attrs.get("config_hash") == config_hash
                        and root["values"].shape == (count, bands, size, size))
            except Exception:  # unreadable leftovers: start over
                same = False
            if same:
                return cls(str(path))
            shutil.rmtree(path)
        root = zarr.open_group(str(path), mode="w")
        root.attrs["config_hash"] = config_hash
        # Uncompressed: fitted float32 values hardly compress (zstd saved ~10 %) and the
        # store is temporary, removed once the scene's item is written; it saves CPU per patch.
        root.create_array("values", shape=(count, bands, size, size), chunks=(1, bands, size, size),
                          dtype="float32", fill_value=np.nan, compressors=None)
        root.create_array("done", shape=(count,), chunks=(1,), dtype="uint8", fill_value=0)
        return cls(str(path))

    def done(self) -> NDArray[np.bool_]:
        return zarr.open_group(self.path, mode="r")["done"][...].astype(bool)

    def write(self, index: int, values: NDArray[np.float32], diagnostics: dict | None = None) -> None:
        """Store patch ``index`` (values padded to the store's patch size) and its
        diagnostics, then flag it done."""
        root = zarr.open_group(self.path, mode="r+")
        arr = root["values"]
        full = np.full(arr.shape[1:], np.nan, dtype=np.float32)
        full[:, : values.shape[1], : values.shape[2]] = values
        arr[index] = full
        if diagnostics is not None:
            folder = Path(self.path) / "diagnostics"
            folder.mkdir(exist_ok=True)
            tmp = folder / f".{index}.json.tmp"
            tmp.write_text(json.dumps(diagnostics))
            os.replace(tmp, folder / f"{index}.json")
        root["done"][index] = 1

    def diagnostics(self) -> dict[int, dict]:
        """Diagnostics of every patch written with them, by index."""
        folder = Path(self.path) / "diagnostics"
        return {int(p.stem): json.loads(p.read_text()) for p in folder.glob("[0-9]*.json")} if folder.is_dir() else {}

    def record_guides(self, choice: dict[str, Any]) -> None:
        """Keep the scene's guide choice (plain JSON values) with its patches, atomically:
        a resumed scene must fit its remaining patches with the same guides."""
        write_json(Path(self.path) / _GUIDES, choice, indent=1)

    def recorded_guides(self) -> dict[str, Any] | None:
        """The guide choice :meth:`record_guides` kept; None when none was (or it is unreadable)."""
        try:
            doc = json.loads((Path(self.path) / _GUIDES).read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def read(self, index: int, height: int, width: int) -> NDArray[np.float32]:
        return zarr.open_group(self.path, mode="r")["values"][index, :, :height, :width]

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
