"""SynFlow (Tanaka et al., "Pruning neural networks without any data by iteratively conserving synaptic flow",
NeurIPS 2020), summed over the network as a zero-cost proxy (Abdelfattah et al., "Zero-Cost Proxies for
Lightweight NAS", ICLR 2021).

Every parameter and buffer is replaced by its absolute value, the network (in eval mode, float64) is run on one
all-ones input, and ``R`` is the sum of its outputs; the score is ``sum_w |w| * dR/d|w|`` over the weights of
all convolutions and linear layers. It needs no data. For a bias-free linear network of depth ``L`` the
score is ``L * R`` (R is homogeneous of degree 1 in each layer's weights).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prunenas.arch import Architecture
from prunenas.proxies.registry import Kept, ProxyContext, ProxyScore, register_proxy
from prunenas.proxies.zero_cost import initial_network, prunable_weights


@register_proxy("synflow")
def synflow(arch: Architecture, context: ProxyContext, params: Mapping[str, Any], kept: Kept | None) -> ProxyScore:
    """Synaptic flow of the seeded initial network on an all-ones input (data-free)."""
    return ProxyScore(synflow_score(initial_network(arch, context), arch.input_shape), 0.0, 0)


def synflow_score(model: nn.Module, input_shape: Sequence[int]) -> float:
    """``sum |w| * dR/d|w|`` with ``R = sum(model_abs(ones))``; turns ``model`` into its float64 absolute copy.

    Eval mode: batch norms use their running statistics (at initialisation mean 0, variance 1), as in the
    authors' pruning loop; the single input would make batch statistics degenerate.
    """
    model.double().eval()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    model(torch.ones(1, *input_shape, dtype=torch.float64, device=device)).sum().backward()
    return float(sum((w.detach() * w.grad).sum() for w in prunable_weights(model)))
