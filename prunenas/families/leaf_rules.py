"""Leaf rules: how channels flow through custom leaf modules the tracer does not enter.

The dependency pass of :mod:`prunenas.families.tracing` keeps a module with a rule as one node of the graph
and asks its rule how its channels relate to its input's. Built in: the CIFAR ResNets' option-A shortcut
(``ZeroPadShortcut``) and torchvision's ``LayerNorm2d``; more through :func:`register_leaf_rule`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch
from torch import nn
from torchvision.models.convnext import LayerNorm2d

from prunenas.families.resnet_cifar import ZeroPadShortcut


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
