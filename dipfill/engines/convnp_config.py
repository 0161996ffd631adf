"""The ConvNP's option records (paper 002), without torch: the CLI shows their defaults.

:class:`ConvNPConfig` is the network's shape (what a model file carries to be rebuilt);
:class:`TrainConfig` how :mod:`dipfill.engines.convnp_train` trains it (recorded in the
model's STAC item). Kept apart from the torch modules, as :mod:`dipfill.engines.config` is
for DIP, so that building the command line loads no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from dipfill.errors import InputError

__all__ = ["ConvNPConfig", "TrainConfig"]


@dataclass(frozen=True)
class ConvNPConfig:
    """The network's shape: what a model file must carry to be rebuilt.

    ``bands``: channels of the data (a model fills only scenes with as many bands, in the
    order it was trained on); ``channels``: U-Net widths, one per level (each level halves
    the resolution, so patches are padded to a multiple of ``2**(len(channels)-1)``);
    ``kernel``: width of the set convolution ψ; ``min_std``: floor of the predicted
    standard deviation in normalised units (keeps the likelihood finite on flat ground).
    """

    bands: int = 3
    channels: tuple[int, ...] = (16, 32, 64, 96)
    kernel: int = 7
    min_std: float = 0.005

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.bands < 1:
            raise InputError(f"ConvNP bands must be >= 1, got {self.bands}")
        if not self.channels or min(self.channels) < 1:
            raise InputError(f"ConvNP channels must be positive widths, got {self.channels}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise InputError(f"ConvNP kernel must be odd and >= 1, got {self.kernel}")
        if not self.min_std > 0:
            raise InputError(f"ConvNP min_std must be > 0, got {self.min_std}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ConvNPConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"ConvNP config has unknown fields {unknown}")
        return cls(**{k: (tuple(v) if k == "channels" else v) for k, v in d.items()})


@dataclass(frozen=True)
class TrainConfig:
    """How a ConvNP is trained (recorded in the model item)."""

    steps: int = 600
    batch: int = 8
    size: int = 64
    lr: float = 1e-3
    decay: float = 5.0  # the learning rate falls by this factor over the run (paper 002)
    seed: int = 0
    min_valid: float = 0.5
    min_hidden: float = 0.03
    max_hidden: float = 0.6
    validation_tasks: int = 32

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or self.size < 8:
            raise InputError(f"training needs steps >= 1, batch >= 1 and size >= 8, got {self.steps}, {self.batch}, "
                             f"{self.size}")
        if not 0 < self.min_hidden < self.max_hidden <= 1:
            raise InputError(f"need 0 < min_hidden < max_hidden <= 1, got {self.min_hidden}, {self.max_hidden}")
        if not self.lr > 0 or not self.decay >= 1:
            raise InputError(f"need lr > 0 and decay >= 1, got {self.lr}, {self.decay}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
