"""Table units: the layers of a family's description (:class:`~prunenas.families.base.Layer`), each with the
batch norm and activation that follow it, as small standalone networks that can be timed on their own.

The units come from the same layer list the MAC counter walks, so every family gets a latency table without
family-specific code. Rules (a layer's ``activation``, when the family states it, overrides the assumed ones):

* a conv, with the batch norm that directly follows it in module order (same channels), and a ReLU;
* a linear layer over its ``out_hw`` positions (tokens: a linear over ``(n, T, C)`` costs ``T`` times one over
  ``(n, C)``), with a ReLU only when a batch norm follows it (an MLP head), else bare (the classifier);
* a packed query/key/value projection (a linear with ``out_parts == 3``) is followed by an **attention** unit:
  ``softmax(Q K^T / sqrt(d)) V`` for ``slot_channels`` heads of ``d = out_repeat`` features over its tokens
  (:func:`~prunenas.families.common.packed_attention`, what the transformer families compute);
* a layer norm (``"ln"``) over the features of its ``out_hw`` tokens is its own unit;
* a batch norm that follows no conv/linear (pre-activation networks) is its own unit, BN + ReLU, at the
  spatial size of the latest conv output (the description gives BN no spatial size).

Embeddings (added token tables), per-channel scales, pooling, residual additions, concatenations, shortcuts
and activations the rules miss are not units: the calibration (latency ~ a x table sum + b, fitted on whole
networks) absorbs their cost on average. A conv's input is ``out_hw x stride`` padded by
``ceil((kernel - stride) / 2)`` (``kernel // 2`` for odd kernels; 0 for a patch embedding, kernel = stride),
which gives back ``out_hw``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from prunenas.families.base import Layer
from prunenas.families.common import packed_attention

if TYPE_CHECKING:
    import onnx
    import torch

TOKEN_KINDS = ("linear", "ln", "attention")
"""Units over a ``(n, tokens, features)`` tensor (a linear over one position has no token dimension)."""
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


@dataclass(frozen=True)
class Unit:
    """One timed piece of a network: ``kind`` (conv, linear, bn, ln, attention; act for :data:`OVERHEAD_UNIT`)
    and its geometry (see the module docstring). Token units hold their tokens as ``out_hw = (tokens, 1)``; an
    attention unit maps ``3 x heads x head_dim`` packed features to ``heads x head_dim``."""

    kind: str
    in_channels: int
    out_channels: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    bias: bool = False
    out_hw: tuple[int, int] = (1, 1)
    bn: bool = False
    act: str = ""
    heads: int = 0

    @property
    def tokens(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    @cached_property
    def key(self) -> str:
        """The table key: every field that changes the unit's run time, e.g. ``conv:16>32:k3s1g1:16x16:bn:relu``,
        ``linear:64>128:t65:bias:gelu``, ``attention:192>64:h4:t65``."""
        parts = [f"{self.kind}:{self.in_channels}>{self.out_channels}"]
        if self.kind == "conv":  # the padding only where it is not kernel // 2 (keys of odd kernels stay as before)
            pad = "" if self.padding == self.kernel // 2 else f"p{self.padding}"
            parts.append(f"k{self.kernel}s{self.stride}{pad}g{self.groups}")
        if self.kind == "attention":
            parts.append(f"h{self.heads}")
        if self.kind not in TOKEN_KINDS:
            parts.append(f"{self.out_hw[0]}x{self.out_hw[1]}")
        elif self.kind != "linear" or self.tokens > 1:  # keys of linears over one position stay as before
            parts.append(f"t{self.tokens}")
        parts += [flag for flag, on in (("bias", self.bias), ("bn", self.bn)) if on] + ([self.act] if self.act else [])
        return ":".join(parts)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Input of one image: (C, H, W); (tokens, features) for a token unit; (features,) for a linear over one
        position."""
        if self.kind == "linear" and self.tokens == 1:
            return (self.in_channels,)
        if self.kind in TOKEN_KINDS:
            return (self.tokens, self.in_channels)
        return (self.in_channels, self.out_hw[0] * self.stride, self.out_hw[1] * self.stride)

    @property
    def padding(self) -> int:
        return max(0, (self.kernel - self.stride + 1) // 2)

    def module(self) -> nn.Module:
        """The unit as a freshly initialised ``nn.Sequential``."""
        if self.kind == "conv":
            layers: list[nn.Module] = [nn.Conv2d(self.in_channels, self.out_channels, self.kernel, self.stride,
                                                 self.padding, groups=self.groups, bias=self.bias)]
        elif self.kind == "linear":
            layers = [nn.Linear(self.in_channels, self.out_channels, bias=self.bias)]
        elif self.kind == "ln":
            layers = [nn.LayerNorm(self.out_channels, eps=1e-6)]
        elif self.kind == "attention":
            layers = [PackedAttention(self.heads, self.out_channels // self.heads)]
        else:
            layers = []
        if self.bn:
            layers.append(nn.BatchNorm1d(self.out_channels) if self.kind == "linear" else
                          nn.BatchNorm2d(self.out_channels))
        if self.act:
            layers.append(ACTIVATIONS[self.act]())
        return nn.Sequential(*layers)

    def onnx_model(self, opset: int) -> onnx.ModelProto:
        """The unit as a small ONNX graph, built directly (the nodes ``torch.onnx`` exports for the layer):
        exporting a module per geometry would dominate the time to fill a table. The batch dimension is
        symbolic."""
        from onnx import TensorProto, helper  # heavy; only onnxruntime table units need it

        graph = _OnnxGraph()
        _ONNX_LAYERS.get(self.kind, lambda g, u: None)(graph, self)
        if self.bn:
            graph.node("BatchNormalization", graph.weight("scale", self.out_channels),
                       graph.weight("shift", self.out_channels), graph.weight("mean", self.out_channels),
                       graph.constant("var", np.ones(self.out_channels, np.float32)), epsilon=1e-5)
        if self.act == "relu":
            graph.node("Relu")
        elif self.act == "gelu":
            _onnx_gelu(graph)
        graph.node("Identity", output="output")
        onnx_graph = helper.make_graph(
            graph.nodes, f"unit_{self.kind}",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *self.input_shape])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], graph.inits)
        return helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", opset)])


