"""Unstructured magnitude pruning (Han et al., "Learning both Weights and Connections", NeurIPS 2015).

One global threshold on |w| over the conv weights of a trained network (the seed's rule: every conv,
including the first; linear and BN layers untouched) at a sparsity or a MAC target. The architecture keeps
its dense widths and carries per-layer masks; its MACs count non-zero weights x output positions (so its
Scratch-B budget is really larger than Scratch-E — the seed counted before loading the mask and got ratio 1).

Its control (:func:`uniform_mask_twin`) prunes every layer to the same sparsity at the same MACs — the
paper's uniform sparsification.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from prunenas.arch import Architecture, MaskRef
from prunenas.budget import cost_of
from prunenas.cost import layer_macs, layer_params
from prunenas.errors import BudgetError
from prunenas.families.base import Layer
from prunenas.fileio import atomic_write_bytes, file_sha256
from prunenas.proposers.basemodel import BaseModel
from prunenas.proposers.proposal import Proposal, Target, achieved
from prunenas.proposers.registry import Param, ProposerError, register_proposer
from prunenas.proposers.scoring import convolutions_score_no_slot
from prunenas.spaces import Space


def prunable(arch: Architecture) -> list[Layer]:
    """The conv layers; in a transformer (no conv produces a prunable width) its linear layers and patch embedding
    (every conv/linear layer but the classifier)."""
    if convolutions_score_no_slot(arch):
        return [layer for layer in arch.layers if layer.kind in ("conv", "linear") and layer.output is not None]
    return [layer for layer in arch.layers if layer.kind == "conv"]


def masked_cost(arch: Architecture, nonzero: Mapping[str, int], match: str) -> int:
    """MACs (or params) of ``arch`` if its prunable layers had ``nonzero`` weights (attention products included)."""
    if match == "macs":
        return sum(layer_macs(layer, nonzero.get(layer.name)) for layer in arch.layers) + \
            arch.family_obj.product_macs(arch)
    return sum(layer_params(layer, nonzero.get(layer.name)) for layer in arch.layers)


def _nonzero_at(sorted_abs: Mapping[str, torch.Tensor], threshold: float, floor: Mapping[str, int]) -> dict[str, int]:
    key = torch.tensor([threshold], dtype=sorted_abs[next(iter(sorted_abs))].dtype)
    return {name: max(floor[name], len(v) - int(torch.searchsorted(v, key, right=True)))
            for name, v in sorted_abs.items()}


def global_threshold_masks(arch: Architecture, state: Mapping[str, torch.Tensor], *, sparsity: float = 0.0,
                           target: int | None = None, match: str = "macs", min_density: float = 0.01
                           ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Masks keeping the conv weights above one global |w| threshold.

    The threshold prunes ``sparsity`` of all conv weights, or (with ``target``) is the smallest one whose masked
    cost is <= target. Every layer keeps at least ``ceil(min_density * n)`` weights (its largest); layers held
    at that floor are returned too.
    """
    weights = {layer.name: state[f"{layer.name}.weight"].detach().abs().double() for layer in prunable(arch)}
    sorted_abs = {n: w.flatten().sort().values for n, w in weights.items()}
    floor = {n: max(1, int(-(-min_density * w.numel() // 1))) for n, w in weights.items()}
    pooled = torch.cat(list(sorted_abs.values())).sort().values
    if target is None:
        threshold = float(pooled[min(len(pooled) - 1, int(len(pooled) * sparsity))]) if sparsity > 0 else -1.0
    else:
        threshold = _threshold_at_cost(arch, sorted_abs, pooled, floor, target, match)
    nonzero = _nonzero_at(sorted_abs, threshold, floor)
    masks = {n: _top_k_mask(w, nonzero[n]) for n, w in weights.items()}
    floored = [n for n, v in sorted_abs.items() if int((v > threshold).sum()) < floor[n]]
    return masks, floored


def _threshold_at_cost(arch, sorted_abs, pooled, floor, target, match) -> float:
    def cost(i: int) -> int:
        return masked_cost(arch, _nonzero_at(sorted_abs, float(pooled[i]) if i >= 0 else -1.0, floor), match)

    lo, hi = -1, len(pooled) - 1  # index -1: keep every weight
    if cost(hi) > target:
        raise BudgetError(f"target {match} {target} is unreachable by pruning conv weights: the floor of every "
                          f"layer leaves {cost(hi)}")
    if cost(lo) <= target:
        return -1.0
    while hi - lo > 1:  # cost(lo) > target >= cost(hi)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if cost(mid) <= target else (mid, hi)
    return float(pooled[hi])


def _top_k_mask(weight: torch.Tensor, k: int) -> torch.Tensor:
    flat = weight.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.sort(-flat, stable=True).indices[:k]] = True
    return mask.view_as(weight)


def uniform_masks(arch: Architecture, state: Mapping[str, torch.Tensor], target: int, match: str = "macs"
                  ) -> dict[str, torch.Tensor]:
    """Masks keeping the same fraction of every conv layer's weights (its largest), at ``target`` cost."""
    weights = {layer.name: state[f"{layer.name}.weight"].detach().abs().double() for layer in prunable(arch)}

    def nonzero(density: float) -> dict[str, int]:
        return {n: max(1, round(density * w.numel())) for n, w in weights.items()}

    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if masked_cost(arch, nonzero(mid), match) < target else (lo, mid)
    best = min((lo, hi), key=lambda d: abs(masked_cost(arch, nonzero(d), match) - target))
    counts = nonzero(best)
    return {n: _top_k_mask(w, counts[n]) for n, w in weights.items()}


def write_masks(arch: Architecture, masks: Mapping[str, torch.Tensor], folder: str | Path) -> Architecture:
    """Store masks content-addressed in ``folder`` and return ``arch`` carrying them."""
    blob = save({n: m.to(torch.uint8).contiguous() for n, m in sorted(masks.items())})
    folder = Path(folder)

    path = folder / f"masks-{hashlib.sha256(blob).hexdigest()[:16]}.safetensors"
    if not path.exists():
        atomic_write_bytes(path, blob)
    return Architecture.create(arch.family, arch.widths, arch.opts, arch.input_shape, arch.num_classes,
                               MaskRef(str(path), file_sha256(path)))


def artifact_dir(provider: Any) -> Path:
    folder = getattr(provider, "artifact_dir", None)
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="prunenas-masks-"))
        provider.artifact_dir = folder
    return Path(folder)


def uniform_mask_twin(proposal: Proposal, base: BaseModel, folder: str | Path) -> Architecture:
    """The uniform-sparsity control of a masked proposal: same cost, the same sparsity in every layer."""
    target = cost_of(proposal.arch, proposal.target.match)
    masks = uniform_masks(base.arch, base.architecture_state(), target, proposal.target.match)
    return write_masks(base.arch, masks, folder)


@register_proposer("magnitude", uniform_twin=uniform_mask_twin, params={
    "sparsity": Param(0.0, kind=float, help="fraction of conv weights removed; > 0 takes precedence over the "
                      "cost target",
                      low=0.0, high=0.999),
    "min_density": Param(0.01, kind=float, help="every layer keeps at least this fraction of its weights",
                         low=0.0, high=1.0),
})
def magnitude(space: Space, target: Target, provider: Any, params: Mapping[str, Any], seed: int) -> Proposal:
    """Global magnitude threshold on conv weights of a trained base network (Han et al. 2015)."""
    if target.preset is not None or (not target.is_cost and params["sparsity"] <= 0):
        raise ProposerError("proposer 'magnitude' needs a cost target (ratio or MACs) or sparsity > 0")
    if target.match == "latency":
        # dense kernels do not skip zeros: a masked network runs as slow as its unmasked widths
        raise ProposerError("proposer 'magnitude' masks weights, which does not change latency; give a MAC or "
                            "params target")
    base = provider.get(None)
    goal = target.absolute(space) if target.is_cost and params["sparsity"] <= 0 else None
    masks, floored = global_threshold_masks(base.arch, base.architecture_state(), sparsity=params["sparsity"],
                                            target=goal, match=target.match, min_density=params["min_density"])
    arch = write_masks(base.arch, masks, artifact_dir(provider))
    total = sum(m.numel() for m in masks.values())
    facts = {"sparsity": 1 - sum(int(m.sum()) for m in masks.values()) / total, "floored_layers": floored,
             "layer_density": {n: float(m.float().mean()) for n, m in masks.items()},
             "base_model": base.key, "base_val_acc": base.val_acc}
    if goal is not None:
        facts["requested_ratio"] = goal / cost_of(space.base, target.match)
    return Proposal(arch, "magnitude", params, target, seed, None, {**achieved(space, arch, target.match), **facts})
