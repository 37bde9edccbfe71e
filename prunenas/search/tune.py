"""The search: three phases of Ray Tune trials, Optuna sampling the proposals. The only module that imports
``ray.tune`` and ``optuna``.

0. base models the proposers need, one Tune trial each, trained once into the cache;
1. search: ``OptunaSearch`` (define-by-run, :func:`prunenas.search.plan.suggest`) samples method x parameters x
   target (and learning rate, and with ``direct: true`` per-slot widths); each trial builds the proposal and
   trains it from scratch (Scratch-E) on the search seeds; Optuna is told the mean final validation accuracy
   (and MACs for a Pareto search). The study lives in ``RUN/optuna.journal``;
2. evaluation: a plain Tune run over every arm x budget x evaluation seed of the selected proposals.

Every trained network is one row of ``RUN/results.jsonl`` (prunenas.runs.results), written by the trial itself,
so nothing finished is lost when the driver dies; :func:`resume` continues in whichever phase it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import ray
import yaml
from ray import tune
from ray.job_config import JobConfig
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from prunenas.budget import cost_of
from prunenas.cost import count
from prunenas.data import planned_train_images
from prunenas.errors import PrunenasError
from prunenas.experiment import Experiment
from prunenas.experiment_file import experiment_from_dict
from prunenas.pretrained import ensure_available
from prunenas.proposers import Proposal, load_proposal
from prunenas.proposers.basemodel import RegularizerSpec
from prunenas.references import module_sources
from prunenas.runs.rundir import RunDir
from prunenas.search import console, monitor
from prunenas.search.plan import (
    base_model_specs,
    budget_excess,
    enqueued_points,
    estimate,
    grid_points,
    search_epochs,
    select_proposals,
    suggest,
    target_excess,
    target_object,
)
from prunenas.search.study import STUDY, storage
from prunenas.search.workers import (
    DRIVER_RESOURCES,
    check_cluster_fits,
    trials_at_once,
    worker_trainer,
)
from prunenas.trial import (
    Context,
    Trial,
    evaluated,
    evaluation_trials,
    make_proposal,
    proposal_id,
    run_trial,
    search_rows_by_proposal,
    training_key,
)

# ASHA's view of a search trial (see _search_progress): a global step over its seeds and the running mean accuracy
STEP, RUNNING_ACC = "search_step", "running_val_acc"


def run_search(exp: Experiment, out: str | os.PathLike | None = None, *, address: str | None = None,
               cache_dir: str | None = None, dashboard: bool = True, verbose: bool = False) -> RunDir:
    """Run a whole study into a new run folder; ``verbose`` shows Tune's tables instead of writing them to
    ``RUN/logs/ray.log``."""
    _check_base_weights(exp)
    run = RunDir(out or Path(exp.storage) / f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run.check_writable()
    _start_ray(exp, address or exp.address, dashboard, run)  # a trial the cluster cannot hold fails before the
    # run exists
    source = dict(exp.source, **({"address": address} if address else {}))
    run.create(exp.name, yaml.safe_dump(source, sort_keys=False))
    if cache_dir:
        run.write_state(cache_dir=str(Path(cache_dir).resolve()))
    _execute(run, exp, address or exp.address, dashboard, verbose)
    return run


def resume(path: str | os.PathLike, *, address: str | None = None, dashboard: bool = True,
           verbose: bool = False) -> RunDir:
    """Continue an interrupted run where it stopped; finished rows are never retrained."""
    run = RunDir(path)
    state = run.state()
    if state.get("status") == "finished":
        raise PrunenasError(f"{run.path} is finished; nothing to resume (report it with `prunenas report {run.path}`)")
    exp = experiment_from_dict(yaml.safe_load((run.path / "experiment.yaml").read_text()), state.get("name", "run"))
    _check_base_weights(exp)
    _start_ray(exp, address or exp.address, dashboard, run)
    _execute(run, exp, address or exp.address, dashboard, verbose)
    return run


def _check_base_weights(exp: Experiment) -> None:
    """Published base weights that cannot be had fail here (exit 2), before a run folder or a trial exists."""
    if exp.base_weights:
        ensure_available(exp.base_weights, exp.space.base)


def _execute(run: RunDir, exp: Experiment, address: str | None, dashboard: bool, verbose: bool) -> None:
    exp = _absolute_paths(exp)
    ctx = Context(exp, run, cache_dir=run.state().get("cache_dir"), threads=max(1, int(exp.cpu)),
                  log=None)
    try:
        ctx.data()  # fail early on missing data; trials receive it through Ray's object store
    except BaseException:
        ray.shutdown()
        raise
    with console.ray_output_to_log(run, verbose) as log:
        _run_phases(ctx, address, dashboard, log)


def _run_phases(ctx: Context, address: str | None, dashboard: bool, log: Path | None) -> None:
    run, exp = ctx.run, ctx.experiment
    info = _init_ray(address, dashboard, run)  # started by _start_ray: this returns its context
    try:
        for line in console.startup_lines(run, log, info.dashboard_url, monitor.auth_token(),
                                          os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled"):
            console.say(line)
        if exp.workers > 1:
            ctx.workers, ctx.trainer = exp.workers, worker_trainer(exp, _gpus(exp), run.tune_dir / "train")
        run.write_state(phase=0)
        _phase_base_models(ctx)
        run.write_state(phase=1)
        _phase_search(ctx)
        run.write_state(phase=2)
        missing = _phase_evaluate(ctx)
        if missing:
            run.write_state(status="incomplete", phase=3)
            console.say(f"incomplete: {missing} planned training(s) failed; `prunenas resume {run.path}` retries "
                        f"them (diverged ones are final and never retried)")
        else:
            run.write_state(status="finished", phase=3)
            console.say(f"finished: {run.path}  (report: prunenas report {run.path})")
    finally:
        ray.shutdown()


def _user_modules(exp: Experiment) -> dict:
    """The runtime env that ships a user's own model package to a cluster's workers (they import and re-trace
    it); a single-file module must already be importable on every node (see the README)."""
    folders = [str(p) for p in module_sources(exp.space.base) if p.is_dir()]
    return {"py_modules": folders} if folders else {}


def _init_ray(address: str | None, dashboard: bool, run: RunDir, runtime_env: dict | None = None) -> Any:
    """Start or join Ray with the run's name and folder as the driver job's metadata (the dashboard's Jobs
    view, ``ray.util.state.list_jobs``) and, on a cluster, ``runtime_env`` (the user's model modules); returns
    Ray's context (``dashboard_url``)."""
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # Ray starts workers at niceness 15; here the trials *are* the job, so they run at normal priority
    # (set RAY_worker_niceness yourself to change it). Applies to the local instance only.
    os.environ.setdefault("RAY_worker_niceness", "0")
    job = JobConfig(metadata={"job_name": f"prunenas {run.path.name}", "prunenas_run": str(run.path)})
    if address:
        return ray.init(address=address, ignore_reinit_error=True, log_to_driver=True, job_config=job,
                        runtime_env=runtime_env or None)
    # "local": always a fresh instance here, never a stray cluster left by `ray start`
    return ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                    ignore_reinit_error=True, job_config=job)


