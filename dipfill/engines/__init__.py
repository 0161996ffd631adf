"""Fill engines behind one protocol (:mod:`dipfill.engines.base`): arrays in, arrays out.

``make_engine(name, **options)`` is the one way the pipeline gets an engine, so engine
modules (and their heavy imports: torch for ``dip``, OpenCV for ``telea``/``ns``) load only
when that engine is chosen.
"""

from __future__ import annotations

from typing import Any

from dipfill.engines.base import Engine, EngineResult, PatchDiagnostics
from dipfill.errors import InputError

__all__ = ["ENGINES", "Engine", "EngineResult", "PatchDiagnostics", "make_engine"]

ENGINES = ("dip", "fillnodata", "telea", "ns")


def make_engine(name: str, **options: Any) -> Engine:
    """The engine called ``name`` configured by ``options``.

    For ``dip``, ``preset`` names a paper configuration (default ``landsat2020``) and the
    other options override its fields (see :class:`dipfill.engines.dip.DIPConfig`). For the
    classical engines, options are their dataclass fields (e.g. ``radius``).
    """
    if name == "dip":
        from dipfill.engines.dip import DIPEngine, preset

        opts = dict(options)
        return DIPEngine(preset(opts.pop("preset", "landsat2020"), **opts))
    from dipfill.engines.classical import FillnodataEngine, NSEngine, TeleaEngine

    classes = {"fillnodata": FillnodataEngine, "telea": TeleaEngine, "ns": NSEngine}
    if name not in classes:
        raise InputError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    try:
        return classes[name](**options)
    except TypeError as exc:
        raise InputError(f"bad options for engine {name!r}: {exc}") from None
