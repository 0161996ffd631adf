"""The DIP skip encoder–decoder, for one patch or for M patches packed into one model.

The architecture is Ulyanov et al.'s "skip" hourglass (paper 000, Appendix A): at every
level a 1×1 skip branch and a deeper branch (down, conv, next level, upsample), concatenated,
then conv + 1×1 conv; BatchNorm and an activation after every conv; a 1×1 conv head.

Packing: with ``members=M`` every convolution becomes a grouped convolution with M groups
and every channel count is multiplied by M, member-major (member j owns channels
``j*C:(j+1)*C`` of every layer). BatchNorm is per channel and each member sees a batch of
one image, so its statistics are per member too; concatenations interleave per member.
M members therefore compute exactly what M separate networks compute, in one set of
kernel launches, and every parameter's first axis is member-major, which is what lets the
fitter freeze a stopped member by masking its rows (:func:`member_rows`).

Weights come from M separately built single networks (:func:`pack_members`), each built
from its own patch's seed: a patch's initial weights do not depend on its batch.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dipfill.engines.config import DIPConfig

__all__ = ["SkipNet", "build_skip_net", "member_rows", "pack_members", "restore_members"]


class _Level(nn.Module):
    """One hourglass level: ``merge(cat(skip(x), deeper(x)))``, concatenated per member."""

    def __init__(self, skip: nn.Module | None, deeper: nn.Module, merge: nn.Module, members: int) -> None:
        super().__init__()
        self.skip, self.deeper, self.merge, self.members = skip, deeper, merge, members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.deeper(x)
        if self.skip is not None:
            s = self.skip(x)
            if self.members == 1:
                y = torch.cat([s, y], dim=1)
            else:
                n, _, h, w = y.shape
                m = self.members
                y = torch.cat([s.view(n, m, -1, h, w), y.view(n, m, -1, h, w)], dim=2).view(n, -1, h, w)
        return self.merge(y)


class SkipNet(nn.Module):
    """``forward(z[M, Cin, H, W]) -> [M, Cout, H, W]``; internally one ``[1, M*C, H, W]`` map."""

    def __init__(self, body: nn.Module, members: int) -> None:
        super().__init__()
        self.body, self.members = body, members
        self.channels_last = False  # set with the weights' memory format (GPU path)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        m, c, h, w = z.shape
        if m != self.members:
            raise ValueError(f"network packs {self.members} members, input has {m}")
        x = z.reshape(1, m * c, h, w)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.body(x).reshape(m, -1, h, w)


def build_skip_net(config: DIPConfig, out_channels: int, members: int = 1) -> SkipNet:
    """The skip network of ``config`` mapping ``net_input_channels`` to ``out_channels``.

    Built with the global torch RNG; use :func:`pack_members` to get seeded members.
    """
    m = members

    def act(last: bool = False) -> nn.Module:
        if last and not config.last_activation:
            return nn.Identity()
        if config.activation == "leakyrelu":
            return nn.LeakyReLU(0.2)
        return nn.ReLU() if config.activation == "relu" else nn.Tanh()

    def bn(ch: int) -> nn.Module:
        return nn.BatchNorm2d(m * ch, track_running_stats=config.batchnorm_running_stats)

    def conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
        pad = (k - 1) // 2
        layers: list[nn.Module] = []
        if pad and config.padding == "reflection":
            layers.append(nn.ReflectionPad2d(pad))
            pad = 0
        layers.append(nn.Conv2d(m * cin, m * cout, k, stride=stride, padding=pad, groups=m))
        return nn.Sequential(*layers)

    def down(cin: int, cout: int) -> nn.Sequential:
        if config.downsample == "maxpool":
            return nn.Sequential(nn.MaxPool2d(2), *conv(cin, cout, config.kernel_down))
        return conv(cin, cout, config.kernel_down, stride=2)

    def up(ch: int) -> nn.Module:
        if config.upsample == "transposed":
            return nn.ConvTranspose2d(m * ch, m * ch, 2, stride=2, groups=m)
        if config.upsample == "bilinear":
            return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        return nn.Upsample(scale_factor=2, mode="nearest")

    def level(i: int, cin: int) -> nn.Module:
        nd, nu, ns = config.channels_down[i], config.channels_up[i], config.channels_skip[i]
        deeper: list[nn.Module] = [
            down(cin, nd), bn(nd), act(),
            conv(nd, nd, config.kernel_down), bn(nd), act(),
        ]
        if i + 1 < config.depth:
            deeper.append(level(i + 1, nd))
            k = config.channels_up[i + 1]
        else:
            k = nd
        deeper.append(up(k))
        skip = nn.Sequential(conv(cin, ns, config.kernel_skip), bn(ns), act()) if ns else None
        merge = nn.Sequential(
            bn(ns + k),
            conv(ns + k, nu, config.kernel_up), bn(nu), act(),
            conv(nu, nu, 1), bn(nu), act(last=i == 0),
        )
        return _Level(skip, nn.Sequential(*deeper), merge, m)

    body: list[nn.Module] = [level(0, config.net_input_channels), conv(config.channels_up[0], out_channels, 1)]
    if config.sigmoid:
        body.append(nn.Sigmoid())
    return SkipNet(nn.Sequential(*body), m)


def pack_members(config: DIPConfig, out_channels: int, seeds: Sequence[int]) -> SkipNet:
    """A network of ``len(seeds)`` members whose member j starts as a single network built
    with ``torch.manual_seed(seeds[j])``. The global RNG state is left as it was."""
    singles = []
    with torch.random.fork_rng(devices=[]):
        for seed in seeds:
            torch.manual_seed(int(seed))
            singles.append(build_skip_net(config, out_channels, 1))
    if len(singles) == 1:
        return singles[0]
    packed = build_skip_net(config, out_channels, len(singles))
    with torch.no_grad():
        for name, param in packed.named_parameters():
            parts = [dict(s.named_parameters())[name] for s in singles]
            param.copy_(torch.cat(parts, dim=0))
    return packed


def load_member_state(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Start every member of ``net`` from one single-member ``state`` (a warm start).

    Member j owns rows ``j*k:(j+1)*k`` of axis 0 of every parameter and buffer (see
    :func:`member_rows`), so the single member's tensor is repeated along axis 0; scalar
    buffers (BatchNorm's batch counter) are copied as they are."""
    own = net.state_dict()
    missing = set(own) ^ set(state)
    if missing:
        raise ValueError(f"warm-start state does not fit this network: {sorted(missing)[:3]} differ")
    with torch.no_grad():
        for name, target in own.items():
            value = state[name].to(target.device, target.dtype)
            if target.dim() and value.shape != target.shape:
                if target.shape[0] % value.shape[0] or target.shape[1:] != value.shape[1:]:
                    raise ValueError(f"warm-start state does not fit this network: {name} {tuple(value.shape)} "
                                     f"vs {tuple(target.shape)}")
                value = value.repeat(target.shape[0] // value.shape[0], *([1] * (value.dim() - 1)))
            target.copy_(value)


def member_rows(param: torch.Tensor, members: int) -> torch.Tensor:
    """``param`` as ``[members, -1]``: row j holds everything member j owns (a copy when
    the memory format is not plain contiguous, e.g. channels_last weights)."""
    return param.reshape(members, -1)


def restore_members(param: torch.Tensor, saved: torch.Tensor, which: torch.Tensor) -> None:
    """Copy the members flagged in ``which`` (bool ``[members]``) from ``saved`` into ``param``,
    in place, whatever the memory format: member j owns rows ``j*k:(j+1)*k`` of axis 0."""
    rows = which.to(param.device).repeat_interleave(param.shape[0] // which.numel())
    param[rows] = saved[rows]
