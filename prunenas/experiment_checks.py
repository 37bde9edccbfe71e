"""Checks across an experiment's sections, made once it is read: arms against methods, teachers against
students, batches against workers, seeds, samplers and targets against the space."""

from __future__ import annotations

from prunenas.budget import cost_of, scratch_epochs
from prunenas.distributed import check_batch_split
from prunenas.errors import PrunenasError
from prunenas.experiment import (
    BASE_ARMS,
    TEACHER_ARMS,
    Experiment,
    ExperimentError,
    Range,
    Setting,
    setting_values,
    target_choices,
)
from prunenas.experiment_screening import check_screening
from prunenas.pretrained import torchvision_builder
from prunenas.proposers import PROPOSERS
from prunenas.recipes import RECIPES


def cross_checks(exp: Experiment) -> None:
    _check_base_arms(exp)
    _check_batches_split(exp)
    check_screening(exp)
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
    if "latency" in exp.objectives and exp.latency_device is None:
        raise ExperimentError("search.objectives: latency is the predicted latency on the targets' device: give "
                              "targets.latency_ratios or latency_ms with targets.latency_device")
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
