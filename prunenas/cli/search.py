"""``prunenas search``, ``resume`` and ``submit``: run a study locally or on a cluster, or continue one."""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path
from types import ModuleType

from prunenas.data import planned_train_images
from prunenas.errors import PrunenasError
from prunenas.experiment import OVERRIDE_KEYS, Experiment
from prunenas.experiment_file import experiment_from_dict, load_experiment
from prunenas.runs.rundir import RunDir
from prunenas.runs.tables import results_table
from prunenas.search.plan import estimate, format_estimate


def _with_ray(module: str) -> ModuleType:
    """A module that imports Ray or Optuna, loaded only when a run starts (``search --dry-run`` and the checks
    before a run are answered without importing Ray)."""
    return importlib.import_module(module)


def _with_flags(exp: Experiment, args: argparse.Namespace) -> Experiment:
    """``exp`` with the flags that override its file, validated as the file's keys are (a flag can make an
    experiment invalid: ``--workers`` a batch that does not split, ``--sampler grid`` over ranges, ``--num-samples``
    with a multi-fidelity search), and saved into its source so that ``resume`` reads what really ran."""
    flags = {"num_samples": args.num_samples, "concurrency": args.concurrency, "sampler": args.sampler,
             "epochs": args.epochs, "workers": args.workers}
    given = {key: value for key, value in flags.items() if value is not None}
    for key in ("num_samples", "workers"):
        if given.get(key, 1) < 1:
            raise PrunenasError(f"--{key.replace('_', '-')} {given[key]} must be at least 1")
    if not given:
        return exp
    try:
        return experiment_from_dict(exp.with_overrides(**given).source, exp.name)
    except PrunenasError as err:
        named = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in given.items())
        keys = [f"{section}.{name}: " if section else f"{name}: " for section, name in map(OVERRIDE_KEYS.get, given)]
        message = next((str(err).removeprefix(key) for key in keys if str(err).startswith(key)), str(err))
        raise PrunenasError(f"{named}: {message}") from None


def cmd_search(args: argparse.Namespace) -> int:
    """Run the experiment (flags override the file), or with ``--dry-run`` print its plan and cost."""
    exp = _with_flags(load_experiment(args.experiment), args)
    if args.dry_run:
        plan = estimate(exp, planned_train_images(exp.dataset, exp.val_size, exp.subset))
        print(json.dumps(plan, indent=2) if args.json else format_estimate(exp, plan))
        return 0
    if args.out and Path(args.out, "run.json").exists():
        raise PrunenasError(f"{args.out} already holds a run; continue it with `prunenas resume {args.out}`")
    tune = _with_ray("prunenas.search.tune")
    run = tune.run_search(exp, args.out, address=args.address, cache_dir=args.cache_dir,
                          dashboard=not args.no_dashboard, verbose=args.verbose)
    print(results_table(run))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue an interrupted run folder; prints its results table when done."""
    RunDir(args.run_dir).state()  # a clear error for a missing or foreign folder, before Ray starts
    tune = _with_ray("prunenas.search.tune")
    run = tune.resume(args.run_dir, address=args.address, dashboard=not args.no_dashboard,
                      verbose=args.verbose)
    print(results_table(run))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit the search as a Ray Job; with ``--wait`` follow it and exit 1 unless it succeeds."""
    monitor = _with_ray("prunenas.search.monitor")
    load_experiment(args.experiment)  # validate here, before anything reaches the cluster
    extra = [f"--{flag.replace('_', '-')}={value}" for flag, value in
             (("num_samples", args.num_samples), ("concurrency", args.concurrency), ("cache_dir", args.cache_dir))
             if value is not None]
    job = monitor.submit(args.experiment, args.address, str(Path(args.out).resolve()), extra)
    print(f"submitted job {job}; follow it with `prunenas status {job} --address {args.address}` or the dashboard")
    if not args.wait:
        return 0
    while True:
        status = monitor.job_status(args.address, job)["job_status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            print(f"job {job}: {status}")
            return 0 if status == "SUCCEEDED" else 1
        time.sleep(2)
