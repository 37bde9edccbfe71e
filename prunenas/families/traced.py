"""The traced family: a user's (or torchvision's, or timm's) ``nn.Module`` as a searchable family.

An architecture of this family is ``family: traced`` with options ``model`` (the model reference, see
:mod:`prunenas.families.model_reference`), ``shape`` (the input shape ``C,H,W`` the slots are derived at) and
``graph`` (a hash of the traced graph, the parameter shapes and the library versions, so that a cached
result is never paired with a network that a library upgrade changed; empty = not pinned). Its widths are
one per *searchable* channel group of the dependency pass; frozen channels keep their base width and are
listed by :func:`coverage`.

The built network is the model's own module, freshly created by its factory (its own initialisation),
with every conv / linear / norm module and per-channel parameter resized to the widths — the first
channels of each slot — so ``forward`` is the user's code. Weight inheritance, channel scores and the MAC
counter work from :meth:`TracedFamily.layers` like for every family.

Removable blocks are not derived: block removal (Sparse Structure Selection) does not apply to traced
spaces. Slots that a LayerNorm over channels normalises (ConvNeXt's stream) are searchable, but removing
a channel there changes the statistics of the others, so zeroing channels is not the same as removing them
(:attr:`Coverage.mixing_norm_slots`).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunenas.errors import ArchitectureError
from prunenas.families.base import INPUT, Family, Layer, Option, Slot
from prunenas.families.channel_groups import Site
from prunenas.families.leaf_rules import LeafRule, rule_for
from prunenas.families.model_reference import TracingError, parse_reference
from prunenas.families.registry import register_family
from prunenas.families.tracing import analyse, instantiate_on_meta
from prunenas.shapes import parse_shape

if TYPE_CHECKING:
    from prunenas.arch import Architecture

NAME = "traced"


@register_family(NAME)
class TracedFamily(Family):
    name = NAME
    description = "a model reference (torchvision:NAME, timm:NAME, package.module:factory) traced by torch.fx"
    options = {
        "model": Option("", kind=str, help="model reference, e.g. torchvision:resnet50 or my_pkg.models:make_net"),
        "shape": Option("3,224,224", kind=str, help="input shape C,H,W at which the graph is traced"),
        "graph": Option("", kind=str, help="hash of the traced graph and library versions (empty: not pinned)"),
    }

    def check_options(self, options: Mapping[str, Any]) -> None:
        if not options["model"]:
            raise ArchitectureError("family 'traced' needs option 'model' (e.g. torchvision:resnet50)")
        analysis = analysis_of(options)
        if options["graph"] and options["graph"] != analysis.graph_hash:
            raise ArchitectureError(f"model {options['model']!r} now traces to graph {analysis.graph_hash}, not "
                                    f"{options['graph']} (a library or the model code changed); trace it again")

    def slots(self, options: Mapping[str, Any]) -> tuple[Slot, ...]:
        return _slots(options["model"], parse_shape(options["shape"]))

    def layers(self, arch: Architecture) -> list[Layer]:
        plan = _plan(arch)
        return [layer for site in plan.sites if (layer := plan.layer(site)) is not None]

    def check(self, arch: Architecture) -> None:
        analysis = analysis_of(arch.opts)
        channels = analysis.groups[0].channels
        if arch.input_shape[0] != channels:
            raise ArchitectureError(f"model {arch.opts['model']!r} reads {channels} input channels; input_shape "
                                    f"{list(arch.input_shape)} has {arch.input_shape[0]}")
        classes = analysis.output_shape[-1] if analysis.output_shape else None
        if classes is not None and classes != arch.num_classes:
            raise ArchitectureError(f"model {arch.opts['model']!r} outputs {classes} classes, not num_classes "
                                    f"{arch.num_classes} (pass num_classes=N to the model, e.g. ?num_classes=N)")
        plan = _plan(arch)
        for site, rule in plan.leaves():
            if rule.min_out_is_in and plan.width(site.output) < plan.in_width(site):
                raise ArchitectureError(f"{site.name!r} zero-pads {plan.in_width(site)} channels into "
                                        f"{plan.width(site.output)}: its output may not be narrower than its input")

    def repair_widths(self, options: Mapping[str, Any], widths: Sequence[int]) -> tuple[int, ...]:
        """Raise the outputs of zero-padding leaves to their input widths (in graph order)."""
        out = list(widths)
        slot_of = slot_index(options["model"], parse_shape(options["shape"]))
        for site in analysis_of(options).sites:
            rule = _leaf_rule(site, options)
            if rule is None or not rule.min_out_is_in or site.output not in slot_of:
                continue
            ins = [slot_of[g] for g, _ in site.inputs if g in slot_of]
            if len(ins) == 1:
                out[slot_of[site.output]] = max(out[slot_of[site.output]], out[ins[0]])
        return tuple(out)

    def build(self, arch: Architecture) -> nn.Module:
        model = _instantiate(arch.opts["model"])
        plan = _plan(arch)
        for site in plan.sites:
            if plan.resized(site):
                _resize(model, site, plan)
        return model

    def remap_buffers(self, base_arch: Architecture, arch: Architecture, kept: Mapping[int, Sequence[int]],
                      state: MutableMapping[str, torch.Tensor]) -> None:
        """Let leaf rules rewrite buffers whose values index channels (the option-A shortcut's map)."""
        plan = _plan(arch)
        for site, rule in plan.leaves():
            if rule.remap is None or not any(key.startswith(f"{site.name}.") for key in state):
                continue
            base_in = _plan(base_arch).in_width(site)
            rule.remap(state, site.name, plan.kept(site.inputs[0][0], kept, base_arch),
                       plan.kept(site.output, kept, base_arch), base_in)

    def zero_buffers(self, arch: Architecture, model: nn.Module, dropped: Mapping[int, Sequence[int]]) -> None:
        plan = _plan(arch)
        for site, rule in plan.leaves():
            slot = plan.slot_of.get(site.output)
            if rule.zero is not None and slot is not None and dropped.get(slot):
                rule.zero(model.get_submodule(site.name), dropped[slot], plan.in_width(site))


# -- internals ------------------------------------------------------------------------------------------
def analysis_of(options: Mapping[str, Any]):
    return analyse(options["model"], parse_shape(options["shape"]))


@lru_cache(maxsize=64)
def _slots(model: str, shape: tuple[int, int, int]) -> tuple[Slot, ...]:
    analysis = analyse(model, shape)
    group_by_group = {s.name for s in analysis.sites if s.depthwise or s.group_rule == "width"}
    slots = []
    for g in analysis.slot_groups:
        info = analysis.groups[g]
        name = info.producers[0] if info.producers else f"group{g}"
        dense = [p for p in info.producers if p not in group_by_group]
        slots.append(Slot(name, info.channels, info.stage, tied=len(dense) > 1, group_width=info.group_width,
                          group_count=info.group_count))
    return tuple(slots)


@lru_cache(maxsize=64)
def slot_index(model: str, shape: tuple[int, int, int]) -> dict[int, int]:
    return {g: i for i, g in enumerate(analyse(model, shape).slot_groups)}


def _leaf_rule(site: Site, options: Mapping[str, Any]) -> LeafRule | None:
    if site.kind != "leaf":
        return None
    return _leaf_rules(options["model"], parse_shape(options["shape"])).get(site.name)


@lru_cache(maxsize=64)
def _leaf_rules(model: str, shape: tuple[int, int, int]) -> dict[str, LeafRule]:
    """Rules of the leaf sites (looked up on a meta instance of the model)."""
    leaves = [s.name for s in analyse(model, shape).sites if s.kind == "leaf"]
    if not leaves:
        return {}
    instance = instantiate_on_meta(parse_reference(model))
    return {name: rule_for(instance.get_submodule(name)) for name in leaves}


class _Plan:
    """The sites of a traced architecture with the widths of their groups at ``arch.widths``."""

    def __init__(self, model: str, shape_text: str, input_shape: tuple[int, int, int],
                 widths: tuple[int, ...]) -> None:
        shape = parse_shape(shape_text)
        self.analysis = analyse(model, shape)
        self.geometry = {s.name: s for s in analyse(model, input_shape).sites}
        if set(self.geometry) != {s.name for s in self.analysis.sites}:
            raise ArchitectureError(f"model {model!r} traces to different layers at input {list(input_shape)} "
                                    f"than at {shape_text}")
        self.slot_of = slot_index(model, shape)
        self.widths = widths
        self.sites = self.analysis.sites
        self.rules = _leaf_rules(model, shape)

    def width(self, group: int | None) -> int:
        if group in self.slot_of:
            return self.widths[self.slot_of[group]]
        return self.analysis.groups[group].channels

    def in_width(self, site: Site) -> int:
        return sum(self.width(g) for g, _ in site.inputs)

    def searchable(self, site: Site) -> bool:
        return bool(site.inputs) and all(g in self.slot_of for g, _ in site.inputs)

    def resized(self, site: Site) -> bool:
        """Whether any channel count of the site differs from the base network."""
        groups = [g for g, _ in site.inputs] + ([site.output] if site.output is not None else [])
        return any(self.width(g) != self.analysis.groups[g].channels for g in groups)

    def leaves(self) -> list[tuple[Site, LeafRule]]:
        return [(s, self.rules[s.name]) for s in self.sites if s.kind == "leaf"]

    def kept(self, group: int, kept: Mapping[int, Sequence[int]], base_arch: Architecture) -> tuple[int, ...]:
        slot = self.slot_of.get(group)
        if slot is None:
            return tuple(range(self.width(group)))
        return tuple(kept.get(slot, range(base_arch.widths[slot])))

    def groups(self, site: Site) -> int:
        """A conv's groups at these widths: fixed group width — the input width over the base group width."""
        if site.group_rule == "width":
            return self.in_width(site) * site.groups // sum(c for _, c in site.inputs)
        return site.groups

    def layer(self, site: Site) -> Layer | None:
        """The :class:`Layer` of a site at these widths (``None`` for parameter-free leaves)."""
        geo = self.geometry[site.name]
        inputs = tuple(self.slot_of[g] for g, _ in site.inputs) if self.searchable(site) else (INPUT,)
        output = self.slot_of.get(site.output) if site.output is not None else None
        c_in = self.in_width(site)
        if site.kind == "conv":
            if site.depthwise:
                return Layer(site.name, "conv", inputs, output, c_in, c_in, site.kernel, site.stride, c_in, site.bias,
                             geo.positions)
            if site.groups > 1 and (not site.group_rule or (inputs, output) == ((INPUT,), None)):
                # frozen: described as the dense conv its weight is (same shape, same MACs)
                return Layer(site.name, "conv", (INPUT,), None, c_in // site.groups, self.width(site.output),
                             site.kernel, site.stride, 1, site.bias, geo.positions)
            return Layer(site.name, "conv", inputs, output, c_in, self.width(site.output), site.kernel, site.stride,
                         self.groups(site), site.bias, geo.positions)
        if site.kind == "linear":
            return Layer(site.name, "linear", inputs, output, c_in * geo.in_repeat, self.width(site.output),
                         bias=site.bias, out_hw=geo.positions, in_repeat=geo.in_repeat)
        if site.kind == "bn":
            return Layer(site.name, "bn", inputs, None, c_in, c_in)
        if site.kind == "scale":
            return Layer(site.name.rpartition(".")[0], "scale", (), output, 0, self.width(site.output))
        return None


def _plan(arch: Architecture) -> _Plan:
    return _cached_plan(arch.opts["model"], arch.opts["shape"], tuple(arch.input_shape), arch.widths)


@lru_cache(maxsize=4096)
def _cached_plan(model: str, shape: str, input_shape: tuple[int, int, int], widths: tuple[int, ...]) -> _Plan:
    return _Plan(model, shape, input_shape, widths)


def _instantiate(reference: str) -> nn.Module:
    """A fresh module; under a meta default device (shape-only builds), also for factories that copy data."""
    ref = parse_reference(reference)
    try:
        return ref.instantiate()
    except TracingError:
        if torch.get_default_device().type != "meta":
            raise
        with torch.device("cpu"):
            return ref.instantiate().to("meta")


# -- resizing the user's module ---------------------------------------------------------------------------
def _resize(model: nn.Module, site: Site, plan: _Plan) -> None:
    """Resize one site of a freshly built model to the plan's widths, keeping the first channels."""
    if site.kind == "scale":
        owner_path, _, attr = site.name.rpartition(".")
        owner = model.get_submodule(owner_path)
        param = getattr(owner, attr)
        setattr(owner, attr, nn.Parameter(param.detach()[:plan.width(site.output)].clone(),
                                          requires_grad=param.requires_grad))
        return
    module = model.get_submodule(site.name)
    in_index = _first_channels(site, plan)
    if site.kind == "leaf":
        out = plan.in_width(site) if site.output is None else plan.width(site.output)
        _set_submodule(model, site.name, plan.rules[site.name].resize(module, plan.in_width(site), out))
    elif site.kind == "conv":
        _resize_conv(module, site, plan, in_index)
    elif site.kind == "linear":
        repeat = plan.geometry[site.name].in_repeat
        columns = (in_index[:, None] * repeat + torch.arange(repeat)).reshape(-1)
        _slice(module, "weight", 0, torch.arange(plan.width(site.output)))
        _slice(module, "weight", 1, columns)
        _slice(module, "bias", 0, torch.arange(plan.width(site.output)))
        module.in_features, module.out_features = module.weight.shape[1], module.weight.shape[0]
    elif site.kind == "bn":
        for name in ("weight", "bias", "running_mean", "running_var"):
            _slice(module, name, 0, in_index)
        if isinstance(module, nn.LayerNorm):
            module.normalized_shape = (len(in_index),)
        else:
            module.num_features = len(in_index)


def _resize_conv(module: nn.Conv2d, site: Site, plan: _Plan, in_index: torch.Tensor) -> None:
    if site.groups > 1 and not site.depthwise and not site.group_rule:
        return  # frozen grouped conv: unchanged
    out = torch.arange(plan.width(site.output) if not site.depthwise else len(in_index))
    _slice(module, "weight", 0, out)
    _slice(module, "bias", 0, out)
    if site.depthwise:
        module.groups = len(in_index)
    else:  # a grouped conv's weight holds one group's input channels along dim 1
        module.groups = plan.groups(site)
        _slice(module, "weight", 1, in_index[:len(in_index) // module.groups])
    module.in_channels, module.out_channels = len(in_index), len(out)


def _first_channels(site: Site, plan: _Plan) -> torch.Tensor:
    """Indices, in the base input, of the first ``width`` channels of every concatenated group."""
    parts, offset = [], 0
    for group, base in site.inputs:
        parts.append(offset + torch.arange(plan.width(group)))
        offset += base
    return torch.cat(parts) if parts else torch.arange(0)


def _slice(module: nn.Module, name: str, dim: int, index: torch.Tensor) -> None:
    tensor = getattr(module, name, None)
    if not isinstance(tensor, torch.Tensor) or tensor.ndim <= dim:
        return
    sliced = tensor.detach().index_select(dim, index.to(tensor.device)).clone()
    if isinstance(tensor, nn.Parameter):
        setattr(module, name, nn.Parameter(sliced, requires_grad=tensor.requires_grad))
    else:
        setattr(module, name, sliced)


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)
