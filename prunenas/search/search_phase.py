"""Phase 1 of the search: ``OptunaSearch`` samples method x parameters x target (define-by-run,
:func:`prunenas.search.plan.suggest`); each trial builds the proposal and trains it from scratch on the search
seeds, reporting the running mean validation accuracy to ASHA and Optuna. The study lives in
``RUN/optuna.journal``."""

from __future__ import annotations

import functools
import statistics
import threading
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from prunenas.budget import cost_of
from prunenas.cost import count
from prunenas.errors import TrainingDiverged
from prunenas.experiment import Experiment
from prunenas.runs.rundir import RunDir
from prunenas.search import console, tuning
from prunenas.search.plan import (
    budget_excess,
    enqueued_points,
    grid_points,
    pareto_cost,
    search_epochs,
    suggest,
    target_object,
)
from prunenas.search.study import STUDY, storage
from prunenas.trial import Context, Trial, make_proposal, proposal_id, run_trial

# ASHA's view of a search trial (see _search_progress): a global step over its seeds and the running mean accuracy
STEP, RUNNING_ACC = "search_step", "running_val_acc"


class _Searcher(OptunaSearch):
    """OptunaSearch that tells Optuna final scores only as values: the running mean accuracy at each global
    step is an intermediate value (``trial.report``; single objective only), so a trial stopped early (ASHA) is
    PRUNED with its last one; a failed or diverged trial is FAIL, and an over-budget direct trial (never
    trained) PRUNED without a value — never a score."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_step: dict[str, int] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get("diverged") and trial_id in self._ot_trials:  # FAIL for good: resume does not retry it
            self._ot_trials[trial_id].set_user_attr("diverged", True)
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


class _NSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGA-II that Tune can pickle (it pickles the searcher, sampler included): Optuna's holds a thread lock,
    which is left out of the pickle and made anew on unpickling."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _thread_lock=threading.Lock())


def sampler_for(exp: Experiment) -> optuna.samplers.BaseSampler:
    """The Optuna sampler that ``search.sampler`` names, seeded by the first search seed."""
    seed = exp.search_seeds[0]
    if exp.sampler == "nsga2":
        return _NSGAIISampler(seed=seed)
    if exp.sampler in ("random", "grid"):  # grid: every point is enqueued, the sampler never decides
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _directions(exp: Experiment) -> dict[str, Any]:
    if len(exp.objectives) == 2:
        return {"directions": ["maximize", "minimize"]}
    return {"direction": "maximize"}


def _finished(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a search trial is done for good: a score, pruned, or failed because its training diverged (a
    diverged training is final, as in phase 2); other failures are run again."""
    return trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) or (
        trial.state == optuna.trial.TrialState.FAIL and bool(trial.user_attrs.get("diverged")))


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
    trials = study.get_trials(deepcopy=False)
    finished = sum(_finished(t) for t in trials)
    waiting = sum(t.state == optuna.trial.TrialState.WAITING for t in trials)
    total = len(grid_points(exp)) if exp.sampler == "grid" else max(exp.num_samples, len(enqueued_points(exp)))
    return finished, max(total - finished, waiting)


def phase_search(ctx: Context) -> None:
    exp = ctx.experiment
    finished, remaining = prepare_study(ctx.run, exp)
    console.say(f"phase 1: search, {finished} trial(s) done, {remaining} to run "
          f"({exp.sampler}, {len(exp.search_seeds)} seed(s) each)")
    if remaining <= 0:
        return
    metric, mode = (["score", exp.objectives[1]], ["max", "min"]) if len(exp.objectives) == 2 else ("score", "max")
    searcher = _Searcher(space=functools.partial(suggest, exp=exp), metric=metric, mode=mode,
                         sampler=sampler_for(exp), study_name=STUDY, storage=storage(ctx.run))
    scheduler = _asha(exp) if exp.scheduler == "asha" else None
    with tuning.progress(ctx, "search", "search", remaining * len(exp.search_seeds)) as progress:
        results = tuning.tuner(ctx, search_trial, tuning.attempt_name(ctx, "search"), {}, progress,
                               search_alg=searcher, scheduler=scheduler, num_samples=remaining).fit()
    tuning.raise_if_all_failed(results, "phase 1 (search)")
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
    """Search trials by outcome: complete (a score), stopped early (ASHA), over budget (never trained), diverged
    (final, never retried), failed."""
    study = optuna.load_study(study_name=STUDY, storage=storage(run))
    summary = {"complete": 0, "stopped early": 0, "over budget": 0, "diverged": 0, "failed": 0}
    for trial in study.get_trials(deepcopy=False):
        if trial.state == optuna.trial.TrialState.COMPLETE:
            summary["complete"] += 1
        elif trial.state == optuna.trial.TrialState.PRUNED:
            summary["over budget" if trial.user_attrs.get("over_budget") else "stopped early"] += 1
        elif trial.state == optuna.trial.TrialState.FAIL:
            summary["diverged" if trial.user_attrs.get("diverged") else "failed"] += 1
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


def search_trial(config: dict, ctx: Context) -> None:
    """One search trial (a Tune function): build the proposal and train it from scratch on the search seeds."""
    spec = config["trial"]
    exp = ctx.experiment
    target = spec["target"]
    proposal = make_proposal(ctx, spec["method"], spec["params"], target_object(exp, target))
    pid = proposal_id(proposal)
    macs = count(proposal.arch).macs
    costs = {"macs": macs, **({"latency": pareto_cost(exp, proposal.arch)} if "latency" in exp.objectives else {})}
    if spec["method"] == "direct" and budget_excess(exp, cost_of(proposal.arch, exp.cost_kind)) > 0:
        # Tune wants the metrics in every result: none has a value, so Optuna records PRUNED without one
        tune.report({"score": None, RUNNING_ACC: None, **costs, "proposal": pid, "final": False,
                     "summary": f"direct {list(proposal.arch.widths)}: over the budget, not trained"})
        return
    accuracies: list[float] = []
    prefix = {"run": ctx.run.path.name, "phase": "search", "method": proposal.method, "proposal": pid, **costs}
    with tuning.counted(tuning.trial_tags(ctx, "search", proposal.method, "proposed")):
        for i, seed in enumerate(exp.search_seeds):
            training = Trial(proposal.arch, "proposed", "scratch-e", seed, spec["lr"], pid, proposal.method)
            on_epoch = tuning.report_epochs({**prefix, "seed_index": i}, macs, _search_progress(exp, accuracies, i))
            try:
                accuracies.append(run_trial(ctx, training, "search", on_epoch=on_epoch,
                                            extra=spec.get("screening"))["val_acc"])
            except TrainingDiverged:  # final: the trial fails, and the study remembers it is not to be retried
                tune.report({"score": None, RUNNING_ACC: None, **costs, "proposal": pid, "final": False,
                             "diverged": True, "summary": f"{proposal.method}: training diverged (seed {seed})"})
                raise
    score = statistics.fmean(accuracies)
    tune.report({"score": score, "val_acc": score, RUNNING_ACC: score, STEP: search_epochs(exp) * len(accuracies),
                 **costs, "proposal": pid, "final": True,
                 "summary": f"{proposal.method} {dict(spec['params'])} target {target}: val {score:.2%} "
                            f"(n={len(accuracies)}), {macs / 1e6:.2f}M MACs"
                            + (f", {costs['latency']:.3g} ms predicted" if "latency" in costs else "")})
