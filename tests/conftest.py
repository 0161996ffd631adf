"""Session-wide test settings."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_strategy_cache(tmp_path_factory):
    """Strategy measurements go to a throwaway cache, never the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DIPFILL_CACHE_DIR", str(tmp_path_factory.mktemp("dipfill-cache")))
    yield
    mp.undo()
