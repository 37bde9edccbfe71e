"""Soft Filter Pruning (He et al., "Soft Filter Pruning for Accelerating Deep CNNs", IJCAI 2018).

During base training, after every epoch the filters with the smallest L2 norms are zeroed; they keep training
and may recover (the pruning is "soft"). The filters zeroed after the last epoch define the architecture.

* ``keep`` > 0: the paper's uniform mode — every pruned slot keeps ``N - int(N (1 - keep))`` filters.
* a cost target: each epoch ranks per-layer-normalised filter norms globally and zeroes what one threshold at
  the target drops, so the widths come out non-uniform. Normalisation is per-layer *mean* by default, as for
  ``l1-norm``: with *max* a layer whose norms are spread (the 16-filter first conv of the Fashion-MNIST VGG)
  was cut to 2 filters every epoch and the base network never trained (9.6% validation accuracy).

A zeroed filter makes its channel zero; the BatchNorm that reads the channel has its running mean reset to 0,
so in evaluation the channel gives the constant the training forward gives it (its BN shift), instead of
``shift - scale * stale_mean / sqrt(var)`` from statistics of the filter before it was zeroed.

``reset_momentum`` (default on) also clears the optimiser state (SGD momentum, Adam moments) of the zeroed
filters — the authors' code keeps it. Kept momentum moves a zeroed filter off zero at the next step, while its
channel's batch variance is still ~0, so BatchNorm scales the filter's gradient by ``1/sqrt(eps)`` (~316): the
filter regrows to 10-500x the norm of the kept ones within an epoch, the next L2 ranking keeps it, and the
downstream BatchNorms' running statistics go stale at every zeroing. Measured on the quarter-width Fashion-MNIST
VGG-11 (8 epochs ``cifar-paper``, 10k images): base-model validation accuracy 10.2% -> 86.5% in the paper's
uniform mode (keep 0.7; unpruned 87.6%), 58.4% -> 84.5% at 60% MACs, 19.2% -> 72.8% at 35% MACs; half-width
ResNet-20 (``sfp-cifar``, 8 epochs): keep 0.7 15.0% -> 86.4% (unpruned 86.6%), 60% MACs 22.0% -> 80.0%.
With the state cleared a zeroed filter still trains (pruning stays soft) when its channel passes gradient (its
BN shift is positive).

Residual streams are left alone unless ``prune_tied`` (then all producers of a stream channel are zeroed
together, so the channel really disappears).
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
from prunenas.proposers.scoring import filter_norms, to_proposal, untied
from prunenas.proposers.select import NORMALIZATIONS, Selection, select_by_cost, select_widths, slot_scores
from prunenas.spaces import Space


def sfp_selection(space: Space, state: Mapping[str, torch.Tensor], keep: float, target: Target,
                  prune_tied: bool, normalization: str = "mean") -> Selection:
    """The filters SFP keeps given the current weights (L2 norms, normalised per layer)."""
    base = space.base
    scores = untied(base, slot_scores(base, filter_norms(base, state, p=2), normalization), prune_tied)
    if keep > 0:
        widths = list(space.upper)
        for s in scores:
            widths[s] = space.round_up(s, max(space.lower[s], space.upper[s] - int(space.upper[s] * (1 - keep))))
        return select_widths(space, scores, widths)
    return select_by_cost(space, scores, target.absolute(space), target.match)


class SoftFilterPruning(Regularizer):
    """Zeroes, after each epoch, the producer filters of the channels SFP drops."""

    def __init__(self, space: Space, keep: float, target: Target, prune_tied: bool,
                 normalization: str = "mean", reset_momentum: bool = True) -> None:
        self.space, self.keep, self.target, self.prune_tied = space, keep, target, prune_tied
        self.normalization, self.reset_momentum = normalization, reset_momentum
        self.optimizer: torch.optim.Optimizer | None = None

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    @torch.no_grad()
    def end_epoch(self, model: nn.Module, epoch: int) -> None:
        selection = sfp_selection(self.space, model.state_dict(), self.keep, self.target, self.prune_tied,
                                  self.normalization)
        modules = dict(model.named_modules())
        for layer in self.space.base.layers:
            if layer.kind not in ("conv", "bn"):
                continue
            slot = layer.output if layer.kind == "conv" else (layer.inputs[0] if len(layer.inputs) == 1 else None)
            if slot is None or slot not in selection.kept:
                continue  # a BN over concatenated slots (DenseNet) keeps its statistics
            dropped = sorted(set(range(layer.out_channels)) - set(selection.kept[slot]))
            module = modules[layer.name]
            if layer.kind == "bn":
                module.running_mean[dropped] = 0
                continue
            for param in (module.weight, module.bias):
                if param is not None:
                    param[dropped] = 0
                    if self.reset_momentum:
                        self._clear_optimizer_state(param, dropped)

    def _clear_optimizer_state(self, param: torch.Tensor, rows: list[int]) -> None:
        """Zero the rows of every per-element optimiser buffer of ``param`` (momentum, Adam moments)."""
        state = self.optimizer.state.get(param, {}) if self.optimizer is not None else {}
        for buffer in state.values():
            if isinstance(buffer, torch.Tensor) and buffer.shape == param.shape:
                buffer[rows] = 0


@register_regularizer("sfp")
def sfp_regularizer(space: Space, keep: float, prune_tied: bool, target: tuple = (),
                    normalization: str = "mean", reset_momentum: bool = True) -> Regularizer:
    return SoftFilterPruning(space, keep, Target.from_dict(dict(target)), prune_tied, normalization, reset_momentum)


def sfp_spec(space: Space, target: Target, params: Mapping[str, Any]) -> RegularizerSpec:
    keep = params["keep"]
    if target.preset is not None or (keep == 0 and not target.is_cost):
        raise ProposerError("proposer 'sfp' needs a cost target (ratio or MACs) or keep > 0")
    goal = () if keep > 0 else tuple(sorted(target.to_dict().items()))
    return RegularizerSpec.of("sfp", keep=keep, prune_tied=params["prune_tied"], target=goal,
                              normalization=params["normalization"], reset_momentum=params["reset_momentum"])


@register_proposer("sfp", base_spec=sfp_spec, params={
    "keep": Param(0.0, kind=float, help="uniform mode: fraction of filters kept per layer (the paper's rate, e.g. "
                  "0.7); 0 = rank globally at the cost target", low=0.0, high=1.0),
    "normalization": Param("mean", NORMALIZATIONS, str,
                           "per-layer normalisation of the filter norms before the global ranking"),
    "prune_tied": Param(False, kind=bool, help="also prune residual streams"),
    "reset_momentum": Param(True, kind=bool, help="clear the optimiser state of zeroed filters (false: as the "
                            "authors' code, which lets momentum regrow them past the kept filters)"),
})
def sfp(space: Space, target: Target, provider: Any, params: Mapping[str, Any], seed: int) -> Proposal:
    """Filters zeroed by Soft Filter Pruning during base training (He et al. 2018)."""
    base = provider.get(sfp_spec(space, target, params))
    selection = sfp_selection(space, base.architecture_state(), params["keep"], target, params["prune_tied"],
                              params["normalization"])
    return to_proposal(space, "sfp", target, selection, base, params, seed)
