"""Experiment files: one YAML describing a whole pruning-as-NAS study, validated before anything runs.

Every mistake names the key, the value and what is allowed. See ``experiments/quickstart.yaml`` for an
annotated example and the README for the full list of keys. Parameter settings of a proposer (and the
targets and the learning rate) are either a fixed value, a list (choices sampled by the search) or a range
``{low, high, log}`` (sampled).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from prunenas.budget import CostKind, cost_of, scratch_epochs
from prunenas.data import DATASETS
from prunenas.distributed import check_batch_split
from prunenas.errors import PrunenasError
from prunenas.fileio import read_text
from prunenas.latency.cost import latency_cost
from prunenas.latency.devices import get_device
from prunenas.pretrained import check_weights_name, torchvision_builder
from prunenas.proposers import PROPOSERS
from prunenas.recipes import RECIPES
from prunenas.spaces import Space, load_space
from prunenas.train import check_distillation

ARMS = ("proposed", "uniform", "random", "finetune", "lottery", "distill", "distill-scratch", "uniform-distill",
        "scratch-full")
CONTROLS = ("uniform", "random")  # arms solved to the proposal's cost: their cost error is recorded and checked
UNIFORM_ARMS = ("uniform", "uniform-distill")  # arms that train the uniform twin
INHERIT_ARMS = ("finetune", "lottery", "distill")  # start from the base model's kept weights
TEACHER_ARMS = ("distill", "distill-scratch", "uniform-distill")  # learn from the base model's logits
# arms that need the method's base model: its weights, its logits, or (scratch-full) its training's compute
BASE_ARMS = (*INHERIT_ARMS, *TEACHER_ARMS[1:], "scratch-full")
BUDGETS = ("scratch-e", "scratch-b")
SAMPLERS = ("tpe", "nsga2", "random", "grid")
SELECTIONS = ("all", "top-k", "pareto")
OBJECTIVES = (("val_acc",), ("val_acc", "macs"))
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
        if arm in ("finetune", "distill"):
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


def load_experiment(path: str | os.PathLike) -> Experiment:
    """Read and validate an experiment YAML."""
    path = Path(path)
    try:
        data = yaml.safe_load(read_text(path, "experiment file", ExperimentError))
    except yaml.YAMLError as err:
        raise ExperimentError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    try:
        return experiment_from_dict(data, default_name=path.stem)
    except ExperimentError as err:
        raise ExperimentError(f"{path}: {err}") from None


# the sections of an experiment file and the keys each may hold (in the order experiment_from_dict reads them)
SECTION_KEYS = {
    "data": {"name", "root", "val_size", "subset"},
    "base": {"recipe", "epochs", "seed", "weights"},
    "targets": {"ratios", "macs", "presets", "match", "latency_ratios", "latency_ms", "latency_device"},
    "seeds": {"search", "eval"},
    "recipe": {"name", "epochs", "lr"},
    "search": {"sampler", "num_samples", "objectives", "direct", "select", "top_k", "enqueue"},
    "resources": {"cpu", "gpu", "workers"},
    "finetune": {"recipe", "epochs"},
    "distill": {"temperature", "weight"},
}


def _section(root: _Reader, name: str) -> _Reader:
    section = root.section(name)
    section.only(SECTION_KEYS[name])
    return section


def experiment_from_dict(data: Any, default_name: str = "experiment") -> Experiment:
    root = _Reader(data, "")
    root.only(TOP_KEYS)
    space = _space(root.get("space", str, required=True), root.get("input_shape", list),
                   root.get("num_classes", int, minimum=1))
    data_sec, base, targets, seeds, recipe, search, resources, finetune, distill = (
        _section(root, name) for name in SECTION_KEYS)
    dataset = data_sec.get("name", str, default=space.dataset)
    if dataset not in DATASETS:
        raise ExperimentError(f"data.name: unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS.names())}")
    exp = Experiment(
        name=root.get("name", str, default=default_name),
        space=space,
        dataset=dataset,
        data_root=data_sec.get("root", str),
        val_size=data_sec.get("val_size", int, minimum=0),
        subset=data_sec.get("subset", int, minimum=1),
        base_recipe=_recipe(base.get("recipe", str, default=space.recipe), "base.recipe"),
        base_epochs=base.get("epochs", int, minimum=1),
        base_seed=base.get("seed", int, default=0),
        base_weights=_weights(base.get("weights", str)),
        proposers=_proposers(root.get("proposers", dict, required=True)),
        target=_targets(targets),
        presets=_presets(targets, space),
        match=_match(targets),
        latency_device=_latency_device(targets),
        arms=tuple(root.choices("arms", ARMS, default=["proposed", "uniform"])),
        budgets=tuple(_budget_names(root)),
        budget_targets=_budget_targets(root),
        search_seeds=tuple(seeds.int_list("search", default=[0])),
        eval_seeds=tuple(seeds.int_list("eval", default=[0])),
        recipe=_recipe(recipe.get("name", str, default=space.recipe), "recipe.name"),
        epochs=recipe.get("epochs", int, minimum=1),
        lr=_numeric_setting(recipe, "lr", positive=True),
        finetune_recipe=_recipe(finetune.get("recipe", str, default="cifar-finetune"), "finetune.recipe"),
        finetune_epochs=finetune.get("epochs", int, minimum=1),
        **_distillation(distill),
        lr_grid=_lr_grid(root),
        sampler=search.choice("sampler", SAMPLERS, default="tpe"),
        num_samples=search.get("num_samples", int, default=8, minimum=1),
        objectives=_objectives(search),
        direct=search.get("direct", bool, default=False),
        select=search.choice("select", SELECTIONS, default="all"),
        top_k=search.get("top_k", int, default=3, minimum=1),
        enqueue=search.get("enqueue", bool, default=True),
        scheduler=root.choice("scheduler", SCHEDULERS, default="none"),
        cpu=resources.get("cpu", (int, float), default=1.0, minimum=0.01),
        gpu=resources.get("gpu", (int, float), default=None, minimum=0.0),
        workers=resources.get("workers", int, default=1, minimum=1),
        concurrency=root.get("concurrency", int, minimum=1),
        storage=root.get("storage", str, default="runs"),
        address=root.get("address", str),
        max_failures=root.get("max_failures", int, default=1, minimum=0),
        description=root.get("description", str, default=""),
        source=dict(data),
    )
    _check_expected(data.get("expected"))
    _cross_checks(exp)
    return exp


def _check_expected(expected: Any) -> None:
    """``expected``: the paper's numbers a pack is compared with (documentation; never read by the search)."""
    if expected is None:
        return
    reader = _Reader(expected, "expected.")
    reader.only({"unpruned", "rows", "also", "source"})
    for i, row in enumerate(reader.get("rows", list, default=[])):
        _Reader(row, f"expected.rows[{i}].").only({"target", "arm", "budget", "value", "tag", "percent", "sparsity"})
        if row.get("tag") not in ("R", "X", "P"):
            raise ExperimentError(f"expected.rows[{i}].tag: {row.get('tag')!r} not in {{R, X, P}} (read, checked, "
                                  "recalled)")


