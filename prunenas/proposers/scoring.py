"""Shared steps of the score-based proposers: channel scores of a network's tensors, selection by target,
and the resulting proposal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from prunenas.arch import Architecture
from prunenas.budget import cost_of, tolerance_of
from prunenas.proposers.proposal import Proposal, Target, achieved
from prunenas.proposers.registry import ProposerError
from prunenas.proposers.select import Selection, select_by_cost, select_widths
from prunenas.spaces import Space

if TYPE_CHECKING:
    from prunenas.proposers.basemodel import BaseModel


def filter_norms(arch: Architecture, state: Mapping[str, Tensor], p: int = 1,
                 linear: bool = False) -> dict[str, Tensor]:
    """Lp norm of every output filter of every conv that produces a slot (Li et al.: p=1; He et al. SFP: p=2).

    With ``linear``, linear layers that produce a slot are scored too, one norm per slot channel: an MLP
    neuron by its ``fc1`` row, an attention head by all its rows of the query, key and value projection.
    """
    out = {}
    for layer in arch.layers:
        if layer.output is not None and (layer.kind == "conv" or (linear and layer.kind == "linear")):
            weight = state[f"{layer.name}.weight"].detach().double()
            per_channel = weight.view(layer.out_parts, layer.slot_channels, layer.out_repeat, -1).transpose(0, 1)
            out[layer.name] = per_channel.flatten(1).norm(p=p, dim=1)
    return out


def convolutions_score_no_slot(arch: Architecture) -> bool:
    """No conv produces a prunable (untied) slot: a transformer, whose widths linear layers produce."""
    return not any(layer.kind == "conv" and layer.output is not None and not arch.slots[layer.output].tied
                   for layer in arch.layers)


def bn_scales_by_slot(arch: Architecture, state: Mapping[str, Tensor]) -> dict[int, Tensor]:
    """|gamma| of every batch norm, split by the slots it normalises and averaged per slot.

    A slot may be normalised by several BNs: the BNs after each producer of a residual stream, or — in
    pre-activation families — the BN of every consumer (DenseNet layers read concatenations). Averaging
    keeps slots on the scale of one gamma, so one global threshold compares them (Liu et al. 2017).
    """
    sums: dict[int, Tensor] = {}
    counts: dict[int, int] = {}
    for layer in arch.layers:
        if layer.kind != "bn":
            continue
        gamma = state[f"{layer.name}.weight"].detach().double().abs()
        offset = 0
        for slot in layer.inputs:
            width = arch.widths[slot]
            sums[slot] = sums.get(slot, 0) + gamma[offset:offset + width]
            counts[slot] = counts.get(slot, 0) + 1
            offset += width
    return {s: sums[s] / counts[s] for s in sums if s >= 0}


def untied(arch: Architecture, scores: Mapping[int, Tensor], prune_tied: bool) -> dict[int, Tensor]:
    """Drop residual-stream slots unless asked to prune them (the seed never pruned them)."""
    return {s: v for s, v in scores.items() if prune_tied or not arch.slots[s].tied}


def select(space: Space, scores: Mapping[int, Tensor], target: Target, method: str,
           remove_blocks: bool = False) -> Selection:
    """Widths for ``target``: a preset's widths with the best channels, or one global threshold at the cost."""
    if target.preset is not None:
        return select_widths(space, scores, space.preset(target.preset).widths)
    if target.is_cost:
        kind = target.cost_kind(space)
        return select_by_cost(space, scores, target.absolute(space), kind, tolerance_of(kind), remove_blocks)
    raise ProposerError(f"proposer {method!r} needs a target: a ratio, a MAC count or a preset")


def to_proposal(space: Space, method: str, target: Target, selection: Selection, base: BaseModel | None,
                params: Mapping[str, Any], seed: int, **facts: Any) -> Proposal:
    """A proposal from a selection, with provenance (base model, requested and achieved cost, floors)."""
    arch, kind = space.arch(selection.widths), target.cost_kind(space)
    provenance: dict[str, Any] = {**achieved(space, arch, kind), "floored_slots": list(selection.floored),
                                  "threshold": selection.threshold, **facts}
    if target.is_cost:
        provenance["requested_ratio"] = target.absolute(space) / cost_of(space.base, kind)
    if base is not None:
        provenance.update(base_model=base.key, base_val_acc=base.val_acc)
    return Proposal(arch, method, params, target, seed, dict(selection.kept), provenance)


def soft_threshold(x: Tensor, threshold: float | Tensor) -> Tensor:
    """``sign(x) max(|x| - threshold, 0)``: the proximal operator of ``threshold ||.||_1`` (LASSO coordinate
    steps, Sparse Structure Selection's proximal step on block factors)."""
    return torch.sign(x) * torch.clamp(x.abs() - threshold, min=0.0)


def nonfinite_guard(scores: Mapping[Any, Tensor], what: str) -> None:
    for key, value in scores.items():
        if not torch.isfinite(value).all():
            raise ProposerError(f"{what} of {key} are not finite: the base model diverged")