def _start_ray(exp: Experiment, address: str | None, dashboard: bool, run: RunDir) -> None:
    """Start (or join) Ray for ``run`` and check that a trial of ``exp`` fits the cluster; Ray is shut down if
    not."""
    _init_ray(address, dashboard, run, _user_modules(exp))
    try:
        check_cluster_fits(dataclasses.replace(exp, gpu=_gpus(exp)))
    except PrunenasError:
        ray.shutdown()
        raise


def _gpus(exp: Experiment) -> float:
    """GPUs per worker: as the experiment says, else one when the cluster has GPUs."""
    return exp.gpu if exp.gpu is not None else (1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0)


def _absolute_paths(exp: Experiment) -> Experiment:
    if exp.data_root:
        exp = exp.with_overrides(data_root=str(Path(exp.data_root).resolve()))
    if exp.base_weights and not exp.base_weights.startswith("torchvision:"):
        exp = dataclasses.replace(exp, base_weights=str(Path(exp.base_weights).resolve()))
    return exp


# -- Tune plumbing ----------------------------------------------------------------------------------------


def _tuner(ctx: Context, trainable: Any, name: str, param_space: dict, progress: console.Progress,
           **tune_config: Any) -> tune.Tuner:
    exp = ctx.experiment
    # a multi-worker trial is only the driver of its Ray Train workers (search/workers.py): it takes nothing
    resources = {"cpu": exp.cpu, "gpu": _gpus(exp)} if exp.workers == 1 else DRIVER_RESOURCES
    with_ctx = tune.with_parameters(trainable, ctx=ctx)
    with_ctx.__mixins__ = (console.IdentifiedTrial,)  # the actor's repr in the dashboard names its trial
    fn = tune.with_resources(with_ctx, resources)
    run_config = tune.RunConfig(name=name, storage_path=str(ctx.run.tune_dir), verbose=console.tune_verbosity(),
                                failure_config=tune.FailureConfig(max_failures=exp.max_failures),
                                callbacks=[progress])
    concurrency = exp.concurrency if exp.workers == 1 else trials_at_once(exp)
    config = tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True, **tune_config)
    return tune.Tuner(fn, param_space=param_space, tune_config=config, run_config=run_config)


