"""The methods ``dipfill eval`` compares: ``--method`` text → a parsed spec → a ready engine.

A method is ``ENGINE[:PRESET][:KEY=VALUE,...]``: ``dip:mcpn-core:steps=300``, ``fillnodata``,
``telea:radius=3``; the guided engines (:data:`GUIDED`: ``guided``, ``llhm``, ``regression``,
``mcpn:variant=input,steps=100``) fill from ``dipfill eval --guide`` rasters and, without one,
fall back as they do in ``dipfill fill``. Parsing (:func:`parse_method`) is pure and checks only the text;
building (:func:`build_method`) makes the engine, which validates the configuration, so
every mistake surfaces before the first tile is filled. KEY=VALUE values are read by
:mod:`dipfill.keyvalue`, as ``dipfill fill --dip`` reads them.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

from dipfill.engines.config import DEFAULT_PRESET
from dipfill.errors import InputError
from dipfill.eval.report import jsonable
from dipfill.keyvalue import parse_pairs, split_top_level

__all__ = ["DEFAULT_METHODS", "CLASSICAL", "GUIDED", "MethodSpec", "Method", "parse_method", "build_method"]

DEFAULT_METHODS = ("dip:mcpn-core", "dip:ndvi2024", "dip:landsat2020", "fillnodata", "telea", "ns")
CLASSICAL = ("fillnodata", "telea", "ns")
#: Engines that take guides (``--guide``); ``mcpn`` is guided DIP and takes a preset like ``dip``.
GUIDED = ("guided", "llhm", "regression", "mcpn")
_WITH_PRESET = ("dip", "mcpn")


@dataclass(frozen=True)
class MethodSpec:
    """A parsed ``--method`` string: ``ENGINE[:PRESET][:KEY=VALUE,KEY=VALUE...]``."""

    spec: str
    engine: str
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


def parse_method(spec: str) -> MethodSpec:
    """Parse ``dip:mcpn-core:steps=300,stopping=holdout``, ``fillnodata``, ``telea:radius=3``.

    ``dip`` alone means the default preset (``landsat2020``, paper 000); ``mcpn`` alone, its
    engine's (``mcpn-core``). Override values are JSON
    where possible (``steps=300``, ``channels_skip=[4,4,4,4,4,4]``), else strings.
    """
    parts = [p.strip() for p in spec.strip().split(":")]
    engine = parts[0]
    if engine not in ("dip", *CLASSICAL, *GUIDED):
        raise InputError(
            f"--method {spec!r}: unknown method {engine!r}; use dip[:PRESET][:KEY=VALUE,...], "
            f"{', '.join(CLASSICAL)} or the guided {', '.join(GUIDED)} (e.g. dip:mcpn-core:steps=300, "
            "mcpn:variant=input,steps=100)"
        )
    preset: str | None = None
    overrides: dict[str, Any] = {}
    for part in parts[1:]:
        if not part:
            raise InputError(f"--method {spec!r}: empty field between ':'")
        if "=" not in part:
            if engine not in _WITH_PRESET or preset is not None or overrides:
                raise InputError(f"--method {spec!r} takes KEY=VALUE, got {part!r}")
            preset = part
            continue
        overrides.update(parse_pairs(split_top_level(part), flag=f"--method {spec!r}"))
    if engine == "dip":
        preset = overrides.pop("preset", None) or preset or DEFAULT_PRESET
    elif engine == "mcpn":
        preset = overrides.pop("preset", None) or preset
    return MethodSpec(spec=spec.strip(), engine=engine, preset=preset, overrides=overrides)


@dataclass
class Method:
    """A method ready to run: its engine, its full configuration and whether it can be watched."""

    label: str
    spec: MethodSpec
    engine: Any
    config: dict[str, Any]
    monitored: bool  # the engine's fill() takes a convergence monitor
    guided: bool = False  # the engine takes guides (dipfill.engines.base.uses_guides)

    @property
    def is_dip(self) -> bool:
        return self.spec.engine == "dip"


def build_method(spec: MethodSpec, *, steps: int | None, check_every: int, device: str) -> Method:
    """The engine for ``spec``; ``steps``/``check_every``/``device`` apply to dip (``steps`` and
    ``device`` to mcpn too) unless the spec sets them."""
    from dipfill.engines import make_engine
    from dipfill.engines.base import uses_guides
    from dipfill.storage import JsonFileCache, default_strategy_cache_path

    try:
        if spec.engine == "dip":
            opts: dict[str, Any] = {"preset": spec.preset, "device": device}
            if steps is not None:
                opts["steps"] = steps
            opts["check_every"] = check_every  # how often the convergence monitor is called
            opts.update(spec.overrides)
            cache = JsonFileCache(default_strategy_cache_path())  # as `dipfill fill` measures and keeps plans
            engine = make_engine("dip", strategy_cache=cache, **opts)
            config = {"preset": spec.preset, **engine.config.to_dict()}
        elif spec.engine == "mcpn":
            opts = {"device": device}
            if spec.preset is not None:
                opts["preset"] = spec.preset
            if steps is not None:
                opts["steps"] = steps
            opts.update(spec.overrides)
            cache = JsonFileCache(default_strategy_cache_path())
            engine = make_engine("mcpn", strategy_cache=cache, **opts)
            config = {"preset": spec.preset or "mcpn-core", **engine.config.to_dict(),
                      "mcpn": jsonable(dataclasses.asdict(engine.mcpn))}
        else:
            engine = make_engine(spec.engine, **spec.overrides)
            config = jsonable(dataclasses.asdict(engine)) if dataclasses.is_dataclass(engine) else {}
    except InputError as exc:
        raise InputError(f"--method {spec.spec!r}: {exc}") from None
    monitored = "monitor" in inspect.signature(engine.fill).parameters
    guided = spec.engine in GUIDED and uses_guides(engine)
    return Method(label=spec.spec, spec=spec, engine=engine, config=config, monitored=monitored, guided=guided)
