"""Shared pieces of the tests that run searches: a tiny experiment and small helpers."""

import json
import os
import subprocess
import sys

import optuna
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

EXPERIMENT = {
    "name": "tiny",
    "space": "tiny-synthetic",
    "data": {"name": "synthetic", "val_size": 256},
    "base": {"epochs": 1},
    "proposers": {"l1-norm": {}, "random": {}},
    "targets": {"ratios": [0.5, 0.7]},
    "arms": ["proposed", "uniform"],
    "seeds": {"search": [0], "eval": [0, 1]},
    "recipe": {"name": "fast", "epochs": 2},
    "search": {"sampler": "tpe", "num_samples": 5},
    "resources": {"cpu": 1},
    "concurrency": 2,
}


def write(tmp_path, data=EXPERIMENT, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def cli(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "prunenas", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kwargs)


def study(run):
    storage = JournalStorage(JournalFileBackend(str(run / "optuna.journal")))
    return optuna.load_study(study_name="search", storage=storage)


def trained_keys(run):
    """The key of every ok row that is a training (a row that only adds the test accuracy of a reused
    search training is not), in order: a key twice means it was trained twice."""
    from prunenas.runs.rundir import RunDir

    return [r["key"] for r in RunDir(run).results.rows() if r["status"] == "ok" and not r.get("test_from_weights")]


def expected_keys(run):
    plan = json.loads((run / "plan.json").read_text())
    return {e["key"] for entries in plan["proposals"].values() for e in entries}
