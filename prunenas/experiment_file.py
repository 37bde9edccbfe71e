"""Experiment files: one YAML describing a whole pruning-as-NAS study, validated before anything runs.

Every mistake names the key, the value and what is allowed. See ``experiments/quickstart.yaml`` for an
annotated example and the README for the full list of keys. The schema is :mod:`prunenas.experiment`; the
checks across sections are :mod:`prunenas.experiment_checks`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from prunenas.data import DATASETS
from prunenas.errors import PrunenasError
from prunenas.experiment import (
    ARMS,
    BUDGETS,
    OBJECTIVES,
    SAMPLERS,
    SCHEDULERS,
    SELECTIONS,
    TOP_KEYS,
    Experiment,
    ExperimentError,
    Setting,
)
from prunenas.experiment_checks import cross_checks
from prunenas.experiment_reader import Reader, read_setting
from prunenas.experiment_screening import SCREENING_KEYS, read_screening
from prunenas.fileio import read_text
from prunenas.latency.devices import get_device
from prunenas.pretrained import check_weights_name
from prunenas.proposers import PROPOSERS
from prunenas.recipes import RECIPES
from prunenas.spaces import Space, load_space
from prunenas.train_config import check_distillation


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
    "search": {"sampler", "num_samples", "objectives", "direct", "select", "top_k", "enqueue", *SCREENING_KEYS},
    "resources": {"cpu", "gpu", "workers"},
    "finetune": {"recipe", "epochs"},
    "distill": {"temperature", "weight"},
}


def _section(root: Reader, name: str) -> Reader:
    section = root.section(name)
    section.only(SECTION_KEYS[name])
    return section


def experiment_from_dict(data: Any, default_name: str = "experiment") -> Experiment:
    root = Reader(data, "")
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
        screening=read_screening(search, space),
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
    cross_checks(exp)
    return exp


def _check_expected(expected: Any) -> None:
    """``expected``: the paper's numbers a pack is compared with (documentation; never read by the search)."""
    if expected is None:
        return
    reader = Reader(expected, "expected.")
    reader.only({"unpruned", "rows", "also", "source"})
    for i, row in enumerate(reader.get("rows", list, default=[])):
        Reader(row, f"expected.rows[{i}].").only({"target", "arm", "budget", "value", "tag", "percent", "sparsity"})
        if row.get("tag") not in ("R", "X", "P"):
            raise ExperimentError(f"expected.rows[{i}].tag: {row.get('tag')!r} not in {{R, X, P}} (read, checked, "
                                  "recalled)")


# -- sections ---------------------------------------------------------------------------------------------
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
        reader = Reader(settings, f"proposers.{method}.")
        reader.only(set(info.params))
        out[method] = {}
        for key, value in reader.data.items():
            where = f"proposers.{method}.{key}"
            spec = info.params[key]
            out[method][key] = read_setting(value, where, lambda v, i=info, k=key, w=where: _param_value(i, k, v, w),
                                        numeric=spec.kind in (int, float), integer=spec.kind is int)
    return out


def _param_value(info: Any, key: str, value: Any, where: str) -> Any:
    try:
        return info.check_params({key: value})[key]
    except PrunenasError as err:
        raise ExperimentError(f"{where}: {err}") from None


def _budget_items(root: Reader) -> list[tuple[str, tuple[Any, ...] | None]]:
    """``budgets``: names, or ``{name: scratch-b, targets: [...]}`` to train a budget at some targets only."""
    items = root.get("budgets", list, default=["scratch-e"])
    if not items:
        raise ExperimentError(f"budgets: empty; choose from {{{', '.join(BUDGETS)}}}")
    out = []
    for item in items:
        name, targets = (item, None) if not isinstance(item, dict) else (item.get("name"), item.get("targets"))
        if isinstance(item, dict):
            Reader(item, "budgets[].").only({"name", "targets"})
            if not isinstance(targets, list) or not targets:
                raise ExperimentError(f"budgets: {item!r}: targets must be a non-empty list of target values")
        if name not in BUDGETS:
            raise ExperimentError(f"budgets: {name!r} not in {{{', '.join(BUDGETS)}}}")
        out.append((name, None if targets is None else tuple(targets)))
    return out


