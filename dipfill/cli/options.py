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

__all__ = ["FILL_FIELDS", "GUIDE_FIELDS", "add_fill_flags", "add_dip_flags", "fill_options", "dip_options",
           "add_product_flags", "product_values", "ndvi_threshold"]

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


def add_model_flags(group: argparse.ArgumentParser | Any) -> None:
    """``--model``: the trained model of ``--engine convnp`` (paper 002; `dipfill train`)."""
    group.add_argument("--model", metavar="MODEL_DIR",
                       help="--engine convnp: a model written by `dipfill train` (its directory, model.json item or "
                            "model.pt weights); the output item records its id and sha256")


def convnp_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """``make_engine('convnp', ...)`` options: ``--model`` read and checked now (one line for a
    missing path or a file that is no model), its sha256 and id recorded."""
    from dipfill.pipeline.train import model_options

    if not values.get("model"):
        raise InputError("--engine convnp needs --model MODEL_DIR (a model written by `dipfill train`)")
    return model_options(str(values["model"]), device=values.get("device") or "auto")


def fill_options(values: Mapping[str, Any]) -> FillOptions:
    """The FillOptions the given values ask for: unset (``None``) fields take the record's
    defaults, and the ``dip`` engine gets :func:`dip_options`."""
    given = {name: values[name] for name in FILL_FIELDS if values.get(name) is not None}
    engine = given.get("engine", FillOptions.engine)
    if engine in ("dip", "mcpn"):  # DIP engines: the DIP flags (mcpn: guided DIP, preset mcpn)
        given["engine_options"] = dip_options(values, engine=engine)
    elif engine == "convnp":  # the amortised engine: its trained model, checked and hashed now
        given["engine_options"] = convnp_options(values)
    try:
        return FillOptions(**given)
    except TypeError as exc:  # a YAML value of the wrong kind
        raise InputError(f"bad option value: {exc}") from None


def add_product_flags(group: argparse.ArgumentParser | Any, *, files: bool, defaults: bool = True) -> None:
    """``--product`` and the NDVI mode's flags (paper 001; :mod:`dipfill.pipeline.ndvi`).
    ``files``: also the flags that say how to read NDVI from plain rasters (``dipfill fill``)."""
    group.add_argument("--product", choices=("bands", "ndvi"), default="bands" if defaults else None,
                       help="what to fill: the input's bands, or ndvi: one float32 NDVI band (nodata NaN) computed "
                            "from red and NIR with their scale/offset, or read from an NDVI product (MODIS 13Q1/13A1); "
                            "DIP preset ndvi2024 and the vegetation-only loss by default (default: bands)")
    group.add_argument("--accept", metavar="CLASSES",
                       help="QA classes kept as observed, the others are gaps: MODIS pixel reliability 0 good, "
                            "1 marginal, 2 snow/ice, 3 cloudy (VI Quality: MODLAND bits 0-3) (default: 0, as paper 001)")
    group.add_argument("--ndvi-threshold", metavar="T|none",
                       help="--product ndvi with dip/mcpn: observed pixels with NDVI <= T (water) stay out of the loss "
                            "and the held-out scoring; none keeps them (default: 0, as paper 001; same as "
                            "--dip loss_min_value=T)")
    if not files:
        return
    group.add_argument("--ndvi-bands", metavar="RED,NIR",
                       help="1-based red and NIR bands of the input (or one band: an NDVI product) "
                            "(default: one-band input is NDVI, else 1,2)")
    group.add_argument("--ndvi-scale", type=float, metavar="S",
                       help="reflectance (or index) = DN x S + offset for the NDVI input bands (default: the file's "
                            "scale; Landsat C2 L2 SR file names 2.75e-5; one-band integer NDVI 1e-4)")
    group.add_argument("--ndvi-offset", type=float, metavar="O",
                       help="the offset of --ndvi-scale (Landsat C2 L2: -0.2; Sentinel-2 baseline >= 04.00: -0.1) "
                            "(default: the file's, else 0)")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--reliability", metavar="FILE",
                       help="MODIS pixel reliability on the input's grid: --accept classes observed, fill outside")
    where.add_argument("--vi-quality", metavar="FILE",
                       help="MODIS VI Quality on the input's grid: its MODLAND bits (0-1) in --accept observed")


def ndvi_threshold(value: Any) -> float | None:
    """``--ndvi-threshold`` as a number, or None for ``none``; absent: paper 001's 0."""
    if value is None:
        return 0.0
    if isinstance(value, str) and value.strip().lower() in ("none", "null", "off"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"--ndvi-threshold takes a number (NDVI, e.g. 0 or 0.1) or none, got {value!r}") from None


def product_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The flag values with what ``--product ndvi`` changes: the ``dip`` engine's preset is
    ``ndvi2024`` unless one was named."""
    out = dict(values)
    if out.get("product") == "ndvi" and (out.get("engine") or "dip") == "dip" and not out.get("preset"):
        out["preset"] = "ndvi2024"
    return out
