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

Sampling (Luo et al. 2017, He et al. 2017): ``images`` training images, ``locations`` random output
positions per image (every position of smaller maps), all output channels at each position (ThiNet
samples one random output channel per position; summing over all of them is the same objective in
expectation, with less noise). A consumer followed by a batch norm over its own output is reconstructed
*after* that norm's scale (``gamma / sqrt(var + eps)`` per output channel; its shift does not depend on
the input), so output channels weigh as much as the network sees them. A linear layer after a flatten
reads ``in_repeat`` features per channel: it is a 1x1 conv over those positions, one sample per image.

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
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunenas.arch import Architecture
from prunenas.families.base import INPUT, Layer
from prunenas.proposers.basemodel import BaseModel
from prunenas.proposers.proposal import Proposal
from prunenas.proposers.registry import Param, ProposerError
from prunenas.spaces import Space
from prunenas.splits import Split

SAMPLING_PARAMS = {
    "images": Param(256, kind=int, help="training images whose activations are sampled", low=1, high=100_000),
    "locations": Param(10, kind=int, help="random output positions sampled per image and layer", low=1,
                       high=10_000),
    "prune_tied": Param(False, kind=bool, help="also prune residual streams (consumers summed; identity paths "
                        "ignored)"),
}
"""Parameters of the sampling both reconstruction methods share (ThiNet adds ``rescale``)."""

RIDGE = 1e-10
"""Relative ridge added to Gram matrices before factorising (dead or duplicate channels make them singular)."""


@dataclass(frozen=True)
class Consumer:
    """A layer reading a slot: the slot's channels are its inputs ``offset .. offset + width``."""

    layer: Layer
    offset: int


def consumers(arch: Architecture, slot: int) -> list[Consumer]:
    """The conv/linear layers that read ``slot`` as input channels (depthwise convs excluded: they produce it)."""
    out = []
    for layer in arch.layers:
        if layer.is_norm or layer.depthwise:
            continue
        offset = 0
        for s in layer.inputs:
            if s == slot:
                out.append(Consumer(layer, offset))
            offset += arch.input_shape[0] if s == INPUT else arch.widths[s]
    return out


def prunable_slots(arch: Architecture, prune_tied: bool) -> list[int]:
    """Slots with at least one consumer; residual-tied slots only with ``prune_tied``."""
    return [s for s, slot in enumerate(arch.slots)
            if arch.widths[s] > 0 and (prune_tied or not slot.tied) and consumers(arch, s)]


def calibration_images(split: Split, images: int, seed: int, batch_size: int = 64) -> list[Tensor]:
    """``images`` training images (normalised, not augmented) drawn with ``seed``, in batches."""
    generator = torch.Generator().manual_seed(seed)
    x, _ = next(iter(split.batches(min(images, len(split)), shuffle=True, generator=generator)))
    return list(x.split(batch_size))


@torch.no_grad()
def contribution_grams(model: nn.Module, arch: Architecture, batches: Iterable[Tensor], slots: Iterable[int],
                       locations: int = 10, seed: int = 0) -> dict[int, Tensor]:
    """Per slot, the normalised Gram matrix of its channels' contributions to its consumers' outputs.

    ``model`` is a network of ``arch`` (weights of the trained base model); it runs once over ``batches``
    in eval mode with hooks on the consumers. Returns slot -> float64 ``(C, C)`` matrix, the sum over
    consumers of ``G_t / (1' G_t 1)`` (consumers whose output does not depend on the slot are skipped).
    """
    return {slot: normalised_gram(arch.widths[slot], terms)
            for slot, terms in sample_consumers(model, arch, batches, slots, locations, seed).items()}


def normalised_gram(width: int, terms: Iterable[tuple[Consumer, _Term]]) -> Tensor:
    """``sum_t G_t / (1' G_t 1)`` over a slot's consumer statistics."""
    total = torch.zeros(width, width, dtype=torch.float64)
    for _, term in terms:
        gram = term.gram()
        energy = float(gram.sum())
        if energy > 0:
            total += gram / energy
    return total