def _progress(ctx: Context, planned: str, phase: str, total: int, rows: bool = True) -> console.Progress:
    """The console progress of a phase; its ETA prices a training at the plan's estimated cost per training
    of the phase (:func:`prunenas.search.plan.estimate`, MACs x epochs)."""
    exp = ctx.experiment
    images = planned_train_images(exp.dataset, exp.val_size, exp.subset)
    phase_plan = estimate(exp, images)[planned]
    trainings = phase_plan.get("trainings", phase_plan["trials"])
    return console.Progress(ctx.run, phase, total, phase_plan["cost"] / max(trainings, 1) / images, rows=rows)


def _attempt_name(ctx: Context, phase: str) -> str:
    """A fresh Tune experiment name per attempt (resume never depends on Tune's own restore)."""
    existing = len(list(ctx.run.tune_dir.glob(f"{phase}-*"))) if ctx.run.tune_dir.exists() else 0
    return f"{phase}-{existing + 1}"


def _report_epochs(prefix: dict[str, Any], macs: int | None = None,
                   extra: Callable[[dict[str, float]], dict[str, Any]] | None = None):
    """Per-epoch progress: a Tune result (for the progress table, ASHA, TensorBoard) and Ray metrics;
    ``extra(metrics)`` adds phase-specific entries to the result."""
    tags = {"run": prefix.get("run", ""), "phase": prefix.get("phase", ""), "method": prefix.get("method", ""),
            "arm": prefix.get("arm", ""), "trial": tune.get_context().get_trial_name()}

    def report(metrics: dict[str, float]) -> None:
        monitor.publish_epoch(tags, metrics, macs)
        tune.report({**prefix, "epoch_val_acc": metrics["val_acc"], "epoch": metrics["epoch"],
                     "train_loss": metrics["train_loss"], "images_per_s": metrics["images_per_s"],
                     "score": metrics["val_acc"], "final": False, **(extra(metrics) if extra else {})})
    return report


def _trial_tags(ctx: Context, phase: str, method: str = "", arm: str = "") -> dict[str, str]:
    ctx.node = ray.get_runtime_context().get_node_id()  # recorded in the trial's rows
    return {"run": ctx.run.path.name, "phase": phase, "method": method, "arm": arm,
            "trial": tune.get_context().get_trial_name()}


# -- phase 0: base models ---------------------------------------------------------------------------------


def _phase_base_models(ctx: Context) -> None:
    specs = base_model_specs(ctx.experiment)
    provider = ctx.provider()
    missing = [(m, s) for m, s in specs if not (provider.cache_dir / provider.key(s)).exists()]
    console.say(f"phase 0: {len(specs)} base model(s), {len(missing)} to train")
    if not missing:
        return
    grid = [{"method": m, "spec": None if s is None else {"kind": s.kind, "params": list(map(list, s.params))}}
            for m, s in missing]
    with _progress(ctx, "base_models", "base", len(missing), rows=False) as progress:
        results = _tuner(ctx, _base_model_trial, _attempt_name(ctx, "base"),
                         {"base": tune.grid_search(grid)}, progress).fit()
    _raise_if_all_failed(results, "phase 0 (base models)")


