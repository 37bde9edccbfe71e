"""The experiment's schema: arms, budgets and samplers, settings (fixed, choices, ranges), :class:`Experiment`.

An experiment file (:mod:`prunenas.experiment_file` reads and validates it) describes a whole
pruning-as-NAS study. Parameter settings of a proposer (and the targets and the learning rate) are either a
fixed value, a list (choices sampled by the search) or a range ``{low, high, log}`` (sampled).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from prunenas.budget import CostKind
from prunenas.errors import PrunenasError
from prunenas.latency.cost import latency_cost
from prunenas.proposers import PROPOSERS
from prunenas.proposers.basemodel import BaseTraining
from prunenas.recipes import RECIPES
from prunenas.spaces import Space

ARMS = ("proposed", "uniform", "random", "finetune", "lottery", "distill", "distill-scratch", "uniform-distill",
        "scratch-full")
CONTROLS = ("uniform", "random")  # arms solved to the proposal's cost: their cost error is recorded and checked
UNIFORM_ARMS = ("uniform", "uniform-distill")  # arms that train the uniform twin
INHERIT_ARMS = ("finetune", "lottery", "distill")  # start from the base model's kept weights
TEACHER_ARMS = ("distill", "distill-scratch", "uniform-distill")  # learn from the base model's logits
FINETUNE_ARMS = ("finetune", "distill")  # train on the fine-tuning schedule (budget "finetune") under any budgets
# arms that need the method's base model: its weights, its logits, or (scratch-full) its training's compute
BASE_ARMS = (*INHERIT_ARMS, *TEACHER_ARMS[1:], "scratch-full")
BUDGETS = ("scratch-e", "scratch-b")
SAMPLERS = ("tpe", "nsga2", "random", "grid")
SELECTIONS = ("all", "top-k", "pareto")
OBJECTIVES = (("val_acc",), ("val_acc", "macs"), ("val_acc", "latency"))  # latency: the targets' predictor
SCHEDULERS = ("none", "asha")
# Experiment fields that command-line flags override -> their place in the YAML (section, key).
OVERRIDE_KEYS = {"num_samples": ("search", "num_samples"), "concurrency": (None, "concurrency"),
                 "sampler": ("search", "sampler"), "epochs": ("recipe", "epochs"), "data_root": ("data", "root"),
                 "workers": ("resources", "workers")}
TOP_KEYS = {"name", "space", "input_shape", "num_classes", "data", "base", "proposers", "targets", "arms",
            "budgets", "seeds", "recipe", "finetune", "search", "scheduler", "resources", "concurrency", "storage",
            "address", "max_failures", "description", "expected", "distill", "lr_grid"}


class ExperimentError(PrunenasError):
    """A malformed experiment file."""


@dataclass(frozen=True)
class Range:
    """A sampled numeric setting."""

    low: float
    high: float
    log: bool = False
    integer: bool = False


    def ends(self) -> list[float]:
        return [self.low, self.high]


Setting = Any  # a fixed value, a list of choices, or a Range


def setting_values(setting: Setting, range_values: Callable[[Range], list[Any]] = Range.ends) -> list[Any]:
    """A setting as a list of values: a list's items, a fixed value alone, a range's ``range_values`` (its ends)."""
    if isinstance(setting, Range):
        return range_values(setting)
    return list(setting) if isinstance(setting, list) else [setting]


def target_setting(exp: Experiment, method: str) -> Setting:
    """Target choices of ``method``: the experiment's, plus presets (``targets.presets``, by default all the
    space's) for methods that have presets. A sampled range of targets does not mix with presets."""
    setting = exp.target[1]
    presets = exp.space.presets if exp.presets is None else exp.presets
    if method != "direct" and PROPOSERS.get(method).presets and presets and not isinstance(setting, Range):
        fixed = setting if isinstance(setting, list) else [setting]
        return fixed + [f"preset:{name}" for name in presets]
    return setting


def target_choices(exp: Experiment, method: str) -> list[Any]:
    """Every target value ``method`` may be asked for (a range: its ends)."""
    return setting_values(target_setting(exp, method))


@dataclass(frozen=True)
class Screening:
    """Phase 1 of a multi-fidelity search (``search.proxy``): ``screen`` candidates scored by ``proxy``, the
    ``promote`` best trained fully plus ``audit`` drawn uniformly at random from the rest (the unbiased sample
    the proxy's fidelity is measured on); ``fidelity_proxies`` also score the fully trained candidates."""

    proxy: str
    params: Mapping[str, Any]
    screen: int
    promote: int
    audit: int = 10
    fidelity_proxies: tuple[tuple[str, Mapping[str, Any]], ...] = ()

    @property
    def trained(self) -> int:
        """Candidates trained fully: the promoted and the audit ones."""
        return self.promote + self.audit


