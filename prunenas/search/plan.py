"""What a search will do, computed without running it: the sampled space (define-by-run, Optuna-free: it
only calls ``trial.suggest_*``), the points enqueued first, the base models needed, the proposals chosen for
evaluation, and the dry-run estimate of trials and cost."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

from prunenas.arch import Architecture
from prunenas.budget import (
    TOLERANCE,
    Schedule,
    cost_of,
    scratch_epochs,
    scratch_full_epochs,
    tolerance_of,
)
from prunenas.cost import count
from prunenas.experiment import (
    TEACHER_ARMS,
    Experiment,
    Range,
    Setting,
    setting_values,
    target_choices,
    target_setting,
)
from prunenas.proposers import PROPOSERS, Proposal, Target
from prunenas.proxies import PROXIES
from prunenas.recipes import RECIPES, scale_milestones
from prunenas.runs.latency_measurements import measurement_devices
from prunenas.spaces import Space

# -- the sampled space ----------------------------------------------------------------------------------


def suggest(trial: Any, exp: Experiment) -> dict[str, Any]:
    """Define-by-run space: method, its parameters, its target, the learning rate; sets the MAC constraint.

    Parameter names are ``method``, ``METHOD/PARAM``, ``METHOD/target``, ``lr`` and ``direct/wI``.
    """
    method = trial.suggest_categorical("method", exp.methods)
    params: dict[str, Any] = {}
    if method == "direct":
        space = exp.space
        grids = [width_grid(space, i) for i in range(len(space.upper))]
        raw = [trial.suggest_int(f"direct/w{i}", low, high, step=step) for i, (low, high, step) in enumerate(grids)]
        widths = space.base.family_obj.repair_widths(space.base.opts, raw)
        params["widths"] = list(widths)
        trial.set_user_attr("widths", list(widths))  # what is trained: the family's repair may raise some
        target = budget_value(exp)
        cost = cost_of(space.arch(widths), exp.cost_kind)
        if budget_excess(exp, cost) > 0:
            trial.set_user_attr("over_budget", True)
    else:
        for key, setting in exp.proposers[method].items():
            params[key] = _suggest(trial, f"{method}/{key}", setting)
        target = _suggest(trial, f"{method}/target", target_setting(exp, method))
        cost = target_cost(exp, target)
    trial.set_constraint(exp.match, budget_excess(exp, cost))
    lr = _suggest(trial, "lr", exp.lr) if exp.lr is not None else None
    return {"trial": {"method": method, "params": params, "target": target, "lr": lr}}


def _suggest(trial: Any, name: str, setting: Setting) -> Any:
    if isinstance(setting, Range):
        if setting.integer:
            return trial.suggest_int(name, int(setting.low), int(setting.high), log=setting.log)
        return trial.suggest_float(name, setting.low, setting.high, log=setting.log)
    if isinstance(setting, list):
        return trial.suggest_categorical(name, setting)
    return setting


def width_grid(space: Space, slot: int) -> tuple[int, int, int]:
    """(low, high, step) of a directly sampled width: the multiples of the slot's rounding unit
    (:meth:`Space.multiple <prunenas.spaces.Space.multiple>`) within its bounds, so every sampled width is one
    the space's rounding keeps as it is (a slot narrower than the multiple has its base width only)."""
    step, lower, upper = space.multiple(slot), space.lower[slot], space.upper[slot]
    low = -(-lower // step) * step
    if low > upper:
        return upper, upper, 1
    return low, low + (upper - low) // step * step, step


def budget_excess(exp: Experiment, cost: float) -> float:
    """How far ``cost`` exceeds the search's budget beyond the twin tolerance (budget.tolerance_of), as a fraction
    of the budget: > 0 is infeasible. The Optuna constraint of every trial."""
    return cost / budget_cost(exp) - 1 - tolerance_of(exp.cost_kind)


def target_excess(exp: Experiment, proposal: Proposal) -> float:
    """How far ``proposal`` exceeds its own cost target beyond the twin tolerance, as a fraction of the target:
    > 0 means it would be evaluated under a target it does not meet. Presets meet themselves by definition."""
    target = proposal.target
    if not target.is_cost:
        return -TOLERANCE
    kind = target.cost_kind(exp.space)
    return cost_of(proposal.arch, kind) / target.absolute(exp.space) - 1 - tolerance_of(kind)


def search_epochs(exp: Experiment) -> int:
    """Epochs of one search training (Scratch-E of the experiment's recipe)."""
    return exp.epochs or RECIPES.get(exp.recipe).epochs


def budget_value(exp: Experiment) -> Any:
    """The most expensive target of any method (the search's cost budget)."""
    methods = [m for m in exp.methods if m != "direct"] or ["direct"]
    return max((t for m in methods for t in target_choices(exp, m)), key=lambda t: target_cost(exp, t))


def budget_cost(exp: Experiment) -> float:
    return target_cost(exp, budget_value(exp))


def target_cost(exp: Experiment, target: Any) -> float:
    """MACs (params, predicted ms) that a target value asks for; presets cost what their architecture costs."""
    if isinstance(target, str) and target.startswith("preset:"):
        return cost_of(exp.space.preset(target.removeprefix("preset:")), exp.cost_kind)
    if exp.ratio_targets:
        return target * cost_of(exp.space.base, exp.cost_kind)
    return target


def target_object(exp: Experiment, target: Any) -> Target:
    kind = {"match": exp.match, "latency_device": exp.latency_device}
    if isinstance(target, str) and target.startswith("preset:"):
        return Target(preset=target.removeprefix("preset:"), **kind)
    if exp.ratio_targets:
        return Target(ratio=float(target), **kind)
    return Target(cost=float(target) if exp.latency_device else int(target), **kind)


# -- enqueued points ------------------------------------------------------------------------------------


def enqueued_points(exp: Experiment) -> list[dict[str, Any]]:
    """Tried first: every method at its default parameters and at each target choice (presets included)."""
    points = []
    for method in exp.proposers:
        defaults = {f"{method}/{k}": _default(method, k, s) for k, s in exp.proposers[method].items()
                    if isinstance(s, (list, Range))}
        for target in _choices(target_setting(exp, method)):
            point = {"method": method, **defaults}
            if isinstance(target_setting(exp, method), (list, Range)):
                point[f"{method}/target"] = target
            if isinstance(exp.lr, (list, Range)):
                point["lr"] = _middle(exp.lr)
            points.append(point)
    return points


def grid_points(exp: Experiment) -> list[dict[str, Any]]:
    """Every combination of the choices (the grid sampler): method x parameter choices x targets x lr."""
    points = []
    lrs = _choices(exp.lr) if isinstance(exp.lr, list) else [None]
    for method in exp.proposers:
        names = [k for k, s in exp.proposers[method].items() if isinstance(s, list)]
        values = [exp.proposers[method][k] for k in names]
        targets = _choices(target_setting(exp, method))
        for combo in itertools.product(*values, targets, lrs):
            point = {"method": method, **{f"{method}/{k}": v for k, v in zip(names, combo)}}
            if isinstance(target_setting(exp, method), list):
                point[f"{method}/target"] = combo[len(names)]
            if combo[-1] is not None:
                point["lr"] = combo[-1]
            points.append(point)
    return points


def _choices(setting: Setting) -> list[Any]:
    return setting_values(setting, lambda r: [_middle(r)])


def _middle(setting: Setting) -> Any:
    if isinstance(setting, list):
        return setting[0]
    if not isinstance(setting, Range):
        return setting
    mid = math.sqrt(setting.low * setting.high) if setting.log else (setting.low + setting.high) / 2
    return int(round(mid)) if setting.integer else mid


def _default(method: str, key: str, setting: Setting) -> Any:
    default = PROPOSERS.get(method).params[key].default
    if isinstance(setting, list):
        return default if default in setting else setting[0]
    return default if setting.low <= default <= setting.high else _middle(setting)


# -- base models ----------------------------------------------------------------------------------------


def base_model_specs(exp: Experiment) -> list[tuple[str, Any]]:
    """(method, RegularizerSpec) of the base models the first points (enqueued, or the grid) need, once each."""
    out, seen = [], set()
    for point in grid_points(exp) if exp.sampler == "grid" else enqueued_points(exp):
        method = point["method"]
        if not PROPOSERS.get(method).needs_base:
            continue
        params = {k.split("/", 1)[1]: v for k, v in point.items() if k.startswith(f"{method}/") and
                  not k.endswith("/target")}
        fixed = {k: s for k, s in exp.proposers[method].items() if not isinstance(s, (list, Range))}
        target = point.get(f"{method}/target", _choices(target_setting(exp, method))[0])
        spec = PROPOSERS.get(method).base_spec(exp.space, target_object(exp, target), {**fixed, **params})
        if spec not in seen:
            seen.add(spec)
            out.append((method, spec))
    screening = exp.screening
    proxies = [] if screening is None else [screening.proxy, *(name for name, _ in screening.fidelity_proxies)]
    needs_base = [name for name in proxies if PROXIES.get(name).needs_base]
    if needs_base and None not in seen:  # a proxy that inherits weights reads the plainly trained base model
        out.append((needs_base[0], None))
    return out


# -- evaluation -----------------------------------------------------------------------------------------


def pareto_cost(exp: Experiment, arch: Architecture) -> float:
    """The cost a two-objective search trades accuracy against, and the Pareto selection's second axis: MACs, or
    with ``objectives: [val_acc, latency]`` the latency the targets' predictor gives (ms)."""
    if "latency" in exp.objectives:
        return cost_of(arch, exp.cost_kind)
    return count(arch).macs


def select_proposals(exp: Experiment, scores: Mapping[str, tuple[float, float]]) -> list[str]:
    """Proposal ids to evaluate, from ``{id: (mean search val_acc, pareto_cost)}``: all, the top k, or the
    Pareto set."""
    ranked = sorted(scores, key=lambda pid: (-scores[pid][0], scores[pid][1], pid))
    if exp.select == "all":
        return ranked
    if exp.select == "top-k":
        return ranked[:exp.top_k]
    front, best_cost = [], math.inf
    for pid in ranked:  # max accuracy, then min cost
        if scores[pid][1] < best_cost:
            front.append(pid)
            best_cost = scores[pid][1]
    return front


# -- dry run --------------------------------------------------------------------------------------------


def estimate(exp: Experiment, train_images: int, num_samples: int | None = None) -> dict[str, Any]:
    """Planned trials per phase and their cost in forward MACs x images x epochs (training ~3x that)."""
    base_macs = count(exp.space.base).macs
    base_recipe = RECIPES.get(exp.base_recipe)
    base_recipe = base_recipe.with_epochs(exp.base_epochs) if exp.base_epochs else base_recipe
    base_epochs = 0 if exp.base_weights else base_recipe.epochs  # published weights: nothing to train
    recipe = RECIPES.get(exp.recipe)
    recipe = recipe.with_epochs(exp.epochs) if exp.epochs else recipe
    epochs = recipe.epochs
    finetune = RECIPES.get(exp.finetune_recipe)
    finetune = finetune.with_epochs(exp.finetune_epochs) if exp.finetune_epochs else finetune
    bases = base_model_specs(exp)
    samples = _search_trials(exp, num_samples)
    planned = _planned_targets(exp)
    targets = sorted({_target_macs(exp, t) for t in planned})
    mean_macs = sum(targets) / len(targets)
    per_budget = {}
    for budget in exp.budgets:
        only = exp.budget_targets.get(budget)
        per_budget[budget] = sorted({scratch_epochs(budget, epochs, base_macs, int(_target_macs(exp, t)),
                                                    exp.space.scratch_b_cap, recipe.milestones)
                                     for t in planned if only is None or t in only}, key=lambda s: s.epochs)
    per_budget["scratch-full"] = sorted({_scratch_full(exp, recipe.milestones, epochs, base_macs, _target_macs(exp, t))
                                         for t in planned}, key=lambda s: s.epochs)
    n_proposals = samples if exp.select != "top-k" else min(samples, exp.top_k)
    evaluations = []
    lr_trials = len(exp.lr_grid or [None])
    for arm in exp.arms:
        teacher = base_macs if arm in TEACHER_ARMS else 0  # a forward pass is ~1/3 of a training step
        for budget in exp.arm_budgets(arm):
            schedules = [finetune] if budget == "finetune" else per_budget[budget]
            epoch_list = [s.epochs for s in schedules]
            mean_epochs = sum(epoch_list) / len(epoch_list)
            only = exp.budget_targets.get(budget)
            share = 1.0 if only is None else sum(t in only for t in planned) / len(planned)
            n = round(n_proposals * share) * len(exp.eval_seeds) * lr_trials
            lr = (finetune.lr if budget == "finetune" else recipe.lr) if exp.lr is None or budget == "finetune" \
                else _lr_plan(exp.lr)
            evaluations.append({"arm": arm, "budget": budget, "trials": n, "epochs": epoch_list,
                                "milestones": [list(s.milestones) for s in schedules],
                                "lr": list(exp.lr_grid) if exp.lr_grid else lr,
                                "cost": n * (mean_macs + teacher / 3) * train_images * mean_epochs})
    phases = {
        "base_models": {"trials": len(bases), "specs": [{"method": m, "regularizer": s.to_dict() if s else None}
                                                        for m, s in bases],
                        "epochs": base_epochs, "milestones": [] if exp.base_weights else list(base_recipe.milestones),
                        "lr": None if exp.base_weights else base_recipe.lr, "weights": exp.base_weights,
                        "cost": len(bases) * base_macs * train_images * base_epochs},
        "search": {"trials": samples, "trainings": samples * len(exp.search_seeds), "epochs": epochs,
                   "enqueued": samples if exp.sampler == "grid" else len(enqueued_points(exp)),
                   "screening": _screening_plan(exp),
                   "cost": samples * len(exp.search_seeds) * mean_macs * train_images * epochs},
        "evaluation": {"proposals": n_proposals, "trials": sum(e["trials"] for e in evaluations),
                       "arms": evaluations, "cost": sum(e["cost"] for e in evaluations)},
    }
    phases["total_cost"] = sum(p["cost"] for p in phases.values() if isinstance(p, dict))
    phases["resources"] = trial_resources(exp, recipe.batch_size)
    phases["latency"] = {"proposals": n_proposals, "devices": [d.name for d in measurement_devices(exp.latency_device)]}
    return phases


def _search_trials(exp: Experiment, num_samples: int | None) -> int:
    """Candidates the search trains: the samples (at least the enqueued points), every grid point, or the
    promoted and audit candidates of a screening."""
    if exp.screening:
        return exp.screening.trained
    if exp.sampler == "grid":
        return len(grid_points(exp))
    return max(num_samples or exp.num_samples, len(enqueued_points(exp)))


def _screening_plan(exp: Experiment) -> dict[str, Any] | None:
    """What the screening of a multi-fidelity search does (None for a plain search)."""
    x = exp.screening
    if x is None:
        return None
    return {"proxy": x.proxy, "params": dict(x.params), "screen": x.screen, "promote": x.promote, "audit": x.audit,
            "fidelity_proxies": [{"name": name, "params": dict(params)} for name, params in x.fidelity_proxies]}


def _scratch_full(exp: Experiment, milestones: tuple[int, ...], epochs: int, base_macs: int,
                  macs: float) -> Schedule:
    """The ``scratch-full`` schedule at a target's MACs (budget.scratch_full_epochs, milestones scaled)."""
    full = scratch_full_epochs(exp.base_schedule_epochs, base_macs, max(1, int(macs)), exp.finetune_schedule_epochs)
    return Schedule(full, scale_milestones(milestones, epochs, full))


def trial_resources(exp: Experiment, batch_size: int) -> dict[str, Any]:
    """What one trial takes: workers, CPUs and GPUs per worker (``gpu: null``: one per worker when the cluster
    has GPUs), each worker's share of a global batch and of a training's cost."""
    return {"workers": exp.workers, "cpu_per_worker": exp.cpu, "gpu_per_worker": exp.gpu,
            "batch_per_worker": batch_size // exp.workers, "cost_share_per_worker": 1 / exp.workers}


def _lr_plan(setting: Setting) -> Any:
    """The learning rate a search samples, as the plan shows it: a value, the choices, or ``[low, high]``."""
    return [setting.low, setting.high] if isinstance(setting, Range) else setting


def _planned_targets(exp: Experiment) -> list[Any]:
    """The target each method is planned at, over all methods (a range: its middle), repeats kept."""
    return [t for m in exp.proposers for t in _choices(target_setting(exp, m))]


def _target_macs(exp: Experiment, target: Any) -> float:
    """MACs a target is expected to give (exact for presets; params and latency targets scaled by the base's MACs
    per param or per predicted ms)."""
    if isinstance(target, str):
        return count(exp.space.preset(target.removeprefix("preset:"))).macs
    cost = target_cost(exp, target)
    if exp.match == "macs":
        return cost
    return cost * count(exp.space.base).macs / cost_of(exp.space.base, exp.cost_kind)


def format_estimate(exp: Experiment, est: Mapping[str, Any]) -> str:
    b, s, e = est["base_models"], est["search"], est["evaluation"]
    training = f"published weights {b['weights']}, evaluated only" if b["weights"] else f"{b['epochs']} epochs each"
    lines = [f"experiment {exp.name}: space {exp.space.name}, data {exp.dataset}",
             f"phase 0  base models: {b['trials']} trial(s), {training} "
             f"({', '.join(x['method'] for x in b['specs']) or 'none needed'})  cost {_e(b['cost'])}",
             f"phase 1  search: {s['trials']} trial(s) ({s['enqueued']} enqueued first), {s['trainings']} training(s) "
             f"of {s['epochs']} epochs  cost {_e(s['cost'])}",
             f"phase 2  evaluation: {e['proposals']} proposal(s) -> {e['trials']} training(s)  cost {_e(e['cost'])}"]
    if s["screening"]:
        x = s["screening"]
        lines.insert(2, f"phase 1  screen: {x['screen']} candidate(s) by proxy {x['proxy']} {x['params']}, then the "
                        f"top {x['promote']} + {x['audit']} drawn at random (audit) trained fully")
    for arm in e["arms"]:
        drops = f", lr drops at {arm['milestones']}" if any(arm["milestones"]) else ""
        lines.append(f"           {arm['arm']:9} {arm['budget']:9} {arm['trials']:4d} trials, epochs {arm['epochs']}, "
                     f"lr {arm['lr']}{drops}")
    lines.append(f"phase 3  latency: {est['latency']['proposals']} proposal(s) and their uniform twins measured "
                 f"once after training on {', '.join(est['latency']['devices'])}")
    lines.append(f"total cost {_e(est['total_cost'])} (forward MACs x training images x epochs; training is ~3x)")
    r = est["resources"]
    gpu = "1 GPU if the cluster has GPUs" if r["gpu_per_worker"] is None else f"{r['gpu_per_worker']:g} GPU"
    lines.append(f"per trial {r['workers']} worker(s) x ({r['cpu_per_worker']:g} CPU, {gpu}), batch "
                 f"{r['batch_per_worker']} per worker, each worker {r['cost_share_per_worker']:.3g} of a training's "
                 f"cost" + (" (plus the trial's driver, which takes no CPU)" if r["workers"] > 1 else ""))
    return "\n".join(lines)


def _e(value: float) -> str:
    return f"{value:.3g}"
