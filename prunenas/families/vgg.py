"""VGG (Simonyan & Zisserman 2015) with free per-conv widths; one slot per conv and per hidden FC layer.

Heads (option ``head``):
  * ``linear``: global average pool + one Linear — the Network Slimming CIFAR VGG-19 (Liu et al. 2017);
  * ``mlp``: pool + Linear(w, 512)-BN1d-ReLU-Linear(512, C) — the L1-norm CIFAR VGG-16 (Li et al. 2017);
  * ``imagenet``: 7x7 pool + two FC-4096 layers with ReLU and dropout (torchvision's VGG);
  * ``imagenet-bn``: the same with BN1d after each FC instead of dropout (the seed's ImageNet VGG-11).
CIFAR-size inputs use the seed's feature stack without the last max-pool; ImageNet heads keep it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from prunenas.families.base import INPUT, Family, Layer, Option, Slot
from prunenas.families.common import bn, conv, init_weights, linear, scale
from prunenas.families.registry import register_family

if TYPE_CHECKING:
    from prunenas.arch import Architecture

M = "M"
CONFIGS: dict[int, list[int | str]] = {
    11: [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512],
    13: [64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512],
    16: [64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512],
    19: [64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512],
}
HEAD_WIDTH = {"linear": 0, "mlp": 512, "imagenet": 4096, "imagenet-bn": 4096}
HIDDEN_FCS = {"linear": 0, "mlp": 1, "imagenet": 2, "imagenet-bn": 2}


@register_family("vgg")
class VGG(Family):
    name = "vgg"
    description = "VGG-11/13/16/19, one slot per conv and hidden FC layer"
    options = {
        "depth": Option(16, (11, 13, 16, 19)),
        "head": Option("linear", tuple(HEAD_WIDTH), str, "classifier variant"),
        "batch_norm": Option(True, kind=bool, help="BN after every conv"),
        "conv_bias": Option(False, kind=bool, help="convs have a bias (torchvision's VGG does)"),
        "width_mult": Option(1.0, kind=float, help="scales the standard widths into the base widths"),
        "dropout": Option(0.5, kind=float, help="dropout of the imagenet head"),
    }

    def _plan(self, opts: Mapping[str, Any]) -> list[int | str]:
        plan = list(CONFIGS[opts["depth"]])
        return plan + [M] if opts["head"].startswith("imagenet") else plan

    def slots(self, options: Mapping[str, Any]) -> tuple[Slot, ...]:
        slots, stage = [], 0
        for item in self._plan(options):
            if item == M:
                stage += 1
            else:
                slots.append(Slot(f"conv{len(slots) + 1}", scale(item, options["width_mult"]), stage))
        hidden = scale(HEAD_WIDTH[options["head"]], options["width_mult"]) if HIDDEN_FCS[options["head"]] else 0
        for j in range(HIDDEN_FCS[options["head"]]):
            slots.append(Slot(f"fc{j + 1}", hidden, stage + 1))
        return tuple(slots)

    def layers(self, arch: Architecture) -> list[Layer]:
        opts, widths = arch.opts, arch.widths
        hw, cin, src, slot, index = arch.input_shape[1:], arch.input_shape[0], INPUT, 0, 0
        out: list[Layer] = []
        for item in self._plan(opts):
            if item == M:
                hw, index = (hw[0] // 2, hw[1] // 2), index + 1
                continue
            layer, hw = conv(f"features.{index}", (src,), slot, cin, widths[slot], hw,
                             bias=opts["conv_bias"] or not opts["batch_norm"])
            out.append(layer)
            if opts["batch_norm"]:
                out.append(bn(f"features.{index + 1}", (slot,), widths[slot]))
            index += 3 if opts["batch_norm"] else 2
            cin, src, slot = widths[slot], slot, slot + 1
        out += self._head_layers(arch, src, cin, slot)
        return out

    def _head_layers(self, arch: Architecture, src: int, cin: int, slot: int) -> list[Layer]:
        head, widths = arch.opts["head"], arch.widths
        repeat = 49 if head.startswith("imagenet") else 1
        out, index = [], 0
        for _ in range(HIDDEN_FCS[head]):
            out.append(linear(f"classifier.{index}", (src,), slot, cin, widths[slot], in_repeat=repeat))
            if head in ("mlp", "imagenet-bn"):
                out.append(bn(f"classifier.{index + 1}", (slot,), widths[slot]))
            index += 3
            cin, src, slot, repeat = widths[slot], slot, slot + 1, 1
        out.append(linear(f"classifier.{index}", (src,), None, cin, arch.num_classes, in_repeat=repeat))
        return out

    def build(self, arch: Architecture) -> nn.Module:
        opts, widths = arch.opts, iter(arch.widths)
        features: list[nn.Module] = []
        cin = arch.input_shape[0]
        for item in self._plan(opts):
            if item == M:
                features.append(nn.MaxPool2d(2, 2))
                continue
            w = next(widths)
            features.append(nn.Conv2d(cin, w, 3, padding=1, bias=opts["conv_bias"] or not opts["batch_norm"]))
            features += [nn.BatchNorm2d(w), nn.ReLU(inplace=True)] if opts["batch_norm"] else [nn.ReLU(inplace=True)]
            cin = w
        model = VGGNet(nn.Sequential(*features), self._head(opts, cin, list(widths), arch.num_classes))
        init_weights(model, bn_gamma=0.5, linear_std=0.01)
        return model

    @staticmethod
    def _head(opts: Mapping[str, Any], cin: int, hidden: list[int], classes: int) -> nn.Module:
        head = opts["head"]
        pool: nn.Module = nn.AdaptiveAvgPool2d(7 if head.startswith("imagenet") else 1)
        cin *= 49 if head.startswith("imagenet") else 1
        parts: list[nn.Module] = []
        for w in hidden:
            if head == "imagenet":
                parts += [nn.Linear(cin, w), nn.ReLU(inplace=True), nn.Dropout(opts["dropout"])]
            else:  # mlp, imagenet-bn
                parts += [nn.Linear(cin, w), nn.BatchNorm1d(w), nn.ReLU(inplace=True)]
            cin = w
        parts.append(nn.Linear(cin, classes))
        return nn.Sequential(pool, nn.Flatten(), nn.Sequential(*parts))


class VGGNet(nn.Module):
    def __init__(self, features: nn.Sequential, head: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.pool, self.flatten, self.classifier = head[0], head[1], head[2]

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))
