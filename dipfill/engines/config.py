"""What defines a DIP fit: :class:`DIPConfig`, the papers' :data:`PRESETS`, and the few
plain helpers every DIP module needs. No torch.

Why a module of its own: the network (:mod:`~dipfill.engines.dipnet`), the fitting loop
(:mod:`~dipfill.engines.fit`), the strategy measurement (:mod:`~dipfill.engines.strategy`)
and the engine (:mod:`~dipfill.engines.dip`) all read the config, and the engine uses all of
them. With the config in the engine module they imported each other in a circle; here every
arrow points one way: ``config ← dipnet ← fit ← strategy ← dip``. It also lets a command
line validate ``--preset``/``--dip KEY=VALUE`` without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

from dipfill.errors import InputError

__all__ = ["DIPConfig", "PRESETS", "DEFAULT_PRESET", "preset", "padded_size", "Monitor", "coerce_field_types"]

#: The preset of ``make_engine("dip")`` and of the CLI when none is named: paper 000.
DEFAULT_PRESET = "landsat2020"

# The allowed values of every string field of DIPConfig (checked in __post_init__).
_CHOICES: dict[str, tuple[str, ...]] = {
    "padding": ("reflection", "zero"),
    "upsample": ("nearest", "bilinear", "transposed"),
    "downsample": ("stride", "maxpool"),
    "activation": ("leakyrelu", "relu", "tanh"),
    "input_kind": ("noise", "meshgrid"),
    "input_noise": ("uniform", "gaussian", "rayleigh"),
    "loss": ("mse", "ssim", "mse+ssim"),
    "device": ("auto", "cpu", "cuda"),
    "stopping": ("fixed", "holdout", "emv"),
    "blend": ("none", "fillnodata"),
    "strategy": ("auto", "loop", "packed"),
    "compile": ("auto", "on", "off"),
    "precision": ("auto", "fp32", "bf16"),
}


def _number(value: Any) -> bool:
    """A real number that is not a bool (``True`` is an int to Python, not to a user)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _as_int(value: Any) -> int | None:
    """``value`` as an int when it is one (``300``, ``300.0``), else None."""
    if not _number(value):
        return None
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        return None
    return int(value)


def _as_float(value: Any) -> float | None:
    return float(value) if _number(value) else None


def _as_bool(value: Any) -> bool | None:
    return bool(value) if isinstance(value, (bool, np.bool_)) else None


def _as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _as_ints(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, (tuple, list)):
        return None
    items = tuple(_as_int(v) for v in value)
    return None if any(v is None for v in items) else items  # type: ignore[return-value]


def _as_float_pair(value: Any) -> tuple[float, float] | None:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return None
    items = tuple(_as_float(v) for v in value)
    return None if any(v is None for v in items) else items  # type: ignore[return-value]


def _as_optional_float(value: Any) -> float | None:
    return None if value is None else _as_float(value)


# What each annotation of a config field accepts, its converter (None: not of that type) and
# how to say so: a value of the wrong type from --dip, a YAML config or a notebook is an
# InputError naming the option, never a TypeError deep in the engine.
_KINDS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "int": (_as_int, "an integer (e.g. 300)"),
    "float": (_as_float, "a number (e.g. 0.01)"),
    "bool": (_as_bool, "true or false"),
    "str": (_as_str, "a string"),
    "tuple[int, ...]": (_as_ints, "a list of integers, one per level (e.g. [128,128,128,128,128])"),
    "tuple[float, float]": (_as_float_pair, "a list of two numbers (e.g. [1,99])"),
    "float | None": (_as_optional_float, "a number or null"),
}


def coerce_field_types(config: Any, what: str) -> None:
    """Check every field of the frozen dataclass ``config`` against its annotation and store
    it in its canonical type (``300.0`` → ``300`` for an int, ``[4, 4]`` → ``(4, 4)``,
    ``1`` → ``1.0`` for a float). A value of another type raises :class:`InputError`
    naming ``what`` and the field (``"dip steps must be an integer (e.g. 300), got 'abc'"``).
    """
    for f in fields(config):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind not in _KINDS:  # a field of a type no option sets
            continue
        convert, expected = _KINDS[kind]
        value = getattr(config, f.name)
        if value is None and kind == "float | None":
            continue
        converted = convert(value)
        if converted is None:
            raise InputError(f"{what} {f.name} must be {expected}, got {_shown(value)}")
        object.__setattr__(config, f.name, converted)


def _shown(value: Any) -> str:
    """A value as the user wrote it: ``null`` for None, JSON-like lists."""
    if value is None:
        return "null"
    if isinstance(value, tuple):
        return "[" + ",".join(_shown(v) for v in value) + "]"
    return repr(value)


