"""Channel pruning by LASSO regression and least-squares reconstruction (He, Zhang & Sun, "Channel Pruning
for Accelerating Very Deep Neural Networks", ICCV 2017).

Per layer, with each input channel's contribution ``z_c`` to the consumer's output on sampled activations
(:mod:`~prunenas.proposers.reconstruction`), the method solves

    ``min_beta  1/2 ||y - sum_c beta_c z_c||^2 + lambda ||beta||_1``,   ``y = sum_c z_c``

(``beta = 1`` reproduces the trained layer) and raises ``lambda`` until the number of non-zero coefficients
reaches the keep count; then the kept channels are refitted by least squares against the unpruned output
(:func:`~prunenas.proposers.reconstruction.rescale_coefficients`). Everything is computed from the Gram
matrix ``G`` of the contributions: the objective is ``1/2 beta' G beta - b' beta`` with ``b = G 1``.

Targets: a preset (``VGG-16-5x`` on ``vgg16-imagenet``, the authors' released architecture) keeps, per slot,
the LASSO support at that width (:func:`lasso_support`); a MAC (or parameter) target orders each layer's
channels by the largest ``lambda`` at which their coefficient is still non-zero (:func:`lasso_removal_order`)
and ranks them by the relative error left after the least-squares refit when they go, cut at one level
across layers.

The refit used for ranking is one coefficient per kept channel; the full least-squares reconstruction of
the kept weights (He et al.'s second step) is :func:`~prunenas.proposers.reconstruction.reconstructed_model`
with ``mode="weights"``, which gives the pruned network for fine-tuning.

Not offered: the paper's ResNet-50-2x also prunes the *input* channels each bottleneck's first conv reads
from the residual stream (a channel selection); architectures here are vectors of produced channels and
cannot express it (see the README's differences from the seed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from prunenas.proposers.contributions import SAMPLING_PARAMS, calibrated_grams
from prunenas.proposers.proposal import Proposal, Target
from prunenas.proposers.reconstruction import layer_errors, order_scores, rescaled_curve
from prunenas.proposers.registry import register_proposer
from prunenas.proposers.scoring import select, soft_threshold, to_proposal
from prunenas.spaces import Space

PATH_POINTS = 200
PATH_DECADES = 6
SUPPORT_ROUNDS = 3


def lasso_path(gram: Tensor, b: Tensor, lambdas: Tensor | list[float], sweeps: int = 500,
               tol: float = 1e-9) -> Tensor:
    """LASSO solutions ``argmin 1/2 beta' G beta - b' beta + lambda ||beta||_1`` for every ``lambda`` at once.

    Cyclic coordinate descent from 0, vectorised over the ``lambdas`` (one column each): ``beta_c <-
    S(b_c - sum_{d != c} G_cd beta_d, lambda) / G_cc``, swept until no coefficient moves by more than ``tol``
    (relative to the largest) or ``sweeps`` times. Exact zeros come from the soft threshold; channels with
    ``G_cc = 0`` stay at 0.

    Returns:
        ``(C, len(lambdas))`` float64 coefficients.
    """
    gram, b = gram.double(), b.double()
    lambdas = torch.as_tensor(lambdas, dtype=torch.float64).reshape(-1)
    beta = torch.zeros(len(gram), len(lambdas), dtype=torch.float64)
    diagonal = torch.diagonal(gram)
    active = (diagonal > 0).nonzero().flatten().tolist()
    residual = b[:, None].repeat(1, len(lambdas))  # b - G beta
    for _ in range(sweeps):
        moved = 0.0
        for c in active:
            old = beta[c].clone()
            new = soft_threshold(residual[c] + diagonal[c] * old, lambdas) / diagonal[c]
            delta = new - old
            if bool(delta.any()):
                residual.sub_(gram[:, c:c + 1] * delta[None, :])
                beta[c] = new
                moved = max(moved, float(delta.abs().max()))
        if moved <= tol * max(1.0, float(beta.abs().max())):
            break
    return beta


def lasso(gram: Tensor, b: Tensor, lam: float) -> Tensor:
    """The LASSO solution at one ``lam`` (see :func:`lasso_path`)."""
    return lasso_path(gram, b, [lam])[:, 0]


def path_lambdas(gram: Tensor, points: int = PATH_POINTS) -> Tensor:
    """``points`` values of ``lambda`` from ``lambda_max = max |b|`` (all coefficients 0) down ``PATH_DECADES``
    decades, geometrically spaced (descending)."""
    lam_max = float(gram.sum(dim=1).abs().max())
    return lam_max * torch.logspace(0, -PATH_DECADES, points, dtype=torch.float64)


def lasso_removal_order(gram: Tensor) -> list[int]:
    """Channels ordered from first to last removed as the L1 weight grows.

    A channel's survival is the largest path ``lambda`` (:func:`path_lambdas`) at which its coefficient is
    non-zero; channels leaving between the same two path points go in the order of the size of their
    contribution there, ``|beta_c| sqrt(G_cc)`` (coefficients shrink continuously to 0 along the path), then
    of ``|b_c|``, then by index. Channels that never enter go first.
    """
    b = gram.sum(dim=1)
    count = len(gram)
    if float(b.abs().max()) <= 0:
        return list(range(count))
    path = lasso_path(gram, b, path_lambdas(gram))
    nonzero = path != 0
    entered = nonzero.any(dim=1)
    first = torch.where(entered, nonzero.float().argmax(dim=1), torch.full((count,), PATH_POINTS))
    at_exit = path[torch.arange(count), first.clamp(max=PATH_POINTS - 1)].abs() * entered
    size = at_exit * torch.diagonal(gram).clamp_min(0).sqrt()
    return sorted(range(count), key=lambda c: (-int(first[c]), float(size[c]), float(b[c].abs()), c))


def lasso_support(gram: Tensor, keep: int) -> tuple[list[int], float]:
    """He et al.'s selection: raise ``lambda`` until at most ``keep`` coefficients are non-zero.

    The smallest ``lambda`` with ``nnz <= keep`` is bracketed on the path grid, then the bracket is searched
    again on a grid of its own (``SUPPORT_ROUNDS`` times). If the count jumps past ``keep``, the support is
    completed with the channels that leave last (:func:`lasso_removal_order`). Returns the kept channels
    (ascending) and that ``lambda``.
    """
    count = len(gram)
    b = gram.sum(dim=1)
    if keep >= count or float(b.abs().max()) <= 0:
        return list(range(min(keep, count))), 0.0
    lambdas = path_lambdas(gram)
    best_lam, best = float(lambdas[0]), torch.zeros(count, dtype=torch.float64)
    for _ in range(SUPPORT_ROUNDS):
        path = lasso_path(gram, b, lambdas)
        fits = ((path != 0).sum(dim=0) <= keep).nonzero().flatten().tolist()
        if not fits:
            break
        j = max(fits)  # lambdas descend: the smallest lambda that fits
        best_lam, best = float(lambdas[j]), path[:, j]
        if j + 1 >= len(lambdas):
            break
        lambdas = torch.logspace(math.log10(best_lam), math.log10(float(lambdas[j + 1])), 32, dtype=torch.float64)
    support = (best != 0).nonzero().flatten().tolist()
    if len(support) < keep:
        extra = [c for c in reversed(lasso_removal_order(gram)) if c not in support]
        support += extra[:keep - len(support)]
    return sorted(support), best_lam


def regression_scores(gram: Tensor) -> tuple[Tensor, list[int], Tensor]:
    """Scores of one slot: LASSO removal order, ranked by the relative error after the least-squares refit."""
    order = lasso_removal_order(gram)
    return order_scores(gram, order, rescaled_curve(gram, order))


@register_proposer("regression", presets=True, params=dict(SAMPLING_PARAMS))
def regression(space: Space, target: Target, provider: Any, params: Mapping[str, Any], seed: int) -> Proposal:
    """LASSO channel selection and least-squares reconstruction of the next layer (He et al. 2017)."""
    base, grams, images = calibrated_grams(provider, params, seed)
    scores, curves = {}, {}
    preset = space.preset(target.preset).widths if target.preset is not None else None
    for slot, gram in grams.items():
        scores[slot], _, curves[slot] = regression_scores(gram)
        if preset is not None and preset[slot] < len(gram):  # the support at exactly that width comes first
            support, _ = lasso_support(gram, preset[slot])
            scores[slot][support] += 2.0
    selection = select(space, scores, target, "regression")
    return to_proposal(space, "regression", target, selection, base, params, seed, calibration_images=images,
                       reconstruction_error=layer_errors(space, curves, selection.widths))
