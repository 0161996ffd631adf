"""The networks of guided DIP (paper 003, MCPN), composed from dipnet's skip network. Torch only.

Every variant is one ``nn.Module`` whose ``forward(z[M, Cin, H, W])`` returns one tensor
``[M, K, H, W]``: the modalities' outputs in order (target first, then each guide in rank
order), followed, for the Emergent Core with cycle heads, by one block of ``core_channels``
cycle residuals per modality (``cycle_head_k(out_k) - core``, whose MSE against zero *is*
paper 003's cycle-consistency term). One output tensor is what lets the engine reuse
:func:`dipfill.engines.fit.fit_members` unchanged: the per-modality weighting lives in the
loss mask (see :func:`dipfill.engines.mcpn.modality_weights`).

The variants (paper 003, Section 2 and 2.1):

- ``emergent``: the core (the DIP skip network of the ``mcpn-core`` preset) outputs an
  ``core_channels`` (8) signal; one head per modality maps it to that modality; one cycle
  head per modality maps the modality back to the core signal. Heads are skip networks of
  two levels of [32, 32] channels, skips of [32, 32], 3×3 kernels, with the DIP reference's
  down- and upsampling kept.
- ``direct``: the core outputs the target itself; one head per guide maps the target to
  that guide. Heads as above but with stride 1 everywhere (no resampling), as the paper
  says for this variant. No cycle heads.
- ``stacked``: the core alone outputs target and guides as channels of one image (the
  paper's baseline, its ref. [16]).
- ``input``: the guides (and one validity channel per guide) are concatenated to the
  network's noise input and only the target is fitted (DIP's flash/no-flash experiment).
- ``residual``: the ``input`` network, fitted by the engine to the residual of a classical
  guided prediction (not from the paper; the engine computes the prediction).

Packing works as in dipnet: with M members every sub-network is a packed
:class:`~dipfill.engines.dipnet.SkipNet` whose member j was built from its own seed, and
every parameter's first axis stays member-major, so the fitter can freeze members.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
from torch import nn

from dipfill.engines.config import DIPConfig
from dipfill.engines.dipnet import SkipNet, pack_members

__all__ = ["VARIANTS", "HeadSpec", "MCPNNet", "build_mcpn", "derive_seed", "head_config"]

VARIANTS = ("emergent", "direct", "stacked", "input", "residual")


@dataclass(frozen=True)
class HeadSpec:
    """A modality head: a small skip network (paper 003: [32, 32] channels and skips, 3×3).

    Emergent heads keep the DIP reference's stride-2 down- and upsampling; Direct heads
    run the same layers at stride 1 (:func:`build_mcpn` decides by variant, as the paper).
    """

    channels: tuple[int, ...] = (32, 32)
    skip: tuple[int, ...] = (32, 32)
    kernel: int = 3


def head_config(core: DIPConfig, spec: HeadSpec, in_channels: int) -> DIPConfig:
    """The :class:`DIPConfig` of a head reading ``in_channels``: the core's layer choices
    (padding, activation, resampling kinds, sigmoid) with the head's widths and kernels."""
    return replace(
        core,
        channels_down=spec.channels,
        channels_up=spec.channels,
        channels_skip=spec.skip,
        kernel_down=spec.kernel,
        kernel_up=spec.kernel,
        input_kind="noise",
        input_channels=in_channels,
    )


def derive_seed(seed: int, role: int) -> int:
    """A seed for sub-network ``role`` (0 is the core) of the patch seeded ``seed``."""
    if role == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) & (2**63 - 1), role]).generate_state(1, np.uint64)[0] >> 1)


