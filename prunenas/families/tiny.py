"""A tiny residual network for fast tests, with every kind of slot: plain conv, residual-tied, removable."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from prunenas.errors import ArchitectureError
from prunenas.families.base import INPUT, Family, Layer, Option, Slot
from prunenas.families.common import bn, conv, init_weights, linear, scale
from prunenas.families.registry import register_family
from prunenas.families.resnet_cifar import BasicBlock

if TYPE_CHECKING:
    from prunenas.arch import Architecture

STEM, STREAM = 0, 1


@register_family("tiny")
class Tiny(Family):
    name = "tiny"
    description = "stem conv, stride-2 conv into a residual stream, removable basic blocks (tests)"
    options = {
        "blocks": Option(2, help="residual blocks (each removable)"),
        "width_mult": Option(1.0, kind=float),
    }

    def check_options(self, options: Mapping[str, Any]) -> None:
        if options["blocks"] < 0:
            raise ArchitectureError(f"tiny: blocks {options['blocks']} must be >= 0")

    def slots(self, options: Mapping[str, Any]) -> tuple[Slot, ...]:
        m = options["width_mult"]
        slots = [Slot("stem", scale(8, m), 0), Slot("stream", scale(16, m), 1, tied=True)]
        slots += [Slot(f"blocks.{b}.inner", scale(8, m), 1, block=b) for b in range(options["blocks"])]
        return tuple(slots)

    def layers(self, arch: Architecture) -> list[Layer]:
        w = arch.widths
        stem, hw = conv("stem.0", (INPUT,), STEM, arch.input_shape[0], w[STEM], arch.input_shape[1:])
        down, hw = conv("down.0", (STEM,), STREAM, w[STEM], w[STREAM], hw, stride=2)
        out = [stem, bn("stem.1", (STEM,), w[STEM]), down, bn("down.1", (STREAM,), w[STREAM])]
        for b in range(arch.opts["blocks"]):
            inner, name = 2 + b, f"blocks.{b}"
            if w[inner]:
                c1, _ = conv(f"{name}.conv1", (STREAM,), inner, w[STREAM], w[inner], hw)
                c2, _ = conv(f"{name}.conv2", (inner,), STREAM, w[inner], w[STREAM], hw)
                out += [c1, bn(f"{name}.bn1", (inner,), w[inner]), c2, bn(f"{name}.bn2", (STREAM,), w[STREAM])]
        out.append(linear("fc", (STREAM,), None, w[STREAM], arch.num_classes))
        return out

    def build(self, arch: Architecture) -> nn.Module:
        w = arch.widths
        model = TinyNet(arch.input_shape[0], w[STEM], w[STREAM], w[2:], arch.num_classes)
        init_weights(model)
        return model


class TinyNet(nn.Module):
    def __init__(self, c_in: int, stem: int, stream: int, inners: tuple[int, ...], classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(c_in, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem))
        self.down = nn.Sequential(nn.Conv2d(stem, stream, 3, 2, 1, bias=False), nn.BatchNorm2d(stream))
        self.blocks = nn.Sequential(*[BasicBlock(stream, inner, stream, 1, "A") for inner in inners])
        self.fc = nn.Linear(stream, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.down(F.relu(self.stem(x))))
        x = self.blocks(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