def _base_model_trial(config: dict, ctx: Context) -> None:
    spec = config["base"]["spec"]
    spec = None if spec is None else RegularizerSpec(spec["kind"], tuple((k, _tuple(v)) for k, v in spec["params"]))
    provider = ctx.provider()
    provider.on_epoch = _report_epochs({"phase": "base", "run": ctx.run.path.name})
    with _counted(_trial_tags(ctx, "base", config["base"]["method"])):
        base = provider.get(spec)
    tune.report({"score": base.val_acc, "final": True, "phase": "base",
                 "summary": f"base model {base.key} ({config['base']['method']}): val {base.val_acc:.2%}"})


def _tuple(value: Any) -> Any:
    return tuple(_tuple(v) for v in value) if isinstance(value, list) else value


# -- phase 1: search --------------------------------------------------------------------------------------


class _Searcher(OptunaSearch):
    """OptunaSearch that tells Optuna final scores only as values: the running mean accuracy at each global
    step is an intermediate value (``trial.report``; single objective only), so a trial stopped early (ASHA) is
    PRUNED with its last one; a failed or diverged trial is FAIL, and an over-budget direct trial (never
    trained) PRUNED without a value — never a score."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_step: dict[str, int] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._report_intermediate(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        final = result if (result and result.get("final") and not error) else None
        if result and not final and not error:  # stopped: Tune does not pass the stopping result on
            self._report_intermediate(trial_id, result)
        if result and result.get("proposal") and trial_id in self._ot_trials:  # links the study to the rows
            self._ot_trials[trial_id].set_user_attr("proposal", result["proposal"])
        self._last_step.pop(trial_id, None)
        super().on_trial_complete(trial_id, final, error)

    def _report_intermediate(self, trial_id: str, result: dict) -> None:
        step = result.get(STEP)
        if isinstance(self.metric, list) or step is None or result.get("final") or \
                step <= self._last_step.get(trial_id, 0) or trial_id not in self._ot_trials:
            return
        self._ot_trials[trial_id].report(result[RUNNING_ACC], step)
        self._last_step[trial_id] = step


def _sampler(exp: Experiment) -> optuna.samplers.BaseSampler:
    seed = exp.search_seeds[0]
    if exp.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if exp.sampler in ("random", "grid"):  # grid: every point is enqueued, the sampler never decides
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _directions(exp: Experiment) -> dict[str, Any]:
    if len(exp.objectives) == 2:
        return {"directions": ["maximize", "minimize"]}
    return {"direction": "maximize"}


def prepare_study(run: RunDir, exp: Experiment) -> tuple[int, int]:
    """Create or reopen the study: RUNNING trials of a killed driver become FAIL and are enqueued again.

    Returns (trials finished, trials still to run).
    """
    journal = storage(run)
    names = [s.study_name for s in optuna.get_all_study_summaries(journal)]
    study = optuna.create_study(storage=journal, study_name=STUDY, load_if_exists=True, **_directions(exp))
    if STUDY not in names:
        points = grid_points(exp) if exp.sampler == "grid" else enqueued_points(exp) if exp.enqueue else []
        for point in points:
            study.enqueue_trial(point, skip_if_exists=True)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params)
        console.say(f"  trial {trial.number} was running when the driver stopped: marked failed and enqueued again")
    states = [t.state for t in study.get_trials(deepcopy=False)]
    finished = sum(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states)
    waiting = sum(s == optuna.trial.TrialState.WAITING for s in states)
    total = len(grid_points(exp)) if exp.sampler == "grid" else max(exp.num_samples, len(enqueued_points(exp)))
    return finished, max(total - finished, waiting)


def _phase_search(ctx: Context) -> None:
    exp = ctx.experiment
    finished, remaining = prepare_study(ctx.run, exp)
    console.say(f"phase 1: search, {finished} trial(s) done, {remaining} to run "
          f"({exp.sampler}, {len(exp.search_seeds)} seed(s) each)")
    if remaining <= 0:
        return
    metric, mode = (["score", "macs"], ["max", "min"]) if len(exp.objectives) == 2 else ("score", "max")
    searcher = _Searcher(space=functools.partial(suggest, exp=exp), metric=metric, mode=mode,
                         sampler=_sampler(exp), study_name=STUDY, storage=storage(ctx.run))
    scheduler = _asha(exp) if exp.scheduler == "asha" else None
    with _progress(ctx, "search", "search", remaining * len(exp.search_seeds)) as progress:
        results = _tuner(ctx, _search_trial, _attempt_name(ctx, "search"), {}, progress, search_alg=searcher,
                         scheduler=scheduler, num_samples=remaining).fit()
    _raise_if_all_failed(results, "phase 1 (search)")
    summary = search_summary(ctx.run)
    ctx.run.write_state(search=summary)
    console.say("phase 1: " + ", ".join(f"{n} {state}" for state, n in summary.items()))


def _asha(exp: Experiment) -> Any:
    """ASHA over the global step ``epoch + seed_index x epochs`` of a search trial (its seeds train in turn),
    comparing the running mean validation accuracy (see :func:`_search_progress`). ``max_t`` is the last
    step, which only the trial's final report carries: a trial that reaches it has written all its rows."""
    return ASHAScheduler(time_attr=STEP, metric=RUNNING_ACC, mode="max", grace_period=1,
                         max_t=search_epochs(exp) * len(exp.search_seeds))