# -- section readers --------------------------------------------------------------------------------------


class _Reader:
    """Typed access to one YAML mapping with errors that name the key, the value and what is allowed."""

    def __init__(self, data: Any, prefix: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            where = prefix.rstrip(".") or "the experiment"
            raise ExperimentError(f"{where} must be a mapping, got {data!r}")
        self.data, self.prefix = data, prefix

    def only(self, allowed: set[str]) -> None:
        unknown = sorted(set(self.data) - allowed)
        if unknown:
            raise ExperimentError(f"{self.prefix}{unknown[0]}: unknown key; allowed: {', '.join(sorted(allowed))}")

    def section(self, key: str) -> _Reader:
        return _Reader(self.data.get(key), f"{self.prefix}{key}.")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False,
            minimum: float | None = None) -> Any:
        if key not in self.data or self.data[key] is None:
            if required:
                raise ExperimentError(f"{self.prefix}{key}: missing (required)")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise ExperimentError(f"{self.prefix}{key}: {value!r} is not a {names}")
        if minimum is not None and value < minimum:
            raise ExperimentError(f"{self.prefix}{key}: {value!r} must be >= {minimum}")
        return value

    def choice(self, key: str, allowed: Sequence[str], default: str) -> str:
        value = self.get(key, str, default=default)
        if value not in allowed:
            raise ExperimentError(f"{self.prefix}{key}: {value!r} not in {{{', '.join(allowed)}}}")
        return value

    def choices(self, key: str, allowed: Sequence[str], default: list[str]) -> list[str]:
        values = self.get(key, list, default=default)
        if not values:
            raise ExperimentError(f"{self.prefix}{key}: empty; choose from {{{', '.join(allowed)}}}")
        for value in values:
            if value not in allowed:
                raise ExperimentError(f"{self.prefix}{key}: {value!r} not in {{{', '.join(allowed)}}}")
        return values

    def int_list(self, key: str, default: list[int]) -> list[int]:
        values = self.get(key, (list, int), default=default)
        values = [values] if isinstance(values, int) else values
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ExperimentError(f"{self.prefix}{key}: {values!r} must be a non-empty list of integers")
        return values


