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