def search_summary(run: RunDir) -> dict[str, int]:
    """Search trials by outcome: complete (a score), stopped early (ASHA), over budget (never trained), failed."""
    study = optuna.load_study(study_name=STUDY, storage=storage(run))
    summary = {"complete": 0, "stopped early": 0, "over budget": 0, "failed": 0}
    for trial in study.get_trials(deepcopy=False):
        if trial.state == optuna.trial.TrialState.COMPLETE:
            summary["complete"] += 1
        elif trial.state == optuna.trial.TrialState.PRUNED:
            summary["over budget" if trial.user_attrs.get("over_budget") else "stopped early"] += 1
        elif trial.state == optuna.trial.TrialState.FAIL:
            summary["failed"] += 1
    return summary


def _search_progress(exp: Experiment, finished: list[float], seed_index: int):
    """Per-epoch entries of a search trial for ASHA and Optuna: the global step ``epoch + seed_index x epochs``
    and the mean validation accuracy of the seeds so far (finished seeds' final, this seed's current epoch).
    Every trial trains the same seeds in the same order, so trials at the same step are compared on the same
    footing; at the last step the mean is the trial's score. That step is left to the final report (a trial
    stopped inside this epoch's report would never write its last row)."""
    epochs = search_epochs(exp)
    last = epochs * len(exp.search_seeds)

    def progress(metrics: dict[str, float]) -> dict[str, Any]:
        step = int(metrics["epoch"]) + seed_index * epochs
        running = statistics.fmean([*finished, metrics["val_acc"]])
        return {RUNNING_ACC: running, "score": running, **({STEP: step} if step < last else {})}
    return progress


def _search_trial(config: dict, ctx: Context) -> None:
    spec = config["trial"]
    exp = ctx.experiment
    target = spec["target"]
    proposal = make_proposal(ctx, spec["method"], spec["params"], target_object(exp, target))
    pid = proposal_id(proposal)
    macs = count(proposal.arch).macs
    if spec["method"] == "direct" and budget_excess(exp, cost_of(proposal.arch, exp.cost_kind)) > 0:
        # Tune wants the metrics in every result: none has a value, so Optuna records PRUNED without one
        tune.report({"score": None, RUNNING_ACC: None, "macs": macs, "proposal": pid, "final": False,
                     "summary": f"direct {list(proposal.arch.widths)}: over the budget, not trained"})
        return
    accuracies: list[float] = []
    prefix = {"run": ctx.run.path.name, "phase": "search", "method": proposal.method, "proposal": pid,
              "macs": macs}
    with _counted(_trial_tags(ctx, "search", proposal.method, "proposed")):
        for i, seed in enumerate(exp.search_seeds):
            training = Trial(proposal.arch, "proposed", "scratch-e", seed, spec["lr"], pid, proposal.method)
            on_epoch = _report_epochs({**prefix, "seed_index": i}, macs, _search_progress(exp, accuracies, i))
            accuracies.append(run_trial(ctx, training, "search", on_epoch=on_epoch)["val_acc"])
    score = statistics.fmean(accuracies)
    tune.report({"score": score, "val_acc": score, RUNNING_ACC: score, STEP: search_epochs(exp) * len(accuracies),
                 "macs": macs, "proposal": pid, "final": True,
                 "summary": f"{proposal.method} {dict(spec['params'])} target {target}: val {score:.2%} "
                            f"(n={len(accuracies)}), {macs / 1e6:.2f}M MACs"})