@dataclass(frozen=True)
class DIPConfig:
    """Everything that defines a DIP fit. Defaults are paper 000's (preset ``landsat2020``).

    Per-level tuples run from the finest level (full resolution) to the coarsest; their
    common length is the depth. A skip width of 0 drops that level's skip connection.
    """

    channels_down: tuple[int, ...] = (128,) * 5
    channels_up: tuple[int, ...] = (128,) * 5
    channels_skip: tuple[int, ...] = (128,) * 5
    kernel_down: int = 3
    kernel_up: int = 3
    kernel_skip: int = 1
    padding: str = "reflection"
    downsample: str = "stride"
    upsample: str = "nearest"
    activation: str = "leakyrelu"
    # Paper 004 (SAR) leaves the last up layer without activation so the output is not
    # squeezed; with a sigmoid head that layer's activation hardly matters.
    last_activation: bool = True
    sigmoid: bool = True
    batchnorm_running_stats: bool = False
    input_kind: str = "noise"
    input_channels: int = 32
    input_noise: str = "uniform"
    input_noise_scale: float = 0.1
    reg_noise_std: float = 0.1  # paper 000 Appendix A: sigma_p = 1/10
    loss: str = "mse"
    lr: float = 0.01
    steps: int = 1500
    device: str = "auto"
    # Normalisation: observed percentiles -> target range; the headroom keeps gap values
    # brighter/darker than the observed percentiles reachable through the sigmoid.
    percentiles: tuple[float, float] = (1.0, 99.0)
    target_range: tuple[float, float] = (0.1, 0.9)
    # When to stop and which iterate to keep (dipfill.engines.stopping): "fixed" runs all
    # steps and keeps the last; "holdout" scores gap-shaped held-out observed pixels every
    # check_every steps and stops a patch after `patience` checks without improvement;
    # "emv" does the same on the output's exponential moving variance (ES-EMV).
    stopping: str = "fixed"
    check_every: int = 25
    patience: int = 8
    holdout_fraction: float = 0.05
    emv_alpha: float = 0.1
    # Output EMA (dipfill.engines.fit): the kept prediction averages the outputs with this
    # weight on the past (the DIP reference's exp_weight 0.99); 0 keeps the last output.
    exp_weight: float = 0.99
    # Judged blend with interpolation (dipfill.engines.dip): "fillnodata" predicts the
    # held-out pixels with GDAL's fillnodata too and writes w·DIP + (1 − w)·fillnodata in
    # the gaps, w in [0, 1] the least-squares weight there lowered by blend_z jackknife
    # standard errors: DIP has to show on this patch and band that it beats interpolation.
    # "none" writes the network's output alone. Needs held-out pixels (holdout_fraction).
    blend: str = "fillnodata"
    blend_z: float = 1.0
    # Observed pixels whose value is <= this stay out of the loss. Paper 001 fits NDVI on
    # vegetation only (NDVI <= 0 excluded): loss_min_value=0 on NDVI. None: all observed.
    loss_min_value: float | None = None
    # How to run, not what to compute (dipfill.engines.strategy): "auto" measures once per
    # device and caches. Results agree to float rounding across choices, not bit for bit:
    # pin them for byte-identical reruns on other machines.
    strategy: str = "auto"
    compile: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise InputError(f"dip {name} must be one of {', '.join(allowed)}; got {value!r}")
        coerce_field_types(self, "dip")
        depth = len(self.channels_down)
        if depth < 1 or len(self.channels_up) != depth or len(self.channels_skip) != depth:
            raise InputError(
                "dip channels_down, channels_up and channels_skip need one entry per level "
                f"(same length >= 1); got {len(self.channels_down)}, {len(self.channels_up)}, "
                f"{len(self.channels_skip)}"
            )
        if min(self.channels_down + self.channels_up) < 1 or min(self.channels_skip) < 0:
            raise InputError("dip channel counts must be >= 1 (skip channels >= 0)")
        for name in ("kernel_down", "kernel_up", "kernel_skip"):
            k = getattr(self, name)
            if k < 1 or k % 2 == 0:
                raise InputError(f"dip {name} must be an odd size >= 1, got {k}")
        if self.steps < 1:
            raise InputError(f"dip steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise InputError(f"dip lr must be > 0, got {self.lr}")
        if self.input_channels < 1:
            raise InputError(f"dip input_channels must be >= 1, got {self.input_channels}")
        if self.reg_noise_std < 0 or self.input_noise_scale < 0:
            raise InputError("dip reg_noise_std and input_noise_scale must be >= 0")
        if self.check_every < 1 or self.patience < 1:
            raise InputError("dip check_every and patience must be >= 1")
        if not 0 < self.holdout_fraction < 0.5:
            raise InputError(f"dip holdout_fraction must be in (0, 0.5), got {self.holdout_fraction}")
        if not self.blend_z >= 0:
            raise InputError(f"dip blend_z must be >= 0, got {self.blend_z}")
        if not 0 <= self.exp_weight < 1:
            raise InputError(f"dip exp_weight must be in [0, 1), got {self.exp_weight}")
        if not 0 < self.emv_alpha < 1:
            raise InputError(f"dip emv_alpha must be in (0, 1), got {self.emv_alpha}")

    @property
    def depth(self) -> int:
        return len(self.channels_down)

    @property
    def holds_out(self) -> bool:
        """Whether observed pixels are held out of the loss (to stop on, or to judge the blend)."""
        return self.stopping == "holdout" or self.blend != "none"

    @property
    def ssim_data_range(self) -> float:
        """SSIM's L for the ``ssim`` losses: the span the normalised values can take.

        A sigmoid head's output lies in (0, 1), so 1 (what the loss always used). Without one
        (sar2023) it is the target range's span, 2 for paper 004's [-1, 1]: with L fixed at 1
        the constants would be a quarter of their intended size relative to the data.
        """
        return 1.0 if self.sigmoid else float(self.target_range[1] - self.target_range[0])

    @property
    def net_input_channels(self) -> int:
        return 2 if self.input_kind == "meshgrid" else self.input_channels

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples as lists), for run records and config hashes."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


