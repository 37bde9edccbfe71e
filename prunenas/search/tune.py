"""The search's driver: three phases of Ray Tune trials and a latency phase, Optuna sampling the proposals
(phase 1 lives in :mod:`prunenas.search.search_phase`, the Tune plumbing the phases share in
:mod:`prunenas.search.tuning`, starting Ray in :mod:`prunenas.search.ray_setup`).

0. base models the proposers need, one Tune trial each, trained once into the cache;
1. search: ``OptunaSearch`` (define-by-run, :func:`prunenas.search.plan.suggest`) samples method x parameters x
   target (and learning rate, and with ``direct: true`` per-slot widths); each trial builds the proposal and
   trains it from scratch (Scratch-E) on the search seeds; Optuna is told the mean final validation accuracy
   (and MACs for a Pareto search). The study lives in ``RUN/optuna.journal``;
2. evaluation: a plain Tune run over every arm x budget x evaluation seed of the selected proposals;
3. latency: every selected proposal and its uniform twin measured interleaved, once, in the driver after every
   Tune trial has ended (nothing trains meanwhile), stored in ``RUN/latency.json`` for the report
   (:mod:`prunenas.runs.latency_measurements`).

Every trained network is one row of ``RUN/results.jsonl`` (prunenas.runs.results), written by the trial itself,
so nothing finished is lost when the driver dies; :func:`resume` continues in whichever phase it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import tune

from prunenas.cost import count
from prunenas.errors import PrunenasError
from prunenas.experiment import Experiment
from prunenas.experiment_file import experiment_from_dict
from prunenas.latency import LatencyError
from prunenas.pretrained import ensure_available
from prunenas.proposers import Proposal, load_proposal
from prunenas.proposers.basemodel import RegularizerSpec
from prunenas.runs.groups import collect
from prunenas.runs.latency_measurements import measure_run
from prunenas.runs.rundir import RunDir
from prunenas.search import console, monitor, tuning
from prunenas.search.plan import base_model_specs, pareto_cost, select_proposals, target_excess
from prunenas.search.ray_setup import gpus_per_worker, start_ray
from prunenas.search.screening import phase_screen
from prunenas.search.search_phase import phase_search
from prunenas.search.workers import worker_trainer
from prunenas.trial import (
    Context,
    Trial,
    evaluated,
    evaluation_trials,
    run_trial,
    search_rows_by_proposal,
    training_key,
)


def run_search(exp: Experiment, out: str | os.PathLike | None = None, *, address: str | None = None,
               cache_dir: str | None = None, dashboard: bool = True, verbose: bool = False) -> RunDir:
    """Run a whole study into a new run folder; ``verbose`` shows Tune's tables instead of writing them to
    ``RUN/logs/ray.log``."""
    _check_base_weights(exp)
    run = RunDir(out or Path(exp.storage) / f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run.check_writable()
    with console.ray_output_to_log(run, verbose) as log:
        context = start_ray(exp, address or exp.address, dashboard, run)  # a trial the cluster cannot hold
        source = dict(exp.source, **({"address": address} if address else {}))  # fails before the run exists
        run.create(exp.name, yaml.safe_dump(source, sort_keys=False))
        if cache_dir:
            run.write_state(cache_dir=str(Path(cache_dir).resolve()))
        _execute(run, exp, context.dashboard_url, log)
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
    with console.ray_output_to_log(run, verbose) as log:
        context = start_ray(exp, address or exp.address, dashboard, run)
        _execute(run, exp, context.dashboard_url, log)
    return run


def _check_base_weights(exp: Experiment) -> None:
    """Published base weights that cannot be had fail here (exit 2), before a run folder or a trial exists."""
    if exp.base_weights:
        ensure_available(exp.base_weights, exp.space.base)


def _execute(run: RunDir, exp: Experiment, dashboard_url: str | None, log: Path | None) -> None:
    """The phases of a run whose Ray is started (and is shut down here); Ray's and Tune's output already goes to
    ``log`` (None: the console)."""
    exp = _absolute_paths(exp)
    ctx = Context(exp, run, cache_dir=run.state().get("cache_dir"), threads=max(1, int(exp.cpu)),
                  log=None)
    # Ctrl-C stops the driver: Tune's own SIGINT handler would end only the phase that is running, and the
    # next phase would start. Finished rows and the Optuna journal are on disk; resume continues from them.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        with _sigterm_as_interrupt():
            ctx.data()  # fail early on missing data; trials receive it through Ray's object store
            _run_phases(ctx, dashboard_url, log)
    except KeyboardInterrupt:
        run.write_state(status="interrupted")
        console.say(f"interrupted: `prunenas resume {run.path}` continues where it stopped")
        raise
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler stopping the job) stops the search as Ctrl-C does: status
    ``interrupted``, Ray shut down. Python's default would end the driver on the spot, the run left ``running``."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_phases(ctx: Context, dashboard_url: str | None, log: Path | None) -> None:
    run, exp = ctx.run, ctx.experiment
    for line in console.startup_lines(run, log, dashboard_url, monitor.auth_token_source()[1],
                                      os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled"):
        console.say(line)
    if exp.workers > 1:
        ctx.workers, ctx.trainer = exp.workers, worker_trainer(exp, gpus_per_worker(exp), run.tune_dir / "train")
    run.write_state(status="running", phase=0)  # a resumed run is running again, not "interrupted"
    _phase_base_models(ctx)
    run.write_state(phase=1)
    if exp.screening:
        phase_screen(ctx)
    else:
        phase_search(ctx)
    run.write_state(phase=2)
    missing = _phase_evaluate(ctx)
    run.write_state(phase=3)
    _phase_latency(ctx)
    if missing:
        run.write_state(status="incomplete")
        console.say(f"incomplete: {missing} planned training(s) failed; `prunenas resume {run.path}` retries "
                    f"them (diverged ones are final and never retried)")
    else:
        run.write_state(status="finished")
        console.say(f"finished: {run.path}  (report: prunenas report {run.path})")

def _absolute_paths(exp: Experiment) -> Experiment:
    if exp.data_root:
        exp = exp.with_overrides(data_root=str(Path(exp.data_root).resolve()))
    if exp.base_weights and not exp.base_weights.startswith("torchvision:"):
        exp = dataclasses.replace(exp, base_weights=str(Path(exp.base_weights).resolve()))
    return exp


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
    with tuning.progress(ctx, "base_models", "base", len(missing), rows=False) as progress:
        results = tuning.tuner(ctx, _base_model_trial, tuning.attempt_name(ctx, "base"),
                               {"base": tune.grid_search(grid)}, progress).fit()
    tuning.raise_if_all_failed(results, "phase 0 (base models)")


def _base_model_trial(config: dict, ctx: Context) -> None:
    spec = config["base"]["spec"]
    spec = None if spec is None else RegularizerSpec(spec["kind"], tuple((k, _tuple(v)) for k, v in spec["params"]))
    provider = ctx.provider()
    provider.on_epoch = tuning.report_epochs({"phase": "base", "run": ctx.run.path.name})
    with tuning.counted(tuning.trial_tags(ctx, "base", config["base"]["method"])):
        base = provider.get(spec)
    tune.report({"score": base.val_acc, "final": True, "phase": "base",
                 "summary": f"base model {base.key} ({config['base']['method']}): val {base.val_acc:.2%}"})


def _tuple(value: Any) -> Any:
    return tuple(_tuple(v) for v in value) if isinstance(value, list) else value


# -- phase 1: search (prunenas.search.search_phase) ------------------------------------------------------


# -- phase 2: evaluation ----------------------------------------------------------------------------------


def _phase_evaluate(ctx: Context) -> int:
    """Train every arm of the selected proposals; returns how many planned trainings have no final row."""
    exp = ctx.experiment
    proposals = {pid: load_proposal(ctx.run.proposal_path(pid)) for pid in ctx.run.proposal_ids()}
    by_proposal = search_rows_by_proposal({pid: p.arch.digest() for pid, p in proposals.items()},
                                          ctx.run.results.latest().values())
    scores = {pid: (statistics.fmean(r["val_acc"] for r in rs), pareto_cost(exp, proposals[pid].arch))
              for pid, rs in by_proposal.items() if _selectable(ctx, pid, proposals[pid], rs)}
    chosen = select_proposals(exp, scores)
    lrs = {pid: rs[0]["recipe"]["lr"] if exp.lr is not None else None for pid, rs in by_proposal.items()}
    plan, trainings = {}, {}
    for pid in chosen:
        for training in evaluation_trials(ctx, proposals[pid], pid, lrs[pid]):
            key = training_key(ctx, training)
            entry = {"arm": training.arm, "budget": training.budget, "seed": training.seed, "key": key}
            if training.twin_error is not None:  # this proposal's, where a shared twin's row records another's
                entry["twin_error"] = training.twin_error
            plan.setdefault(pid, []).append({**entry, "lr": training.lr} if exp.lr_grid else entry)
            trainings[key] = training
    ctx.run.write_json("plan.json", {"selected": chosen, "select": exp.select, "proposals": plan})
    todo = _unevaluated(ctx, trainings)
    console.say(f"phase 2: evaluation of {len(chosen)} proposal(s): {len(trainings)} training(s), {len(todo)} to run")
    if todo:
        grid = [trainings[k].to_dict() for k in todo]
        with tuning.progress(ctx, "evaluation", "eval", len(todo)) as progress:
            results = tuning.tuner(ctx, _evaluation_trial, tuning.attempt_name(ctx, "eval"),
                                   {"training": tune.grid_search(grid)}, progress).fit()
        tuning.raise_if_all_failed(results, "phase 2 (evaluation)")
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
    with tuning.counted(tuning.trial_tags(ctx, "eval", training.method or "", training.arm)):
        row = run_trial(ctx, training, "eval", on_epoch=tuning.report_epochs(prefix, count(training.arch).macs))
    tune.report({"score": row["val_acc"], "final": True, "arm": training.arm,
                 "summary": f"{training.arm} {training.budget} seed {training.seed} ({training.method}): "
                            f"val {row['val_acc']:.2%}, test {row['test_acc']:.2%}"})


# -- phase 3: latency -------------------------------------------------------------------------------------


def _phase_latency(ctx: Context) -> None:
    """Measure the selected proposals and their twins (pairs measured before are skipped). Runs serially in the
    driver after phase 2's trials have all ended, so no training shares the machine. A device that cannot
    measure here leaves the run without measurements, not failed: ``prunenas latency measure RUN`` adds them."""
    groups = collect(ctx.run)
    console.say(f"phase 3: latency of {len(groups)} proposal(s) and their twins")
    try:
        measure_run(ctx.run, groups, say=console.say)
    except LatencyError as err:
        console.say(f"phase 3: no latency measured ({err}); measure later with "
                    f"`prunenas latency measure {ctx.run.path}`")
