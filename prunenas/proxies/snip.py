"""SNIP connection sensitivity (Lee et al., "SNIP: Single-shot Network Pruning based on Connection
Sensitivity", ICLR 2019), summed over the network as a zero-cost proxy (Abdelfattah et al., ICLR 2021).

The seeded initial network (train mode) computes the cross-entropy of a few training batches; the score is
``sum_w |g * w|`` over the weights of all convolutions and linear layers, ``g`` the gradient of the mean loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunenas.arch import Architecture
from prunenas.proposers.registry import Param
from prunenas.proxies.registry import Kept, ProxyContext, ProxyScore, register_proxy
from prunenas.proxies.zero_cost import initial_network, prunable_weights

NAME = "snip"


@register_proxy(NAME, params={
    "batches": Param(1, kind=int, low=1, high=100_000, help="training batches whose mean loss is differentiated"),
    "batch_size": Param(128, kind=int, low=1, high=100_000, help="images per batch"),
})
def snip(arch: Architecture, context: ProxyContext, params: Mapping[str, Any], kept: Kept | None) -> ProxyScore:
    """Summed |gradient x weight| of the seeded initial network on a few training batches."""
    batches = context.training_batches(NAME, params["batches"], params["batch_size"])
    model = initial_network(arch, context)
    with torch.random.fork_rng(devices=[]):  # dropout of the imagenet heads: the same masks for every call
        torch.manual_seed(context.seed)
        value = snip_score(model, batches)
    return ProxyScore(value, 0.0, sum(len(y) for _, y in batches))


def snip_score(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """``sum |dL/dw * w|`` over conv and linear weights, ``L`` the cross-entropy averaged over the batches
    (each batch's mean loss weighted equally); ``model`` is left in train mode with its gradients."""
    model.train()
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    for x, y in batches:
        (F.cross_entropy(model(x.to(device)), y.to(device)) / len(batches)).backward()
    return float(sum((w.grad * w.detach()).abs().sum() for w in prunable_weights(model)))
