"""Activation importance (Minitron: Muralidharan et al., "Compact Language Models via Pruning and Knowledge
Distillation", 2024), for any family: CNN channels, attention heads, MLP neurons, embedding channels, depth.

A channel's importance is the mean absolute value of what it feeds forward, measured on a calibration batch of
training images (eval mode, no gradients): at the input of every layer that reads the slot (its consumers,
:func:`~prunenas.proposers.contributions.consumers`), averaged over images, positions (pixels or tokens) and
the features of one channel (a head's ``head_dim`` outputs). In a ViT that is, as in Minitron, a head's attention
output (the input of ``out_proj``), an MLP neuron's activation (the input of ``mlp.3``) and an embedding channel's
layer-normalised value (the inputs of ``in_proj``, ``mlp.0`` and the classifier); in a CNN a channel's activation
after its batch norm and ReLU. Each consumer's means are normalised (``normalization``, as ``l1-norm``) and
summed per slot; one global threshold then meets the cost target.

Depth: a removable branch (a CNN residual block, a transformer's attention or MLP) is scored by how much it
changes its input — the mean over images of ``||f(x)|| / ||x||``, ``x`` the input of the branch's first layer (the
residual stream entering it) and ``f(x)`` the output of its last layer (what it adds to the stream). With
``branches=k`` the ``k`` lowest-scoring branches are removed first, then the channels of the rest are chosen at
the target (a branch whose every channel falls below the threshold goes too).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from prunenas.arch import Architecture
from prunenas.proposers.channels import branch_layers, branch_names, removable_blocks
from prunenas.proposers.contributions import Consumer, calibration_images, consumers, run_hooked
from prunenas.proposers.proposal import Proposal, Target
from prunenas.proposers.registry import Param, ProposerError, register_proposer
from prunenas.proposers.scoring import nonfinite_guard, select, to_proposal, untied
from prunenas.proposers.select import NORMALIZATIONS, normalize
from prunenas.spaces import Space

REMOVED = -1.0
"""Channel score given to the slots of removed branches: below every activation (which are >= 0)."""


@torch.no_grad()
def channel_activations(model: nn.Module, arch: Architecture, batches: Iterable[Tensor]) -> dict[int, list[Tensor]]:
    """Slot -> for each of its consumers, the mean absolute input activation of every channel (float64)."""
    slots = [s for s in range(len(arch.widths)) if arch.widths[s] > 0]
    sums: dict[tuple[int, int], Tensor] = {}
    counts: dict[tuple[int, int], int] = {}
    by_layer: dict[str, list[tuple[tuple[int, int], Consumer, int]]] = {}
    for slot in slots:
        for i, consumer in enumerate(consumers(arch, slot)):
            by_layer.setdefault(consumer.layer.name, []).append(((slot, i), consumer, arch.widths[slot]))

    def hook(name: str):
        def run(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            for key, consumer, width in by_layer[name]:
                values = _channel_values(inputs[0].detach(), consumer, width)  # (samples, width, per channel)
                sums[key] = sums.get(key, 0) + values.abs().double().sum(dim=(0, 2)).cpu()
                counts[key] = counts.get(key, 0) + values.shape[0] * values.shape[2]
        return run

    run_hooked(model, batches, {name: hook(name) for name in by_layer})
    out: dict[int, list[Tensor]] = {}
    for key, total in sorted(sums.items()):
        out.setdefault(key[0], []).append(total / counts[key])
    return out


def _channel_values(x: Tensor, consumer: Consumer, width: int) -> Tensor:
    """The slot's channels in a consumer's input as ``(samples, width, values per channel)``."""
    layer = consumer.layer
    if layer.kind == "conv":  # (n, C, h, w): every pixel of every image is a sample
        x = x.movedim(1, -1).reshape(-1, x.shape[1], 1)
    else:  # linear: features last; per channel ``in_repeat`` features (a head's outputs, pixels after a flatten)
        x = x.reshape(-1, x.shape[-1] // layer.in_repeat, layer.in_repeat)
    return x[:, consumer.offset:consumer.offset + width]


@torch.no_grad()
def branch_changes(model: nn.Module, arch: Architecture, batches: Iterable[Tensor]) -> dict[int, float]:
    """Removable block id -> mean over images of ``||f(x)|| / ||x||`` (how much its branch changes its input)."""
    ends = {block: (layers[0].name, layers[-1].name) for block, layers in branch_layers(arch).items() if layers}
    inputs: dict[int, Tensor] = {}
    ratios: dict[int, list[Tensor]] = {block: [] for block in ends}

    def entry(block: int):
        def run(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            inputs[block] = args[0].detach().flatten(1).double().norm(dim=1)
        return run

    def exit_(block: int):
        def run(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            change = output.detach().flatten(1).double().norm(dim=1)
            ratios[block].append((change / inputs[block].clamp_min(1e-12)).cpu())
        return run

    pre = {first: entry(block) for block, (first, _) in ends.items()}
    post = {last: exit_(block) for block, (_, last) in ends.items()}
    run_hooked(model, batches, pre, post=post)
    return {block: float(torch.cat(values).mean()) for block, values in ratios.items()}


def activation_scores(activations: Mapping[int, list[Tensor]], normalization: str) -> dict[int, Tensor]:
    """Per slot, the sum over its consumers of their normalised mean activations."""
    return {slot: sum(normalize(values, normalization) for values in per_consumer)
            for slot, per_consumer in activations.items()}


def removed_branches(changes: Mapping[int, float], count: int) -> list[int]:
    """The ``count`` branches that change their input least (ties: lower block id first)."""
    return sorted(sorted(changes, key=lambda b: (changes[b], b))[:count])


@register_proposer("activation", params={
    "images": Param(256, kind=int, help="calibration images (training split, not augmented)", low=1, high=100_000),
    "normalization": Param("mean", NORMALIZATIONS, str, "per-consumer normalisation before summing and ranking"),
    "branches": Param(0, kind=int, help="removable branches (residual blocks; attention / MLP) removed first, "
                      "those that change their input least", low=0, high=1000),
    "prune_tied": Param(False, kind=bool, help="also prune residual streams (a transformer's embedding width)"),
})
def activation(space: Space, target: Target, provider: Any, params: Mapping[str, Any], seed: int) -> Proposal:
    """Keep the channels, heads and neurons with the largest mean absolute activations (Minitron)."""
    removable = removable_blocks(space.base)
    if params["branches"] > len(removable):
        raise ProposerError(f"proposer 'activation': branches={params['branches']} asked, space {space.name!r} "
                            f"({space.family}) has {len(removable)} removable branches")
    base = provider.get(None)
    model = base.model()
    batches = calibration_images(provider.data().train, params["images"], seed)
    scores = activation_scores(channel_activations(model, base.arch, batches), params["normalization"])
    nonfinite_guard(scores, "activation scores")
    scores = untied(base.arch, scores, params["prune_tied"])
    facts: dict[str, Any] = {"calibration_images": sum(len(b) for b in batches)}
    if params["branches"]:
        changes = branch_changes(model, base.arch, batches)
        removed = removed_branches(changes, params["branches"])
        for block in removed:
            for s in removable[block]:
                scores[s] = torch.full((space.upper[s],), REMOVED, dtype=torch.float64)
        names = branch_names(space.base)
        facts.update(branch_changes={names[b]: round(v, 6) for b, v in sorted(changes.items())},
                     removed_blocks=[names[b] for b in removed])
    selection = select(space, scores, target, "activation", remove_blocks=bool(params["branches"]))
    return to_proposal(space, "activation", target, selection, base, params, seed, **facts)
