"""Short training from scratch: the evaluation recipe compressed to a fixed number of optimiser steps.

The candidate is trained from its seeded initialisation by :func:`prunenas.train.train` with the recipe the full
evaluation uses (optimiser, schedule shape, augmentation), squeezed into ``steps`` steps: ``E = min(epochs,
steps)`` short epochs of ``steps // E`` steps, milestones scaled by the Scratch-B rule. Each short epoch draws
a fresh random sample of the training split, so the run sees as many distinct images as a plain run of that
length would. The score is the validation accuracy at the end (Zhou et al., "EcoNAS", CVPR 2020, study such
reduced-training proxies).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from prunenas.arch import Architecture
from prunenas.proposers.registry import Param
from prunenas.proxies.registry import Kept, ProxyContext, ProxyError, ProxyScore, register_proxy
from prunenas.splits import Batch, TensorSplit
from prunenas.train import TrainingDiverged, evaluate, train
from prunenas.train_config import TrainConfig

NAME = "short-train"


@register_proxy(NAME, params={
    "steps": Param(200, kind=int, low=1, high=10_000_000, help="optimiser steps of the compressed recipe"),
})
def short_train(arch: Architecture, context: ProxyContext, params: Mapping[str, Any], kept: Kept | None) -> ProxyScore:
    """Validation accuracy after the evaluation recipe compressed to ``steps`` steps, from scratch."""
    data = context.dataset(NAME)
    config, per_epoch = compressed_config(context.recipe or context.space.recipe, params["steps"],
                                          seed=context.seed, device=context.device)
    train_split, val_split = _in_memory(data.train, "training"), _in_memory(data.val, "validation")
    nothing = replace(val_split, images=val_split.images[:0], labels=val_split.labels[:0])
    short = replace(data, train=SampledSplit(train_split, per_epoch * config.batch_size), val=nothing, test=nothing)
    try:  # validation only once, at the end: the trainer's per-epoch evaluation would double the cost
        result = train(arch, short, config, evaluate_test=False)
    except TrainingDiverged as err:
        return ProxyScore(math.nan, 0.0, err.step * config.batch_size, {"diverged": str(err)})
    accuracy, loss = evaluate(result.model, data.val, context.torch_device(), context.eval_batch_size)
    trained = sum(int(m["images"]) for m in result.curve)
    return ProxyScore(accuracy, 0.0, trained + len(data.val),
                      {"val_loss": loss, "steps": result.steps, "epochs": config.epochs,
                       "train_loss": result.curve[-1]["train_loss"], "lr": config.lr, "schedule": config.schedule})


def compressed_config(recipe: str, steps: int, **overrides: Any) -> tuple[TrainConfig, int]:
    """The recipe squeezed into ``steps`` optimiser steps: ``(config, steps per epoch)``.

    ``min(recipe epochs, steps)`` epochs of ``steps // epochs`` steps each (so up to ``epochs - 1`` steps fewer
    than asked when they do not divide), milestones scaled like Scratch-B's (``int(m * E / E0)``).
    """
    full = TrainConfig.from_recipe(recipe)
    epochs = min(full.epochs, steps)
    return TrainConfig.from_recipe(recipe, epochs=epochs, **overrides), steps // epochs


@dataclass
class SampledSplit:
    """``size`` images drawn afresh from ``source`` on every pass (without replacement within a pass)."""

    source: TensorSplit
    size: int

    def __len__(self) -> int:
        return min(self.size, len(self.source))

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[Batch]:
        order = torch.randperm(len(self.source), generator=generator) if shuffle else torch.arange(len(self.source))
        pick = order[:len(self)].to(self.source.images.device)
        sample = replace(self.source, images=self.source.images[pick], labels=self.source.labels[pick])
        yield from sample.batches(batch_size, augment=augment, generator=generator, drop_last=drop_last)


def _in_memory(split: Any, what: str) -> TensorSplit:
    if not isinstance(split, TensorSplit):
        raise ProxyError(f"proxy {NAME!r} samples in-memory datasets; the {what} split is read from image folders "
                         f"({type(split).__name__})")
    return split
