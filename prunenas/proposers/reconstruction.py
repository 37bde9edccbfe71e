"""Reconstruction problems shared by ThiNet and channel pruning: which channels of a slot can go while the
layers that read them still compute (nearly) what they computed before.

For a slot ``s`` with ``C`` channels, each *consumer* layer (a conv or linear layer reading ``s``; depthwise
convs are producers only) computes, at an output position, ``y = sum_c z_c`` over its input channels, where
``z_c`` (one value per output channel) is channel ``c``'s contribution: its input patch times its slice of
the weight. Removing a set ``T`` of channels changes the output by ``sum_{c in T} z_c``. Everything the
methods need is the Gram matrix of contributions over sampled positions,

    ``G[c, d] = sum_{samples} sum_{outputs o} z_c[o] * z_d[o]``,

because the error of removing ``T`` is ``1_T' G 1_T`` and the least-squares fit of the kept contributions
``S`` to the full output (``y = sum_c z_c``, so ``b = G 1``) has residual ``1' G 1 - b_S' G_SS^-1 b_S``.

How the contributions are sampled and their Gram matrices accumulated is :mod:`prunenas.proposers.contributions`;
this module solves the problems on them.

A slot read by several layers (a residual stream, a DenseNet growth slot) gets one problem: the sum of its
consumers' Gram matrices, each divided by its own output energy ``1' G_t 1`` so that every consumer
counts equally, with one coefficient per channel shared by all its consumers. Residual identity paths are
not layers and are not part of the problem — one reason residual streams are not pruned by default.

The per-layer removal order a method finds (greedy, LASSO path) and its error curve become channel scores
(:func:`curve_scores`): the relative error at the moment the channel is removed, made monotone along the
order. One global threshold over those scores (:func:`prunenas.proposers.select.select_by_cost`) removes
channels from every slot until its relative reconstruction error reaches the same level — the MAC target
is met by spending the error budget evenly.

:func:`reconstructed_model` applies the methods' last step to a proposal's network for fine-tuning: the kept
weights refitted by least squares, per channel (ThiNet) or in full (He et al.,
:func:`least_squares_weights`).
"""


from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from prunenas.proposers.basemodel import BaseModel
from prunenas.proposers.contributions import ConsumerStats, consumers, normalised_gram, sample_consumers
from prunenas.proposers.proposal import Proposal
from prunenas.proposers.registry import ProposerError
from prunenas.spaces import Space

RIDGE = 1e-10
"""Relative ridge added to Gram matrices before factorising (dead or duplicate channels make them singular)."""


# -- errors of a selection -------------------------------------------------------------------------------
def removal_error(gram: Tensor, removed: Iterable[int]) -> float:
    """``1_T' G 1_T``: squared error of the outputs when the channels ``T`` are removed (no refit)."""
    index = torch.as_tensor(sorted(set(removed)), dtype=torch.long)
    return float(gram[index][:, index].sum()) if len(index) else 0.0


def rescale_coefficients(gram: Tensor, kept: Iterable[int]) -> Tensor:
    """Least-squares coefficients of the kept channels' contributions fitted to the full output.

    ``w = argmin_w sum_samples ||y - sum_{c in S} w_c z_c||^2 = G_SS^-1 (G 1)_S`` — ThiNet's rescaling and
    the refit step of channel pruning; multiplying each kept channel's consumer weights by ``w_c`` gives the
    least-squares reconstruction. A tiny ridge keeps singular problems solvable.
    """
    index = torch.as_tensor(sorted(set(kept)), dtype=torch.long)
    sub = gram[index][:, index]
    ridge = RIDGE * float(torch.diagonal(gram).sum().clamp_min(1e-300)) / max(1, len(gram))
    rhs = gram.sum(dim=1)[index]
    return torch.linalg.solve(sub + ridge * torch.eye(len(index), dtype=gram.dtype), rhs)


