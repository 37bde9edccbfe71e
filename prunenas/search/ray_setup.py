"""Starting or joining Ray for a run: the driver job's metadata, the user's model modules shipped to a cluster,
the check that a trial fits the cluster, and the GPUs each worker takes."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ray
from ray.job_config import JobConfig

from prunenas.errors import PrunenasError
from prunenas.experiment import Experiment
from prunenas.references import module_sources
from prunenas.runs.rundir import RunDir
from prunenas.search.workers import check_cluster_fits


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


def start_ray(exp: Experiment, address: str | None, dashboard: bool, run: RunDir) -> Any:
    """Start (or join) Ray for ``run`` and check that a trial of ``exp`` fits the cluster; Ray is shut down if
    not. Returns Ray's context (``dashboard_url``)."""
    context = _init_ray(address, dashboard, run, _user_modules(exp))
    try:
        check_cluster_fits(dataclasses.replace(exp, gpu=gpus_per_worker(exp)))
    except PrunenasError:
        ray.shutdown()
        raise
    return context


def gpus_per_worker(exp: Experiment) -> float:
    """GPUs per worker: as the experiment says, else one when the cluster has GPUs."""
    return exp.gpu if exp.gpu is not None else (1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0)
