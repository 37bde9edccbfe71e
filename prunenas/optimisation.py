"""What one optimisation step of a training is made of: the learning-rate schedules, the optimisers, the
distillation loss of the teacher arms, and :class:`Regularizer`, the hooks a pruning method adds to training."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from prunenas.recipes import Recipe
from prunenas.train_config import WARMUP_FRACTION


def lr_factor(schedule: str, step: int, steps_per_epoch: int, epochs: int, milestones: tuple[int, ...],
              gamma: float) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (counted from 0 over the whole run)."""
    total = max(1, steps_per_epoch * epochs)
    if schedule == "step":
        epoch = step // max(1, steps_per_epoch)
        return gamma ** sum(epoch >= m for m in milestones)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    if schedule == "onecycle":  # linear warm-up over 25% of the steps from 0.1, then cosine to 0
        return _warmup_cosine(step, total, 0.25 * total, 0.1)
    if schedule == "warmup-cosine":  # linear warm-up over 10% of the steps from 0, then cosine to 0
        return _warmup_cosine(step, total, WARMUP_FRACTION * total, 0.0)
    return 1.0


def _warmup_cosine(step: int, total: int, warm: float, start: float) -> float:
    if step < warm:
        return start + (1 - start) * step / warm
    return 0.5 * (1 + math.cos(math.pi * min(step - warm, total - warm) / (total - warm)))


def make_optimizer(model: nn.Module, config: Recipe) -> torch.optim.Optimizer:
    """SGD over every parameter, or AdamW with weight decay on weights of two or more dimensions only (biases
    and norm scales are not decayed, as in DeiT and torchvision's ViT recipe)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, temperature: float,
                      weight: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Knowledge-distillation loss (Hinton, Vinyals & Dean 2015), averaged over the batch:
    ``(1 - weight) x CE(student, target) + weight x T^2 x KL(softmax(teacher / T) || softmax(student / T))``.

    The ``T^2`` keeps the soft term's gradients on the scale of the hard term's as ``T`` grows; ``weight`` 0 is
    plain cross-entropy, 1 the teacher alone. Computed in float32 (logits may come from autocast).
    """
    student, teacher = student.float(), teacher.float()
    hard = nn.functional.cross_entropy(student, target, label_smoothing=label_smoothing)
    soft = nn.functional.kl_div(nn.functional.log_softmax(student / temperature, dim=1),
                                nn.functional.log_softmax(teacher / temperature, dim=1),
                                reduction="batchmean", log_target=True)
    return (1 - weight) * hard + weight * temperature**2 * soft


class Regularizer:
    """Hooks that pruning methods add to training (all optional; the defaults do nothing).

    ``prepare`` may wrap the model before training (e.g. learnable block scales); ``attach`` receives the
    optimiser once it exists (e.g. to read the learning rate of a proximal step); ``before_step`` runs after
    ``backward`` (e.g. Network Slimming's L1 subgradient on BN scales),
    ``after_step`` after the optimiser step (e.g. a proximal step), ``end_epoch`` after each epoch (e.g.
    Soft Filter Pruning's zeroing of weak filters). State that must survive a resume goes in ``state_dict``.
    """

    def prepare(self, model: nn.Module) -> nn.Module:
        """The module to train (default: ``model`` itself)."""
        return model

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Called once with the optimiser that trains the prepared model."""

    def before_step(self, model: nn.Module) -> None:
        """Called between backward and the optimiser step, on unscaled gradients (AMP loss scaling undone)."""

    def after_step(self, model: nn.Module) -> None:
        """Called after the optimiser step."""

    def end_epoch(self, model: nn.Module, epoch: int) -> None:
        """Called after each training epoch, before validation."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