def rescaled_error(gram: Tensor, kept: Iterable[int]) -> float:
    """Squared error left after the least-squares refit of the kept channels (:func:`rescale_coefficients`)."""
    kept = sorted(set(kept))
    if not kept:
        return float(gram.sum())
    w = rescale_coefficients(gram, kept)
    ones = torch.ones(len(gram), dtype=gram.dtype)
    full = torch.zeros(len(gram), dtype=gram.dtype)
    full[torch.as_tensor(kept)] = w
    diff = ones - full
    return float(diff @ gram @ diff)


def removal_curve(gram: Tensor, order: list[int]) -> Tensor:
    """``curve[j]`` = error after removing ``order[:j + 1]`` without refit."""
    curve = torch.empty(len(order), dtype=torch.float64)
    g = torch.zeros(len(gram), dtype=torch.float64)
    value = 0.0
    for j, c in enumerate(order):
        value += 2 * float(g[c]) + float(gram[c, c])
        g += gram[:, c]
        curve[j] = value
    return curve


def rescaled_curve(gram: Tensor, order: list[int]) -> Tensor:
    """``curve[j]`` = error after removing ``order[:j + 1]`` and refitting the rest by least squares.

    One Cholesky factorisation serves every prefix: with the channels in reverse removal order (most
    important first), the kept set after ``j`` removals is a leading block, whose factor is the leading
    block of the full factor; the explained energy is the running sum of squares of ``L^-1 b``.
    """
    importance = list(reversed(order))
    index = torch.as_tensor(importance, dtype=torch.long)
    sub = gram[index][:, index]
    factor = _cholesky(sub, RIDGE * float(torch.diagonal(gram).sum().clamp_min(1e-300)) / max(1, len(gram)))
    rhs = gram.sum(dim=1)[index]
    explained = torch.cumsum(torch.linalg.solve_triangular(factor, rhs[:, None], upper=False)[:, 0] ** 2, 0)
    total = float(gram.sum())
    kept_error = (total - explained).clamp_min(0.0)  # kept_error[k - 1]: the first k most important kept
    curve = torch.empty(len(order), dtype=torch.float64)
    count = len(order)
    for j in range(count):  # j + 1 removed -> count - j - 1 kept
        kept = count - j - 1
        curve[j] = kept_error[kept - 1] if kept > 0 else total
    return curve


def _cholesky(matrix: Tensor, ridge: float) -> Tensor:
    """Cholesky factor of ``matrix + ridge I``, the ridge raised tenfold until rounding no longer breaks it."""
    eye = torch.eye(len(matrix), dtype=matrix.dtype)
    for _ in range(12):
        factor, info = torch.linalg.cholesky_ex(matrix + ridge * eye)
        if int(info) == 0:
            return factor
        ridge *= 10
    raise ProposerError("a reconstruction problem is not positive semi-definite (non-finite activations?)")


def curve_scores(order: list[int], curve: Tensor, total: float) -> Tensor:
    """Channel scores from a removal order and its error curve (``curve[j]``: error once ``order[:j+1]`` are gone).

    Score of ``order[j]`` = ``max(curve[:j + 1]) / total`` (relative error when it goes, made monotone) plus
    ``j * 1e-9 / C``, so scores strictly increase along the order: any threshold removes a prefix of it.
    """
    count = len(order)
    relative = curve / total if total > 0 else torch.zeros(count, dtype=torch.float64)
    monotone = torch.cummax(relative, dim=0).values + torch.arange(count, dtype=torch.float64) * (1e-9 / count)
    scores = torch.empty(count, dtype=torch.float64)
    scores[torch.as_tensor(order, dtype=torch.long)] = monotone
    return scores


def order_scores(gram: Tensor, order: list[int], curve: Tensor) -> tuple[Tensor, list[int], Tensor]:
    """A method's removal ``order`` and error ``curve`` on one slot as (scores (:func:`curve_scores`), the order,
    the curve relative to the full output energy ``1' G 1``)."""
    total = float(gram.sum())
    return curve_scores(order, curve, total), order, curve / total if total > 0 else curve