PRESETS: dict[str, dict[str, Any]] = {
    # Paper 000 (DIP for Landsat-7 SLC-off, ICLR 2020 workshop), Appendix A.
    "landsat2020": {},
    # Paper 004 (DIP inpainting of SAR amplitude): reflection padding, deconvolution up,
    # SSIM loss, uniform input noise, 3000 iterations, no activation on the last up
    # layer and no squashing head ("match the dynamic of the input samples"). Its input is
    # dB "normalised approximately between -1 and 1" (the SEN12MS authors' procedure); here
    # the observed 1st/99th percentiles go to -1/1, and SSIM's L follows (ssim_data_range 2).
    "sar2023": {
        "upsample": "transposed",
        "downsample": "maxpool",
        "activation": "leakyrelu",
        "last_activation": False,
        "sigmoid": False,
        "loss": "ssim",
        "steps": 3000,
        "target_range": (-1.0, 1.0),
    },
    # Paper 001 (DIP for cloud-gapped MODIS NDVI): 64 channels, input-noise injection and
    # early stopping (here on gap-shaped held-out pixels). Its vegetation-only loss is
    # `loss_min_value=0` on NDVI input (not set here: it is meaningless on reflectance).
    "ndvi2024": {
        "channels_down": (64,) * 5,
        "channels_up": (64,) * 5,
        "channels_skip": (64,) * 5,
        "reg_noise_std": 0.03,
        "stopping": "holdout",
    },
    # Paper 003 (MCPN) shared core: light encoder-decoder with 4-channel skips.
    "mcpn-core": {
        "channels_down": (16, 32, 64, 128, 128, 128),
        "channels_up": (16, 32, 64, 128, 128, 128),
        "channels_skip": (4,) * 6,
    },
    # Paper 003 (MCPN) as published, for the `mcpn` engine's core: the mcpn-core network and
    # its fixed-steps rule (4000; the Emergent variant stops on known-region RMSE instead).
    "mcpn": {
        "channels_down": (16, 32, 64, 128, 128, 128),
        "channels_up": (16, 32, 64, 128, 128, 128),
        "channels_skip": (4,) * 6,
        "steps": 4000,
    },
}


def preset(name: str, **overrides: Any) -> DIPConfig:
    """The named paper configuration with explicit overrides applied on top.

    ``overrides`` are :class:`DIPConfig` field names; an unknown one is an error that lists
    the known ones (a typo must not silently fall back to a default).
    """
    if name not in PRESETS:
        raise InputError(f"unknown dip preset {name!r}; choose one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(DIPConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(f"unknown dip option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return DIPConfig(**{**PRESETS[name], **overrides})


def padded_size(n: int, depth: int) -> int:
    """Smallest size >= n that survives ``depth`` halvings with >= 2 pixels left.

    Reflection padding needs at least 2 pixels at the coarsest level, and every level must
    halve exactly so the decoder's upsampled map matches its skip branch.
    """
    unit = 2 ** depth
    return max(unit * math.ceil(n / unit), 2 * unit)


# monitor(step, values[B, C, H, W] in data units, held-out RMSE[B] in normalised units):
# called by DIPEngine.fill every check_every steps; patches not being fitted at that moment
# are NaN. (The fitting loop's own callback, in normalised tensors, is fit.FitMonitor.)
Monitor = Callable[[int, NDArray[np.float32], NDArray[np.float64]], None]
