"""Channel groups: what the dependency pass of :mod:`prunenas.families.tracing` finds, and its union-find.

Every tensor's channels are a sequence of *groups*; ties (residual additions, depthwise convs) merge groups
into one width; a frozen group keeps its base width, with the reason. :class:`Analysis` is the result: the
groups, the *sites* (modules and per-channel parameters whose tensors follow the widths) and facts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import fx, nn

from prunenas.families.model_reference import TracingError

INPUT_GROUP = 0
"""The group of the network's input channels (always frozen)."""

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
        group_rule: how a grouped (not depthwise) conv is resized: ``"width"`` — its group width is fixed
            (RegNet), its output group is its input group and whole groups go; ``"count"`` — its group count
            is fixed (ResNeXt), every group keeps the same number of input and of output channels; ``""`` —
            not grouped, or frozen.
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
    group_rule: Literal["", "width", "count"] = ""
    in_repeat: int = 1
    positions: tuple[int, int] = (1, 1)


@dataclass(frozen=True)
class Group:
    """A set of tied channels after the pass: its channel count, producers and, if frozen, why; and the
    grouped convs' rule for it (``group_width``: whole groups of that many channels; ``group_count``: that
    many equal groups keeping equal counts; 1: no rule)."""

    channels: int
    producers: tuple[str, ...]
    frozen: str | None = None
    stage: int = 0
    normalised_by_mixing_norm: bool = False
    group_width: int = 1
    group_count: int = 1


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


@dataclass(frozen=True)
class Chan:
    """Channel layout of a tensor: groups along dimension ``dim`` (``repeat`` elements per channel)."""

    segs: tuple[tuple[int, int], ...]
    dim: int
    ndim: int
    repeat: int = 1


@dataclass(frozen=True)
class Param:
    """A parameter fetched by ``get_attr`` (e.g. a layer scale), not yet bound to channels."""

    target: str
    shape: tuple[int, ...]


OPAQUE = object()
"""A tensor whose channels the pass lost track of (its inputs were frozen)."""


@dataclass
class ChannelGroups:
    """The state of the channel-dependency pass: channel groups (union-find), the sites reading and producing
    them, and why groups are frozen; :meth:`groups` and :meth:`resolved_sites` give the result."""

    model: nn.Module
    graph: fx.Graph
    what: str
    parent: dict[int, int] = field(default_factory=dict)
    info: dict[int, dict[str, Any]] = field(default_factory=dict)
    sites: list[Site] = field(default_factory=list)
    values: dict[fx.Node, Any] = field(default_factory=dict)
    grouped_rule: str = "width"

    # -- union-find over channel groups ---------------------------------------------------------------
    def new_group(self, channels: int, producer: str | None = None) -> int:
        g = len(self.parent)
        self.parent[g] = g
        self.info[g] = {"channels": channels, "producers": [producer] if producer else [], "frozen": None,
                        "group_rules": set()}
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
        self.info[low]["group_rules"] |= self.info[high]["group_rules"]
        self.info[low]["frozen"] = self.info[low]["frozen"] or self.info[high]["frozen"]

    def freeze(self, value: Any, node: fx.Node, why: str) -> None:
        if isinstance(value, Chan):
            self.freeze_groups([g for g, _ in value.segs], node, why)

    def freeze_groups(self, groups: Sequence[int], node: fx.Node | None, why: str) -> None:
        reason = why if node is None else f"node {node.name!r} ({op_name(node)}): {why}"
        for g in groups:
            root = self.find(g)
            self.info[root]["frozen"] = self.info[root]["frozen"] or reason

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

    def add_group_rule(self, group: int, rule: tuple[str, int]) -> None:
        """Grouped convs read ``group`` by ``rule``: ``("width", channels per group)`` or ``("count", groups)``."""
        self.info[self.find(group)]["group_rules"].add(rule)

    def freeze_conflicting_group_rules(self) -> None:
        """Channels that grouped convs read by two different rules (two group widths, a width and a count) are
        frozen: no width satisfies both in general."""
        for g in list(self.parent):
            rules = self.info[self.find(g)]["group_rules"]
            if len(rules) > 1:
                listed = ", ".join(f"group {kind} {n}" for kind, n in sorted(rules))
                self.freeze_groups([g], None, f"grouped convs read these channels with different rules ({listed})")

    def group_by_group(self, node: fx.Node, module: nn.Conv2d, x: Chan) -> bool:
        """Whether a grouped conv can tie its input and output group by group (fixed group width): one input
        group and as many output as input channels; else its channels are frozen."""
        if module.in_channels == module.out_channels:
            return self.one_input(node, module, x, None)
        why = (f"grouped conv (groups={module.groups}) maps {module.in_channels} to {module.out_channels} "
               "channels: a fixed group width ties inputs to outputs group by group, so it keeps its groups")
        self.freeze(x, node, why)
        return False

    def one_input(self, node: fx.Node, module: nn.Conv2d, x: Chan, out: int | None) -> bool:
        """Whether a grouped conv reads one channel group (not a concatenation); else its channels are frozen."""
        if len(x.segs) == 1:
            return True
        why = f"grouped conv (groups={module.groups}) reads concatenated channels: it keeps its groups"
        self.freeze(x, node, why)
        self.freeze_groups([] if out is None else [out], node, why)
        return False

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
            rule = dict(info["group_rules"]) if len(info["group_rules"]) == 1 else {}
            out[g] = Group(info["channels"], producers, info["frozen"], stage, info.get("mixing_norm", False),
                           rule.get("width", 1), rule.get("count", 1))
        return out

    def resolved_sites(self) -> Iterator[Site]:
        for site in self.sites:
            inputs = tuple((self.find(g), c) for g, c in site.inputs)
            output = None if site.output is None else self.find(site.output)
            yield Site(**{**site.__dict__, "inputs": inputs, "output": output})


def grouped_conv_rule(model: nn.Module) -> str:
    """How the model's grouped (not depthwise) convs are resized: ``"count"`` (fixed group count) when they all
    have the same number of groups while their group widths differ — ResNeXt: 32 groups of 4 to 32 channels;
    else ``"width"`` (fixed group width) — RegNet: 16 channels per group in 2 to 25 groups — which is also the
    choice when the model does not tell (one grouped conv, or neither count nor width the same everywhere)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels]
    counts, widths = {m.groups for m in convs}, {m.in_channels // m.groups for m in convs}
    return "count" if len(counts) == 1 and len(widths) > 1 else "width"


def op_name(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"call_module {node.target}"
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {target}"


def node_shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def node_ndim(node: Any) -> int:
    shape = node_shape(node)
    return 0 if shape is None else len(shape)


def prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def node_argument(node: fx.Node, position: int, name: str, default: Any) -> Any:
    if position < len(node.args):
        return node.args[position]
    return node.kwargs.get(name, default)


def flat_nodes(value: Any) -> Iterator[fx.Node]:
    if isinstance(value, fx.Node):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from flat_nodes(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from flat_nodes(v)