def layer_errors(space: Space, curves: Mapping[int, Tensor], widths: tuple[int, ...]) -> dict[str, float]:
    """Relative reconstruction error of every scored slot of ``space`` at its chosen width (for provenance)."""
    out = {}
    for slot, curve in curves.items():
        removed = space.upper[slot] - widths[slot]
        out[space.slots[slot].name] = round(float(curve[removed - 1]), 6) if removed > 0 else 0.0
    return out


def least_squares_weights(term: ConsumerStats, kept: Sequence[int], weight: Tensor) -> Tensor:
    """He et al.'s reconstruction: the kept channels' weights ``W'`` ``(outputs, |S|, K)`` minimising
    ``sum_i ||W p_i - W' p_{i,S}||^2`` over the sampled patches ``p_i`` of the slot, where ``W``
    ``(outputs, C, K)`` are the unpruned weights of the slot's channels. Needs the patch moments (``term``
    sampled with them); a tiny ridge keeps singular problems solvable."""
    if not term.use_moments:
        raise ProposerError("least-squares weights need the patch moments; this consumer's patches are too large")
    outputs, channels, positions = weight.shape
    index = (torch.as_tensor(list(kept))[:, None] * positions + torch.arange(positions)).reshape(-1)
    moments = term.total
    sub = moments[index][:, index]
    rhs = moments[index] @ weight.reshape(outputs, channels * positions).T.double()
    ridge = RIDGE * float(torch.diagonal(moments).sum().clamp_min(1e-300)) / max(1, len(moments))
    solution = torch.linalg.solve(sub + ridge * torch.eye(len(index), dtype=sub.dtype), rhs)
    return solution.T.reshape(outputs, len(index) // positions, positions)


@torch.no_grad()
def reconstructed_model(base: BaseModel, proposal: Proposal, batches: Iterable[Tensor], mode: str = "rescale",
                        locations: int = 10, seed: int = 0) -> nn.Module:
    """The proposal's network with weights inherited from ``base``, the consumers of every pruned slot refitted
    by least squares to reproduce the unpruned network's outputs on sampled activations (for fine-tuning).

    ``mode="rescale"`` (ThiNet) multiplies each kept channel's weights in all its consumers by one coefficient
    (:func:`rescale_coefficients`); ``mode="weights"`` (He et al.) solves each consumer's kept weights
    (:func:`least_squares_weights`; consumers whose patches are too large for the moments fall back to the
    rescaling). One shot: the statistics come from the base network's activations, so the refit of a layer
    does not see the pruning of the layers before it.
    """
    if mode not in ("rescale", "weights"):
        raise ProposerError(f"reconstruction mode {mode!r} must be 'rescale' or 'weights'")
    arch, target = base.arch, proposal.arch
    kept = proposal.kept or {}
    pruned = [s for s, w in enumerate(target.widths) if 0 < w < arch.widths[s] and s in kept and consumers(arch, s)]
    model = base.inherit(proposal)
    source = base.model()
    samples = sample_consumers(source, arch, batches, pruned, locations, seed)
    for slot in pruned:
        channels = list(kept[slot])
        coefficients = rescale_coefficients(normalised_gram(arch.widths[slot], samples[slot]), channels)
        now = {c.layer.name: c for c in consumers(target, slot)}
        for consumer, term in samples[slot]:
            if consumer.layer.name not in now:
                continue  # the consumer's block is removed
            module = model.get_submodule(consumer.layer.name)
            width, offset = len(channels), now[consumer.layer.name].offset
            view = module.weight.data.view(module.weight.shape[0], -1, term.weight.shape[2])
            if mode == "weights" and term.use_moments:
                original = source.get_submodule(consumer.layer.name).weight.detach()
                original = original.view(original.shape[0], -1, term.weight.shape[2])
                original = original[:, consumer.offset:consumer.offset + arch.widths[slot]]
                out = consumer.layer.output
                if out is not None and out in kept:
                    original = original[list(kept[out])]
                view[:, offset:offset + width] = least_squares_weights(term, channels, original).to(view.dtype)
            else:
                view[:, offset:offset + width] *= coefficients.to(view.dtype).view(1, -1, 1)
    return model
