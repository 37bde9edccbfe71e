"""Sampling the contributions of a slot's channels to the layers that read it: the consumers of a slot,
calibration images, and the Gram matrix of contributions the reconstruction problems
(:mod:`prunenas.proposers.reconstruction`) are solved on.

Sampling (Luo et al. 2017, He et al. 2017): ``images`` training images, ``locations`` random output
positions per image (every position of smaller maps), all output channels at each position (ThiNet
samples one random output channel per position; summing over all of them is the same objective in
expectation, with less noise). A consumer followed by a batch norm over its own output is reconstructed
*after* that norm's scale (``gamma / sqrt(var + eps)`` per output channel; its shift does not depend on
the input), so output channels weigh as much as the network sees them. A linear layer after a flatten
reads ``in_repeat`` features per channel: it is a 1x1 conv over those positions, one sample per image.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunenas.arch import Architecture
from prunenas.families.base import INPUT, Layer
from prunenas.proposers.channels import reads_own_groups
from prunenas.proposers.registry import Param, ProposerError
from prunenas.splits import Split

SAMPLING_PARAMS = {
    "images": Param(256, kind=int, help="training images whose activations are sampled", low=1, high=100_000),
    "locations": Param(10, kind=int, help="random output positions sampled per image and layer", low=1,
                       high=10_000),
    "prune_tied": Param(False, kind=bool, help="also prune residual streams (consumers summed; identity paths "
                        "ignored)"),
}
"""Parameters of the sampling both reconstruction methods share (ThiNet adds ``rescale``)."""


@dataclass(frozen=True)
class Consumer:
    """A layer reading a slot: the slot's channels are its inputs ``offset .. offset + width``."""

    layer: Layer
    offset: int


def consumers(arch: Architecture, slot: int) -> list[Consumer]:
    """The conv/linear layers that read ``slot`` as input channels (depthwise convs and grouped convs with a
    fixed group width excluded: they produce it)."""
    out = []
    for layer in arch.layers:
        if layer.is_norm or layer.depthwise or reads_own_groups(arch, layer):
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


def normalised_gram(width: int, terms: Iterable[tuple[Consumer, ConsumerStats]]) -> Tensor:
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
                     locations: int = 10, seed: int = 0) -> dict[int, list[tuple[Consumer, ConsumerStats]]]:
    """Slot -> (consumer, sampled statistics of the slot's input patches) for each of its consumers."""
    slots = list(slots)
    modules = dict(model.named_modules())
    layer_index = {layer.name: i for i, layer in enumerate(arch.layers)}
    generator = torch.Generator().manual_seed(seed)
    out: dict[int, list[tuple[Consumer, ConsumerStats]]] = {slot: [] for slot in slots}
    by_layer: dict[str, list[tuple[int, Consumer, ConsumerStats]]] = {}
    for slot in slots:
        for consumer in consumers(arch, slot):
            name, width = consumer.layer.name, arch.widths[slot]
            if consumer.layer.groups > 1:
                raise ProposerError(f"slot {slot} ({arch.slots[slot].name!r}) is read by grouped conv {name!r} "
                                    f"(groups={consumer.layer.groups}): its reconstruction is not implemented")
            weight = _effective_weight(arch, modules, layer_index[name])
            term = ConsumerStats(weight[:, consumer.offset:consumer.offset + width].double())
            out[slot].append((consumer, term))
            by_layer.setdefault(name, []).append((slot, consumer, term))

    def hook(name: str):
        def run(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            x = inputs[0].detach()
            for slot, consumer, term in by_layer[name]:
                term.add(_slot_patches(x, module, consumer, arch.widths[slot], locations, generator))
        return run

    run_hooked(model, batches, {name: hook(name) for name in by_layer})
    return out


def run_hooked(model: nn.Module, batches: Iterable[Tensor], pre: Mapping[str, Any],
               post: Mapping[str, Any] | None = None) -> None:
    """Run ``model`` in eval mode over ``batches`` with forward pre-hooks (``pre``) and forward hooks (``post``)
    on the named modules; the hooks are removed and the training mode restored afterwards."""
    handles = [model.get_submodule(name).register_forward_pre_hook(fn) for name, fn in pre.items()]
    handles += [model.get_submodule(name).register_forward_hook(fn) for name, fn in (post or {}).items()]
    was_training = model.training
    try:
        model.eval()
        for batch in batches:
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


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


class ConsumerStats:
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
