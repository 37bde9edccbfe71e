"""Helpers shared by the families: layer descriptors, spatial arithmetic, width scaling, initialisation,
attention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from prunenas.families.base import Layer, Slot


def conv_out(size: int, kernel: int, stride: int, padding: int | None = None) -> int:
    """Output size of a conv or pool along one axis (``padding`` defaults to ``kernel // 2``)."""
    padding = kernel // 2 if padding is None else padding
    return (size + 2 * padding - kernel) // stride + 1


def conv(
    name: str,
    inputs: tuple[int, ...],
    output: int | None,
    cin: int,
    cout: int,
    hw: tuple[int, int],
    kernel: int = 3,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
) -> tuple[Layer, tuple[int, int]]:
    """Describe a ``kernel//2``-padded conv on an ``hw`` input; returns the layer and its output size."""
    out_hw = (conv_out(hw[0], kernel, stride), conv_out(hw[1], kernel, stride))
    layer = Layer(name, "conv", inputs, output, cin, cout, kernel, stride, groups, bias, out_hw)
    return layer, out_hw


def bn(name: str, inputs: tuple[int, ...], channels: int) -> Layer:
    """Describe a batch norm over the channels of ``inputs``."""
    return Layer(name, "bn", inputs, None, channels, channels)


def linear(name: str, inputs: tuple[int, ...], output: int | None, cin: int, cout: int,
           in_repeat: int = 1, bias: bool = True) -> Layer:
    """Describe a linear layer; ``in_repeat`` = features per input channel after a flatten."""
    return Layer(name, "linear", inputs, output, cin * in_repeat, cout, bias=bias, in_repeat=in_repeat)


def scale(width: int, mult: float, divisor: int = 1) -> int:
    """A base width times ``mult``, rounded to a multiple of ``divisor`` (>= divisor, as torchvision does)."""
    if divisor == 1:
        return max(1, int(width * mult + 0.5))
    scaled = max(divisor, int(width * mult + divisor / 2) // divisor * divisor)
    if scaled < 0.9 * width * mult:  # never round down by more than 10% (torchvision's _make_divisible)
        scaled += divisor
    return scaled


def halve(hw: tuple[int, int]) -> tuple[int, int]:
    """Spatial size after a stride-2 stage transition (ceil, as a padded stride-2 conv gives)."""
    return (hw[0] + 1) // 2, (hw[1] + 1) // 2


def init_weights(model: nn.Module, bn_gamma: float = 1.0, linear_std: float | None = None) -> None:
    """Kaiming-normal (fan-out) convs, BN gamma ``bn_gamma`` and beta 0, linear N(0, std) or torch default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.constant_(m.weight, bn_gamma)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


def packed_attention(qkv: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """Multi-head attention ``softmax(Q K^T / sqrt(head_dim)) V`` of a packed projection's output ``qkv``
    (``(n, tokens, 3 * heads * head_dim)``: queries, keys, values, each head's ``head_dim`` features together),
    as ``(n, tokens, heads * head_dim)``: what a transformer computes between its q/k/v and output projections.
    On CUDA torch's fused kernel; on CPU explicit products (FlopCounterMode does not count the fused CPU kernel,
    and it gains little there)."""
    n, t, _ = qkv.shape
    q, k, v = qkv.view(n, t, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    if qkv.is_cuda:
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        out = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1) @ v
    return out.transpose(1, 2).reshape(n, t, heads * head_dim)


class SlotTable:
    """Slots in canonical order plus a lookup from a family's own keys (e.g. ``("inner", stage, block)``)."""

    def __init__(self) -> None:
        self.slots: list[Slot] = []
        self.index: dict[tuple, int] = {}

    def add(self, key: tuple, slot: Slot) -> int:
        self.index[key] = len(self.slots)
        self.slots.append(slot)
        return self.index[key]

    def __getitem__(self, key: tuple | str) -> int:
        return self.index[key if isinstance(key, tuple) else (key,)]

    def __contains__(self, key: tuple) -> bool:
        return key in self.index
