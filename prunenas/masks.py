"""Weight masks of unstructured (weight-level) architectures: applied at build time, re-applied after
every optimiser step so that pruned weights stay zero (Han et al. 2015; the paper's weight-level arms)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from prunenas.errors import ArchitectureError

MASK_BUFFER = "weight_mask"


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero masked weights and keep each mask as a (non-persistent) buffer of its module."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules.get(name)
        if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise ArchitectureError(f"mask for {name!r}: the network has no layer with weights of that name")
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise ArchitectureError(
                f"mask for {name!r} has shape {list(mask.shape)}, the weight has {list(module.weight.shape)}"
            )
        mask = mask.to(dtype=torch.bool, device=module.weight.device)
        module.register_buffer(MASK_BUFFER, mask, persistent=False)
        with torch.no_grad():
            module.weight.mul_(mask)


@torch.no_grad()
def reapply_masks(model: nn.Module) -> None:
    """Zero the masked weights again (call after each optimiser step)."""
    for module in model.modules():
        mask = getattr(module, MASK_BUFFER, None)
        if mask is not None:
            module.weight.mul_(mask)


def has_masks(model: nn.Module) -> bool:
    return any(getattr(m, MASK_BUFFER, None) is not None for m in model.modules())
