"""CIFAR DenseNets (Huang et al. 2017): the Network Slimming DenseNet-40 (growth 12) and BC variants.

A 3x3 stem conv (2 x growth), three dense blocks separated by transitions (BN-ReLU-conv1x1-avgpool2), a final
BN-ReLU and the classifier. A dense layer is BN-ReLU-conv3x3 (growth outputs), or with ``bottleneck``
BN-ReLU-conv1x1 (4 x growth)-BN-ReLU-conv3x3 (the BC design). Every layer reads the concatenation of the
block input and all earlier layers of its block.

Slots: the stem, every dense layer's growth (its own width), every bottleneck's inner width, every
transition's output. Unlike the seed, there is no ``channel_selection``: slimming prunes what each layer
produces (per-layer growth), not which concatenated channels a layer reads.
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
from prunenas.families.common import SlotTable, bn, conv, init_weights, linear, scale
from prunenas.families.registry import register_family

if TYPE_CHECKING:
    from prunenas.arch import Architecture


@register_family("densenet")
class DenseNet(Family):
    name = "densenet"
    description = "CIFAR DenseNet (40 / growth 12; BC with bottleneck + compression)"
    options = {
        "depth": Option(40, help="3n+4 (basic) or 6n+4 (bottleneck)"),
        "growth": Option(12),
        "bottleneck": Option(False, kind=bool, help="BC design: 1x1 conv to 4 x growth before each 3x3"),
        "compression": Option(1.0, kind=float, help="transition output = floor(input x compression)"),
        "width_mult": Option(1.0, kind=float),
    }

    def check_options(self, options: Mapping[str, Any]) -> None:
        per = 6 if options["bottleneck"] else 3
        if options["depth"] < per + 4 or (options["depth"] - 4) % per:
            raise ArchitectureError(f"densenet depth {options['depth']} is not {per}n+4")
        if not 0 < options["compression"] <= 1:
            raise ArchitectureError(f"densenet compression {options['compression']} must be in (0, 1]")

    def slots(self, options: Mapping[str, Any]) -> tuple[Slot, ...]:
        return tuple(_table(tuple(sorted(options.items()))).slots)

    def layers(self, arch: Architecture) -> list[Layer]:
        t, w, opts = _table(arch.options), arch.widths, arch.opts
        stem, hw = conv("conv1", (INPUT,), t["stem"], arch.input_shape[0], w[t["stem"]], arch.input_shape[1:])
        out, inputs = [stem], (t["stem"],)
        for blk in range(3):
            for i in range(_layers_per_block(opts)):
                name, grow, cin = f"dense{blk + 1}.{i}", t["growth", blk, i], sum(w[j] for j in inputs)
                if opts["bottleneck"]:
                    inner = t["inner", blk, i]
                    c1, _ = conv(f"{name}.conv1", inputs, inner, cin, w[inner], hw, kernel=1)
                    c2, _ = conv(f"{name}.conv2", (inner,), grow, w[inner], w[grow], hw)
                    out += [bn(f"{name}.bn1", inputs, cin), c1, bn(f"{name}.bn2", (inner,), w[inner]), c2]
                else:
                    c1, _ = conv(f"{name}.conv1", inputs, grow, cin, w[grow], hw)
                    out += [bn(f"{name}.bn1", inputs, cin), c1]
                inputs += (grow,)
            cin = sum(w[j] for j in inputs)
            if blk < 2:
                trans = t["trans", blk]
                c, _ = conv(f"trans{blk + 1}.conv1", inputs, trans, cin, w[trans], hw, kernel=1)
                out += [bn(f"trans{blk + 1}.bn1", inputs, cin), c]
                hw, inputs = (hw[0] // 2, hw[1] // 2), (trans,)
        return out + [bn("bn", inputs, cin), linear("fc", inputs, None, cin, arch.num_classes)]

    def build(self, arch: Architecture) -> nn.Module:
        t, w, opts = _table(arch.options), arch.widths, arch.opts
        parts: dict[str, nn.Module] = {}
        channels = w[t["stem"]]
        for blk in range(3):
            layers = []
            for i in range(_layers_per_block(opts)):
                inner = w[t["inner", blk, i]] if opts["bottleneck"] else 0
                layers.append(DenseLayer(channels, inner, w[t["growth", blk, i]]))
                channels += w[t["growth", blk, i]]
            parts[f"dense{blk + 1}"] = nn.Sequential(*layers)
            if blk < 2:
                parts[f"trans{blk + 1}"] = Transition(channels, w[t["trans", blk]])
                channels = w[t["trans", blk]]
        model = CifarDenseNet(arch.input_shape[0], w[t["stem"]], parts, channels, arch.num_classes)
        init_weights(model, bn_gamma=0.5)
        return model


def _layers_per_block(opts: Mapping[str, Any]) -> int:
    return (opts["depth"] - 4) // (6 if opts["bottleneck"] else 3)


@lru_cache(maxsize=64)
def _table(options: tuple) -> SlotTable:
    opts = dict(options)
    m, growth = opts["width_mult"], scale(opts["growth"], opts["width_mult"])
    table = SlotTable()
    table.add(("stem",), Slot("stem", scale(2 * opts["growth"], m), 0))
    channels = table.slots[0].base
    for blk in range(3):
        for i in range(_layers_per_block(opts)):
            if opts["bottleneck"]:
                table.add(("inner", blk, i), Slot(f"dense{blk + 1}.{i}.inner", 4 * growth, blk))
            table.add(("growth", blk, i), Slot(f"dense{blk + 1}.{i}.growth", growth, blk))
            channels += growth
        if blk < 2:
            channels = int(channels * opts["compression"])
            table.add(("trans", blk), Slot(f"trans{blk + 1}", channels, blk))
    return table


class DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 (or BN-ReLU-conv1x1-BN-ReLU-conv3x3 with ``inner``); output concatenated to input."""

    def __init__(self, c_in: int, inner: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        if inner:
            self.conv1 = nn.Conv2d(c_in, inner, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(inner)
            self.conv2 = nn.Conv2d(inner, growth, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(c_in, growth, 3, 1, 1, bias=False)
        self.bottleneck = bool(inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        if self.bottleneck:
            out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv1(F.relu(self.bn1(x))), 2)


class CifarDenseNet(nn.Module):
    def __init__(self, c_in: int, stem: int, parts: dict[str, nn.Module], c_last: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, stem, 3, 1, 1, bias=False)
        for name, part in parts.items():
            self.add_module(name, part)
        self.part_names = list(parts)
        self.bn = nn.BatchNorm2d(c_last)
        self.fc = nn.Linear(c_last, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for name in self.part_names:
            x = getattr(self, name)(x)
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
