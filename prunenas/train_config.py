"""How a training is configured: :class:`TrainConfig` (a recipe plus how to run it), the schedules and optimisers a
recipe may name, and which settings enter a training's identity (its cache keys and checkpoints)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from prunenas.errors import PrunenasError
from prunenas.recipes import RECIPES, Recipe

SCHEDULES = ("step", "cosine", "onecycle", "warmup-cosine", "constant")
OPTIMIZERS = ("sgd", "adamw")
WARMUP_FRACTION = 0.1  # warmup-cosine: torchvision's ViT recipe warms up for 30 of 300 epochs
# Settings added to recipes after run folders existed (the optimiser, distillation), with the value every earlier
# run used: left out of a configuration's identity at that value, so that keys and checkpoints of earlier runs
# stay valid.
LATER_SETTINGS = {"optimizer": "sgd", "temperature": None, "distill_weight": None}
RUN_ONLY = frozenset({"device", "threads", "compile", "eval_batch_size"})
"""TrainConfig fields that change how a training runs, never what it learns (left out of every cache key)."""


@dataclass(frozen=True)
class TrainConfig(Recipe):
    """A recipe (optimiser and schedule) plus how to run it.

    Attributes:
        seed: initialisation, data order, augmentation and dropout.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
        amp: ``auto`` (bf16 on CUDA when supported, else fp16; off on CPU), ``bf16``, ``fp16`` or ``off``.
        channels_last: memory format of activations (default: on CUDA).
        compile: wrap the model in ``torch.compile``.
        threads: CPU threads for this run (``torch.set_num_threads``); default: leave as is.
    """

    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    threads: int | None = None
    eval_batch_size: int = 1024

    @classmethod
    def from_recipe(cls, recipe: str | Recipe, **overrides: Any) -> TrainConfig:
        """The named recipe with ``overrides``; changing ``epochs`` scales the milestones (Scratch-B rule)."""
        base = RECIPES.get(recipe) if isinstance(recipe, str) else recipe
        epochs = overrides.pop("epochs", None)
        if epochs is not None and "milestones" not in overrides:
            base = base.with_epochs(epochs)
        elif epochs is not None:
            base = replace(base, epochs=epochs)
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise PrunenasError(f"unknown training setting {unknown[0]!r}")
        config = cls(**{**{f.name: getattr(base, f.name) for f in fields(Recipe)}, **overrides})
        config.validate()
        return config

    def identity(self) -> dict[str, Any]:
        """Every field that determines the trained weights (the run-only ones left out, and a later setting at the
        value every earlier run used): part of cache keys."""
        return {k: v for k, v in asdict(self).items()
                if k not in RUN_ONLY and not (k in LATER_SETTINGS and v == LATER_SETTINGS[k])}

    @property
    def distills(self) -> bool:
        """Whether this training learns from a teacher's logits as well as from the labels."""
        return self.distill_weight is not None

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise PrunenasError(f"epochs {self.epochs}, batch_size {self.batch_size} and lr {self.lr} must be positive")
        if self.schedule not in SCHEDULES:
            raise PrunenasError(f"schedule {self.schedule!r} must be one of {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise PrunenasError(f"optimizer {self.optimizer!r} must be one of {', '.join(OPTIMIZERS)}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise PrunenasError(f"amp {self.amp!r} must be auto, bf16, fp16 or off")
        if (self.temperature is None) != (self.distill_weight is None):
            raise PrunenasError("distillation needs both temperature and distill_weight (or neither)")
        if self.distills:
            check_distillation(self.temperature, self.distill_weight)


def check_distillation(temperature: Any, weight: Any, where: str = "") -> None:
    """Raise a one-line error unless ``temperature`` > 0 and ``weight`` is in [0, 1] (``where`` prefixes the
    names, e.g. ``distill.``)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise PrunenasError(f"{where}temperature: {temperature!r} must be a number > 0")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise PrunenasError(f"{where}weight: {weight!r} must be a number in [0, 1]")
