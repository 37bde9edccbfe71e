"""Model references and the torch.fx channel-dependency pass behind the traced family.

A *model reference* names a callable that returns an ``nn.Module``:

* ``torchvision:resnet50`` — ``torchvision.models.get_model("resnet50")``;
* ``timm:mobilenetv3_large_100`` — ``timm.create_model(..., pretrained=False)`` (timm is an optional extra);
* ``my_package.models:make_net`` — any importable callable.

Keyword arguments follow a ``?``: ``torchvision:resnet18?num_classes=10&width_per_group=32`` (values are
read as int, float, ``true``/``false`` or text).

:func:`analyse` traces the module with ``torch.fx``, propagates shapes on the meta device (no memory, no
arithmetic) and walks the graph, tracking for every tensor which *channel groups* sit along its channel
dimension. Conv and linear outputs are new groups. Norms, activations, pooling and dropout pass channels
through; ``add``/``mul``/``sub``/``div`` (residuals, squeeze-excitation gates, layer scale) and depthwise
convs *tie* groups (one width); ``cat`` along channels concatenates them; ``permute``/``transpose`` move the
channel dimension (ConvNeXt's channels-last Linear and LayerNorm); ``flatten`` (or a ``view``/``reshape`` to
``(N, -1)``) spreads each channel over its spatial positions. The tied groups that remain searchable are
the slots. Everything the pass cannot reason about *freezes* the channels involved (kept at their base
width, listed with the node and op that froze them): a reshape that mixes or hard-codes channels, channel
indexing or shuffles, grouped convolutions, GroupNorm, unknown modules and functions, the network input and
the model's output. Grouped (non-depthwise) convolutions are frozen because resizing them needs whole
groups kept together (ResNeXt keeps the group count, RegNet the group width), which per-channel selection
cannot express yet. Leaf modules of the user's own (the CIFAR ResNets' option-A shortcut) get a rule through
:func:`register_leaf_rule`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torchvision import models
from torchvision.models.convnext import LayerNorm2d
from torchvision.ops import stochastic_depth

from prunenas.errors import PrunenasError
from prunenas.families.resnet_cifar import ZeroPadShortcut

DEFAULT_SHAPE = (3, 224, 224)
"""Input shape (C, H, W) of ``torchvision:`` and ``timm:`` references unless given."""

INPUT_GROUP = 0


class TracingError(PrunenasError, ValueError):
    """A model reference that cannot be resolved, instantiated or traced."""


# -- model references -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """A parsed model reference: ``source`` (``torchvision``, ``timm`` or a module path), a name, kwargs."""

    source: str
    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def text(self) -> str:
        """The canonical reference string (kwargs sorted)."""
        query = "&".join(f"{k}={_format_value(v)}" for k, v in self.kwargs)
        return f"{self.source}:{self.name}" + (f"?{query}" if query else "")

    @property
    def default_shape(self) -> tuple[int, int, int] | None:
        """The input shape the reference implies (ImageNet models), or ``None`` (the user says)."""
        return DEFAULT_SHAPE if self.source in ("torchvision", "timm") else None

    def with_kwargs(self, **extra: Any) -> Reference:
        """The reference with more keyword arguments (existing ones win)."""
        merged = {**extra, **dict(self.kwargs)}
        return Reference(self.source, self.name, tuple(sorted(merged.items())))

    def instantiate(self) -> nn.Module:
        """Call the factory; raise :class:`TracingError` (one line) when that fails or gives no module."""
        factory = self._factory()
        try:
            model = factory(**dict(self.kwargs))
        except Exception as err:  # noqa: BLE001 (the user's code: any error becomes one line)
            raise TracingError(f"model {self.text!r}: the factory raised {type(err).__name__}: "
                               f"{_first_line(err)}") from None
        if not isinstance(model, nn.Module):
            raise TracingError(f"model {self.text!r}: the factory returned a {type(model).__name__}, "
                               "not a torch.nn.Module")
        return model

    def library_versions(self) -> dict[str, str]:
        """Versions of the libraries that define the network (enter the graph hash)."""
        versions = {"torch": torch.__version__}
        if self.source in ("torchvision", "timm"):
            versions[self.source] = importlib.import_module(self.source).__version__
        return versions

    def _factory(self) -> Callable[..., Any]:
        if self.source == "torchvision":
            return _torchvision_factory(self.name)
        if self.source == "timm":
            return _timm_factory(self.name)
        try:
            module = importlib.import_module(self.source)
        except ImportError as err:
            raise TracingError(f"model {self.text!r}: cannot import {self.source!r}: {_first_line(err)}") from None
        factory = getattr(module, self.name, None)
        if not callable(factory):
            raise TracingError(f"model {self.text!r}: module {self.source!r} has no callable {self.name!r}")
        return factory


def parse_reference(text: str) -> Reference:
    """Parse ``source:name[?key=value&...]``; raise :class:`TracingError` naming the expected form."""
    if not isinstance(text, str) or ":" not in text:
        raise TracingError(f"model reference {text!r} is not SOURCE:NAME (torchvision:resnet50, "
                           "timm:NAME or my_package.module:factory)")
    head, _, query = text.partition("?")
    source, _, name = head.partition(":")
    if not source or not name or not name.isidentifier():
        raise TracingError(f"model reference {text!r} is not SOURCE:NAME (torchvision:resnet50, "
                           "timm:NAME or my_package.module:factory)")
    kwargs = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or not key.isidentifier():
            raise TracingError(f"model reference {text!r}: argument {item!r} is not KEY=VALUE")
        kwargs[key] = _parse_value(value)
    return Reference(source, name, tuple(sorted(kwargs.items())))


def _torchvision_factory(name: str) -> Callable[..., nn.Module]:
    known = models.list_models(module=models)
    if name not in known:
        raise TracingError(f"torchvision has no classification model {name!r}; e.g. {', '.join(known[:5])}, ...")
    return lambda **kwargs: models.get_model(name, **kwargs)


def _timm_factory(name: str) -> Callable[..., nn.Module]:
    try:
        import timm  # an optional extra (pip install timm): only timm: references need it
    except ImportError:
        raise TracingError(f"model 'timm:{name}' needs the optional timm package (pip install timm)") from None
    if not timm.is_model(name):
        raise TracingError(f"timm has no model {name!r}")
    return lambda **kwargs: timm.create_model(name, pretrained=False, **kwargs)


def _parse_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _format_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# -- leaf rules -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LeafRule:
    """How channels flow through a custom leaf module (one the tracer does not enter).

    Attributes:
        flow: ``"pass"`` — output channel ``c`` is input channel ``c`` (a norm, an activation);
            ``"new"`` — the output has channels of its own, read from the input (a parameter-free projection).
        resize: ``(module, in_channels, out_channels) -> module`` at the new widths (for ``"pass"`` both are
            equal). Called on a freshly initialised module; weights are inherited separately.
        remap: optional, for buffers whose values index channels: ``(state, prefix, kept_in, kept_out,
            base_in_width)`` rewrites ``state`` (the module's tensors under ``prefix + "."``) in place for
            the kept input and output channels.
        zero: optional: ``(module, dropped_out, in_width)`` cuts paths that carry values into the dropped
            output channels (see :meth:`Family.zero_buffers <prunenas.families.base.Family.zero_buffers>`).
        norm: the module is a LayerNorm (subclass) over channel dimension 1, resized like a norm (its
            statistics span the channels, so zeroing a channel is not removing it). ``resize`` is unused.
        min_out_is_in: output width may not fall below the input width (zero-padding shortcuts).
    """

    flow: Literal["pass", "new"]
    resize: Callable[[nn.Module, int, int], nn.Module]
    remap: Callable[..., None] | None = None
    zero: Callable[..., None] | None = None
    norm: bool = False
    min_out_is_in: bool = False


LEAF_RULES: dict[type, LeafRule] = {}


def register_leaf_rule(module_type: type[nn.Module], rule: LeafRule) -> None:
    """Teach the dependency pass how channels flow through ``module_type`` (exact type, a leaf)."""
    LEAF_RULES[module_type] = rule


def rule_for(module: nn.Module) -> LeafRule | None:
    """The leaf rule registered for the module's exact type, if any."""
    _register_builtin_rules()
    return LEAF_RULES.get(type(module))


@lru_cache(maxsize=1)
def _register_builtin_rules() -> None:
    register_leaf_rule(ZeroPadShortcut, LeafRule("new", _resize_zero_pad, _remap_zero_pad, _zero_zero_pad,
                                                 min_out_is_in=True))
    register_leaf_rule(LayerNorm2d, LeafRule("pass", _keep, norm=True))


def _keep(module: nn.Module, c_in: int, c_out: int) -> nn.Module:
    return module


def _resize_zero_pad(module: nn.Module, c_in: int, c_out: int) -> nn.Module:
    return type(module)(c_in, c_out, module.stride)


def _remap_zero_pad(state: dict, prefix: str, kept_in: Sequence[int], kept_out: Sequence[int], base_in: int) -> None:
    """Output ``j`` reads the kept position of base source ``source[kept_out[j]]``, else the zero channel."""
    key = f"{prefix}.source"
    position = {int(c): i for i, c in enumerate(kept_in)}
    base_source = state[key].tolist()
    state[key] = torch.tensor([position.get(base_source[c], len(kept_in)) for c in kept_out], dtype=torch.long)


def _zero_zero_pad(module: nn.Module, dropped_out: Sequence[int], c_in: int) -> None:
    module.source[list(dropped_out)] = c_in


# -- the analysis -----------------------------------------------------------------------------------------
SiteKind = Literal["conv", "linear", "bn", "scale", "leaf"]


@dataclass(frozen=True)
class Site:
    """A module (or a per-channel parameter) whose tensors follow channel widths.

    Attributes:
        name: module path; for ``"scale"`` the parameter's path (``features.1.0.layer_scale``).
        kind: ``"conv"``, ``"linear"``, ``"bn"`` (BatchNorm or LayerNorm over channels), ``"scale"`` (a
            per-channel parameter broadcast against a tensor) or ``"leaf"`` (a module with a leaf rule).
        inputs: (group, channels) of the concatenated input channels, in order (empty for ``"scale"``).
        output: the group the site produces (conv, linear, ``"new"`` leaf) or normalises/scales; ``None``
            for norms, whose groups are their inputs.
        depthwise: a depthwise conv (its output group is its input group).
        frozen_groups: the conv's groups are kept as they are (a grouped conv with frozen channels).
        in_repeat: inputs per channel of a linear layer after a flatten.
        positions: output positions (conv: (h, w); linear: positions it is applied at, e.g. ConvNeXt's h*w).
    """

    name: str
    kind: SiteKind
    inputs: tuple[tuple[int, int], ...]
    output: int | None
    out_channels: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    bias: bool = False
    depthwise: bool = False
    in_repeat: int = 1
    positions: tuple[int, int] = (1, 1)


@dataclass(frozen=True)
class Group:
    """A set of tied channels after the pass: its channel count, producers and, if frozen, why."""

    channels: int
    producers: tuple[str, ...]
    frozen: str | None = None
    stage: int = 0
    normalised_by_mixing_norm: bool = False


@dataclass(frozen=True)
class Analysis:
    """The result of :func:`analyse`: groups (root id -> Group), the sites in graph order, and facts."""

    groups: Mapping[int, Group]
    sites: tuple[Site, ...]
    output_shape: tuple[int, ...]
    graph_hash: str

    @property
    def slot_groups(self) -> tuple[int, ...]:
        """Searchable groups in order of their first producer: slot ``i`` is ``slot_groups[i]``."""
        return tuple(g for g, info in self.groups.items() if info.frozen is None)

    def frozen(self) -> list[tuple[str, int, str]]:
        """(first producer, channels, reason) of every frozen group (the network input excluded)."""
        return [(info.producers[0] if info.producers else f"group{g}", info.channels, info.frozen)
                for g, info in self.groups.items() if info.frozen and g != INPUT_GROUP]


@lru_cache(maxsize=32)
def analyse(reference: str, shape: tuple[int, int, int]) -> Analysis:
    """Trace the model of ``reference`` at input ``shape`` (C, H, W) and group its channels (cached)."""
    ref = parse_reference(reference)
    model = instantiate_on_meta(ref)
    graph = trace(model, ref.text)
    _propagate_shapes(graph, model, ref.text, shape)
    return _Pass(model, graph, ref.text).run(_graph_hash(graph, model, ref))


def instantiate_on_meta(ref: Reference) -> nn.Module:
    """The reference's module with its tensors on the meta device (no memory, no initialisation cost), in
    training mode."""
    try:
        with torch.device("meta"):
            model = ref.instantiate()
    except TracingError:  # some initialisers copy data; build on the CPU then
        model = ref.instantiate().to("meta")
    return model.train()  # the mode it is searched in: auxiliary heads and dropout are part of the graph


class _Tracer(fx.Tracer):
    """Symbolic tracer that keeps conv/linear/norm subclasses and ruled modules as leaves and remembers where
    it is, so a failure names the module."""

    def __init__(self) -> None:
        super().__init__()
        self.where: list[str] = []

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if rule_for(m) is not None or isinstance(m, _LEAF_TYPES):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        self.where.append(f"{self.path_of_module(m) or '(root)'} ({type(m).__name__})")
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self.where.pop()


def trace(model: nn.Module, what: str) -> fx.Graph:
    """The fx graph of ``model``; failures (data-dependent control flow, ...) name the module, one line."""
    tracer = _Tracer()
    try:
        return tracer.trace(model)
    except Exception as err:  # noqa: BLE001 (fx raises many kinds; each becomes one line)
        where = tracer.where[-1] if tracer.where else "(root)"
        raise TracingError(f"model {what!r} cannot be traced by torch.fx at {where}: {type(err).__name__}: "
                           f"{_first_line(err)}") from None


def _propagate_shapes(graph: fx.Graph, model: nn.Module, what: str, shape: tuple[int, int, int]) -> None:
    module = fx.GraphModule(model, graph)
    try:  # ShapeProp prints the traceback itself before re-raising; the one line below says it all
        with torch.device("meta"), torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(module).propagate(torch.empty(2, *shape))  # batch 2: batch norm in training mode
    except Exception as err:  # noqa: BLE001 (the model's own error, one line)
        cause = err.__cause__ or err  # ShapeProp wraps the model's error with the whole node
        raise TracingError(f"model {what!r} rejects input {'x'.join(map(str, shape))}: {type(cause).__name__}: "
                           f"{_first_line(cause)}") from None


def _graph_hash(graph: fx.Graph, model: nn.Module, ref: Reference) -> str:
    text = [str(graph), repr(sorted(ref.library_versions().items()))]
    text += [f"{name}:{tuple(p.shape)}" for name, p in model.state_dict().items()]
    return hashlib.sha256("\n".join(text).encode()).hexdigest()[:16]


_CONV = (nn.Conv2d,)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
_LEAF_TYPES = (nn.Conv2d, nn.Linear, *_NORMS)
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


@dataclass(frozen=True)
class _Chan:
    """Channel layout of a tensor: groups along dimension ``dim`` (``repeat`` elements per channel)."""

    segs: tuple[tuple[int, int], ...]
    dim: int
    ndim: int
    repeat: int = 1


@dataclass(frozen=True)
class _Param:
    """A parameter fetched by ``get_attr`` (e.g. a layer scale), not yet bound to channels."""

    target: str
    shape: tuple[int, ...]


_OPAQUE = object()
"""A tensor whose channels the pass lost track of (its inputs were frozen)."""


@dataclass
class _Pass:
    model: nn.Module
    graph: fx.Graph
    what: str
    parent: dict[int, int] = field(default_factory=dict)
    info: dict[int, dict[str, Any]] = field(default_factory=dict)
    sites: list[Site] = field(default_factory=list)
    values: dict[fx.Node, Any] = field(default_factory=dict)

    # -- union-find over channel groups ---------------------------------------------------------------
    def new_group(self, channels: int, producer: str | None = None) -> int:
        g = len(self.parent)
        self.parent[g] = g
        self.info[g] = {"channels": channels, "producers": [producer] if producer else [], "frozen": None}
        return g

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def tie(self, a: int, b: int, node: fx.Node) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.info[ra]["channels"] != self.info[rb]["channels"]:
            self.freeze_groups([ra, rb], node, "ties groups of different widths")
            return
        low, high = min(ra, rb), max(ra, rb)
        self.parent[high] = low
        self.info[low]["producers"] += self.info[high]["producers"]
        self.info[low]["frozen"] = self.info[low]["frozen"] or self.info[high]["frozen"]

    def freeze(self, value: Any, node: fx.Node, why: str) -> None:
        if isinstance(value, _Chan):
            self.freeze_groups([g for g, _ in value.segs], node, why)

    def freeze_groups(self, groups: Sequence[int], node: fx.Node | None, why: str) -> None:
        reason = why if node is None else f"node {node.name!r} ({_op_name(node)}): {why}"
        for g in groups:
            root = self.find(g)
            self.info[root]["frozen"] = self.info[root]["frozen"] or reason

    # -- the walk -------------------------------------------------------------------------------------
    def run(self, graph_hash: str) -> Analysis:
        self.new_group(0)  # INPUT_GROUP, sized at the placeholder
        self.freeze_groups([INPUT_GROUP], None, "network input")
        output_shape: tuple[int, ...] = ()
        for node in self.graph.nodes:
            if node.op == "output":
                output_shape = self.mark_output(node)
                continue
            self.values[node] = self.visit(node)
        self.freeze_mixed_concatenations()
        self.check_parameters_described()
        return Analysis(self.groups(), tuple(self.resolved_sites()), output_shape, graph_hash)

    def visit(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            shape = _shape(node)
            if shape is None:
                return None
            self.info[INPUT_GROUP]["channels"] = shape[1]
            return _Chan(((INPUT_GROUP, shape[1]),), 1, len(shape))
        if node.op == "get_attr":
            shape = _shape(node)
            return None if shape is None else _Param(node.target, shape)
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
            return self.visit_norm(node, module, x, len(_shape(node)) - 1)
        if isinstance(module, nn.Flatten):
            return self.flatten(node, x, module.start_dim, module.end_dim)
        if type(module) in _PASS_MODULES:
            return x
        return self.unknown(node, f"the pass has no rule for module {type(module).__name__}")

    def visit_conv(self, node: fx.Node, module: nn.Conv2d, x: Any) -> Any:
        name = node.target
        out_hw = _shape(node)[2:]
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
        out = self.new_group(module.out_channels, name)
        if module.groups > 1:
            why = f"grouped conv (groups={module.groups}) keeps its groups"
            self.freeze(x, node, why)
            self.freeze_groups([out], node, why)
        self.sites.append(Site(name, "conv", x.segs, out, module.out_channels, groups=module.groups, **geometry))
        return _Chan(((out, module.out_channels),), 1, 4)

    def visit_linear(self, node: fx.Node, module: nn.Linear, x: Any) -> Any:
        shape = _shape(node)
        x = self.consumable(node, x, dim=len(shape) - 1, allow_repeat=True)
        positions = _prod(shape[1:-1])
        out = self.new_group(module.out_features, node.target)
        self.sites.append(Site(node.target, "linear", x.segs, out, module.out_features, bias=module.bias is not None,
                               in_repeat=x.repeat, positions=(positions, 1)))
        return _Chan(((out, module.out_features),), len(shape) - 1, len(shape))

    def visit_norm(self, node: fx.Node, module: nn.Module, x: Any, dim: int) -> Any:
        """A per-channel norm over dimension ``dim`` (BatchNorm: 1; LayerNorm: the last; LayerNorm2d: 1)."""
        shape = _shape(node)
        if not isinstance(x, _Chan) or x.repeat != 1:
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
        shape = _shape(node)
        if rule.flow == "pass":
            self.sites.append(Site(node.target, "leaf", x.segs, None, shape[1]))
            return x
        out = self.new_group(shape[1])
        self.sites.append(Site(node.target, "leaf", x.segs, out, shape[1]))
        return _Chan(((out, shape[1]),), 1, len(shape))

    def mark_mixing_norm(self, x: _Chan) -> None:
        for g, _ in x.segs:
            self.info[self.find(g)]["mixing_norm"] = True

    def consumable(self, node: fx.Node, x: Any, dim: int, allow_repeat: bool = False) -> _Chan:
        """``x`` as channels along ``dim``; anything else is frozen and read as one opaque input."""
        if isinstance(x, _Chan) and x.dim == dim and (allow_repeat or x.repeat == 1):
            return x
        self.freeze(x, node, "channels reach a layer along an unexpected dimension")
        opaque = self.new_group(_shape(node.args[0])[dim] if isinstance(node.args[0], fx.Node) else 0)
        self.freeze_groups([opaque], node, "input channels unknown to the pass")
        return _Chan(((opaque, self.info[opaque]["channels"]),), dim, _ndim(node.args[0]))

    def visit_function(self, node: fx.Node) -> Any:
        fn, x = node.target, self.arg(node)
        method = node.op == "call_method"
        if (not method and fn in _pass_functions()) or (method and fn in _PASS_METHODS):
            return x
        if (not method and fn in _ELEMENTWISE) or (method and fn in _ELEMENTWISE_METHODS):
            return self.elementwise(node)
        if fn in (torch.flatten, "flatten"):
            return self.flatten(node, x, _argument(node, 1, "start_dim", 0), _argument(node, 2, "end_dim", -1))
        if fn in ("view", "reshape", torch.reshape):
            return self.reshape(node, x)
        if fn in ("permute", torch.permute, "transpose", torch.transpose):
            return self.permute(node, x)
        if fn is torch.cat:
            return self.cat(node)
        if (not method and fn in _REDUCTIONS) or (method and fn in _REDUCTION_METHODS):
            return self.reduce(node, x)
        if fn in ("size", "dim") or fn is getattr or (fn is operator.getitem and not isinstance(x, _Chan)):
            return None
        if not any(isinstance(self.values.get(a), (_Chan, _Param)) or self.values.get(a) is _OPAQUE
                   for a in node.all_input_nodes):
            return None  # arithmetic on sizes and constants
        weights = [v.target for a in node.all_input_nodes if isinstance(v := self.values.get(a), _Param)
                   and self.is_layer_weight(v.target)]
        if fn in _UNCOUNTED_MACS or fn in ("matmul", "bmm") or weights:
            what = f"uses the weight {weights[0]!r}" if weights else "multiplies tensors"
            raise TracingError(f"model {self.what!r}: node {node.name!r} ({_op_name(node)}) {what} outside "
                               "conv/linear modules; the analytic MAC counter does not cover it")
        return self.unknown(node, "the pass has no rule for this operation")

    def is_layer_weight(self, target: str) -> bool:
        owner = self.model.get_submodule(target.rpartition(".")[0])
        return isinstance(owner, (nn.Conv2d, nn.Linear))

    def unknown(self, node: fx.Node, why: str) -> Any:
        for a in node.all_input_nodes:
            value = self.values.get(a)
            self.freeze(value, node, why)
            if isinstance(value, _Param):
                self.fixed_param(value)
        return _OPAQUE

    def fixed_param(self, param: _Param) -> None:
        """A parameter used in a way the pass does not follow: counted, never resized."""
        if not any(s.name == param.target for s in self.sites):
            group = self.new_group(_prod(param.shape))
            self.freeze_groups([group], None, f"parameter {param.target!r} used by an operation without a rule")
            self.sites.append(Site(param.target, "scale", (), group, _prod(param.shape)))

    def elementwise(self, node: fx.Node) -> Any:
        operands = [(a, self.values.get(a)) for a in node.args if isinstance(a, fx.Node)]
        chans = [v for _, v in operands if isinstance(v, _Chan)]
        if any(v is _OPAQUE for _, v in operands):
            return self.unknown(node, "combines channels with values the pass lost track of")
        if not chans:
            for _, v in operands:
                if isinstance(v, _Param):
                    self.fixed_param(v)
            return None
        shape = _shape(node)
        result = chans[0]
        for other in chans[1:]:
            result = self.broadcast_tie(node, result, other, shape)
        for _, v in operands:
            if isinstance(v, _Param):
                self.bind_param(node, v, result, shape)
        return result

    def broadcast_tie(self, node: fx.Node, a: _Chan, b: _Chan, shape: tuple[int, ...]) -> _Chan:
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
        return _Chan(a.segs, a.dim - a.ndim + len(shape), len(shape), a.repeat)

    def bind_param(self, node: fx.Node, param: _Param, x: _Chan, shape: tuple[int, ...]) -> None:
        """A parameter broadcast against channels: a per-channel scale (ConvNeXt's layer scale) or fixed."""
        offset = len(shape) - len(param.shape)
        channel_axis = x.dim - x.ndim + len(shape) - offset
        per_channel = (0 <= channel_axis < len(param.shape) and param.shape[channel_axis] == shape[x.dim - x.ndim]
                       and _prod(param.shape) == param.shape[channel_axis] and len(x.segs) == 1)
        owner = self.model.get_submodule(param.target.rpartition(".")[0])
        alone = [n for n, _ in owner.named_parameters(recurse=False)] == [param.target.rpartition(".")[2]]
        if per_channel and alone and not list(owner.named_buffers(recurse=False)):
            self.sites.append(Site(param.target, "scale", (), x.segs[0][0], _prod(param.shape)))
        elif _prod(param.shape) > 1:
            self.freeze(x, node, f"parameter {param.target!r} is not one value per channel")
            self.fixed_param(param)
        else:
            self.fixed_param(param)

    def flatten(self, node: fx.Node, x: Any, start: int, end: int) -> Any:
        if not isinstance(x, _Chan):
            return x if x is None else self.unknown(node, "flatten of unknown channels")
        start, end = start % x.ndim, end % x.ndim
        shape_in = _shape(node.args[0])
        if x.dim < start:
            return _Chan(x.segs, x.dim, x.ndim - (end - start), x.repeat)
        if x.dim > end:
            return _Chan(x.segs, x.dim - (end - start), x.ndim - (end - start), x.repeat)
        if any(shape_in[d] != 1 for d in range(start, x.dim)):
            return self.unknown(node, "flatten puts other dimensions before the channels")
        repeat = x.repeat * _prod(shape_in[x.dim + 1:end + 1])
        return _Chan(x.segs, start, x.ndim - (end - start), repeat)

    def reshape(self, node: fx.Node, x: Any) -> Any:
        """Reshapes that flatten from the channel dimension on, or keep it, with no hard-coded count."""
        if not isinstance(x, _Chan):
            return self.unknown(node, "reshape of unknown channels") if x is _OPAQUE else x
        shape_in, shape_out = _shape(node.args[0]), _shape(node)
        sizes = node.args[1:] if len(node.args) > 2 or not isinstance(node.args[1], (list, tuple)) else node.args[1]
        prefix_kept = tuple(shape_out[:x.dim]) == tuple(shape_in[:x.dim]) and len(shape_out) > x.dim
        literal = sizes[x.dim] if x.dim < len(sizes) else None
        fixed = isinstance(literal, int) and literal != -1
        if prefix_kept and not fixed:
            if len(shape_out) == x.dim + 1 and shape_out[x.dim] == _prod(shape_in[x.dim:]):
                return _Chan(x.segs, x.dim, len(shape_out), x.repeat * _prod(shape_in[x.dim + 1:]))
            if shape_out[x.dim] == shape_in[x.dim] and x.repeat == 1:
                return _Chan(x.segs, x.dim, len(shape_out))
        why = "reshape with a hard-coded channel count" if fixed else "reshape that mixes channels"
        return self.unknown(node, why)

    def permute(self, node: fx.Node, x: Any) -> Any:
        if not isinstance(x, _Chan) or x.repeat != 1:
            return self.unknown(node, "permute of unknown channels") if x is not None else None
        dims = [a for a in node.args[1:]] if not isinstance(node.args[1], (list, tuple)) else list(node.args[1])
        if node.target in ("transpose", torch.transpose):
            a, b = (d % x.ndim for d in dims[:2])
            order = list(range(x.ndim))
            order[a], order[b] = order[b], order[a]
        else:
            order = [d % x.ndim for d in dims]
        return _Chan(x.segs, order.index(x.dim), x.ndim)

    def cat(self, node: fx.Node) -> Any:
        tensors = node.args[0]
        dim = _argument(node, 1, "dim", 0)
        values = [self.values.get(t) for t in tensors]
        if not all(isinstance(v, _Chan) and v.repeat == 1 for v in values):
            return self.unknown(node, "concatenation of values the pass lost track of")
        ndim = values[0].ndim
        if dim % ndim == values[0].dim and all(v.dim == values[0].dim for v in values):
            return _Chan(tuple(s for v in values for s in v.segs), values[0].dim, ndim)
        shape = _shape(node)
        result = values[0]
        for other in values[1:]:
            result = self.broadcast_tie(node, result, other, shape)
        return result

    def reduce(self, node: fx.Node, x: Any) -> Any:
        if not isinstance(x, _Chan):
            return self.unknown(node, "reduction of unknown channels") if x is _OPAQUE else x
        dims = _argument(node, 1, "dim", None)
        keep = _argument(node, 2, "keepdim", False)
        if dims is None:
            return self.unknown(node, "reduction over every dimension")
        dims = {d % x.ndim for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
        if x.dim in dims or x.repeat != 1:
            return self.unknown(node, "reduction over the channels")
        if keep:
            return x
        return _Chan(x.segs, x.dim - sum(d < x.dim for d in dims), x.ndim - len(dims))

    def mark_output(self, node: fx.Node) -> tuple[int, ...]:
        shapes = []
        for value_node in _flat_nodes(node.args[0]):
            value = self.values.get(value_node)
            self.freeze(value, node, "the model's output")
            shape = _shape(value_node)
            if shape is None:  # a container built in forward (GoogLeNet's outputs): its first tensor
                shape = next((s for n in value_node.all_input_nodes if (s := _shape(n)) is not None), None)
            if shape is not None:
                shapes.append(shape)
        return tuple(shapes[0]) if shapes else ()

    def freeze_mixed_concatenations(self) -> None:
        """A layer reading frozen and searchable channels together freezes them all (offsets stay fixed)."""
        changed = True
        while changed:
            changed = False
            for site in self.sites:
                states = {self.info[self.find(g)]["frozen"] is None for g, _ in site.inputs}
                if len(states) > 1:
                    self.freeze_groups([g for g, _ in site.inputs], None,
                                       f"read by {site.name!r} together with frozen channels")
                    changed = True

    def check_parameters_described(self) -> None:
        """Every parameter must belong to a site, or the parameter count would silently miss it."""
        described = set()
        for site in self.sites:
            if site.kind == "scale":
                described.add(site.name)
            elif site.kind != "leaf":
                module = self.model.get_submodule(site.name)
                described.update(f"{site.name}.{n}" for n, _ in module.named_parameters(recurse=False))
        for name, _ in self.model.named_parameters():
            if name not in described:
                owner = name.rpartition(".")[0]
                kind = type(self.model.get_submodule(owner)).__name__ if owner else type(self.model).__name__
                raise TracingError(f"model {self.what!r}: parameter {name!r} of {owner or '(root)'} ({kind}) is "
                                   "used where the pass has no rule; its channels and count cannot be described")

    # -- results --------------------------------------------------------------------------------------
    def groups(self) -> dict[int, Group]:
        out_sizes = sorted({s.positions for s in self.sites if s.kind == "conv"}, key=lambda hw: -hw[0] * hw[1])
        out: dict[int, Group] = {}
        for g in sorted(self.parent):
            root = self.find(g)
            if root != g:
                continue
            info = self.info[g]
            producers = tuple(info["producers"])
            stage = next((out_sizes.index(s.positions) for s in self.sites
                          if s.name in producers and s.kind == "conv"), len(out_sizes))
            out[g] = Group(info["channels"], producers, info["frozen"], stage, info.get("mixing_norm", False))
        return out

    def resolved_sites(self) -> Iterator[Site]:
        for site in self.sites:
            inputs = tuple((self.find(g), c) for g, c in site.inputs)
            output = None if site.output is None else self.find(site.output)
            yield Site(**{**site.__dict__, "inputs": inputs, "output": output})


def _op_name(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"call_module {node.target}"
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {target}"


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _ndim(node: Any) -> int:
    shape = _shape(node)
    return 0 if shape is None else len(shape)


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _argument(node: fx.Node, position: int, name: str, default: Any) -> Any:
    if position < len(node.args):
        return node.args[position]
    return node.kwargs.get(name, default)


def _flat_nodes(value: Any) -> Iterator[fx.Node]:
    if isinstance(value, fx.Node):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _flat_nodes(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _flat_nodes(v)
