"""CIFAR pre-activation ResNets with bottlenecks, depth 9n+2 (He et al. 2016b), the Network Slimming
PreResNet-164 and the weight-level PreResNet-110.

Stem 3x3 conv (16) into three stages of n bottlenecks BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1 with
inner widths 16/32/64 and streams 64/128/256; the first block of each stage has a 1x1 conv shortcut (no BN),
the stride sits on its 3x3 conv; a final BN-ReLU before pooling. Slots: the stem, each stage's stream
(tied), and two inner widths per block. Non-first blocks are removable.

Unlike the seed, there is no ``channel_selection`` layer: slimming prunes the channels each conv produces
(the inner widths), not a selection of the stream channels a block reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from prunenas.errors import ArchitectureError
from prunenas.families.base import INPUT, Family, Layer, Option, Slot
from prunenas.families.common import SlotTable, bn, conv, conv_out, init_weights, linear, scale
from prunenas.families.registry import register_family

if TYPE_CHECKING:
    from prunenas.arch import Architecture

INNER = (16, 32, 64)


@register_family("preresnet")
class PreResNet(Family):
    name = "preresnet"
    description = "CIFAR pre-activation bottleneck ResNet 9n+2 (110, 164)"
    options = {
        "depth": Option(164, help="9n+2: 110, 164, ..."),
        "width_mult": Option(1.0, kind=float),
    }

    def check_options(self, options: Mapping[str, Any]) -> None:
        if options["depth"] < 11 or (options["depth"] - 2) % 9:
            raise ArchitectureError(f"preresnet depth {options['depth']} is not 9n+2 (110, 164, ...)")

    def slots(self, options: Mapping[str, Any]) -> tuple[Slot, ...]:
        return tuple(_table(tuple(sorted(options.items()))).slots)

    def layers(self, arch: Architecture) -> list[Layer]:
        t, w = _table(arch.options), arch.widths
        first, hw = conv("conv1", (INPUT,), t["stem"], arch.input_shape[0], w[t["stem"]], arch.input_shape[1:])
        out, src = [first], t["stem"]
        for s, b in _blocks(arch.opts):
            name, dst, (i1, i2) = f"layer{s + 1}.{b}", t["stream", s], (t["inner", s, b, 0], t["inner", s, b, 1])
            stride = 2 if s > 0 and b == 0 else 1
            if w[i1]:
                c1, _ = conv(f"{name}.conv1", (src,), i1, w[src], w[i1], hw, kernel=1)
                c2, hw2 = conv(f"{name}.conv2", (i1,), i2, w[i1], w[i2], hw, stride=stride)
                c3, _ = conv(f"{name}.conv3", (i2,), dst, w[i2], w[dst], hw2, kernel=1)
                out += [bn(f"{name}.bn1", (src,), w[src]), c1, bn(f"{name}.bn2", (i1,), w[i1]), c2,
                        bn(f"{name}.bn3", (i2,), w[i2]), c3]
            if b == 0:
                ds, _ = conv(f"{name}.downsample.0", (src,), dst, w[src], w[dst], hw, kernel=1, stride=stride)
                out.append(ds)
            hw = (conv_out(hw[0], 3, stride), conv_out(hw[1], 3, stride))
            src = dst
        return out + [bn("bn", (src,), w[src]), linear("fc", (src,), None, w[src], arch.num_classes)]

    def build(self, arch: Architecture) -> nn.Module:
        t, w = _table(arch.options), arch.widths
        stages: dict[str, list[nn.Module]] = {}
        src = w[t["stem"]]
        for s, b in _blocks(arch.opts):
            dst = w[t["stream", s]]
            inners = (w[t["inner", s, b, 0]], w[t["inner", s, b, 1]])
            stride = 2 if s > 0 and b == 0 else 1
            stages.setdefault(f"layer{s + 1}", []).append(PreActBottleneck(src, inners, dst, stride, b == 0))
            src = dst
        model = CifarPreResNet(arch.input_shape[0], w[t["stem"]], stages, src, arch.num_classes)
        init_weights(model, bn_gamma=0.5)
        return model


def _blocks(opts: Mapping[str, Any]) -> list[tuple[int, int]]:
    n = (opts["depth"] - 2) // 9
    return [(s, b) for s in range(3) for b in range(n)]


@lru_cache(maxsize=64)
def _table(options: tuple) -> SlotTable:
    opts = dict(options)
    m = opts["width_mult"]
    table = SlotTable()
    table.add(("stem",), Slot("stem", scale(16, m), 0))
    for s, b in _blocks(opts):
        removable = None if b == 0 else s * 1000 + b
        inner_stage = s - 1 if s > 0 and b == 0 else s  # the first conv runs before the stride
        table.add(("inner", s, b, 0), Slot(f"layer{s + 1}.{b}.inner1", scale(INNER[s], m), inner_stage,
                                           block=removable))
        table.add(("inner", s, b, 1), Slot(f"layer{s + 1}.{b}.inner2", scale(INNER[s], m), s, block=removable))
        if b == 0:
            table.add(("stream", s), Slot(f"stage{s + 1}.stream", scale(INNER[s], m) * 4, s, tied=True))
    return table


class PreActBottleneck(nn.Module):
    def __init__(self, c_in: int, inners: tuple[int, int], c_out: int, stride: int, downsample: bool):
        super().__init__()
        self.removed = inners[0] == 0
        if not self.removed:
            self.bn1 = nn.BatchNorm2d(c_in)
            self.conv1 = nn.Conv2d(c_in, inners[0], 1, bias=False)
            self.bn2 = nn.BatchNorm2d(inners[0])
            self.conv2 = nn.Conv2d(inners[0], inners[1], 3, stride, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(inners[1])
            self.conv3 = nn.Conv2d(inners[1], c_out, 1, bias=False)
        self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False)) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        if self.removed:
            return residual
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + residual


class CifarPreResNet(nn.Module):
    def __init__(self, c_in: int, stem: int, stages: dict[str, list[nn.Module]], c_last: int, classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, stem, 3, 1, 1, bias=False)
        for name, blocks in stages.items():
            self.add_module(name, nn.Sequential(*blocks))
        self.stage_names = list(stages)
        self.bn = nn.BatchNorm2d(c_last)
        self.fc = nn.Linear(c_last, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