class PackedAttention(nn.Module):
    """The attention unit's module: :func:`~prunenas.families.common.packed_attention` of its input."""

    def __init__(self, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        return packed_attention(qkv, self.heads, self.head_dim)


OVERHEAD_UNIT = Unit("act", 1, 1, act="relu")
"""A ReLU on one number: its time is the runtime's fixed cost of one call (an onnxruntime ``run``, an eager
module call), which a whole network pays once and a table of single-layer graphs would pay once per layer."""


def units(layers: Sequence[Layer]) -> list[Unit]:
    """The table units of a network described by ``layers`` (``Architecture.layers``), in module order."""
    out: list[Unit] = []
    hw = (1, 1)
    previous: Layer | None = None
    for layer in layers:
        if layer.kind in ("embedding", "scale"):  # element-wise; left to the calibration
            continue
        if layer.kind == "conv":
            hw = layer.out_hw
            out.append(Unit("conv", layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.groups,
                            layer.bias, layer.out_hw, act=_stated(layer, "relu")))
        elif layer.kind == "linear":
            out += _linear_units(layer)
        elif layer.kind == "ln":
            out.append(Unit("ln", layer.out_channels, layer.out_channels, out_hw=(_positions(layer), 1)))
        elif _follows(layer, previous):
            out[-1] = replace(out[-1], bn=True, act=_stated(previous, "relu"))
        else:
            out.append(Unit("bn", layer.out_channels, layer.out_channels, out_hw=hw, bn=True, act="relu"))
        previous = layer
    return out


def _linear_units(layer: Layer) -> list[Unit]:
    """A linear layer over its positions, and the attention that follows a packed q/k/v projection."""
    tokens = (_positions(layer), 1)
    out = [Unit("linear", layer.in_channels, layer.out_channels, bias=layer.bias, out_hw=tokens,
                act=_stated(layer, ""))]
    if layer.out_parts == 3:
        heads = layer.slot_channels
        out.append(Unit("attention", layer.out_channels, heads * layer.out_repeat, out_hw=tokens, heads=heads))
    return out


def _positions(layer: Layer) -> int:
    return layer.out_hw[0] * layer.out_hw[1]


def _stated(layer: Layer, assumed: str) -> str:
    """The activation after ``layer``: the family's, or ``assumed`` when it states none."""
    return assumed if layer.activation is None else layer.activation


def _follows(bn: Layer, previous: Layer | None) -> bool:
    """Whether ``bn`` normalises the output of the conv or single-position linear layer just before it."""
    if previous is None or previous.out_channels != bn.out_channels or previous.out_parts != 1:
        return False
    return previous.kind == "conv" or previous.kind == "linear" and _positions(previous) == 1


class _OnnxGraph:
    """Nodes and initialisers of a unit's ONNX graph, chained: each node reads the previous node's output."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)
        self.inits: list = []
        self.nodes: list = []
        self.current = "input"

    def constant(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper  # heavy; only onnxruntime table units need it

        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, name: str, *shape: int) -> str:
        return self.constant(name, self.rng.standard_normal(shape).astype(np.float32))

    def node(self, op: str, *inputs: str, source: str | None = None, output: str | None = None, **attrs) -> str:
        """Append ``op`` on ``source`` (default: the current output) and ``inputs``; its output becomes current."""
        from onnx import helper  # heavy; only onnxruntime table units need it

        output = output or f"{op.lower()}{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, [source or self.current, *inputs], [output], **attrs))
        self.current = output
        return output


def _onnx_conv(graph: _OnnxGraph, unit: Unit) -> None:
    weight = graph.weight("w", unit.out_channels, unit.in_channels // unit.groups, unit.kernel, unit.kernel)
    graph.node("Conv", weight, *([graph.weight("b", unit.out_channels)] if unit.bias else []),
               kernel_shape=[unit.kernel] * 2, strides=[unit.stride] * 2, pads=[unit.padding] * 4, group=unit.groups)


def _onnx_linear(graph: _OnnxGraph, unit: Unit) -> None:
    bias = [graph.weight("b", unit.out_channels)] if unit.bias else []
    if unit.tokens == 1:
        graph.node("Gemm", graph.weight("w", unit.out_channels, unit.in_channels), *bias, transB=1)
        return
    graph.node("MatMul", graph.weight("w", unit.in_channels, unit.out_channels))
    if bias:
        graph.node("Add", *bias)


def _onnx_layer_norm(graph: _OnnxGraph, unit: Unit) -> None:
    graph.node("LayerNormalization", graph.constant("scale_ln", np.ones(unit.out_channels, np.float32)),
               graph.constant("shift_ln", np.zeros(unit.out_channels, np.float32)), axis=-1, epsilon=1e-6)


def _onnx_attention(graph: _OnnxGraph, unit: Unit) -> None:
    """Reshape to (n, T, 3, h, d), split q/k/v as (n, h, T, d), softmax(q k^T / sqrt(d)) v, back to (n, T, h*d)."""
    head_dim = unit.out_channels // unit.heads
    graph.node("Reshape", graph.constant("qkv_shape", np.array([0, unit.tokens, 3, unit.heads, head_dim])))
    packed = graph.node("Transpose", perm=[2, 0, 3, 1, 4])
    q, k, v = (graph.node("Gather", graph.constant(f"part{i}", np.array(i)), source=packed, axis=0)
               for i in range(3))
    keys_t = graph.node("Transpose", source=k, perm=[0, 1, 3, 2])
    graph.node("MatMul", keys_t, source=q)
    graph.node("Mul", graph.constant("inv_sqrt_d", np.array(1 / math.sqrt(head_dim), np.float32)))
    graph.node("Softmax", axis=-1)
    graph.node("MatMul", v)
    graph.node("Transpose", perm=[0, 2, 1, 3])
    graph.node("Reshape", graph.constant("out_shape", np.array([0, unit.tokens, unit.out_channels])))


def _onnx_gelu(graph: _OnnxGraph) -> None:
    """The exact (erf) GELU as ``torch.onnx`` exports it below opset 20; onnxruntime fuses it into one kernel."""
    x = graph.current
    graph.node("Div", graph.constant("sqrt2", np.array(math.sqrt(2), np.float32)))
    graph.node("Erf")
    graph.node("Add", graph.constant("one", np.array(1, np.float32)))
    graph.node("Mul", x)
    graph.node("Mul", graph.constant("half", np.array(0.5, np.float32)))


_ONNX_LAYERS: dict[str, Callable[[_OnnxGraph, Unit], None]] = {
    "conv": _onnx_conv, "linear": _onnx_linear, "ln": _onnx_layer_norm, "attention": _onnx_attention}
