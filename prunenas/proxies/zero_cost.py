"""Shared machinery of the proxies scored at initialisation (``synflow``, ``snip``): the seeded network and the
weights they score."""

from __future__ import annotations

import torch
from torch import nn

from prunenas.arch import Architecture
from prunenas.proxies.registry import ProxyContext


def initial_network(arch: Architecture, context: ProxyContext) -> nn.Module:
    """``arch``'s network initialised from ``context.seed`` (the global RNG is left as it was), on the device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(context.seed)
        model = arch.build()
    return model.to(context.torch_device())


def prunable_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights of every convolution and linear layer: what pruning removes, so what the scores sum over."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
