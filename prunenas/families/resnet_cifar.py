"""CIFAR ResNets of depth 6n+2 (He et al. 2016, §4.2), the L1-norm paper's ResNet-56/110.

Three stages of n basic blocks at widths 16/32/64. Slots: per stage the residual stream (the stem or the
stage's first block produces it, every block's second conv adds to it: one tied slot) and per block the
inner width (the first conv's output). Blocks with an identity shortcut are removable (width 0 = the
block is the identity).

Shortcut option ``A`` (the seed's): 2x2 average pool + zero channels, no parameters — so stream widths
must not decrease from stage to stage. Option ``B``: 1x1 conv + BN projection in the downsampling blocks.
Unlike the seed, the option-A shortcut passes gradients (the seed detaches it through ``x.data``).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from prunenas.errors import ArchitectureError
from prunenas.families.base import INPUT, Family, Layer, Option, Slot
from prunenas.families.common import SlotTable, bn, conv, halve, init_weights, linear, scale
from prunenas.families.registry import register_family

if TYPE_CHECKING:
    from prunenas.arch import Architecture

STAGE_WIDTHS = (16, 32, 64)


@register_family("resnet_cifar")
class ResNetCifar(Family):
    name = "resnet_cifar"
    description = "CIFAR ResNet 6n+2 (basic blocks, 16/32/64)"
    options = {
        "depth": Option(56, help="6n+2: 20, 32, 44, 56, 110, ..."),
        "shortcut": Option("A", ("A", "B"), str, "A: pool + zero-pad (no parameters); B: 1x1 conv + BN"),
        "width_mult": Option(1.0, kind=float, help="scales 16/32/64 into the base widths"),
    }

    def check_options(self, options: Mapping[str, Any]) -> None:
        depth = options["depth"]
        if depth < 8 or (depth - 2) % 6:
            raise ArchitectureError(f"resnet_cifar depth {depth} is not 6n+2 (20, 32, 44, 56, 110, ...)")

    def slots(self, options: Mapping[str, Any]) -> tuple[Slot, ...]:
        return tuple(_table(tuple(sorted(options.items()))).slots)

    def check(self, arch: Architecture) -> None:
        if arch.opts["shortcut"] != "A":
            return
        index = _table(arch.options)
        streams = [arch.widths[index["stream", s]] for s in range(3)]
        for s in range(1, len(streams)):
            if streams[s] < streams[s - 1]:
                raise ArchitectureError(
                    f"stage {s + 1} stream width {streams[s]} < stage {s} width {streams[s - 1]}: the "
                    "option-A shortcut zero-pads channels, so stream widths must not decrease"
                )

    def repair_widths(self, options: Mapping[str, Any], widths: Sequence[int]) -> tuple[int, ...]:
        """Option A: raise each stage's stream width to at least the previous stage's."""
        out = list(widths)
        if options["shortcut"] == "A":
            index = _table(tuple(sorted(options.items())))
            for s in range(1, 3):
                out[index["stream", s]] = max(out[index["stream", s]], out[index["stream", s - 1]])
        return tuple(out)

    def remap_buffers(self, base_arch: Architecture, arch: Architecture, kept: Mapping[int, Sequence[int]],
                      state: MutableMapping[str, torch.Tensor]) -> None:
        """Rewrite each option-A shortcut's ``source`` for the pruned streams.

        Output ``j`` of the pruned shortcut is original output channel ``K2[j]`` (``K2``: kept channels of the
        output stream). In the base network it read input channel ``base_source[K2[j]]``; the pruned one reads
        that channel's position in the kept input stream ``K1``, or the zero channel if it was dropped or
        was already the zero channel. With the standard base map this is ``K1.index(K2[j])`` when ``K2[j]``
        is in ``K1`` (and below the base input width), else zero.
        """
        if arch.opts["shortcut"] != "A":
            return
        index = _table(arch.options)
        for s in range(1, 3):
            key = f"layer{s + 1}.0.shortcut.source"
            if key not in state:
                continue
            k_in, k_out = kept[index["stream", s - 1]], kept[index["stream", s]]
            position = {int(c): i for i, c in enumerate(k_in)}
            base_source = state[key].tolist()
            state[key] = torch.tensor([position.get(base_source[c], len(k_in)) for c in k_out], dtype=torch.long)

    def zero_buffers(self, arch: Architecture, model: nn.Module, dropped: Mapping[int, Sequence[int]]) -> None:
        """Send dropped output channels of each option-A shortcut to the zero channel."""
        index = _table(arch.options)
        for s in range(1, 3):
            shortcut = model.get_submodule(f"layer{s + 1}.0.shortcut")
            channels = list(dropped.get(index["stream", s], ()))
            if isinstance(shortcut, ZeroPadShortcut) and channels:
                shortcut.source[channels] = arch.widths[index["stream", s - 1]]

    def layers(self, arch: Architecture) -> list[Layer]:
        index = _table(arch.options)
        w = arch.widths
        hw = arch.input_shape[1:]
        stem, hw = conv("conv1", (INPUT,), index["stream", 0], arch.input_shape[0], w[index["stream", 0]], hw)
        out = [stem, bn("bn1", (index["stream", 0],), w[index["stream", 0]])]
        src = index["stream", 0]
        for s, b in _blocks(arch.opts):
            name, dst, inner = f"layer{s + 1}.{b}", index["stream", s], index["inner", s, b]
            stride = 2 if s > 0 and b == 0 else 1
            if w[inner]:
                c1, hw1 = conv(f"{name}.conv1", (src,), inner, w[src], w[inner], hw, stride=stride)
                c2, _ = conv(f"{name}.conv2", (inner,), dst, w[inner], w[dst], hw1)
                out += [c1, bn(f"{name}.bn1", (inner,), w[inner]), c2, bn(f"{name}.bn2", (dst,), w[dst])]
            if stride == 2 and arch.opts["shortcut"] == "B":
                sc, _ = conv(f"{name}.shortcut.0", (src,), dst, w[src], w[dst], hw, kernel=1, stride=2)
                out += [sc, bn(f"{name}.shortcut.1", (dst,), w[dst])]
            hw = halve(hw) if stride == 2 else hw
            src = dst
        out.append(linear("fc", (src,), None, w[src], arch.num_classes))
        return out

    def build(self, arch: Architecture) -> nn.Module:
        index, w = _table(arch.options), arch.widths
        blocks: dict[str, list[nn.Module]] = {}
        src = w[index["stream", 0]]
        for s, b in _blocks(arch.opts):
            dst = w[index["stream", s]]
            stride = 2 if s > 0 and b == 0 else 1
            block = BasicBlock(src, w[index["inner", s, b]], dst, stride, arch.opts["shortcut"])
            blocks.setdefault(f"layer{s + 1}", []).append(block)
            src = dst
        model = CifarResNet(arch.input_shape[0], w[index["stream", 0]], blocks, src, arch.num_classes)
        init_weights(model)
        return model


def _blocks(opts: Mapping[str, Any]) -> list[tuple[int, int]]:
    n = (opts["depth"] - 2) // 6
    return [(s, b) for s in range(3) for b in range(n)]


@lru_cache(maxsize=64)
def _table(options: tuple) -> SlotTable:
    """Slots in module order; a block's inner slot is removable unless the block downsamples."""
    opts = dict(options)
    table = SlotTable()
    table.add(("stream", 0), Slot("stage1.stream", scale(STAGE_WIDTHS[0], opts["width_mult"]), 0, tied=True))
    for s, b in _blocks(opts):
        downsamples = s > 0 and b == 0
        width = scale(STAGE_WIDTHS[s], opts["width_mult"])
        block_id = None if downsamples else s * 1000 + b
        table.add(("inner", s, b), Slot(f"layer{s + 1}.{b}.inner", width, s, block=block_id))
        if downsamples:
            table.add(("stream", s), Slot(f"stage{s + 1}.stream", width, s, tied=True))
    return table


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: optional 2x2 average pool, then input channel ``source[j]`` -> output channel j.

    ``source`` holds ``c_in`` for output channels that receive zeros. Kept as a buffer so that networks
    with inherited (pruned) weights can carry a non-standard channel mapping.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        source = torch.full((c_out,), c_in, dtype=torch.long)
        source[:c_in] = torch.arange(c_in)
        self.register_buffer("source", source)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, ceil_mode=True)
        zero = x.new_zeros(x.shape[0], 1, x.shape[2], x.shape[3])
        return torch.cat([x, zero], 1).index_select(1, self.source)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU. ``inner == 0`` makes the block the identity."""

    def __init__(self, c_in: int, inner: int, c_out: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.removed = inner == 0
        if not self.removed:
            self.conv1 = nn.Conv2d(c_in, inner, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(inner)
            self.conv2 = nn.Conv2d(inner, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            if shortcut == "A":
                self.shortcut = ZeroPadShortcut(c_in, c_out, stride)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.removed:
            return x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, c_in: int, stem: int, stages: dict[str, list[nn.Module]], c_last: int, classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        for name, blocks in stages.items():
            self.add_module(name, nn.Sequential(*blocks))
        self.stage_names = list(stages)
        self.fc = nn.Linear(c_last, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