def _space(name: str, input_shape: list | None, num_classes: int | None) -> Space:
    """The experiment's space; ``input_shape``/``num_classes`` (top-level keys) complete a model reference."""
    try:
        return load_space(name, input_shape, num_classes)
    except PrunenasError as err:
        raise ExperimentError(f"space: {err}") from None


def _recipe(name: str, where: str) -> str:
    if name not in RECIPES:
        raise ExperimentError(f"{where}: unknown recipe {name!r}; choose one of: {', '.join(RECIPES.names())}")
    return name


def _proposers(data: dict) -> dict[str, dict[str, Setting]]:
    if not data:
        raise ExperimentError("proposers: empty; name at least one of: " + ", ".join(PROPOSERS.names()))
    out: dict[str, dict[str, Setting]] = {}
    for method, settings in data.items():
        if method not in PROPOSERS:
            raise ExperimentError(f"proposers.{method}: unknown proposer; choose from: {', '.join(PROPOSERS.names())}")
        info = PROPOSERS.get(method)
        reader = _Reader(settings, f"proposers.{method}.")
        reader.only(set(info.params))
        out[method] = {}
        for key, value in reader.data.items():
            where = f"proposers.{method}.{key}"
            spec = info.params[key]
            out[method][key] = _setting(value, where, lambda v, i=info, k=key, w=where: _param_value(i, k, v, w),
                                        numeric=spec.kind in (int, float), integer=spec.kind is int)
    return out


def _param_value(info: Any, key: str, value: Any, where: str) -> Any:
    try:
        return info.check_params({key: value})[key]
    except PrunenasError as err:
        raise ExperimentError(f"{where}: {err}") from None


def _setting(value: Any, where: str, check: Any, numeric: bool, integer: bool = False) -> Setting:
    """A fixed value, a list of choices, or a {low, high, log} range — each value checked."""
    if isinstance(value, list):
        if not value:
            raise ExperimentError(f"{where}: empty list of choices")
        return [check(v) for v in value]
    if isinstance(value, dict):
        if not numeric:
            raise ExperimentError(f"{where}: a range {{low, high}} needs a numeric parameter")
        reader = _Reader(value, where + ".")
        reader.only({"low", "high", "log"})
        low = check(reader.get("low", (int, float), required=True))
        high = check(reader.get("high", (int, float), required=True))
        log = reader.get("log", bool, default=False)
        if not low < high or (log and low <= 0):
            raise ExperimentError(f"{where}: range needs low < high (and low > 0 with log); got {value!r}")
        return Range(low, high, log, integer)
    return check(value)


