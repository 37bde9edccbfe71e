"""Sparse Structure Selection (Huang & Wang, "Data-Driven Sparse Structure Selection for Deep Neural
Networks", ECCV 2018): learnable scale factors on residual branches, trained sparse, choose the depth.

"Block" below means a removable residual branch (:attr:`~prunenas.families.base.Slot.block`): a CNN residual
block has one, a transformer block two (attention and MLP), each with its own factor, so SSS removes the
attention and MLP branches of a ViT independently.

The output of every removable block's residual branch is multiplied by a scalar ``lambda_b`` (initialised
to 1). The base network is trained with the penalty ``gamma * sum_b |lambda_b|`` by proximal gradient:
after each optimiser step the factors go through the soft threshold ``lambda <- sign(lambda) max(|lambda| -
lr * gamma, 0)`` (:func:`soft_threshold`; ``lr`` is the step's learning rate). The SGD momentum the
factors share with the weights makes this the momentum form of the paper's accelerated proximal gradient;
SGD's weight decay applies to them as to every parameter (AdamW recipes do not decay scalars). A block whose
factor is exactly 0 computes the identity (its branch adds nothing), so removing it — all its inner widths 0 —
changes nothing.

The factor sits on the branch's last module, the one that writes into the residual stream (found from
the family's layer list: the last layer that exists only while the block does — ``layer1.1.bn2`` in
``resnet_cifar``, ``conv3`` in ``preresnet``, the projection's batch norm of a MobileNetV2 inverted
residual, ``self_attention.out_proj`` and ``mlp.3`` in ``vit``), as a parameter named ``sss_scale`` scaled in
by a forward hook. It is saved with the base model as an extra state-dict key;
:meth:`~prunenas.proposers.basemodel.BaseModel.architecture_state` folds it into that module's weights
(:func:`fold_block_scales`), so the fine-tune and lottery arms inherit a network
that computes what the trained one did.

Targets: without one, blocks whose ``|lambda| <= threshold`` are removed (the penalty decides the depth);
with a MAC (or parameter) target, blocks go in order of increasing ``|lambda|`` until the cost is met.
Only blocks the space declares removable can go (identity-shortcut blocks; downsampling blocks stay), so
the paper's ResNet-26/32/41, which also drop the branch of stage 1's first (projection) block, are not
expressible in ``resnet50-imagenet`` and are not offered as presets.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import torch
from torch import Tensor, nn

from prunenas.arch import Architecture
from prunenas.budget import cost_of, tolerance_of
from prunenas.errors import BudgetError
from prunenas.optimisation import Regularizer
from prunenas.proposers.basemodel import RegularizerSpec, register_regularizer
from prunenas.proposers.channels import branch_layers, branch_names, removable_blocks, without_blocks
from prunenas.proposers.proposal import Proposal, Target, achieved
from prunenas.proposers.registry import Param, ProposerError, register_proposer
from prunenas.proposers.scoring import soft_threshold
from prunenas.spaces import Space

SCALE = "sss_scale"
"""Name of the block scale-factor parameter on the branch's last module."""


def branch_outputs(arch: Architecture) -> dict[int, str]:
    """Removable block id -> module path of its branch's last layer, which writes into the residual stream.

    The branch's layers are those that disappear when the block is removed; the last of them in module
    order must produce (or normalise) a residual-tied slot, else the family has no place for the factor.
    """
    out = {}
    for block, branch in branch_layers(arch).items():
        if not branch:
            raise ProposerError(f"removable block {block} of {arch.family} has no layers of its own")
        last = branch[-1]
        writes = [last.output] if last.output is not None else list(last.inputs)
        if not writes or not all(s >= 0 and arch.slots[s].tied for s in writes):
            raise ProposerError(f"the last layer {last.name!r} of removable block {block} does not write a residual "
                                f"stream: no place for a block scale factor in {arch.family}")
        out[block] = last.name
    return out


