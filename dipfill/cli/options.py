"""Flags shared by `dipfill fill` and `dipfill run`, built from the option records.

One source of truth for every option's default and help: the fields of
:class:`~dipfill.specs.FillOptions` (and the DIP presets of :mod:`dipfill.engines.config`).
``dipfill fill`` shows the defaults in its flags; ``dipfill run`` leaves its flags unset
(``None``) so that a ``--config`` YAML can fill them, and :func:`fill_options` then takes
the record's defaults for whatever neither gave.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Mapping, Sequence

from dipfill.engines import ENGINES, make_engine
from dipfill.engines.config import DEFAULT_PRESET, preset
from dipfill.errors import InputError
from dipfill.keyvalue import parse_pairs
from dipfill.specs import GUIDE_FIELDS, GUIDE_RESAMPLINGS, FillOptions

__all__ = ["FILL_FIELDS", "GUIDE_FIELDS", "add_fill_flags", "add_dip_flags", "fill_options", "dip_options"]

#: The FillOptions fields a flag sets (``engine_options`` comes from the DIP flags).
FILL_FIELDS = tuple(f.name for f in dataclasses.fields(FillOptions) if f.name != "engine_options")
_CHOICES = {"engine": ENGINES, "fallback": (*ENGINES[1:], "none"), "guide_resampling": GUIDE_RESAMPLINGS}
#: Fields whose flag is not "one value of the default's type": a repeatable flag, a list
#: FillOptions parses itself. Their parser default is None ("not given").
_KINDS: dict[str, dict[str, Any]] = {
    "guides": {"action": "append", "default_text": "none"},
    "guide_bands": {"type": str, "default_text": "all"},
    "guide_masks": {"action": "append", "default_text": "none"},
}


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def add_fill_flags(parser: argparse.ArgumentParser | Any, *, names: Sequence[str] = FILL_FIELDS,
                   defaults: bool = True) -> None:
    """One flag per FillOptions field in ``names``; ``defaults=False`` leaves them ``None``."""
    for f in dataclasses.fields(FillOptions):
        if f.name not in names:
            continue
        special = dict(_KINDS.get(f.name, {}))
        shown = special.pop("default_text", f.default)
        if special:
            parser.add_argument(_flag(f), dest=f.name, default=None, metavar=f.metadata.get("metavar"),
                                help=f"{f.metadata['help']} (default: {shown})", **special)
            continue
        kind = type(f.default) if f.default is not None else str
        parser.add_argument(_flag(f), dest=f.name, type=kind, choices=_CHOICES.get(f.name),
                            default=f.default if defaults else None, metavar=f.metadata.get("metavar"),
                            help=f"{f.metadata['help']} (default: {shown})")


def add_dip_flags(group: argparse.ArgumentParser | Any, *, defaults: bool = True) -> None:
    """The ``dip`` engine's flags; shapes of the network default to the preset's."""
    base = preset(DEFAULT_PRESET)
    group.add_argument("--preset", default=DEFAULT_PRESET if defaults else None,
                       help=f"paper configuration: landsat2020 (paper 000), sar2023, ndvi2024, mcpn-core "
                            f"(default: {DEFAULT_PRESET})")
    group.add_argument("--steps", type=int, help=f"Adam steps per patch ({DEFAULT_PRESET}: {base.steps})")
    group.add_argument("--channels", type=int,
                       help=f"channels at every encoder/decoder level ({DEFAULT_PRESET}: {base.channels_down[0]})")
    group.add_argument("--skip-channels", type=int,
                       help=f"channels of the 1x1 skip convolutions ({DEFAULT_PRESET}: {base.channels_skip[0]})")
    group.add_argument("--depth", type=int, help=f"encoder/decoder levels ({DEFAULT_PRESET}: {base.depth})")
    group.add_argument("--lr", type=float, help=f"Adam learning rate ({DEFAULT_PRESET}: {base.lr})")
    group.add_argument("--stopping", choices=("fixed", "holdout", "emv"),
                       help="fixed: all --steps; holdout: stop each patch on gap-shaped held-out pixels; "
                            "emv: stop on the output's moving variance (default: the preset's)")
    group.add_argument("--patience", type=int,
                       help=f"checks without improvement before a patch stops (default: {base.patience})")
    group.add_argument("--strategy", choices=("auto", "loop", "packed"),
                       help="fit patches one by one or packed into one model; auto measures once per device "
                            "and caches the faster (default: auto)")
    group.add_argument("--dip", action="append", default=[] if defaults else None, metavar="KEY=VALUE",
                       help="any other DIPConfig field, value as JSON (e.g. --dip reg_noise_std=0.03 "
                            "--dip input_kind=meshgrid --dip channels_skip=[4,4,4,4,4]); repeatable")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto" if defaults else None,
                       help="torch device (default: auto)")


def dip_options(values: Mapping[str, Any], *, engine: str = "dip") -> dict[str, Any]:
    """``make_engine('dip', ...)`` options from the DIP flags' values (a namespace's ``vars``
    or a merged run config): the preset, then the flags that were given.

    Uniform-width flags (channels, skip_channels, depth) expand to per-level tuples;
    ``dip`` KEY=VALUE items set any other field and win over everything else.
    """
    name = values.get("preset") or (DEFAULT_PRESET if engine == "dip" else "mcpn")
    opts: dict[str, Any] = {"preset": name, "device": values.get("device") or "auto"}
    base = preset(name)
    for key in ("steps", "lr", "stopping", "patience", "strategy"):
        if values.get(key) is not None:
            opts[key] = values[key]
    depth = values.get("depth") or base.depth
    channels, skip = values.get("channels"), values.get("skip_channels")
    if channels is not None or values.get("depth") is not None:
        opts["channels_down"] = (channels or base.channels_down[0],) * depth
        opts["channels_up"] = (channels or base.channels_up[0],) * depth
    if skip is not None or values.get("depth") is not None:
        opts["channels_skip"] = ((skip if skip is not None else base.channels_skip[0]),) * depth
    assigned = parse_pairs(values.get("dip") or [], flag="--dip")
    opts.update(assigned)
    if engine == "dip":
        preset(opts["preset"], **{k: v for k, v in opts.items() if k != "preset"})  # validate now
    else:  # mcpn: DIPConfig and MCPNConfig fields together; its factory sorts and checks them
        make_engine(engine, **opts)
    return opts


def fill_options(values: Mapping[str, Any]) -> FillOptions:
    """The FillOptions the given values ask for: unset (``None``) fields take the record's
    defaults, and the ``dip`` engine gets :func:`dip_options`."""
    given = {name: values[name] for name in FILL_FIELDS if values.get(name) is not None}
    engine = given.get("engine", FillOptions.engine)
    if engine in ("dip", "mcpn"):  # DIP engines: the DIP flags (mcpn: guided DIP, preset mcpn)
        given["engine_options"] = dip_options(values, engine=engine)
    try:
        return FillOptions(**given)
    except TypeError as exc:  # a YAML value of the wrong kind
        raise InputError(f"bad option value: {exc}") from None