def _budget_items(root: _Reader) -> list[tuple[str, tuple[Any, ...] | None]]:
    """``budgets``: names, or ``{name: scratch-b, targets: [...]}`` to train a budget at some targets only."""
    items = root.get("budgets", list, default=["scratch-e"])
    if not items:
        raise ExperimentError(f"budgets: empty; choose from {{{', '.join(BUDGETS)}}}")
    out = []
    for item in items:
        name, targets = (item, None) if not isinstance(item, dict) else (item.get("name"), item.get("targets"))
        if isinstance(item, dict):
            _Reader(item, "budgets[].").only({"name", "targets"})
            if not isinstance(targets, list) or not targets:
                raise ExperimentError(f"budgets: {item!r}: targets must be a non-empty list of target values")
        if name not in BUDGETS:
            raise ExperimentError(f"budgets: {name!r} not in {{{', '.join(BUDGETS)}}}")
        out.append((name, None if targets is None else tuple(targets)))
    return out


def _budget_names(root: _Reader) -> list[str]:
    return [name for name, _ in _budget_items(root)]


def _budget_targets(root: _Reader) -> dict[str, tuple[Any, ...]]:
    return {name: targets for name, targets in _budget_items(root) if targets is not None}


def _presets(targets: _Reader, space: Space) -> tuple[str, ...] | None:
    names = targets.get("presets", list)
    if names is None:
        return None
    for name in names:
        if name not in space.presets:
            raise ExperimentError(f"targets.presets: {name!r} is not a preset of {space.name}; presets: "
                                  f"{', '.join(space.presets) or '(none)'}")
    return tuple(names)


LATENCY_TARGETS = ("latency_ratios", "latency_ms")


def _match(targets: _Reader) -> str:
    """``targets.match``: ``latency`` with latency targets (and only then), else ``macs`` or ``params``."""
    latency = any(k in targets.data for k in LATENCY_TARGETS)
    match = targets.choice("match", ("macs", "params", "latency"), default="latency" if latency else "macs")
    if (match == "latency") != latency:
        raise ExperimentError(f"targets.match: {match} goes with " + ("latency_ratios or latency_ms" if match ==
                              "latency" else "ratios or macs") + ", not with the targets given")
    return match


def _latency_device(targets: _Reader) -> tuple[str, int, int] | None:
    """``targets.latency_device: {name, batch, threads}``, required by latency targets, checked to exist here."""
    if not any(k in targets.data for k in LATENCY_TARGETS):
        if "latency_device" in targets.data:
            raise ExperimentError("targets.latency_device: applies to latency_ratios or latency_ms only")
        return None
    device = targets.section("latency_device")
    if not device.data:
        raise ExperimentError("targets.latency_device: missing (required by latency targets): {name, batch, threads}")
    device.only({"name", "batch", "threads"})
    spec = (device.get("name", str, required=True), device.get("batch", int, default=1),
            device.get("threads", int, default=1))
    try:
        get_device(*spec)
    except PrunenasError as err:
        raise ExperimentError(f"targets.latency_device: {err}") from None
    return spec


