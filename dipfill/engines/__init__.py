"""Fill engines behind one protocol (:mod:`dipfill.engines.base`): arrays in, arrays out.

This package is the numerical room of dipfill: torch and math on in-memory arrays. It opens
no files, starts no Ray, and reads no rasters; the pipeline brings pixels in and takes
them out. The one rasterio import is ``rasterio.fill.fillnodata`` in
:mod:`~dipfill.engines.classical`: GDAL's inverse-distance interpolation run on a NumPy
array (no dataset, no file), kept because it *is* the ``fillnodata`` baseline and its
results must stay bit-identical. Anything that must outlive a call (the measured DIP
execution plans) goes through an object the caller passes in
(:class:`~dipfill.engines.cache.StrategyCache`; the file-backed one lives in
:mod:`dipfill.storage`).

Modules, each importing only those listed before it:

- ``base``: the :class:`Engine` protocol and its result types;
- ``classical``: ``fillnodata`` (GDAL via rasterio.fill), ``telea``/``ns`` (OpenCV);
- ``normalize``, ``losses``, ``stopping``: per-band scaling, masked losses, early stopping;
- ``cache``: where measured DIP plans are kept (:class:`StrategyCache`);
- ``config``: :class:`~dipfill.engines.config.DIPConfig` and the papers' presets (no torch);
- ``dipnet`` → ``fit`` → ``strategy`` → ``dip``: the network, its fitting loop, how to
  run it on the device at hand, and the DIP engine that wires them;
- ``convnp`` → ``convnp_train``: the amortised ConvNP of paper 002 (one forward pass per
  patch of a trained model) and its training loop on arrays.

``make_engine(name, **options)`` is the one way the pipeline gets an engine, so engine
modules (and their heavy imports: torch for ``dip``, OpenCV for ``telea``/``ns``) load only
when that engine is chosen.
"""

from __future__ import annotations

from typing import Any, Callable

from dipfill.engines.base import Engine, EngineResult, PatchDiagnostics
from dipfill.engines.cache import MemoryStrategyCache, StrategyCache
from dipfill.engines.config import DEFAULT_PRESET
from dipfill.errors import InputError

__all__ = [
    "ENGINES", "Engine", "EngineResult", "MemoryStrategyCache", "PatchDiagnostics", "StrategyCache", "make_engine",
    "set_threads", "GUIDED_ENGINES", "engine_uses_guides",
]

ENGINES = ("dip", "fillnodata", "telea", "ns", "llhm", "regression", "guided", "mcpn", "convnp")
#: Engines that fill from guides (other dates, other sensors) when given them.
GUIDED_ENGINES: tuple[str, ...] = ("llhm", "regression", "guided", "mcpn")


def engine_uses_guides(name: str) -> bool:
    """Whether the engine called ``name`` takes guides: the pipeline looks for and reads
    guides only for those (known before building the engine, which may import torch)."""
    return name in GUIDED_ENGINES


def make_engine(name: str, *, strategy_cache: StrategyCache | None = None,
                model_reader: Callable[[str], bytes] | None = None, **options: Any) -> Engine:
    """The engine called ``name`` configured by ``options``.

    For ``dip``, ``preset`` names a paper configuration (default ``landsat2020``) and the
    other options override its fields (see :class:`dipfill.engines.config.DIPConfig`). For
    the classical engines, options are their dataclass fields (e.g. ``radius``).

    ``strategy_cache`` is where ``dip`` keeps the execution plans it measures when its
    ``strategy``/``precision`` are ``auto`` (measuring costs a few fitting steps per
    candidate, once per device, network, patch shape and batch size). Pass
    ``dipfill.storage.JsonFileCache(dipfill.storage.default_strategy_cache_path())`` to keep
    them across runs in ``$DIPFILL_CACHE_DIR/strategy.json``; the default, None, keeps them
    in memory for the engine's lifetime. The classical engines measure nothing and ignore it.

    ``convnp`` (paper 002, amortised: one forward pass of a trained model) takes
    ``model=PATH`` and gets the weights' bytes from ``model_reader(PATH)``, which its caller
    passes (``dipfill.pipeline.train.read_model``): engines open no files. Other engines
    ignore ``model_reader``.
    """
    if name == "convnp":
        from dipfill.engines.convnp import make_convnp_engine

        try:
            return make_convnp_engine(model_reader=model_reader, **options)
        except TypeError as exc:
            raise InputError(f"bad options for engine 'convnp': {exc}") from None
    if name == "dip":
        # torch loads here, not when the package is imported
        from dipfill.engines.dip import DIPEngine, preset

        opts = dict(options)
        init_state = opts.pop("init_state", None)  # warm start: weights, not configuration
        config = preset(opts.pop("preset", DEFAULT_PRESET), **opts)
        if strategy_cache is None:
            return DIPEngine(config, init_state=init_state)
        return DIPEngine(config, strategy_cache=strategy_cache, init_state=init_state)
    if name == "mcpn":
        # guided DIP (paper 003): torch loads here too
        from dipfill.engines.mcpn import make_mcpn_engine

        return make_mcpn_engine(strategy_cache=strategy_cache, **options)
    from dipfill.engines.classical import FillnodataEngine, NSEngine, TeleaEngine
    from dipfill.engines.guided import LLHMEngine, RegressionEngine
    from dipfill.engines.guided_judge import GuidedEngine

    classes = {"fillnodata": FillnodataEngine, "telea": TeleaEngine, "ns": NSEngine, "llhm": LLHMEngine,
               "regression": RegressionEngine, "guided": GuidedEngine}
    if name not in classes:
        raise InputError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    try:
        return classes[name](**options)
    except TypeError as exc:
        raise InputError(f"bad options for engine {name!r}: {exc}") from None


def set_threads(threads: int) -> None:
    """Limit the engines of this process to ``threads`` CPU threads (torch's intra-op pool):
    CPU workers that share a machine's cores each take one, instead of all of them each."""
    import torch

    torch.set_num_threads(threads)
