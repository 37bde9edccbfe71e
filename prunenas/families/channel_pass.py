"""The walk of the channel-dependency pass: how each module, function and method moves channel groups.

Conv and linear outputs are new groups. Norms, activations, pooling and dropout pass channels through;
element-wise ops and depthwise convs tie groups; ``cat`` along channels concatenates them;
``permute``/``transpose`` move the channel dimension; ``flatten`` and ``view``/``reshape`` to ``(N, -1)``
spread each channel over its spatial positions. Anything else freezes the channels involved.
"""

from __future__ import annotations

import operator
from functools import lru_cache
from typing import Any

import torch
from torch import fx, nn
from torchvision.ops import stochastic_depth

from prunenas.families.channel_groups import (
    INPUT_GROUP,
    OPAQUE,
    Analysis,
    Chan,
    ChannelGroups,
    Param,
    Site,
    flat_nodes,
    grouped_conv_rule,
    node_argument,
    node_ndim,
    node_shape,
    op_name,
    prod,
)
from prunenas.families.leaf_rules import LeafRule, rule_for
from prunenas.families.model_reference import TracingError

_CONV = (nn.Conv2d,)
_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
                 nn.LeakyReLU, nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
                 nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Softplus)
_F = torch.nn.functional
_PASS_FUNCTIONS = {torch.relu, torch.relu_, torch.sigmoid, torch.tanh, _F.relu, _F.relu6, _F.silu, _F.gelu,
                   _F.hardswish, _F.hardsigmoid, _F.sigmoid, _F.leaky_relu, _F.elu, _F.mish, _F.dropout,
                   _F.dropout2d, _F.adaptive_avg_pool2d, _F.adaptive_max_pool2d, _F.avg_pool2d, _F.max_pool2d,
                   _F.interpolate, torch.nn.functional.softplus}


@lru_cache(maxsize=1)
def _pass_functions() -> frozenset:
    """Functions that keep every channel where it is (torchvision's stochastic depth drops whole samples)."""
    return frozenset({*_PASS_FUNCTIONS, stochastic_depth})


_PASS_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "contiguous", "clone", "float", "detach"}
_ELEMENTWISE = {operator.add, operator.iadd, operator.mul, operator.imul, operator.sub, operator.truediv,
                torch.add, torch.mul, torch.sub, torch.div}
_ELEMENTWISE_METHODS = {"add", "add_", "mul", "mul_", "sub", "div"}
_REDUCTIONS = {torch.mean, torch.sum, torch.amax}
_UNCOUNTED_MACS = {torch.matmul, torch.bmm, torch.mm, torch.einsum, operator.matmul, _F.linear, _F.conv2d,
                   _F.scaled_dot_product_attention}
"""Products the analytic counter does not see (it counts conv and linear modules): models using them are refused."""
_REDUCTION_METHODS = {"mean", "sum", "amax"}