def _targets(targets: _Reader) -> Setting:
    given = [k for k in ("ratios", "macs", *LATENCY_TARGETS) if k in targets.data]
    if len(given) > 1:
        raise ExperimentError(f"targets: give one of ratios, macs, latency_ratios, latency_ms; not "
                              f"{' and '.join(given)}")
    if "presets" in targets.data and not given:
        return ("ratio", [])  # presets only
    if "latency_ms" in targets.data:
        def check_ms(v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ExperimentError(f"targets.latency_ms: {v!r} must be a positive number (milliseconds)")
            return float(v)
        return ("latency_ms", _setting(targets.data["latency_ms"], "targets.latency_ms", check_ms, numeric=True))
    if "latency_ratios" in targets.data:
        def check_latency_ratio(v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise ExperimentError(f"targets.latency_ratios: {v!r} must be a ratio in (0, 1]")
            return float(v)
        return ("latency_ratio", _setting(targets.data["latency_ratios"], "targets.latency_ratios",
                                          check_latency_ratio, numeric=True))
    if "macs" in targets.data:
        def check_macs(v: Any) -> int:
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ExperimentError(f"targets.macs: {v!r} must be a positive integer")
            return v
        return ("macs", _setting(targets.data["macs"], "targets.macs", check_macs, numeric=True, integer=True))

    def check_ratio(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ExperimentError(f"targets.ratios: {v!r} must be a ratio in (0, 1]")
        return float(v)
    return ("ratio", _setting(targets.data.get("ratios", [0.5]), "targets.ratios", check_ratio, numeric=True))


def _weights(weights: str | None) -> str | None:
    try:
        return None if weights is None else check_weights_name(weights)
    except PrunenasError as err:
        raise ExperimentError(str(err)) from None


def _numeric_setting(reader: _Reader, key: str, positive: bool) -> Setting:
    if reader.data.get(key) is None:
        return None

    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (positive and v <= 0):
            raise ExperimentError(f"{reader.prefix}{key}: {v!r} must be a positive number")
        return float(v)
    return _setting(reader.data[key], reader.prefix + key, check, numeric=True)


def _distillation(distill: _Reader) -> dict[str, float]:
    """``distill: {temperature, weight}`` of the teacher arms (defaults T = 4, weight 0.9), checked."""
    temperature = distill.get("temperature", (int, float), default=4.0)
    weight = distill.get("weight", (int, float), default=0.9)
    try:
        check_distillation(temperature, weight, where="distill.")
    except PrunenasError as err:
        raise ExperimentError(str(err)) from None
    return {"distill_temperature": float(temperature), "distill_weight": float(weight)}


def _lr_grid(root: _Reader) -> tuple[float, ...] | None:
    """``lr_grid``: distinct positive learning rates, each arm trained at every one (not Optuna's ``recipe.lr``)."""
    values = root.get("lr_grid", list)
    if values is None:
        return None
    if not values:
        raise ExperimentError("lr_grid: empty; give distinct positive learning rates, e.g. [0.05, 0.1]")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ExperimentError(f"lr_grid: {value!r} must be a positive number")
    repeated = sorted({float(v) for v in values if [float(w) for w in values].count(float(v)) > 1})
    if repeated:
        raise ExperimentError(f"lr_grid: {repeated[0]!r} appears more than once; the values must be distinct "
                              "(every arm gets the same number of learning-rate trials)")
    return tuple(float(v) for v in values)


def _objectives(search: _Reader) -> tuple[str, ...]:
    value = tuple(search.get("objectives", list, default=["val_acc"]))
    if value not in OBJECTIVES:
        raise ExperimentError(f"search.objectives: {list(value)} must be [val_acc] or [val_acc, macs]")
    return value


def _cross_checks(exp: Experiment) -> None:
    _check_base_arms(exp)
    _check_batches_split(exp)
    for method in exp.proposers:
        if not target_choices(exp, method):
            raise ExperimentError(f"proposers.{method}: no target to propose at ({method} has no presets); "
                                  "give targets.ratios or targets.macs")
    if exp.sampler == "grid":
        for where, setting in _all_settings(exp):
            if isinstance(setting, Range):
                raise ExperimentError(f"{where}: the grid sampler needs lists of choices, not ranges")
    if exp.base_weights:
        _check_published_base(exp)
    if exp.sampler == "nsga2" and len(exp.objectives) == 1:
        raise ExperimentError("search.sampler: nsga2 is for two objectives (objectives: [val_acc, macs])")
    shared = sorted(set(exp.search_seeds) & set(exp.eval_seeds))
    if exp.select != "all" and shared:
        # a proposal selected for its search score would be evaluated on the very trainings that scored it
        raise ExperimentError(f"seeds.eval: {list(exp.eval_seeds)} shares seed(s) {shared} with seeds.search while "
                              f"search.select is {exp.select}: the winners' search trainings would be reused as "
                              "their evaluation (a winner's-curse bias); give disjoint seeds or select: all")
    kind, setting = exp.target
    try:
        cost_kind = exp.cost_kind
    except PrunenasError as err:  # a latency predictor that cannot rank this space's networks here
        raise ExperimentError(f"targets.latency_device: {err}") from None
    smallest = cost_of(exp.space.arch(exp.space.lower), cost_kind)
    for value in setting_values(setting):
        cost = value * cost_of(exp.space.base, cost_kind) if exp.ratio_targets else value
        if cost < smallest:
            raise ExperimentError(f"targets.{kind}: {value} ({cost:.6g} {exp.match}) is below the smallest "
                                  f"architecture of {exp.space.name} ({smallest:.6g} {exp.match})")


def _check_base_arms(exp: Experiment) -> None:
    """Arms that need the method's base model (its weights, its logits, its training's compute) against methods
    that have none — one error, naming the arm and the method, never a silent skip; and a teacher trained at least
    as long as its students (a teacher weaker than its students answers nothing)."""
    for arm in (a for a in exp.arms if a in BASE_ARMS):
        for method in exp.methods:
            if method == "direct" or not PROPOSERS.get(method).needs_base:
                raise ExperimentError(f"arms: {arm} needs the base model of the method, and {method} has none (it "
                                      f"prunes no trained network); drop {arm} or {method}")
    if any(a in TEACHER_ARMS for a in exp.arms) and not exp.base_weights:
        longest, where = _longest_student(exp)
        if exp.base_schedule_epochs < longest:
            raise ExperimentError(f"base.epochs: the teacher trains {exp.base_schedule_epochs} epochs, fewer than its "
                                  f"{where} students ({longest}); a teacher must train at least as long as them")


def _longest_student(exp: Experiment) -> tuple[int, str]:
    """The longest from-scratch schedule (epochs) of the teacher arms' students, at the targets' nominal cost."""
    epochs = exp.epochs or RECIPES.get(exp.recipe).epochs
    if "scratch-b" not in exp.budgets:
        return epochs, "scratch-e"
    only = exp.budget_targets.get("scratch-b")
    base_cost, base_macs = cost_of(exp.space.base, exp.cost_kind), cost_of(exp.space.base, "macs")
    # a target's share of the base cost, taken as its share of the MACs (exact with match: macs)
    ratios = [value if exp.ratio_targets else value / base_cost for value in setting_values(exp.target[1])
              if only is None or value in only]
    if not ratios:
        return epochs, "scratch-e"
    cap = exp.space.scratch_b_cap
    return max(scratch_epochs("scratch-b", epochs, base_macs, max(1, int(r * base_macs)), cap).epochs
               for r in ratios), "scratch-b"


def _check_batches_split(exp: Experiment) -> None:
    """Every recipe the experiment trains with has a global batch that splits over ``resources.workers``."""
    recipes = {"recipe.name": exp.recipe, "base.recipe": exp.base_recipe}
    if "finetune" in exp.arms:
        recipes["finetune.recipe"] = exp.finetune_recipe
    for where, name in recipes.items():
        try:
            check_batch_split(RECIPES.get(name).batch_size, exp.workers)
        except PrunenasError as err:
            raise ExperimentError(f"resources.workers: {err} ({where} {name})") from None


def _check_published_base(exp: Experiment) -> None:
    """Published weights have no initial state (lottery) and no regulariser (slimming, SSS, SFP)."""
    if "lottery" in exp.arms:
        raise ExperimentError("arms: lottery restarts from the base model's initial weights, which base.weights "
                              f"({exp.base_weights}) does not have; drop lottery or base.weights")
    for method in exp.proposers:
        if PROPOSERS.get(method).regularised_base:
            raise ExperimentError(f"base.weights: {method} trains its base model with a regulariser; published "
                                  "weights serve methods that prune a plainly trained network")
    if exp.base_weights.startswith("torchvision:"):
        try:
            torchvision_builder(exp.space.base)
        except PrunenasError as err:
            raise ExperimentError(str(err)) from None


def _all_settings(exp: Experiment) -> list[tuple[str, Setting]]:
    out = [(f"proposers.{m}.{k}", v) for m, params in exp.proposers.items() for k, v in params.items()]
    kind = exp.target[0]
    out.append((f"targets.{kind}s" if exp.ratio_targets else f"targets.{kind}", exp.target[1]))
    if exp.lr is not None:
        out.append(("recipe.lr", exp.lr))
    return out