@torch.no_grad()
def sample_consumers(model: nn.Module, arch: Architecture, batches: Iterable[Tensor], slots: Iterable[int],
                     locations: int = 10, seed: int = 0) -> dict[int, list[tuple[Consumer, _Term]]]:
    """Slot -> (consumer, sampled statistics of the slot's input patches) for each of its consumers."""
    slots = list(slots)
    modules = dict(model.named_modules())
    layer_index = {layer.name: i for i, layer in enumerate(arch.layers)}
    generator = torch.Generator().manual_seed(seed)
    out: dict[int, list[tuple[Consumer, _Term]]] = {slot: [] for slot in slots}
    by_layer: dict[str, list[tuple[int, Consumer, _Term]]] = {}
    for slot in slots:
        for consumer in consumers(arch, slot):
            name, width = consumer.layer.name, arch.widths[slot]
            weight = _effective_weight(arch, modules, layer_index[name])
            term = _Term(weight[:, consumer.offset:consumer.offset + width].double())
            out[slot].append((consumer, term))
            by_layer.setdefault(name, []).append((slot, consumer, term))

    def hook(name: str):
        def run(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            x = inputs[0].detach()
            for slot, consumer, term in by_layer[name]:
                term.add(_slot_patches(x, module, consumer, arch.widths[slot], locations, generator))
        return run

    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in by_layer]
    was_training = model.training
    try:
        model.eval()
        for batch in batches:
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return out


def _effective_weight(arch: Architecture, modules: Mapping[str, nn.Module], index: int) -> Tensor:
    """The consumer's weight as ``(outputs, inputs, positions)``, output rows scaled by a following BN's scale."""
    layer = arch.layers[index]
    module = modules[layer.name]
    weight = module.weight.detach().float()
    weight = weight.flatten(2) if layer.kind == "conv" else weight.view(weight.shape[0], -1, layer.in_repeat)
    following = arch.layers[index + 1] if index + 1 < len(arch.layers) else None
    if layer.output is not None and following is not None and following.kind == "bn" and \
            following.inputs == (layer.output,):
        norm = modules[following.name]
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.running_var is not None:
            scale = (norm.weight.detach().float() if norm.affine else 1.0) / torch.sqrt(norm.running_var + norm.eps)
            weight = weight * scale.view(-1, 1, 1)
    return weight


def _slot_patches(x: Tensor, module: nn.Module, consumer: Consumer, width: int, locations: int,
                  generator: torch.Generator) -> Tensor:
    """Sampled input patches of the slot's channels, ``(samples, C, positions per channel)``."""
    layer = consumer.layer
    if layer.kind == "linear":
        rep = layer.in_repeat
        features = _token_samples(x, locations, generator) if x.dim() > 2 else x
        features = features[:, consumer.offset * rep:(consumer.offset + width) * rep]
        return features.reshape(len(features), width, rep)
    return _conv_patches(x[:, consumer.offset:consumer.offset + width], module, locations, generator)


def _token_samples(x: Tensor, locations: int, generator: torch.Generator) -> Tensor:
    """A linear layer applied at every position (tokens, channels-last maps): ``locations`` random positions per
    image, their features as ``(N * m, features)``."""
    n, features = len(x), x.shape[-1]
    x = x.reshape(n, -1, features)
    m = min(locations, x.shape[1])
    chosen = torch.rand(n, x.shape[1], generator=generator).argsort(dim=1)[:, :m].to(x.device)
    return x[torch.arange(n, device=x.device)[:, None], chosen].reshape(n * m, features)