def _scale_output(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    return output * getattr(module, SCALE)


def install_block_scales(model: nn.Module, arch: Architecture) -> dict[int, nn.Parameter]:
    """Add a factor (1.0) and its forward hook to every removable block's branch output; returns them by block."""
    factors = {}
    for block, name in branch_outputs(arch).items():
        module = model.get_submodule(name)
        if not hasattr(module, SCALE):
            module.register_parameter(SCALE, nn.Parameter(torch.ones((), device=_device(module))))
            module.register_forward_hook(_scale_output)
        factors[block] = getattr(module, SCALE)
    return factors


def _device(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def block_scales(arch: Architecture, state: Mapping[str, Tensor]) -> dict[int, float]:
    """The trained factor of every removable block, read from a base model's state dict."""
    out = {}
    for block, name in branch_outputs(arch).items():
        key = f"{name}.{SCALE}"
        if key not in state:
            raise ProposerError(f"the base model has no block scale {key!r}: was it trained with the sss regulariser?")
        out[block] = float(state[key])
    return out


def fold_block_scales(arch: Architecture, state: MutableMapping[str, Tensor]) -> None:
    """Multiply each factor into its module's weight and bias (in place), then drop it.

    The plain network of ``arch`` loaded with the result computes what the network with factors computed
    (the factor scales the module's output, which is affine in its weight and bias).
    """
    for name in branch_outputs(arch).values():
        factor = state.pop(f"{name}.{SCALE}", None)
        if factor is None:
            continue
        for key in (f"{name}.weight", f"{name}.bias"):
            if key in state:
                state[key] = state[key] * factor


class BlockScales(Regularizer):
    """Scale factors on removable blocks with an L1 penalty applied by a proximal step after each update."""

    def __init__(self, arch: Architecture, gamma: float) -> None:
        self.arch, self.gamma = arch, gamma
        self.factors: dict[int, nn.Parameter] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr: float | None = None

    def prepare(self, model: nn.Module) -> nn.Module:
        self.factors = install_block_scales(model, self.arch)
        return model

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def before_step(self, model: nn.Module) -> None:
        if self.optimizer is None:
            raise ProposerError("the sss regulariser needs the optimiser (Regularizer.attach) to know the step size")
        self.lr = self.optimizer.param_groups[0]["lr"]  # the step about to be taken uses this rate

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        threshold = (self.lr or 0.0) * self.gamma
        for factor in self.factors.values():
            factor.copy_(soft_threshold(factor, threshold))


@register_regularizer("sss", fold=fold_block_scales)
def sss_regularizer(space: Space, gamma: float) -> Regularizer:
    return BlockScales(space.base, gamma)


def blocks_to_remove(space: Space, scales: Mapping[int, float], target: Target, threshold: float) -> list[int]:
    """Removed blocks: ``|lambda| <= threshold`` without a cost target; else by increasing ``|lambda|`` until
    the cost is at most the target (ties: lower block id first)."""
    if not target.is_cost:
        return sorted(b for b, v in scales.items() if abs(v) <= threshold)
    goal, blocks, kind = target.absolute(space), removable_blocks(space.base), target.cost_kind(space)
    removed: list[int] = []
    for block in sorted(scales, key=lambda b: (abs(scales[b]), b)):
        if cost_of(without_blocks(space.base, blocks, set(removed)), kind) <= goal:
            return removed
        removed.append(block)
    final = cost_of(without_blocks(space.base, blocks, set(removed)), kind)
    if final > goal * (1 + tolerance_of(kind)):
        raise BudgetError(f"target {target.match} {goal} is unreachable by removing blocks: with all "
                          f"{len(blocks)} removable blocks of {space.name!r} gone the network has {final}")
    return removed


def sss_spec(space: Space, target: Target, params: Mapping[str, Any]) -> RegularizerSpec:
    return RegularizerSpec.of("sss", gamma=params["gamma"])


@register_proposer("sss", base_spec=sss_spec, params={
    "gamma": Param(0.01, kind=float, help="L1 penalty on the block scale factors (proximal step lr x gamma)",
                   low=0.0, high=100.0, log=True),
    "threshold": Param(1e-3, kind=float, help="without a cost target, blocks with |factor| <= threshold go",
                       low=0.0, high=1.0),
})
def sss(space: Space, target: Target, provider: Any, params: Mapping[str, Any], seed: int) -> Proposal:
    """Residual blocks removed by sparse scale factors (Huang & Wang 2018): the depth is searched."""
    if target.preset is not None:
        raise ProposerError("proposer 'sss' has no presets")
    if not removable_blocks(space.base):
        raise ProposerError(f"proposer 'sss' removes residual branches; space {space.name!r} ({space.family}) has no "
                            "removable branches (allowed: spaces of residual families, e.g. resnet, vit)")
    base = provider.get(sss_spec(space, target, params))
    scales = block_scales(base.arch, base.trained_state)
    if not all(map(torch.isfinite, map(torch.tensor, scales.values()))):
        raise ProposerError("block scale factors are not finite: the base model diverged")
    removed = blocks_to_remove(space, scales, target, params["threshold"])
    arch = without_blocks(space.base, removable_blocks(space.base), set(removed))
    kept = {s: tuple(range(w)) for s, w in enumerate(arch.widths)}
    names = branch_names(space.base)
    provenance: dict[str, Any] = {
        **achieved(space, arch, target.cost_kind(space)), "base_model": base.key, "base_val_acc": base.val_acc,
        "block_scales": {names[b]: round(v, 6) for b, v in sorted(scales.items())},
        "removed_blocks": [names[b] for b in removed], "depth_removed": len(removed)}
    if target.is_cost:
        provenance["requested_ratio"] = target.absolute(space) / cost_of(space.base, target.cost_kind(space))
    return Proposal(arch, "sss", params, target, seed, kept, provenance)
