"""Adaptive batch-norm evaluation (Li et al., "EagleEye: Fast Sub-net Evaluation for Efficient Neural Network
Pruning", ECCV 2020).

The candidate inherits the trained base model's weights; its batch-norm statistics, stale once channels are
removed, are recomputed on K training batches (train-mode forward passes without gradients), and its
validation accuracy is the score. Candidates without kept channels of their own (direct widths, uniform) keep,
per slot, the channels whose producer filters have the largest L1 norms, as EagleEye does — scored like the
``l1-norm`` proposer (filter norms divided by their layer's mean, summed over a tied slot's producers).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from prunenas.arch import Architecture
from prunenas.proposers.channels import inherit
from prunenas.proposers.registry import Param
from prunenas.proposers.scoring import filter_norms
from prunenas.proposers.select import select_widths, slot_scores
from prunenas.proxies.registry import Kept, ProxyContext, ProxyScore, register_proxy
from prunenas.train import evaluate

NAME = "adaptive-bn"


@register_proxy(NAME, needs_base=True, needs_batch_norm=True, params={
    "batches": Param(50, kind=int, low=0, high=100_000,
                     help="training batches that re-estimate the BN statistics (0: keep the inherited ones)"),
    "batch_size": Param(128, kind=int, low=1, high=100_000, help="images per calibration batch"),
})
def adaptive_bn(arch: Architecture, context: ProxyContext, params: Mapping[str, Any], kept: Kept | None) -> ProxyScore:
    """Validation accuracy of the inherited network with BN statistics recomputed on K batches (EagleEye)."""
    base = context.base_model(NAME)
    data = context.dataset(NAME)
    device = context.torch_device()
    channels = kept if kept is not None else l1_kept(arch, context)
    # channels-last: convolutions ran 1.7x faster than contiguous on this 2-core CPU (VGG-11/4, batch 128)
    model = inherit(base.arch, base.architecture_state(), arch, channels).to(device, memory_format=torch.channels_last)
    batches = context.training_batches(NAME, params["batches"], params["batch_size"])
    seen = recalibrate_batch_norm(model, (x for x, _ in batches)) if params["batches"] else 0
    accuracy, loss = evaluate(model, data.val, device, context.eval_batch_size)
    return ProxyScore(accuracy, 0.0, seen + len(data.val), {"val_loss": loss, "calibration_images": seen,
                                                            "channels": "l1-norm" if kept is None else "given"})


def l1_kept(arch: Architecture, context: ProxyContext) -> dict[int, tuple[int, ...]]:
    """Per slot of ``arch``, the base network's channels with the largest (layer-mean-normalised) L1 filter norms."""

    def scores() -> dict[int, Tensor]:
        base = context.base_model(NAME)
        return slot_scores(base.arch, filter_norms(base.arch, base.architecture_state(), p=1), "mean")

    return dict(select_widths(context.space, context.cached("l1-slot-scores", scores), arch.widths).kept)


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, images: Iterable[Tensor]) -> int:
    """Replace every batch norm's running statistics by their cumulative average over ``images`` batches.

    Each BN's running mean and (unbiased) variance become the plain average of its per-batch statistics
    (``momentum=None``), so no batch outweighs another and nothing of the inherited statistics survives.
    Only the batch norms run in train mode: dropout stays off, so the statistics are those of the network
    that is evaluated. Leaves ``model`` in eval mode with the BNs' momentum restored; returns the images seen.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    device = next(model.parameters()).device
    seen = 0
    try:
        for x in images:
            model(x.to(device))
            seen += len(x)
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        model.eval()
    return seen
