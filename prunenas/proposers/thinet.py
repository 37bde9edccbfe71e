"""ThiNet (Luo, Wu & Lin, "ThiNet: A Filter Level Pruning Method for Deep Neural Network Compression",
ICCV 2017).

The filters of layer ``i`` are the input channels of layer ``i + 1``; ThiNet keeps those that let layer
``i + 1`` reproduce its output. On sampled activations of the trained network (see
:mod:`~prunenas.proposers.reconstruction`), it removes channels greedily: each step removes the channel
whose removal adds the least squared error to the consumer's output, ``argmin_c ||sum_{t in T + c} z_t||^2``,
until the keep ratio is reached; then the kept channels are rescaled by least squares
(:func:`~prunenas.proposers.reconstruction.rescale_coefficients`).

Targets: a preset (the paper's ThiNet-30/50/70 on ``resnet50-imagenet``, ThiNet-Conv on ``vgg16-imagenet``,
ThiNet-GAP/Tiny on ``vgg16gap-imagenet``) keeps each slot's last-removed channels; a MAC (or parameter)
target ranks every channel by the relative error of its layer at the moment the greedy removes it (after
the least-squares rescaling with ``rescale``) and cuts all layers at one error level
(:func:`~prunenas.proposers.reconstruction.curve_scores`).

Residual streams are not pruned unless ``prune_tied`` (the paper pruned only inside bottlenecks).

A proposal is an architecture and the kept channels; for fine-tuning,
:func:`~prunenas.proposers.reconstruction.reconstructed_model` (``mode="rescale"``) gives the pruned network
with the kept channels' weights rescaled by least squares.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from prunenas.proposers.contributions import SAMPLING_PARAMS, calibrated_grams
from prunenas.proposers.proposal import Proposal, Target
from prunenas.proposers.reconstruction import layer_errors, order_scores, removal_curve, rescaled_curve
from prunenas.proposers.registry import Param, register_proposer
from prunenas.proposers.scoring import select, to_proposal
from prunenas.spaces import Space


def greedy_removal_order(gram: Tensor) -> tuple[list[int], Tensor]:
    """ThiNet's greedy channel selection on a Gram matrix of contributions.

    Starting from ``T`` empty, each step adds to ``T`` the channel ``c`` minimising ``f(T + c) =
    1_{T+c}' G 1_{T+c} = f(T) + 2 (G 1_T)_c + G_cc`` (the squared output error of removing ``T`` and ``c``;
    ties: lowest index). Returns the removal order (all channels) and ``f`` after each step.
    """
    count = len(gram)
    diagonal = torch.diagonal(gram).clone()
    inside = torch.zeros(count, dtype=gram.dtype)  # G 1_T
    alive = torch.ones(count, dtype=torch.bool)
    order, values, value = [], torch.empty(count, dtype=torch.float64), 0.0
    for step in range(count):
        candidates = torch.where(alive, value + 2 * inside + diagonal, torch.full_like(diagonal, float("inf")))
        c = int(torch.argmin(candidates))
        value = float(candidates[c])
        order.append(c)
        values[step] = value
        inside += gram[:, c]
        alive[c] = False
    return order, values


def thinet_scores(gram: Tensor, rescale: bool = True) -> tuple[Tensor, list[int], Tensor]:
    """Channel scores of one slot (see :func:`~prunenas.proposers.reconstruction.curve_scores`).

    Returns the scores, the greedy removal order and the error curve used (after least-squares rescaling
    with ``rescale``, else the greedy objective itself), relative to the full output energy.
    """
    order, _ = greedy_removal_order(gram)
    curve = rescaled_curve(gram, order) if rescale else removal_curve(gram, order)
    return order_scores(gram, order, curve)


@register_proposer("thinet", presets=True, params={
    **SAMPLING_PARAMS,
    "rescale": Param(True, kind=bool, help="rank by the error after least-squares rescaling of the kept channels; "
                     "false: by the greedy objective"),
})
def thinet(space: Space, target: Target, provider: Any, params: Mapping[str, Any], seed: int) -> Proposal:
    """Greedy channel selection minimising the next layer's reconstruction error (Luo et al. 2017)."""
    base, grams, images = calibrated_grams(provider, params, seed)
    scores, curves = {}, {}
    for slot, gram in grams.items():
        scores[slot], _, curves[slot] = thinet_scores(gram, params["rescale"])
    selection = select(space, scores, target, "thinet")
    return to_proposal(space, "thinet", target, selection, base, params, seed, calibration_images=images,
                       reconstruction_error=layer_errors(space, curves, selection.widths))