@dataclass(frozen=True)
class Experiment:
    """A validated experiment (see the module docstring)."""

    name: str
    space: Space
    dataset: str
    data_root: str | None = None
    val_size: int | None = None
    subset: int | None = None
    base_recipe: str = "fast"
    base_epochs: int | None = None
    base_seed: int = 0
    base_weights: str | None = None  # published weights as the base model (prunenas.pretrained), not trained
    proposers: Mapping[str, Mapping[str, Setting]] = field(default_factory=dict)
    target: Setting = 0.5
    presets: tuple[str, ...] | None = None  # None: every preset of the space, for methods that have presets
    match: str = "macs"
    latency_device: tuple[str, int, int] | None = None  # (runtime, batch, threads) of latency targets
    arms: tuple[str, ...] = ("proposed", "uniform")
    budgets: tuple[str, ...] = ("scratch-e",)
    budget_targets: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)  # budget -> the only targets
    search_seeds: tuple[int, ...] = (0,)
    eval_seeds: tuple[int, ...] = (0,)
    recipe: str = "fast"
    epochs: int | None = None
    lr: Setting = None
    finetune_recipe: str = "cifar-finetune"
    finetune_epochs: int | None = None
    distill_temperature: float = 4.0  # the teacher arms' softening temperature T
    distill_weight: float = 0.9  # the teacher arms' weight of the soft (T^2 x KL) term; 1 - it for the labels
    lr_grid: tuple[float, ...] | None = None  # every evaluation arm trained at each (reported at its best by val)
    sampler: str = "tpe"
    num_samples: int = 8
    objectives: tuple[str, ...] = ("val_acc",)
    direct: bool = False
    select: str = "all"
    top_k: int = 3
    enqueue: bool = True
    screening: Screening | None = None  # search.proxy: screen by proxy, train the promoted and audit candidates
    scheduler: str = "none"
    cpu: float = 1.0  # per worker
    gpu: float | None = None  # per worker; None: one GPU per worker when the cluster has GPUs, else none
    workers: int = 1  # data-parallel workers per trial (Ray Train); the trial's own driver then takes no CPU
    concurrency: int | None = None
    storage: str = "runs"
    address: str | None = None
    max_failures: int = 1
    description: str = ""
    source: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def methods(self) -> list[str]:
        return list(self.proposers) + (["direct"] if self.direct else [])

    @property
    def ratio_targets(self) -> bool:
        """Whether target values are fractions of the base network's cost (``ratios``, ``latency_ratios``)."""
        return self.target[0] in ("ratio", "latency_ratio")

    @property
    def cost_kind(self) -> CostKind:
        """What targets count: ``"macs"``, ``"params"``, or the latency predictor of ``latency_device`` with this
        space calibrated (measured on first use, then read from the latency cache)."""
        if self.latency_device is None:
            return self.match
        return latency_cost(*self.latency_device).calibrated(self.space)

    def arm_budgets(self, arm: str) -> tuple[str, ...]:
        """The budgets ``arm`` trains under: the fine-tuning schedule for the arms that start from the trained
        base weights, the pipeline's compute for ``scratch-full``, the experiment's scratch budgets otherwise."""
        if arm in FINETUNE_ARMS:
            return ("finetune",)
        if arm == "scratch-full":
            return ("scratch-full",)
        return self.budgets

    @property
    def finetune_schedule_epochs(self) -> int:
        """Epochs of the fine-tuning schedule (``finetune.epochs`` or the finetune recipe's)."""
        return self.finetune_epochs or RECIPES.get(self.finetune_recipe).epochs

    @property
    def base_schedule_epochs(self) -> int:
        """Epochs the base model trains (0 with published weights: nothing is trained)."""
        return 0 if self.base_weights else self.base_epochs or RECIPES.get(self.base_recipe).epochs

    @property
    def base_training(self) -> BaseTraining:
        """The base model the methods prune: this experiment's data, base recipe, epochs, seed or weights."""
        return BaseTraining(dataset=self.dataset, recipe=self.base_recipe, seed=self.base_seed,
                            epochs=self.base_epochs, data_root=self.data_root, val_size=self.val_size,
                            subset=self.subset, weights=self.base_weights)

    def with_overrides(self, **changes: Any) -> Experiment:
        """CLI flags override the file (``None`` values are ignored); the overrides are kept in ``source`` too, so
        a run folder's ``experiment.yaml`` (what ``resume`` reads) says what really ran."""
        changes = {k: v for k, v in changes.items() if v is not None}
        source = json.loads(json.dumps(self.source))
        for key, value in changes.items():
            section, name = OVERRIDE_KEYS[key]
            if section:
                source.setdefault(section, {})[name] = value
            else:
                source[name] = value
        return replace(self, **changes, source=source)
