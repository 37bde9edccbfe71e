"""MobileNetV2 (Sandler et al. 2018) in torchvision's layout, with ImageNet or CIFAR stems.

Slots: the stem, each group's output stream (tied across its residual blocks), every block's expansion
width (the 1x1 expand conv and the depthwise conv share it) and the last 1x1 conv. Blocks with a
residual connection are removable (expansion 0 = identity). The first block (expansion 1) has no expand
conv: its depthwise conv runs on the stem's channels. The CIFAR stem (as in common CIFAR ports) uses
stride 1 in the first conv and in the 24-channel group, for 32x32 inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunenas.families.base import INPUT, Family, Layer, Option, Slot
from prunenas.families.common import SlotTable, bn, conv, init_weights, linear, scale
from prunenas.families.registry import register_family

if TYPE_CHECKING:
    from prunenas.arch import Architecture

# expansion t, output channels c, blocks n, first stride s (torchvision's inverted_residual_setting)
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))


@register_family("mobilenetv2")
class MobileNetV2(Family):
    name = "mobilenetv2"
    description = "MobileNetV2 (torchvision layout), expansion widths as slots"
    options = {
        "stem": Option("imagenet", ("imagenet", "cifar"), str, "cifar: stride 1 stem and 24-channel group"),
        "width_mult": Option(1.0, kind=float),
        "dropout": Option(0.2, kind=float),
    }

    def slots(self, options: Mapping[str, Any]) -> tuple[Slot, ...]:
        return tuple(_table(tuple(sorted(options.items()))).slots)

    def layers(self, arch: Architecture) -> list[Layer]:
        t, w = _table(arch.options), arch.widths
        stem = t["stem"]
        first, hw = conv("features.0.0", (INPUT,), stem, arch.input_shape[0], w[stem], arch.input_shape[1:],
                         stride=_stem_stride(arch.opts))
        out, src = [first, bn("features.0.1", (stem,), w[stem])], stem
        for i, (expand, stride, dst) in enumerate(_blocks(arch.opts), start=1):
            name = f"features.{i}.conv"
            mid = t["expand", i] if expand != 1 else src
            if w[mid] == 0:
                src = dst
                continue
            j = 0
            if expand != 1:
                c, _ = conv(f"{name}.0.0", (src,), mid, w[src], w[mid], hw, kernel=1)
                out += [c, bn(f"{name}.0.1", (mid,), w[mid])]
                j = 1
            dw, hw = conv(f"{name}.{j}.0", (mid,), mid, w[mid], w[mid], hw, stride=stride, groups=w[mid])
            pw, _ = conv(f"{name}.{j + 1}", (mid,), dst, w[mid], w[dst], hw, kernel=1)
            out += [dw, bn(f"{name}.{j}.1", (mid,), w[mid]), pw, bn(f"{name}.{j + 2}", (dst,), w[dst])]
            src = dst
        last, n = t["last"], len(_block_settings(arch.opts)) + 1
        c, _ = conv(f"features.{n}.0", (src,), last, w[src], w[last], hw, kernel=1)
        out += [c, bn(f"features.{n}.1", (last,), w[last])]
        return out + [linear("classifier.1", (last,), None, w[last], arch.num_classes)]

    def build(self, arch: Architecture) -> nn.Module:
        t, w = _table(arch.options), arch.widths
        src = w[t["stem"]]
        features: list[nn.Module] = [conv_bn_relu(arch.input_shape[0], w[t["stem"]], 3, _stem_stride(arch.opts))]
        for i, (expand, stride, dst) in enumerate(_blocks(arch.opts), start=1):
            mid = w[t["expand", i]] if expand != 1 else None
            features.append(InvertedResidual(src, mid, w[dst], stride, residual=_residual(arch.opts, i)))
            src = w[dst]
        features.append(conv_bn_relu(src, w[t["last"]], 1, 1))
        model = MobileNetV2Net(nn.Sequential(*features), w[t["last"]], arch.num_classes, arch.opts["dropout"])
        init_weights(model, linear_std=0.01)
        return model


def _stem_stride(opts: Mapping[str, Any]) -> int:
    return 1 if opts["stem"] == "cifar" else 2


def _block_settings(opts: Mapping[str, Any]) -> list[tuple[int, int, int, int]]:
    """(group, expansion, stride, index-in-group) per block."""
    out = []
    for g, (expand, _, n, stride) in enumerate(SETTINGS):
        if opts["stem"] == "cifar" and g == 1:
            stride = 1
        out += [(g, expand, stride if k == 0 else 1, k) for k in range(n)]
    return out


def _residual(opts: Mapping[str, Any], i: int) -> bool:
    return _block_settings(opts)[i - 1][3] > 0  # stride-1, same-width blocks of a group


def _blocks(opts: Mapping[str, Any]) -> list[tuple[int, int, int]]:
    """(expansion, stride, output stream slot) per block, numbered from 1 as in ``features``."""
    t = _table(tuple(sorted(opts.items())))
    return [(expand, stride, t["stream", g]) for g, expand, stride, _ in _block_settings(opts)]


@lru_cache(maxsize=64)
def _table(options: tuple) -> SlotTable:
    opts = dict(options)
    m = opts["width_mult"]
    table = SlotTable()
    stage = 0  # number of stride-2 steps after the stem: layers of one stage share a spatial size
    table.add(("stem",), Slot("stem", scale(32, m, 8), stage))
    src = table.slots[0].base
    for i, (g, expand, stride, k) in enumerate(_block_settings(opts), start=1):
        if expand != 1:
            table.add(("expand", i), Slot(f"features.{i}.expand", src * expand, stage,
                                          block=i if k > 0 else None))
        if stride == 2:
            stage += 1
        if k == 0:
            src = scale(SETTINGS[g][1], m, 8)
            table.add(("stream", g), Slot(f"group{g + 1}.stream", src, stage, tied=SETTINGS[g][2] > 1))
    table.add(("last",), Slot("last", scale(1280, max(1.0, m), 8), stage))
    return table


def conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """[1x1 expand-BN-ReLU6] - 3x3 depthwise-BN-ReLU6 - 1x1 project-BN (+ input when ``residual``)."""

    def __init__(self, c_in: int, mid: int | None, c_out: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.removed = mid == 0
        if self.removed:
            return
        layers: list[nn.Module] = []
        if mid is not None:
            layers.append(conv_bn_relu(c_in, mid, 1, 1))
        else:
            mid = c_in
        layers += [conv_bn_relu(mid, mid, 3, stride, groups=mid), nn.Conv2d(mid, c_out, 1, bias=False),
                   nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.removed:
            return x
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Net(nn.Module):
    def __init__(self, features: nn.Sequential, c_last: int, classes: int, dropout: float) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_last, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))