# -- phase 2: evaluation ----------------------------------------------------------------------------------


def _phase_evaluate(ctx: Context) -> int:
    """Train every arm of the selected proposals; returns how many planned trainings have no final row."""
    exp = ctx.experiment
    proposals = {pid: load_proposal(ctx.run.proposal_path(pid)) for pid in ctx.run.proposal_ids()}
    by_proposal = search_rows_by_proposal({pid: p.arch.digest() for pid, p in proposals.items()},
                                          ctx.run.results.latest().values())
    scores = {pid: (statistics.fmean(r["val_acc"] for r in rs), rs[0]["macs"])
              for pid, rs in by_proposal.items() if _selectable(ctx, pid, proposals[pid], rs)}
    chosen = select_proposals(exp, scores)
    lrs = {pid: rs[0]["recipe"]["lr"] if exp.lr is not None else None for pid, rs in by_proposal.items()}
    plan, trainings = {}, {}
    for pid in chosen:
        for training in evaluation_trials(ctx, proposals[pid], pid, lrs[pid]):
            key = training_key(ctx, training)
            entry = {"arm": training.arm, "budget": training.budget, "seed": training.seed, "key": key}
            plan.setdefault(pid, []).append({**entry, "lr": training.lr} if exp.lr_grid else entry)
            trainings[key] = training
    ctx.run.write_json("plan.json", {"selected": chosen, "select": exp.select, "proposals": plan})
    todo = _unevaluated(ctx, trainings)
    console.say(f"phase 2: evaluation of {len(chosen)} proposal(s): {len(trainings)} training(s), {len(todo)} to run")
    if todo:
        grid = [trainings[k].to_dict() for k in todo]
        with _progress(ctx, "evaluation", "eval", len(todo)) as progress:
            results = _tuner(ctx, _evaluation_trial, _attempt_name(ctx, "eval"),
                             {"training": tune.grid_search(grid)}, progress).fit()
        _raise_if_all_failed(results, "phase 2 (evaluation)")
    return len(_unevaluated(ctx, trainings))


def _selectable(ctx: Context, pid: str, proposal: Proposal, rows: list[dict]) -> bool:
    """A proposal is selected only on a full search score (every search seed: a trial stopped by ASHA in a
    later seed is not) and only if it meets its cost target within the twin tolerance."""
    exp = ctx.experiment
    if {r["seed"] for r in rows} != set(exp.search_seeds):
        return False
    excess = target_excess(exp, proposal)
    if excess > 0:
        console.say(f"  proposal {pid} ({proposal.method}) exceeds its target by {excess:.1%} beyond the tolerance: "
              "not selected")
    return excess <= 0


def _unevaluated(ctx: Context, keys: Any) -> list[str]:
    latest = ctx.run.results.latest()
    return [k for k in keys if not evaluated(latest.get(k))]


def _evaluation_trial(config: dict, ctx: Context) -> None:
    training = Trial.from_dict(config["training"], ctx.run)
    prefix = {"run": ctx.run.path.name, "phase": "eval", "method": training.method or "", "arm": training.arm}
    with _counted(_trial_tags(ctx, "eval", training.method or "", training.arm)):
        row = run_trial(ctx, training, "eval", on_epoch=_report_epochs(prefix, count(training.arch).macs))
    tune.report({"score": row["val_acc"], "final": True, "arm": training.arm,
                 "summary": f"{training.arm} {training.budget} seed {training.seed} ({training.method}): "
                            f"val {row['val_acc']:.2%}, test {row['test_acc']:.2%}"})


@contextlib.contextmanager
def _counted(tags: dict[str, str]):
    """Count the trial as finished or failed on Ray's metrics endpoint."""
    try:
        yield
    except BaseException:
        monitor.publish_trial_end(tags, ok=False)
        raise
    monitor.publish_trial_end(tags, ok=True)


def _raise_if_all_failed(results: Any, phase: str) -> None:
    errors = results.num_errors
    if errors:
        console.say(f"{phase}: {errors} trial(s) failed (rows marked failed; `prunenas resume` retries them)")
    if errors and errors == len(results):
        raise PrunenasError(f"every trial of {phase} failed; first error: {results.errors[0]}")