def _budget_names(root: Reader) -> list[str]:
    return [name for name, _ in _budget_items(root)]


def _budget_targets(root: Reader) -> dict[str, tuple[Any, ...]]:
    return {name: targets for name, targets in _budget_items(root) if targets is not None}


def _presets(targets: Reader, space: Space) -> tuple[str, ...] | None:
    names = targets.get("presets", list)
    if names is None:
        return None
    for name in names:
        if name not in space.presets:
            raise ExperimentError(f"targets.presets: {name!r} is not a preset of {space.name}; presets: "
                                  f"{', '.join(space.presets) or '(none)'}")
    return tuple(names)


LATENCY_TARGETS = ("latency_ratios", "latency_ms")


def _match(targets: Reader) -> str:
    """``targets.match``: ``latency`` with latency targets (and only then), else ``macs`` or ``params``."""
    latency = any(k in targets.data for k in LATENCY_TARGETS)
    match = targets.choice("match", ("macs", "params", "latency"), default="latency" if latency else "macs")
    if (match == "latency") != latency:
        raise ExperimentError(f"targets.match: {match} goes with " + ("latency_ratios or latency_ms" if match ==
                              "latency" else "ratios or macs") + ", not with the targets given")
    return match


def _latency_device(targets: Reader) -> tuple[str, int, int] | None:
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


def _targets(targets: Reader) -> Setting:
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
        return ("latency_ms", read_setting(targets.data["latency_ms"], "targets.latency_ms", check_ms, numeric=True))
    if "latency_ratios" in targets.data:
        def check_latency_ratio(v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise ExperimentError(f"targets.latency_ratios: {v!r} must be a ratio in (0, 1]")
            return float(v)
        return ("latency_ratio", read_setting(targets.data["latency_ratios"], "targets.latency_ratios",
                                          check_latency_ratio, numeric=True))
    if "macs" in targets.data:
        def check_macs(v: Any) -> int:
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ExperimentError(f"targets.macs: {v!r} must be a positive integer")
            return v
        return ("macs", read_setting(targets.data["macs"], "targets.macs", check_macs, numeric=True, integer=True))

    def check_ratio(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ExperimentError(f"targets.ratios: {v!r} must be a ratio in (0, 1]")
        return float(v)
    return ("ratio", read_setting(targets.data.get("ratios", [0.5]), "targets.ratios", check_ratio, numeric=True))


def _weights(weights: str | None) -> str | None:
    try:
        return None if weights is None else check_weights_name(weights)
    except PrunenasError as err:
        raise ExperimentError(str(err)) from None


def _numeric_setting(reader: Reader, key: str, positive: bool) -> Setting:
    if reader.data.get(key) is None:
        return None

    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (positive and v <= 0):
            raise ExperimentError(f"{reader.prefix}{key}: {v!r} must be a positive number")
        return float(v)
    return read_setting(reader.data[key], reader.prefix + key, check, numeric=True)


def _distillation(distill: Reader) -> dict[str, float]:
    """``distill: {temperature, weight}`` of the teacher arms (defaults T = 4, weight 0.9), checked."""
    temperature = distill.get("temperature", (int, float), default=4.0)
    weight = distill.get("weight", (int, float), default=0.9)
    try:
        check_distillation(temperature, weight, where="distill.")
    except PrunenasError as err:
        raise ExperimentError(str(err)) from None
    return {"distill_temperature": float(temperature), "distill_weight": float(weight)}


def _lr_grid(root: Reader) -> tuple[float, ...] | None:
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


def _objectives(search: Reader) -> tuple[str, ...]:
    value = tuple(search.get("objectives", list, default=["val_acc"]))
    if value not in OBJECTIVES:
        raise ExperimentError(f"search.objectives: {list(value)} must be [val_acc], [val_acc, macs] or "
                              "[val_acc, latency]")
    return value