def _stride_one(net: SkipNet) -> SkipNet:
    """``net`` with every stride-2 convolution at stride 1 and every upsampling removed:
    the same layers at full resolution (paper 003's Direct heads). Max-pooling and
    transposed convolutions are replaced by identities too."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, (nn.Upsample, nn.MaxPool2d, nn.ConvTranspose2d)):
                setattr(module, name, nn.Identity())
            elif isinstance(child, nn.Conv2d) and child.stride != (1, 1):
                child.stride = (1, 1)
    return net


class MCPNNet(nn.Module):
    """``forward(z[M, Cin, H, W]) -> [M, K, H, W]``: modality outputs, then cycle residuals.

    ``guide_input`` (``[M, Cg, H, W]``, variant ``input``) is a fixed buffer concatenated to
    ``z`` inside ``forward``, so the fitter's per-step input perturbation touches the noise
    channels only, never the guides. ``crop`` (rows, cols) cuts the core's output to the
    patch before the heads: the core's input is padded so that it can halve six times (a
    64² patch runs at 128²), the heads need no such padding and would pay 4× for it.
    """

    def __init__(
        self,
        variant: str,
        core: SkipNet,
        heads: Sequence[SkipNet],
        cycles: Sequence[SkipNet],
        bands: Sequence[int],
        core_channels: int,
        guide_input: torch.Tensor | None = None,
        crop: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.crop = crop
        self.variant = variant
        self.core = core
        self.heads = nn.ModuleList(heads)
        self.cycles = nn.ModuleList(cycles)
        self.bands = tuple(int(b) for b in bands)
        self.core_channels = int(core_channels)
        if guide_input is None:
            self.guide_input = None
        else:
            self.register_buffer("guide_input", guide_input, persistent=False)

    @property
    def cycle_channels(self) -> int:
        """Output channels after the modalities' (cycle residuals): 0 without cycle heads."""
        return len(self.cycles) * self.core_channels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.guide_input is not None:
            z = torch.cat([z, self.guide_input.to(z.dtype)], dim=1)
        core = self.core(z)
        if self.crop is not None:
            core = core[:, :, : self.crop[0], : self.crop[1]]
        if self.variant == "emergent":
            outs = [head(core) for head in self.heads]
            residuals = [cycle(out) - core for cycle, out in zip(self.cycles, outs)]
            return torch.cat(outs + residuals, dim=1)
        if self.variant == "direct":
            return torch.cat([core] + [head(core) for head in self.heads], dim=1)
        return core  # stacked: all modalities; input/residual: the target only

    def split(self, out: torch.Tensor) -> list[torch.Tensor]:
        """``out`` cut into its modalities (target first; the guides' only where the variant
        outputs them); cycle residual channels are left out."""
        edges = np.cumsum((0,) + self.bands)
        count = len(self.bands) if self.variant in ("emergent", "direct", "stacked") else 1
        return [out[:, edges[k]:edges[k + 1]] for k in range(count)]


def build_mcpn(
    variant: str,
    config: DIPConfig,
    bands: Sequence[int],
    seeds: Sequence[int],
    *,
    core_channels: int = 8,
    head: HeadSpec = HeadSpec(),
    cycle: bool = True,
    guide_input: torch.Tensor | None = None,
    crop: tuple[int, int] | None = None,
) -> MCPNNet:
    """The ``variant`` network for modalities of ``bands`` (target first), one member per seed.

    ``config`` is the core's :class:`DIPConfig` (preset ``mcpn-core``: [16, 32, 64, 128, 128,
    128], skips 4). Sub-network ``r`` of member j starts from ``derive_seed(seeds[j], r)``
    (the core is role 0, so a core alone is seeded exactly as a single-image DIP member).
    ``guide_input`` (``input`` only) is ``[M, Cg, H, W]``; ``crop``: see :class:`MCPNNet`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown MCPN variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    bands = tuple(int(b) for b in bands)
    if not bands or min(bands) < 1:
        raise ValueError(f"every modality needs >= 1 band, got {bands}")
    target = bands[0]
    core_in = config.net_input_channels
    if variant in ("input", "residual") and guide_input is not None:
        core_in += guide_input.shape[1]
    elif variant == "input" or guide_input is not None:
        raise ValueError(f"guide_input is for the 'input' (needed) and 'residual' variants, not {variant!r}")
    core_cfg = config
    if core_in != config.net_input_channels:  # noise (or meshgrid) channels + guide channels
        core_cfg = replace(config, input_kind="noise", input_channels=core_in)
    core_out = {"emergent": core_channels, "direct": target, "stacked": sum(bands)}.get(variant, target)
    role = iter(range(1, 10**6))

    def members(cfg: DIPConfig, out: int) -> SkipNet:
        r = next(role)
        return pack_members(cfg, out, [derive_seed(s, r) for s in seeds])

    core = pack_members(core_cfg, core_out, [derive_seed(s, 0) for s in seeds])
    heads: list[SkipNet] = []
    cycles: list[SkipNet] = []
    if variant == "emergent":
        heads = [members(head_config(config, head, core_channels), b) for b in bands]
        if cycle:
            cycles = [members(head_config(config, head, b), core_channels) for b in bands]
    elif variant == "direct":
        heads = [_stride_one(members(head_config(config, head, target), b)) for b in bands[1:]]
    return MCPNNet(variant, core, heads, cycles, bands, core_channels, guide_input, crop)