def _conv_patches(x: Tensor, conv: nn.Module, locations: int, generator: torch.Generator) -> Tensor:
    """``locations`` random output positions per image; their input windows as ``(N * m, C, kh * kw)``."""
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    if isinstance(conv.padding, str):
        raise ProposerError(f"conv padding {conv.padding!r}: only explicit paddings are supported")
    ph, pw = conv.padding
    n, c, h, w = x.shape
    out_h, out_w = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    positions = out_h * out_w
    m = min(locations, positions)
    chosen = torch.rand(n, positions, generator=generator).argsort(dim=1)[:, :m].to(x.device)
    oy, ox = chosen // out_w, chosen % out_w
    rows = oy[..., None] * sh + torch.arange(kh, device=x.device) * dh  # (n, m, kh)
    cols = ox[..., None] * sw + torch.arange(kw, device=x.device) * dw  # (n, m, kw)
    padded = F.pad(x, (pw, pw, ph, ph))
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    windows = padded[batch, :, rows[..., :, None], cols[..., None, :]]  # (n, m, kh, kw, C)
    return windows.permute(0, 1, 4, 2, 3).reshape(n * m, c, kh * kw)


class _Term:
    """Running statistics of one (slot, consumer) pair; :meth:`gram` gives ``sum_i Z_i' Z_i`` with
    ``Z_i[o, c] = sum_k weight[o, c, k] * patch_i[c, k]``.

    Small patches keep their second moments ``M = sum_i p_i p_i'`` (one GEMM per batch) and combine them
    with ``A = W' W`` at the end: ``G[c, d] = sum_{k, l} M[ck, dl] A[ck, dl]``. Patches too large for that
    (e.g. a linear layer reading 7x7 features per channel) accumulate the contributions directly, in chunks.
    """

    MOMENTS_LIMIT = 1 << 24  # entries of the (C K)^2 moment matrix

    def __init__(self, weight: Tensor) -> None:
        self.weight = weight  # (outputs, C, K), float64
        outputs, channels, positions = weight.shape
        self.use_moments = (channels * positions) ** 2 <= self.MOMENTS_LIMIT
        size = channels * positions if self.use_moments else channels
        self.total = torch.zeros(size, size, dtype=torch.float64)

    def add(self, patches: Tensor) -> None:
        outputs, channels, positions = self.weight.shape
        patches = patches.double()
        if self.use_moments:
            flat = patches.reshape(len(patches), channels * positions)
            self.total += (flat.T @ flat).cpu()
            return
        chunk = max(1, (1 << 22) // max(1, outputs * channels))
        for start in range(0, len(patches), chunk):
            z = torch.einsum("ick,ock->ioc", patches[start:start + chunk], self.weight).reshape(-1, channels)
            self.total += (z.T @ z).cpu()

    def gram(self) -> Tensor:
        if not self.use_moments:
            return self.total
        outputs, channels, positions = self.weight.shape
        w = self.weight.reshape(outputs, channels * positions).cpu()
        return (self.total * (w.T @ w)).reshape(channels, positions, channels, positions).sum(dim=(1, 3))


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


def least_squares_weights(term: _Term, kept: Sequence[int], weight: Tensor) -> Tensor:
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


def check_grams(grams: Mapping[int, Tensor]) -> None:
    for slot, gram in grams.items():
        if not torch.isfinite(gram).all():
            raise ProposerError(f"activations reaching the consumers of slot {slot} are not finite: the base "
                                "model diverged")


def calibrated_grams(provider: Any, params: Mapping[str, Any], seed: int) -> tuple[Any, dict[int, Tensor], int]:
    """The plain base model, the Gram matrix of every prunable slot on sampled training images, and how many
    images were used (ThiNet's and the regression's shared first step)."""
    base = provider.get(None)
    slots = prunable_slots(base.arch, params["prune_tied"])
    batches = calibration_images(provider.data().train, params["images"], seed)
    grams = contribution_grams(base.model(), base.arch, batches, slots, params["locations"], seed)
    check_grams(grams)
    return base, grams, sum(len(b) for b in batches)
