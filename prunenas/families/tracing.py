"""The torch.fx channel-dependency pass behind the traced family.

:func:`analyse` resolves a model reference (:mod:`prunenas.families.model_reference`), traces the module with
``torch.fx``, propagates shapes on the meta device (no memory, no arithmetic) and walks the graph
(:mod:`prunenas.families.channel_pass`), tracking for every tensor which *channel groups*
(:mod:`prunenas.families.channel_groups`) sit along its channel dimension. Conv and linear outputs are new
groups. Norms, activations, pooling and dropout pass channels through; ``add``/``mul``/``sub``/``div``
(residuals, squeeze-excitation gates, layer scale) and depthwise convs *tie* groups (one width); grouped convs
tie their input and output group by group (fixed group width: RegNet) or keep their group count (ResNeXt),
see below; ``cat`` along channels concatenates them; ``permute``/``transpose`` move the channel dimension
(ConvNeXt's channels-last Linear and LayerNorm); ``flatten`` (or a ``view``/``reshape`` to ``(N, -1)``)
spreads each channel over its spatial positions. The tied groups that remain searchable are the slots.
Everything the pass cannot reason about *freezes* the channels involved (kept at their base width, listed
with the node and op that froze them): a reshape that mixes or hard-codes channels, channel indexing or
shuffles, GroupNorm, unknown modules and functions, the network input and the model's output.

Grouped (not depthwise) convolutions follow one rule per model
(:func:`~prunenas.families.channel_groups.grouped_conv_rule`): *fixed group count* when every grouped conv has
the same number of groups and their group widths differ (ResNeXt: 32 groups everywhere) — the conv's input
and output slots move in multiples of the count and keep as many channels of every group; otherwise *fixed
group width* (RegNet: 16 channels per group, 2 to 25 groups) — the conv ties its input and output group by
group into one slot that keeps or drops whole groups, and its group count follows the width. A grouped conv
the rule cannot describe (a concatenated input; under a fixed group width, outputs not as many as inputs) and
channels that two rules read are frozen. Leaf modules of the user's own (the CIFAR ResNets' option-A
shortcut) get a rule through :func:`prunenas.families.leaf_rules.register_leaf_rule`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from prunenas.families.channel_groups import Analysis
from prunenas.families.channel_pass import ChannelPass
from prunenas.families.leaf_rules import rule_for
from prunenas.families.model_reference import Reference, TracingError, first_line, parse_reference

_LEAF_TYPES = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
"""Modules the tracer keeps whole (subclasses included): the pass reads their weights' shapes."""


@lru_cache(maxsize=32)
def analyse(reference: str, shape: tuple[int, int, int]) -> Analysis:
    """Trace the model of ``reference`` at input ``shape`` (C, H, W) and group its channels (cached)."""
    ref = parse_reference(reference)
    model = instantiate_on_meta(ref)
    graph = trace(model, ref.text)
    _propagate_shapes(graph, model, ref.text, shape)
    return ChannelPass(model, graph, ref.text).run(_graph_hash(graph, model, ref))


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
                           f"{first_line(err)}") from None


def _propagate_shapes(graph: fx.Graph, model: nn.Module, what: str, shape: tuple[int, int, int]) -> None:
    module = fx.GraphModule(model, graph)
    try:  # ShapeProp prints the traceback itself before re-raising; the one line below says it all
        with torch.device("meta"), torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(module).propagate(torch.empty(2, *shape))  # batch 2: batch norm in training mode
    except Exception as err:  # noqa: BLE001 (the model's own error, one line)
        cause = err.__cause__ or err  # ShapeProp wraps the model's error with the whole node
        raise TracingError(f"model {what!r} rejects input {'x'.join(map(str, shape))}: {type(cause).__name__}: "
                           f"{first_line(cause)}") from None


def _graph_hash(graph: fx.Graph, model: nn.Module, ref: Reference) -> str:
    text = [str(graph), repr(sorted(ref.library_versions().items()))]
    text += [f"{name}:{tuple(p.shape)}" for name, p in model.state_dict().items()]
    return hashlib.sha256("\n".join(text).encode()).hexdigest()[:16]
