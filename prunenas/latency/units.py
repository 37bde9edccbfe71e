"""Table units: the layers of a family's description (:class:`~prunenas.families.base.Layer`), each with the
batch norm and activation that follow it, as small standalone networks that can be timed on their own.

The units come from the same layer list the MAC counter walks, so every family gets a latency table without
family-specific code. Rules (the description does not name activations or pooling):

* a conv, with the batch norm that directly follows it in module order (same channels), and a ReLU;
* a linear layer, with a ReLU only when a batch norm follows it (an MLP head), else bare (the classifier);
* a batch norm that follows no conv/linear (pre-activation networks) is its own unit, BN + ReLU, at the
  spatial size of the latest conv output (the description gives BN no spatial size).

Pooling, residual additions, concatenations, shortcuts and activations the rules miss are not units: the
calibration (latency ~ a x table sum + b, fitted on whole networks) absorbs their cost on average.
A conv's input is ``out_hw x stride`` with padding ``kernel // 2``, which gives back ``out_hw``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from prunenas.families.base import Layer

if TYPE_CHECKING:
    import onnx
    from torch import nn


@dataclass(frozen=True)
class Unit:
    """One timed piece of a network: ``kind`` (conv, linear, bn; act for :data:`OVERHEAD_UNIT`) and its geometry
    (see the module docstring)."""

    kind: str
    in_channels: int
    out_channels: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    bias: bool = False
    out_hw: tuple[int, int] = (1, 1)
    bn: bool = False
    act: bool = False

    @cached_property
    def key(self) -> str:
        """The table key: every field that changes the unit's run time, e.g. ``conv:16>32:k3s1g1:16x16:bn:relu``."""
        parts = [f"{self.kind}:{self.in_channels}>{self.out_channels}"]
        if self.kind == "conv":
            parts.append(f"k{self.kernel}s{self.stride}g{self.groups}")
        if self.kind != "linear":
            parts.append(f"{self.out_hw[0]}x{self.out_hw[1]}")
        parts += [flag for flag, on in (("bias", self.bias), ("bn", self.bn), ("relu", self.act)) if on]
        return ":".join(parts)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Input of one image: (C, H, W), or (features,) for a linear unit."""
        if self.kind == "linear":
            return (self.in_channels,)
        return (self.in_channels, self.out_hw[0] * self.stride, self.out_hw[1] * self.stride)

    def module(self) -> nn.Module:
        """The unit as a freshly initialised ``nn.Sequential``."""
        if self.kind == "conv":
            layers: list[nn.Module] = [nn.Conv2d(self.in_channels, self.out_channels, self.kernel, self.stride,
                                                 self.kernel // 2, groups=self.groups, bias=self.bias)]
        elif self.kind == "linear":
            layers = [nn.Linear(self.in_channels, self.out_channels, bias=self.bias)]
        else:
            layers = []
        if self.bn:
            layers.append(nn.BatchNorm1d(self.out_channels) if self.kind == "linear" else
                          nn.BatchNorm2d(self.out_channels))
        if self.act:
            layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def onnx_model(self, opset: int) -> onnx.ModelProto:
        """The unit as a one-to-three-node ONNX graph, built directly: exporting a module per geometry through
        ``torch.onnx`` would dominate the time to fill a table. The batch dimension is symbolic."""
        from onnx import TensorProto, helper, numpy_helper  # heavy; only onnxruntime table units need it

        rng = np.random.default_rng(0)
        inits, nodes, current = [], [], "input"

        def tensor(name: str, *shape: int) -> str:
            inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
            return name

        if self.kind == "conv":
            inputs = [current, tensor("w", self.out_channels, self.in_channels // self.groups, self.kernel,
                                      self.kernel)] + ([tensor("b", self.out_channels)] if self.bias else [])
            nodes.append(helper.make_node("Conv", inputs, ["conv"], kernel_shape=[self.kernel] * 2,
                                          strides=[self.stride] * 2, pads=[self.kernel // 2] * 4, group=self.groups))
            current = "conv"
        elif self.kind == "linear":
            inputs = [current, tensor("w", self.out_channels, self.in_channels)]
            inputs += [tensor("b", self.out_channels)] if self.bias else []
            nodes.append(helper.make_node("Gemm", inputs, ["gemm"], transB=1))
            current = "gemm"
        if self.bn:
            stats = [tensor(name, self.out_channels) for name in ("scale", "shift", "mean")]
            inits.append(numpy_helper.from_array(np.ones(self.out_channels, np.float32), "var"))
            nodes.append(helper.make_node("BatchNormalization", [current, *stats, "var"], ["bn"], epsilon=1e-5))
            current = "bn"
        if self.act:
            nodes.append(helper.make_node("Relu", [current], ["relu"]))
            current = "relu"
        nodes.append(helper.make_node("Identity", [current], ["output"]))
        graph = helper.make_graph(
            nodes, f"unit_{self.kind}",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *self.input_shape])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


OVERHEAD_UNIT = Unit("act", 1, 1, act=True)
"""A ReLU on one number: its time is the runtime's fixed cost of one call (an onnxruntime ``run``, an eager
module call), which a whole network pays once and a table of single-layer graphs would pay once per layer."""


def units(layers: Sequence[Layer]) -> list[Unit]:
    """The table units of a network described by ``layers`` (``Architecture.layers``), in module order."""
    out: list[Unit] = []
    hw = (1, 1)
    previous: Layer | None = None
    for layer in layers:
        if layer.kind == "conv":
            hw = layer.out_hw
            out.append(Unit("conv", layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.groups,
                            layer.bias, layer.out_hw, act=True))
        elif layer.kind == "linear":
            out.append(Unit("linear", layer.in_channels, layer.out_channels, bias=layer.bias))
        elif _follows(layer, previous):
            out[-1] = _with_bn(out[-1])
        else:
            out.append(Unit("bn", layer.out_channels, layer.out_channels, out_hw=hw, bn=True, act=True))
        previous = layer
    return out


def _follows(bn: Layer, previous: Layer | None) -> bool:
    """Whether ``bn`` normalises the output of the layer just before it."""
    return previous is not None and previous.kind != "bn" and previous.out_channels == bn.out_channels


def _with_bn(unit: Unit) -> Unit:
    return Unit(unit.kind, unit.in_channels, unit.out_channels, unit.kernel, unit.stride, unit.groups, unit.bias,
                unit.out_hw, bn=True, act=True)
