"""Network Slimming (Liu et al., "Learning Efficient Convolutional Networks through Network Slimming",
ICCV 2017).

The base network is trained with an L1 penalty ``s * |gamma|`` on every batch-norm scale (added as the
subgradient ``s * sign(gamma)`` after backward, as the seed does); channels are then kept by one global
threshold on |gamma| — at a fraction of all channels (``percent``, the seed's rule) or at a cost target — so
the per-layer widths are discovered. The seed's s: 1e-4 for VGG, 1e-5 for ResNets and DenseNets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from prunenas.optimisation import Regularizer
from prunenas.proposers.basemodel import RegularizerSpec, register_regularizer
from prunenas.proposers.proposal import Proposal, Target
from prunenas.proposers.registry import Param, ProposerError, register_proposer
from prunenas.proposers.scoring import bn_scales_by_slot, nonfinite_guard, select, to_proposal, untied
from prunenas.proposers.select import select_fraction
from prunenas.spaces import Space

SEED_STRENGTH = {"vgg": 1e-4}  # other families: 1e-5


class BatchNormL1(Regularizer):
    """Adds ``strength * sign(gamma)`` to the gradient of every batch-norm scale (an L1 subgradient)."""

    def __init__(self, strength: float) -> None:
        self.strength = strength

    @torch.no_grad()
    def before_step(self, model: nn.Module) -> None:
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.weight.grad is not None:
                m.weight.grad.add_(torch.sign(m.weight), alpha=self.strength)


@register_regularizer("bn-l1")
def bn_l1(space: Space, s: float) -> Regularizer:
    return BatchNormL1(s)


def strength(space: Space, params: Mapping[str, Any]) -> float:
    return params["s"] if params["s"] > 0 else SEED_STRENGTH.get(space.family, 1e-5)


def slimming_spec(space: Space, target: Target, params: Mapping[str, Any]) -> RegularizerSpec:
    return RegularizerSpec.of("bn-l1", s=strength(space, params))


@register_proposer("slimming", base_spec=slimming_spec, params={
    "s": Param(0.0, kind=float, help="L1 strength on BN scales; 0 = the seed's (1e-4 VGG, 1e-5 others)",
               low=0.0, high=1e-2),
    "percent": Param(0.0, kind=float, help="prune this fraction of all channels (the seed's rule); > 0 takes "
                     "precedence over the cost target", low=0.0, high=0.99),
    "prune_tied": Param(False, kind=bool, help="also prune residual streams (the seed never did)"),
})
def slimming(space: Space, target: Target, provider: Any, params: Mapping[str, Any], seed: int) -> Proposal:
    """Global threshold on BN scales of a sparsity-trained base network (Liu et al. 2017)."""
    s = strength(space, params)
    base = provider.get(slimming_spec(space, target, params))
    scales = untied(base.arch, bn_scales_by_slot(base.arch, base.architecture_state()), params["prune_tied"])
    nonfinite_guard(scales, "BN scales")
    if params["percent"] > 0:  # the method's own rate wins; a cost target then only bounds a search
        selection = select_fraction(space, scales, params["percent"])
    elif target.is_cost or target.preset is not None:
        selection = select(space, scales, target, "slimming")
    else:
        raise ProposerError("proposer 'slimming' needs a cost target or percent > 0 (e.g. 0.7 for VGG-19)")
    return to_proposal(space, "slimming", target, selection, base, params, seed, strength=s)