class ChannelPass(ChannelGroups):
    """The walk over an fx graph with shapes: :meth:`run` visits every node and returns the :class:`Analysis`."""

    def run(self, graph_hash: str) -> Analysis:
        self.grouped_rule = grouped_conv_rule(self.model)
        self.new_group(0)  # INPUT_GROUP, sized at the placeholder
        self.freeze_groups([INPUT_GROUP], None, "network input")
        output_shape: tuple[int, ...] = ()
        for node in self.graph.nodes:
            if node.op == "output":
                output_shape = self.mark_output(node)
                continue
            self.values[node] = self.visit(node)
        self.freeze_conflicting_group_rules()
        self.freeze_mixed_concatenations()
        self.check_parameters_described()
        return Analysis(self.groups(), tuple(self.resolved_sites()), output_shape, graph_hash)

    def visit(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            shape = node_shape(node)
            if shape is None:
                return None
            self.info[INPUT_GROUP]["channels"] = shape[1]
            return Chan(((INPUT_GROUP, shape[1]),), 1, len(shape))
        if node.op == "get_attr":
            shape = node_shape(node)
            return None if shape is None else Param(node.target, shape)
        if node.op == "call_module":
            return self.visit_module(node, self.model.get_submodule(node.target))
        if node.op in ("call_function", "call_method"):
            return self.visit_function(node)
        return None

    def arg(self, node: fx.Node, i: int = 0) -> Any:
        value = node.args[i] if i < len(node.args) else None
        return self.values.get(value) if isinstance(value, fx.Node) else None

    def visit_module(self, node: fx.Node, module: nn.Module) -> Any:
        x = self.arg(node)
        rule = rule_for(module)
        if rule is not None:
            return self.visit_leaf(node, module, rule, x)
        if isinstance(module, _CONV):
            return self.visit_conv(node, module, x)
        if isinstance(module, nn.Linear):
            return self.visit_linear(node, module, x)
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return self.visit_norm(node, module, x, 1)
        if type(module) is nn.LayerNorm:
            return self.visit_norm(node, module, x, len(node_shape(node)) - 1)
        if isinstance(module, nn.Flatten):
            return self.flatten(node, x, module.start_dim, module.end_dim)
        if type(module) in _PASS_MODULES:
            return x
        return self.unknown(node, f"the pass has no rule for module {type(module).__name__}")

    def visit_conv(self, node: fx.Node, module: nn.Conv2d, x: Any) -> Any:
        name = node.target
        out_hw = node_shape(node)[2:]
        geometry = dict(kernel=module.kernel_size[0], stride=module.stride[0], bias=module.bias is not None,
                        positions=(out_hw[0], out_hw[1]))
        if module.kernel_size[0] != module.kernel_size[1]:
            raise TracingError(f"model {self.what!r}: conv {name!r} has a {module.kernel_size[0]}x"
                               f"{module.kernel_size[1]} kernel; the traced family counts square kernels only")
        x = self.consumable(node, x, dim=1)
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        if depthwise and len(x.segs) == 1:
            self.info[self.find(x.segs[0][0])]["producers"].append(name)
            self.sites.append(Site(name, "conv", x.segs, x.segs[0][0], module.out_channels, groups=module.groups,
                                   depthwise=True, **geometry))
            return x
        grouped = module.groups > 1 and not depthwise
        if grouped and self.grouped_rule == "width" and self.group_by_group(node, module, x):
            group = x.segs[0][0]
            self.info[self.find(group)]["producers"].append(name)
            self.add_group_rule(group, ("width", module.in_channels // module.groups))
            self.sites.append(Site(name, "conv", x.segs, group, module.out_channels, groups=module.groups,
                                   group_rule="width", **geometry))
            return x
        out = self.new_group(module.out_channels, name)
        rule = "count" if grouped and self.grouped_rule == "count" and self.one_input(node, module, x, out) else ""
        for group in [x.segs[0][0], out] if rule else []:
            self.add_group_rule(group, ("count", module.groups))
        self.sites.append(Site(name, "conv", x.segs, out, module.out_channels, groups=module.groups,
                               group_rule=rule, **geometry))
        return Chan(((out, module.out_channels),), 1, 4)

    def visit_linear(self, node: fx.Node, module: nn.Linear, x: Any) -> Any:
        shape = node_shape(node)
        x = self.consumable(node, x, dim=len(shape) - 1, allow_repeat=True)
        positions = prod(shape[1:-1])
        out = self.new_group(module.out_features, node.target)
        self.sites.append(Site(node.target, "linear", x.segs, out, module.out_features, bias=module.bias is not None,
                               in_repeat=x.repeat, positions=(positions, 1)))
        return Chan(((out, module.out_features),), len(shape) - 1, len(shape))

    def visit_norm(self, node: fx.Node, module: nn.Module, x: Any, dim: int) -> Any:
        """A per-channel norm over dimension ``dim`` (BatchNorm: 1; LayerNorm: the last; LayerNorm2d: 1)."""
        shape = node_shape(node)
        if not isinstance(x, Chan) or x.repeat != 1:
            self.freeze(x, node, "a norm over values that are not channels")
            x = self.consumable(node, None, dim % len(shape))
        mixes = isinstance(module, nn.LayerNorm)
        if mixes and len(module.normalized_shape) != 1:
            self.freeze(x, node, "LayerNorm over more than the channel dimension")
        elif x.dim != dim:
            self.freeze(x, node, "a norm over a dimension that is not the channels")
        affine = getattr(module, "weight", None) is not None
        if affine:
            self.sites.append(Site(node.target, "bn", x.segs, None, shape[x.dim]))
        elif mixes:
            self.freeze(x, node, "LayerNorm without affine parameters")
        if mixes:
            self.mark_mixing_norm(x)
        return x

    def visit_leaf(self, node: fx.Node, module: nn.Module, rule: LeafRule, x: Any) -> Any:
        if rule.norm:
            return self.visit_norm(node, module, x, 1)
        x = self.consumable(node, x, dim=1)
        shape = node_shape(node)
        if rule.flow == "pass":
            self.sites.append(Site(node.target, "leaf", x.segs, None, shape[1]))
            return x
        out = self.new_group(shape[1])
        self.sites.append(Site(node.target, "leaf", x.segs, out, shape[1]))
        return Chan(((out, shape[1]),), 1, len(shape))

    def mark_mixing_norm(self, x: Chan) -> None:
        for g, _ in x.segs:
            self.info[self.find(g)]["mixing_norm"] = True

    def consumable(self, node: fx.Node, x: Any, dim: int, allow_repeat: bool = False) -> Chan:
        """``x`` as channels along ``dim``; anything else is frozen and read as one opaque input."""
        if isinstance(x, Chan) and x.dim == dim and (allow_repeat or x.repeat == 1):
            return x
        self.freeze(x, node, "channels reach a layer along an unexpected dimension")
        opaque = self.new_group(node_shape(node.args[0])[dim] if isinstance(node.args[0], fx.Node) else 0)
        self.freeze_groups([opaque], node, "input channels unknown to the pass")
        return Chan(((opaque, self.info[opaque]["channels"]),), dim, node_ndim(node.args[0]))

    def visit_function(self, node: fx.Node) -> Any:
        fn, x = node.target, self.arg(node)
        method = node.op == "call_method"
        if (not method and fn in _pass_functions()) or (method and fn in _PASS_METHODS):
            return x
        if (not method and fn in _ELEMENTWISE) or (method and fn in _ELEMENTWISE_METHODS):
            return self.elementwise(node)
        if fn in (torch.flatten, "flatten"):
            return self.flatten(node, x, node_argument(node, 1, "start_dim", 0), node_argument(node, 2, "end_dim", -1))
        if fn in ("view", "reshape", torch.reshape):
            return self.reshape(node, x)
        if fn in ("permute", torch.permute, "transpose", torch.transpose):
            return self.permute(node, x)
        if fn is torch.cat:
            return self.cat(node)
        if (not method and fn in _REDUCTIONS) or (method and fn in _REDUCTION_METHODS):
            return self.reduce(node, x)
        if fn in ("size", "dim") or fn is getattr or (fn is operator.getitem and not isinstance(x, Chan)):
            return None
        if not any(isinstance(self.values.get(a), (Chan, Param)) or self.values.get(a) is OPAQUE
                   for a in node.all_input_nodes):
            return None  # arithmetic on sizes and constants
        weights = [v.target for a in node.all_input_nodes if isinstance(v := self.values.get(a), Param)
                   and self.is_layer_weight(v.target)]
        if fn in _UNCOUNTED_MACS or fn in ("matmul", "bmm") or weights:
            what = f"uses the weight {weights[0]!r}" if weights else "multiplies tensors"
            raise TracingError(f"model {self.what!r}: node {node.name!r} ({op_name(node)}) {what} outside "
                               "conv/linear modules; the analytic MAC counter does not cover it")
        return self.unknown(node, "the pass has no rule for this operation")

    def is_layer_weight(self, target: str) -> bool:
        owner = self.model.get_submodule(target.rpartition(".")[0])
        return isinstance(owner, (nn.Conv2d, nn.Linear))

    def unknown(self, node: fx.Node, why: str) -> Any:
        for a in node.all_input_nodes:
            value = self.values.get(a)
            self.freeze(value, node, why)
            if isinstance(value, Param):
                self.fixed_param(value)
        return OPAQUE

    def fixed_param(self, param: Param) -> None:
        """A parameter used in a way the pass does not follow: counted, never resized."""
        if not any(s.name == param.target for s in self.sites):
            group = self.new_group(prod(param.shape))
            self.freeze_groups([group], None, f"parameter {param.target!r} used by an operation without a rule")
            self.sites.append(Site(param.target, "scale", (), group, prod(param.shape)))

    def elementwise(self, node: fx.Node) -> Any:
        operands = [(a, self.values.get(a)) for a in node.args if isinstance(a, fx.Node)]
        chans = [v for _, v in operands if isinstance(v, Chan)]
        if any(v is OPAQUE for _, v in operands):
            return self.unknown(node, "combines channels with values the pass lost track of")
        if not chans:
            for _, v in operands:
                if isinstance(v, Param):
                    self.fixed_param(v)
            return None
        shape = node_shape(node)
        result = chans[0]
        for other in chans[1:]:
            result = self.broadcast_tie(node, result, other, shape)
        for _, v in operands:
            if isinstance(v, Param):
                self.bind_param(node, v, result, shape)
        return result

    def broadcast_tie(self, node: fx.Node, a: Chan, b: Chan, shape: tuple[int, ...]) -> Chan:
        """Tie the channels of two operands of an element-wise op (a channel of size 1 broadcasts)."""
        size_a, size_b = sum(c for _, c in a.segs), sum(c for _, c in b.segs)
        aligned = a.dim - a.ndim == b.dim - b.ndim and a.repeat == b.repeat == 1
        if aligned and size_b == 1 and size_a > 1:
            return a
        if aligned and size_a == 1 and size_b > 1:
            return b
        if not aligned or [c for _, c in a.segs] != [c for _, c in b.segs]:
            self.freeze(a, node, "element-wise op on channels that do not line up")
            self.freeze(b, node, "element-wise op on channels that do not line up")
            return a
        for (ga, _), (gb, _) in zip(a.segs, b.segs):
            self.tie(ga, gb, node)
        return Chan(a.segs, a.dim - a.ndim + len(shape), len(shape), a.repeat)

    def bind_param(self, node: fx.Node, param: Param, x: Chan, shape: tuple[int, ...]) -> None:
        """A parameter broadcast against channels: a per-channel scale (ConvNeXt's layer scale) or fixed."""
        offset = len(shape) - len(param.shape)
        channel_axis = x.dim - x.ndim + len(shape) - offset
        per_channel = (0 <= channel_axis < len(param.shape) and param.shape[channel_axis] == shape[x.dim - x.ndim]
                       and prod(param.shape) == param.shape[channel_axis] and len(x.segs) == 1)
        owner = self.model.get_submodule(param.target.rpartition(".")[0])
        alone = [n for n, _ in owner.named_parameters(recurse=False)] == [param.target.rpartition(".")[2]]
        if per_channel and alone and not list(owner.named_buffers(recurse=False)):
            self.sites.append(Site(param.target, "scale", (), x.segs[0][0], prod(param.shape)))
        elif prod(param.shape) > 1:
            self.freeze(x, node, f"parameter {param.target!r} is not one value per channel")
            self.fixed_param(param)
        else:
            self.fixed_param(param)

    def flatten(self, node: fx.Node, x: Any, start: int, end: int) -> Any:
        if not isinstance(x, Chan):
            return x if x is None else self.unknown(node, "flatten of unknown channels")
        start, end = start % x.ndim, end % x.ndim
        shape_in = node_shape(node.args[0])
        if x.dim < start:
            return Chan(x.segs, x.dim, x.ndim - (end - start), x.repeat)
        if x.dim > end:
            return Chan(x.segs, x.dim - (end - start), x.ndim - (end - start), x.repeat)
        if any(shape_in[d] != 1 for d in range(start, x.dim)):
            return self.unknown(node, "flatten puts other dimensions before the channels")
        repeat = x.repeat * prod(shape_in[x.dim + 1:end + 1])
        return Chan(x.segs, start, x.ndim - (end - start), repeat)

    def reshape(self, node: fx.Node, x: Any) -> Any:
        """Reshapes that flatten from the channel dimension on, or keep it, with no hard-coded count."""
        if not isinstance(x, Chan):
            return self.unknown(node, "reshape of unknown channels") if x is OPAQUE else x
        shape_in, shape_out = node_shape(node.args[0]), node_shape(node)
        sizes = node.args[1:] if len(node.args) > 2 or not isinstance(node.args[1], (list, tuple)) else node.args[1]
        prefix_kept = tuple(shape_out[:x.dim]) == tuple(shape_in[:x.dim]) and len(shape_out) > x.dim
        literal = sizes[x.dim] if x.dim < len(sizes) else None
        fixed = isinstance(literal, int) and literal != -1
        if prefix_kept and not fixed:
            if len(shape_out) == x.dim + 1 and shape_out[x.dim] == prod(shape_in[x.dim:]):
                return Chan(x.segs, x.dim, len(shape_out), x.repeat * prod(shape_in[x.dim + 1:]))
            if shape_out[x.dim] == shape_in[x.dim] and x.repeat == 1:
                return Chan(x.segs, x.dim, len(shape_out))
        why = "reshape with a hard-coded channel count" if fixed else "reshape that mixes channels"
        return self.unknown(node, why)

    def permute(self, node: fx.Node, x: Any) -> Any:
        if not isinstance(x, Chan) or x.repeat != 1:
            return self.unknown(node, "permute of unknown channels") if x is not None else None
        dims = [a for a in node.args[1:]] if not isinstance(node.args[1], (list, tuple)) else list(node.args[1])
        if node.target in ("transpose", torch.transpose):
            a, b = (d % x.ndim for d in dims[:2])
            order = list(range(x.ndim))
            order[a], order[b] = order[b], order[a]
        else:
            order = [d % x.ndim for d in dims]
        return Chan(x.segs, order.index(x.dim), x.ndim)

    def cat(self, node: fx.Node) -> Any:
        tensors = node.args[0]
        dim = node_argument(node, 1, "dim", 0)
        values = [self.values.get(t) for t in tensors]
        if not all(isinstance(v, Chan) and v.repeat == 1 for v in values):
            return self.unknown(node, "concatenation of values the pass lost track of")
        ndim = values[0].ndim
        if dim % ndim == values[0].dim and all(v.dim == values[0].dim for v in values):
            return Chan(tuple(s for v in values for s in v.segs), values[0].dim, ndim)
        shape = node_shape(node)
        result = values[0]
        for other in values[1:]:
            result = self.broadcast_tie(node, result, other, shape)
        return result

    def reduce(self, node: fx.Node, x: Any) -> Any:
        if not isinstance(x, Chan):
            return self.unknown(node, "reduction of unknown channels") if x is OPAQUE else x
        dims = node_argument(node, 1, "dim", None)
        keep = node_argument(node, 2, "keepdim", False)
        if dims is None:
            return self.unknown(node, "reduction over every dimension")
        dims = {d % x.ndim for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
        if x.dim in dims or x.repeat != 1:
            return self.unknown(node, "reduction over the channels")
        if keep:
            return x
        return Chan(x.segs, x.dim - sum(d < x.dim for d in dims), x.ndim - len(dims))

    def mark_output(self, node: fx.Node) -> tuple[int, ...]:
        shapes = []
        for value_node in flat_nodes(node.args[0]):
            value = self.values.get(value_node)
            self.freeze(value, node, "the model's output")
            shape = node_shape(value_node)
            if shape is None:  # a container built in forward (GoogLeNet's outputs): its first tensor
                shape = next((s for n in value_node.all_input_nodes if (s := node_shape(n)) is not None), None)
            if shape is not None:
                shapes.append(shape)
        return tuple(shapes[0]) if shapes else ()
