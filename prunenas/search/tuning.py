"""Tune plumbing shared by the search's phases: the Tuner of a phase, its console progress, per-epoch reports
(Tune results and Ray metrics), and the outcome of trials."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import ray
from ray import tune

from prunenas.data import planned_train_images
from prunenas.errors import PrunenasError
from prunenas.search import console, monitor
from prunenas.search.plan import estimate
from prunenas.search.ray_setup import gpus_per_worker
from prunenas.search.workers import DRIVER_RESOURCES, trials_at_once
from prunenas.trial import Context


def tuner(ctx: Context, trainable: Any, name: str, param_space: dict, progress: console.Progress,
           **tune_config: Any) -> tune.Tuner:
    exp = ctx.experiment
    # a multi-worker trial is only the driver of its Ray Train workers (search/workers.py): it takes nothing
    resources = {"cpu": exp.cpu, "gpu": gpus_per_worker(exp)} if exp.workers == 1 else DRIVER_RESOURCES
    with_ctx = tune.with_parameters(trainable, ctx=ctx)
    with_ctx.__mixins__ = (console.IdentifiedTrial,)  # the actor's repr in the dashboard names its trial
    fn = tune.with_resources(with_ctx, resources)
    run_config = tune.RunConfig(name=name, storage_path=str(ctx.run.tune_dir), verbose=console.tune_verbosity(),
                                failure_config=tune.FailureConfig(max_failures=exp.max_failures),
                                callbacks=[progress])
    concurrency = exp.concurrency if exp.workers == 1 else trials_at_once(exp)
    config = tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True, **tune_config)
    return tune.Tuner(fn, param_space=param_space, tune_config=config, run_config=run_config)


def progress(ctx: Context, planned: str, phase: str, total: int, rows: bool = True) -> console.Progress:
    """The console progress of a phase; its ETA prices a training at the plan's estimated cost per training
    of the phase (:func:`prunenas.search.plan.estimate`, MACs x epochs)."""
    exp = ctx.experiment
    images = planned_train_images(exp.dataset, exp.val_size, exp.subset)
    phase_plan = estimate(exp, images)[planned]
    trainings = phase_plan.get("trainings", phase_plan["trials"])
    return console.Progress(ctx.run, phase, total, phase_plan["cost"] / max(trainings, 1) / images, rows=rows)


def attempt_name(ctx: Context, phase: str) -> str:
    """A fresh Tune experiment name per attempt (resume never depends on Tune's own restore)."""
    existing = len(list(ctx.run.tune_dir.glob(f"{phase}-*"))) if ctx.run.tune_dir.exists() else 0
    return f"{phase}-{existing + 1}"


def report_epochs(prefix: dict[str, Any], macs: int | None = None,
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


def trial_tags(ctx: Context, phase: str, method: str = "", arm: str = "") -> dict[str, str]:
    ctx.node = ray.get_runtime_context().get_node_id()  # recorded in the trial's rows
    return {"run": ctx.run.path.name, "phase": phase, "method": method, "arm": arm,
            "trial": tune.get_context().get_trial_name()}


@contextlib.contextmanager
def counted(tags: dict[str, str]) -> Iterator[None]:
    """Count the trial as finished or failed on Ray's metrics endpoint."""
    try:
        yield
    except BaseException:
        monitor.publish_trial_end(tags, ok=False)
        raise
    monitor.publish_trial_end(tags, ok=True)


def raise_if_all_failed(results: Any, phase: str) -> None:
    errors = results.num_errors
    if errors:
        console.say(f"{phase}: {errors} trial(s) failed (rows marked failed; `prunenas resume` retries them)")
    if errors and errors == len(results):
        raise PrunenasError(f"every trial of {phase} failed; first error: {results.errors[0]}")
