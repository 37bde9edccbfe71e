"""Named training recipes (the paper's CIFAR and ImageNet schedules, and a CPU-sized one)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from prunenas.registry import Registry


def scale_milestones(milestones: Sequence[int], base_epochs: int, epochs: int) -> tuple[int, ...]:
    """Learning-rate milestones of a ``base_epochs`` schedule stretched to ``epochs`` (seed: ``int(m*E/E0)``)."""
    return tuple(int(m * epochs / base_epochs) for m in milestones)


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule of a training run.

    ``optimizer``: ``sgd`` (with ``momentum``/``nesterov``, the paper's) or ``adamw`` (betas 0.9/0.999; the
    decoupled ``weight_decay`` applies to weight matrices and tables, not to biases and norm scales).
    ``schedule``: ``step`` (lr x ``gamma`` at each milestone epoch, the paper's), ``cosine``, ``onecycle``,
    ``warmup-cosine`` or ``constant`` (see :func:`prunenas.optimisation.lr_factor`).
    ``temperature`` and ``distill_weight``: knowledge distillation from a teacher's logits
    (:func:`prunenas.optimisation.distillation_loss`); both ``None`` (the default) trains on the labels alone.
    """

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "step"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    label_smoothing: float = 0.0
    augment: bool = True
    temperature: float | None = None
    distill_weight: float | None = None
    optimizer: str = "sgd"

    def with_epochs(self, epochs: int) -> Recipe:
        """The same recipe stretched to ``epochs``, milestones scaled (the Scratch-B rule)."""
        return replace(self, epochs=epochs, milestones=scale_milestones(self.milestones, self.epochs, epochs))


RECIPES: Registry[Recipe] = Registry("recipe")
RECIPES.register("cifar-paper", Recipe(epochs=160, batch_size=64, lr=0.1, weight_decay=1e-4, milestones=(80, 120)))
RECIPES.register("imagenet-paper", Recipe(epochs=90, batch_size=256, lr=0.1, weight_decay=1e-4, milestones=(30, 60)))
# VGG-16 without BatchNorm (ThiNet, regression pruning) diverges at lr 0.1: the seed trains it at --lr 0.01
# (imagenet/thinet/README.md, imagenet/regression-pruning/README.md), otherwise the ImageNet schedule
RECIPES.register("imagenet-plain-vgg", Recipe(epochs=90, batch_size=256, lr=0.01, weight_decay=1e-4,
                                              milestones=(30, 60)))
# Sparse Structure Selection's schedule (Huang & Wang 2018; seed imagenet/sparse-structure-selection/README.md):
# 100 epochs, lr x0.1 at 30/60/90
RECIPES.register("imagenet-sss", Recipe(epochs=100, batch_size=256, lr=0.1, weight_decay=1e-4,
                                        milestones=(30, 60, 90)))
RECIPES.register("cifar-finetune", Recipe(epochs=40, batch_size=64, lr=0.001, weight_decay=1e-4, schedule="constant"))
RECIPES.register("imagenet-finetune", Recipe(epochs=20, batch_size=256, lr=0.001, weight_decay=1e-4,
                                             schedule="constant"))
# Soft Filter Pruning's CIFAR schedule (He et al. 2018): 200 epochs, Nesterov, wd 5e-4, lr x0.2 at 60/120/160
RECIPES.register("sfp-cifar", Recipe(epochs=200, batch_size=128, lr=0.1, nesterov=True, weight_decay=5e-4,
                                     milestones=(60, 120, 160), gamma=0.2))
RECIPES.register("fast", Recipe(epochs=8, batch_size=128, lr=0.1, nesterov=True, weight_decay=5e-4,
                                schedule="onecycle", label_smoothing=0.1))
# Vision Transformers: AdamW, linear warm-up then cosine, label smoothing, the dataset's light augmentation (crop
# and flip); weight decay 0.05 as DeiT (Touvron et al. 2021). CPU-sized: vit-tiny-fashionmnist reaches 86.5% test
# accuracy on the full Fashion-MNIST training set (55k images, 5k held out) in 10 min on 2 shared cores (measured).
RECIPES.register("adamw-vit", Recipe(epochs=7, batch_size=128, lr=3e-3, weight_decay=0.05, schedule="warmup-cosine",
                                     label_smoothing=0.1, optimizer="adamw"))
# DeiT's ImageNet schedule (300 epochs, batch 1024) without its heavy augmentation (RandAugment, mixup, cutmix,
# random erasing, stochastic depth, repeated augmentation): expect less than DeiT's published accuracy.
RECIPES.register("adamw-vit-imagenet", Recipe(epochs=300, batch_size=1024, lr=1e-3, weight_decay=0.05,
                                              schedule="warmup-cosine", label_smoothing=0.1, optimizer="adamw"))
