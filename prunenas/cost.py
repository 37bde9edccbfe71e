"""MACs and parameters of an Architecture, computed analytically from its widths.

Convention: MACs = multiply-accumulates of convolution and linear layers for one image (batch 1), the
unit of torchvision's model cards and of most pruning papers; FLOPs = 2 x MACs, always labelled. A linear
layer applied to every token of a sequence counts once per token. Transformers add the attention
products, matrix products between activations that no layer holds: ``QK^T`` and ``A.V`` cost
``tokens^2 x head_dim`` MACs per head each (:meth:`Family.product_macs
<prunenas.families.base.Family.product_macs>`), as torchvision's card for ``vit_b_16`` (17.56 GMACs) counts.
Norms, activations, softmax, pooling and residual additions are not counted. Parameters are exact integer
counts of all trainable tensors (conv/linear weights and biases, norm weights and biases,
embeddings, per-channel scales).

For masked (unstructured) architectures, a masked layer counts its non-zero weights: MACs = non-zero
weights x output positions and params = non-zero weights (+ bias).

The tests prove these numbers equal to thop (with BN/activation counting switched off) and to
``torch.utils.flop_counter.FlopCounterMode`` / 2 on every family. thop hooks modules only, so it never sees
the attention products: for transformers it equals the MACs without them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from prunenas.arch import Architecture, MaskRef
from prunenas.families.base import Layer


@dataclass(frozen=True)
class Cost:
    """MACs (batch 1) and trainable parameters of one network."""

    macs: int
    params: int

    @property
    def flops(self) -> int:
        """FLOPs = 2 x MACs."""
        return 2 * self.macs


def weight_count(layer: Layer) -> int:
    """Elements of the layer's weight tensor (norm: its scale vector; embedding: its table)."""
    return math.prod(layer.weight_shape)


def layer_macs(layer: Layer, nonzero: int | None = None) -> int:
    """MACs of one layer for one image; ``nonzero`` = non-zero weights of a masked layer."""
    weights = weight_count(layer) if nonzero is None else nonzero
    if layer.kind in ("conv", "linear"):
        return weights * layer.out_hw[0] * layer.out_hw[1]
    return 0


def layer_params(layer: Layer, nonzero: int | None = None) -> int:
    """Trainable parameters of one layer; ``nonzero`` replaces the weight count of a masked layer."""
    weights = weight_count(layer) if nonzero is None else nonzero
    if layer.is_norm:
        return 2 * layer.out_channels
    if layer.kind == "scale":
        return layer.out_channels
    return weights + (layer.out_channels if layer.bias else 0)


def count(arch: Architecture) -> Cost:
    """MACs and params of ``arch`` (cached: the architecture is immutable)."""
    return _count(arch)


@lru_cache(maxsize=65536)
def _count(arch: Architecture) -> Cost:
    nonzero = mask_nonzeros(arch)
    macs = sum(layer_macs(layer, nonzero.get(layer.name)) for layer in arch.layers)
    macs += arch.family_obj.product_macs(arch)
    params = sum(layer_params(layer, nonzero.get(layer.name)) for layer in arch.layers)
    return Cost(macs, params)


def macs(arch: Architecture) -> int:
    return count(arch).macs


def params(arch: Architecture) -> int:
    return count(arch).params


def mask_nonzeros(arch: Architecture) -> dict[str, int]:
    """Non-zero weights per masked layer (empty for dense architectures)."""
    if arch.masks is None:
        return {}
    return _mask_nonzeros(arch.masks.path, arch.masks.sha256)


@lru_cache(maxsize=256)
def _mask_nonzeros(path: str, sha256: str) -> dict[str, int]:
    return {name: int(mask.sum()) for name, mask in MaskRef(path, sha256).load().items()}


def format_macs(value: int) -> str:
    """Human-readable MAC count, e.g. ``125.5M``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(value)


def thop_macs(arch: Architecture, count_norm: bool = True) -> int:
    """thop's MAC count of ``arch`` at batch 1, for comparison with papers that used thop.

    ``count_norm=True`` is thop's own default (it adds BatchNorm and pooling "ops"); ``False`` switches
    every non-conv/linear rule off, which must equal :func:`macs` less the attention products (thop hooks
    modules and cannot see a matrix product between activations). thop registers buffers on the modules it
    profiles, so it always runs on a freshly built throw-away model.
    """
    import thop  # only `prunenas info` compares with thop; it also needs setuptools on Python >= 3.12

    model = arch.build().eval()
    custom = {}
    if not count_norm:
        # thop hooks by type and stops descending at a hooked module: silence only types that are
        # leaves wherever they occur (a removed residual block is a leaf of a type that is also a container).
        containers = {type(m) for m in model.modules() if any(m.children())}
        custom = {type(m): _count_nothing for m in model.modules()
                  if type(m) not in containers and not isinstance(m, (nn.Conv2d, nn.Linear))}
    with torch.no_grad():
        total, _ = thop.profile(model, inputs=(torch.zeros(1, *arch.input_shape),), custom_ops=custom,
                                verbose=False)
    return int(total)


def _count_nothing(module, inputs, output) -> None:
    module.total_ops += 0
