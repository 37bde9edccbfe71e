"""Monitoring and operations at the Ray edge: trial metrics on Ray's metrics endpoint, Ray Jobs
submission, run/job status, and finding Ray's authentication token.

Metrics (Prometheus names get Ray's ``ray_`` prefix; see the README's "Monitoring" section):

* ``prunenas_epoch``, ``prunenas_val_accuracy``, ``prunenas_images_per_second`` (gauges, per trial);
* ``prunenas_macs`` (gauge, per trial): MACs of the network a trial trains;
* ``prunenas_trials_finished`` / ``prunenas_trials_failed`` (counters, per run and phase).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.job_submission import JobSubmissionClient
from ray.util import metrics

import prunenas
from prunenas.errors import PrunenasError
from prunenas.experiment_file import load_experiment
from prunenas.references import module_sources
from prunenas.spaces import spaces_dir

TAGS = ("run", "phase", "trial", "method", "arm")
_METRICS: dict[str, Any] = {}


def _metric(name: str) -> Any:
    """Create each metric once per process (Ray refuses duplicates)."""
    if name not in _METRICS:
        description = {
            "prunenas_epoch": "epochs finished by the trial",
            "prunenas_val_accuracy": "validation accuracy after the last epoch",
            "prunenas_images_per_second": "training throughput of the last epoch",
            "prunenas_macs": "MACs (per image) of the network the trial trains",
            "prunenas_trials_finished": "trials finished",
            "prunenas_trials_failed": "trials failed or diverged",
        }[name]
        kind = metrics.Counter if name.endswith(("finished", "failed")) else metrics.Gauge
        _METRICS[name] = kind(name, description=description, tag_keys=TAGS)
    return _METRICS[name]


def publish_epoch(tags: Mapping[str, str], metrics: Mapping[str, float], macs: int | None = None) -> None:
    """Per-epoch gauges of a trial."""
    tags = _tags(tags)
    _metric("prunenas_epoch").set(metrics["epoch"], tags=tags)
    _metric("prunenas_val_accuracy").set(metrics["val_acc"], tags=tags)
    _metric("prunenas_images_per_second").set(metrics["images_per_s"], tags=tags)
    if macs is not None:
        _metric("prunenas_macs").set(macs, tags=tags)


def publish_trial_end(tags: Mapping[str, str], ok: bool) -> None:
    _metric("prunenas_trials_finished" if ok else "prunenas_trials_failed").inc(1, tags=_tags(tags))


def _tags(tags: Mapping[str, str]) -> dict[str, str]:
    return {k: str(tags.get(k, "")) for k in TAGS}


# -- authentication ---------------------------------------------------------------------------------------


def auth_token() -> str | None:
    """Ray's token, found as Ray finds it: $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    return auth_token_source()[0]


def auth_token_source() -> tuple[str | None, str | None]:
    """Ray's token and where it was found (``$RAY_AUTH_TOKEN`` or the file's path); (None, None) without one."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None, None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip(), "$RAY_AUTH_TOKEN"
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), Path.home() / ".ray" / "auth_token"):
        if path and Path(path).is_file():
            return Path(path).read_text().strip(), str(path)
    return None, None


def auth_headers() -> dict[str, str]:
    token = auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


# -- Ray Jobs ---------------------------------------------------------------------------------------------


def job_client(address: str) -> Any:
    try:
        return JobSubmissionClient(address, headers=auth_headers())
    except Exception as err:  # noqa: BLE001 - connection and auth errors become one clear line
        raise PrunenasError(f"cannot reach the Ray dashboard at {address}: {err}. Is the head running (ray start "
                            "--head) and, with token authentication, is the token in ~/.ray/auth_token or "
                            "$RAY_AUTH_TOKEN?") from None


def submit(experiment: str | os.PathLike, address: str, run_dir: str, extra_args: list[str]) -> str:
    """Submit ``prunenas search EXPERIMENT`` as a Ray Job; returns the job id.

    The job's working directory holds the experiment file; the prunenas package travels as a ``py_module``
    so the cluster runs this exact code (its other dependencies — torch, ray, optuna — must be installed on
    the cluster). ``run_dir`` must be a path the cluster can write (shared storage on a multi-node cluster).
    A space that is the user's own module (``my_pkg.models:make_net``) ships it too: a package folder as a
    ``py_module``, a single ``.py`` file inside the working directory (both are on the workers' import path).
    """
    experiment = Path(experiment)
    if not experiment.is_file():
        raise PrunenasError(f"experiment file {experiment} does not exist")

    client = job_client(address)
    with tempfile.TemporaryDirectory(prefix="prunenas-job-") as tmp:
        workdir, package = Path(tmp) / "work", Path(tmp) / "module" / "prunenas"
        workdir.mkdir()
        shutil.copy(experiment, workdir / experiment.name)
        shutil.copytree(Path(prunenas.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(spaces_dir(), package / "search_spaces", dirs_exist_ok=True)  # as a wheel installs it
        user = module_sources(load_experiment(experiment).space.base)
        for source in user:
            if source.is_file():
                shutil.copy(source, workdir / source.name)
        entrypoint = " ".join(["python -m prunenas search", experiment.name, "--out", run_dir, "--address auto",
                               *extra_args])
        runtime_env = {"working_dir": str(workdir),
                       "py_modules": [str(package), *(str(p) for p in user if p.is_dir())],
                       "env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}}
        metadata = {"job_name": f"prunenas {Path(run_dir).name}", "prunenas_run": run_dir,
                    "experiment": experiment.name}
        submission_id = job_submission_id(run_dir)
        for attempt in range(30):  # a head that just started may not have its job agent up yet
            try:
                return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata,
                                         submission_id=submission_id)
            except RuntimeError as err:
                if "try again later" not in str(err) or attempt == 29:
                    raise PrunenasError(f"job submission to {address} failed: {err}") from None
                time.sleep(2)
        raise AssertionError("unreachable")


def job_submission_id(run_dir: str) -> str:
    """The Ray Job's id: named after the run folder (the dashboard's Jobs view lists it), unique per submission."""
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(run_dir).name)
    return f"prunenas-{name}-{uuid.uuid4().hex[:6]}"


def job_status(address: str, job_id: str) -> dict[str, Any]:
    client = job_client(address)
    try:
        info = client.get_job_info(job_id)
    except Exception as err:  # noqa: BLE001
        raise PrunenasError(f"no job {job_id!r} at {address}: {err}") from None
    return {"job": job_id, "job_status": str(info.status), "message": info.message, "entrypoint": info.entrypoint,
            "metadata": info.metadata or {}}


def job_logs(address: str, job_id: str) -> str:
    return job_client(address).get_job_logs(job_id)
