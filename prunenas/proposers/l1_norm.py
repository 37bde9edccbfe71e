"""L1-norm filter pruning (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017).

Each filter of a trained network is scored by the L1 norm of its weights; the filters with the largest norms
are kept. ``preset`` targets reproduce the paper's hand-set per-layer ratios (VGG-16-A, ResNet-56-A/B, ...);
cost targets rank per-layer-normalised norms globally (one threshold), so the widths are discovered.

Norms are divided by their layer's mean by default: dividing by the layer's maximum let a few large filters
push whole early layers to one channel on VGG/Fashion-MNIST, and the pruned network kept far less accuracy
(before retraining, at 70% MACs: 21% with max, 58% with mean, random filters at the same widths ~30%).

In transformers, where no convolution produces a prunable width, the linear layers are scored instead: an
attention head by the L1 norm of its query, key and value rows, an MLP neuron by its ``fc1`` row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prunenas.proposers.proposal import Proposal, Target
from prunenas.proposers.registry import Param, register_proposer
from prunenas.proposers.scoring import convolutions_score_no_slot, filter_norms, select, to_proposal, untied
from prunenas.proposers.select import NORMALIZATIONS, slot_scores
from prunenas.spaces import Space


@register_proposer("l1-norm", presets=True, params={
    "normalization": Param("mean", NORMALIZATIONS, str,
                           "per-layer normalisation before the global ranking (norms differ by fan-in)"),
    "prune_tied": Param(False, kind=bool, help="also prune residual streams (the paper never did)"),
})
def l1_norm(space: Space, target: Target, provider: Any, params: Mapping[str, Any], seed: int) -> Proposal:
    """Keep the filters with the largest L1 norms of a trained base network (Li et al. 2017)."""
    base = provider.get(None)
    norms = filter_norms(base.arch, base.architecture_state(), p=1, linear=convolutions_score_no_slot(base.arch))
    scores = untied(base.arch, slot_scores(base.arch, norms, params["normalization"]), params["prune_tied"])
    selection = select(space, scores, target, "l1-norm")
    return to_proposal(space, "l1-norm", target, selection, base, params, seed)
