"""ImageNet ResNets (He et al. 2016): 18/34 with basic blocks, 50/101/152 with bottlenecks.

Module names and structure follow torchvision (v1.5: the stride sits on the bottleneck's 3x3 conv), so
torchvision state dicts load into the base network. Slots: the stem, per stage the residual stream (a
tied slot; in ResNet-18/34 the stem *is* stage 1's stream), and the inner widths of every block (one for
basic blocks, two for bottlenecks). Blocks without a downsample shortcut are removable.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from prunenas.families.base import INPUT, Family, Layer, Option, Slot
from prunenas.families.common import SlotTable, bn, conv, conv_out, init_weights, linear, scale
from prunenas.families.registry import register_family

if TYPE_CHECKING:
    from prunenas.arch import Architecture

DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
PLANES = (64, 128, 256, 512)


@register_family("resnet")
class ResNet(Family):
    name = "resnet"
    description = "ImageNet ResNet-18/34/50/101/152 (torchvision layout)"
    options = {
        "depth": Option(50, tuple(DEPTHS)),
        "width_mult": Option(1.0, kind=float),
        "downsample_bias": Option(False, kind=bool, help="1x1 downsample convs with bias (ThiNet's ResNet-50)"),
    }

    def slots(self, options: Mapping[str, Any]) -> tuple[Slot, ...]:
        return tuple(_table(tuple(sorted(options.items()))).slots)

    def layers(self, arch: Architecture) -> list[Layer]:
        t, w, opts = _table(arch.options), arch.widths, arch.opts
        stem = t["stem"]
        first, hw = conv("conv1", (INPUT,), stem, arch.input_shape[0], w[stem], arch.input_shape[1:], kernel=7,
                         stride=2)
        out = [first, bn("bn1", (stem,), w[stem])]
        hw = (conv_out(hw[0], 3, 2), conv_out(hw[1], 3, 2))  # max pool 3x3/2
        src = stem
        for s, b in _blocks(opts):
            name, dst = f"layer{s + 1}.{b}", t["stream", s]
            stride = 2 if s > 0 and b == 0 else 1
            inners = [t[key] for key in _inner_keys(opts, s, b)]
            if w[inners[0]]:
                out += _branch_layers(name, src, inners, dst, w, hw, stride)
            if _has_downsample(opts, s, b):
                ds, _ = conv(f"{name}.downsample.0", (src,), dst, w[src], w[dst], hw, kernel=1, stride=stride,
                             bias=opts["downsample_bias"])
                out += [ds, bn(f"{name}.downsample.1", (dst,), w[dst])]
            hw = (conv_out(hw[0], 3, stride), conv_out(hw[1], 3, stride))
            src = dst
        out.append(linear("fc", (src,), None, w[src], arch.num_classes))
        return out

    def build(self, arch: Architecture) -> nn.Module:
        t, w, opts = _table(arch.options), arch.widths, arch.opts
        stages: dict[str, list[nn.Module]] = {}
        src = w[t["stem"]]
        for s, b in _blocks(opts):
            dst = w[t["stream", s]]
            inners = [w[t[key]] for key in _inner_keys(opts, s, b)]
            stride = 2 if s > 0 and b == 0 else 1
            downsample = None
            if _has_downsample(opts, s, b):
                downsample = nn.Sequential(nn.Conv2d(src, dst, 1, stride, bias=opts["downsample_bias"]),
                                           nn.BatchNorm2d(dst))
            block = (Bottleneck if len(inners) == 2 else BasicBlock)(src, inners, dst, stride, downsample)
            stages.setdefault(f"layer{s + 1}", []).append(block)
            src = dst
        model = ImageNetResNet(arch.input_shape[0], w[t["stem"]], stages, src, arch.num_classes)
        init_weights(model)
        return model


def _bottleneck(opts: Mapping[str, Any]) -> bool:
    return opts["depth"] >= 50


def _blocks(opts: Mapping[str, Any]) -> list[tuple[int, int]]:
    return [(s, b) for s, n in enumerate(DEPTHS[opts["depth"]]) for b in range(n)]


def _has_downsample(opts: Mapping[str, Any], s: int, b: int) -> bool:
    return b == 0 and (s > 0 or _bottleneck(opts))


def _inner_keys(opts: Mapping[str, Any], s: int, b: int) -> list[tuple]:
    return [("inner", s, b, j) for j in range(2 if _bottleneck(opts) else 1)]


@lru_cache(maxsize=64)
def _table(options: tuple) -> SlotTable:
    opts = dict(options)
    m, expansion = opts["width_mult"], 4 if _bottleneck(opts) else 1
    table = SlotTable()
    stem = table.add(("stem",), Slot("stem", scale(64, m), 0, tied=not _bottleneck(opts)))
    for s, b in _blocks(opts):
        removable = None if _has_downsample(opts, s, b) else s * 1000 + b
        for key in _inner_keys(opts, s, b):
            table.add(key, Slot(f"layer{s + 1}.{b}.inner{key[3] + 1}" if _bottleneck(opts) else
                                f"layer{s + 1}.{b}.inner", scale(PLANES[s], m), s, block=removable))
        if b == 0:
            if _has_downsample(opts, s, b):
                table.add(("stream", s), Slot(f"stage{s + 1}.stream", scale(PLANES[s], m) * expansion, s, tied=True))
            else:  # ResNet-18/34 stage 1: the stem output is the stream
                table.index["stream", s] = stem
    return table


def _branch_layers(name: str, src: int, inners: list[int], dst: int, w: tuple[int, ...], hw: tuple[int, int],
                   stride: int) -> list[Layer]:
    """Layers of a block's residual branch (basic: 3x3-3x3; bottleneck: 1x1-3x3-1x1)."""
    out: list[Layer] = []
    if len(inners) == 1:
        plan = [(src, inners[0], 3, stride), (inners[0], dst, 3, 1)]
    else:
        plan = [(src, inners[0], 1, 1), (inners[0], inners[1], 3, stride), (inners[1], dst, 1, 1)]
    for j, (a, c, k, st) in enumerate(plan, start=1):
        layer, hw = conv(f"{name}.conv{j}", (a,), c, w[a], w[c], hw, kernel=k, stride=st)
        out += [layer, bn(f"{name}.bn{j}", (c,), w[c])]
    return out


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, inners: list[int], c_out: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.removed = inners[0] == 0
        if not self.removed:
            self.conv1 = nn.Conv2d(c_in, inners[0], 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(inners[0])
            self.conv2 = nn.Conv2d(inners[0], c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.removed:
            return x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, inners: list[int], c_out: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.removed = inners[0] == 0
        if not self.removed:
            self.conv1 = nn.Conv2d(c_in, inners[0], 1, bias=False)
            self.bn1 = nn.BatchNorm2d(inners[0])
            self.conv2 = nn.Conv2d(inners[0], inners[1], 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(inners[1])
            self.conv3 = nn.Conv2d(inners[1], c_out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(c_out)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.removed:
            return x
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ImageNetResNet(nn.Module):
    def __init__(self, c_in: int, stem: int, stages: dict[str, list[nn.Module]], c_last: int, classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for name, blocks in stages.items():
            self.add_module(name, nn.Sequential(*blocks))
        self.stage_names = list(stages)
        self.fc = nn.Linear(c_last, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
