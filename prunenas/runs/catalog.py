"""What run folders hold, read without touching weights: open a run, its trained rows, its name, space and
dataset, and the ``arch list`` query over several runs (filtered by space, MACs, validation accuracy and arm)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from prunenas.cost import format_macs
from prunenas.errors import PrunenasError
from prunenas.experiment import ARMS
from prunenas.runs.rundir import RunDir
from prunenas.runs.stats import finite_number, format_percent
from prunenas.spaces import load_space

LIST_HINT = "list the trained networks and their keys with `prunenas arch list {run}`"


def open_run(path: str | os.PathLike) -> RunDir:
    """The run folder at ``path``; a missing folder or one that is not a run is a :class:`PrunenasError`."""
    if not Path(path).is_dir():
        raise PrunenasError(f"run folder {path} does not exist")
    run = RunDir(path)
    run.state()  # schema check, clear error for a foreign folder
    return run


def trained_rows(run: RunDir) -> list[dict[str, Any]]:
    """The latest row of every trained network (status ``ok``) of ``run``, in the order they were written."""
    return [row for row in run.results.latest().values() if row.get("status") == "ok"]


def check_arm(arm: str) -> None:
    """Refuse an ``arm`` that is neither a known arm nor ``any``."""
    if arm != "any" and arm not in ARMS:
        raise PrunenasError(f"--arm {arm!r}: choose one of {', '.join(ARMS)} or any")


def run_info(run: RunDir) -> dict[str, Any]:
    """Name, space and dataset of a run (from ``run.json`` and the experiment it ran)."""
    state = run.state()
    try:
        experiment = yaml.safe_load((run.path / "experiment.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        experiment = {}
    if not isinstance(experiment, dict):
        experiment = {}
    space = experiment.get("space")
    data = experiment.get("data") if isinstance(experiment.get("data"), dict) else {}
    dataset = data.get("name")
    if dataset is None and isinstance(space, str):
        try:
            dataset = load_space(space).dataset
        except PrunenasError:
            dataset = None
    return {"name": state.get("name", run.path.name), "space": _space_name(space), "dataset": dataset}


def _space_name(space: Any) -> str | None:
    """A space as runs name it: built-in name, or the stem of its YAML file (as :func:`load_space` does)."""
    if not isinstance(space, str):
        return None
    return Path(space).stem if space.endswith((".yaml", ".yml")) or os.sep in space else space


def list_architectures(run_dirs: Sequence[str | os.PathLike], space: str | None = None,
                       max_macs: int | None = None, min_acc: float | None = None,
                       arm: str = "any") -> list[dict[str, Any]]:
    """The trained networks of ``run_dirs`` (status ok), one dict each, filtered by space, MACs and validation
    accuracy (``min_acc`` is a fraction in [0, 1]); per run, best validation accuracy first."""
    if space is not None:
        space = load_space(space).name  # an unknown space is an error, not an empty list
    if min_acc is not None and not 0 <= min_acc <= 1:
        raise PrunenasError(f"--min-acc {min_acc} must be a fraction in [0, 1] (validation accuracy)")
    if max_macs is not None and max_macs <= 0:
        raise PrunenasError(f"--max-macs {max_macs} must be a positive integer")
    check_arm(arm)
    out = []
    for run_dir in run_dirs:
        run = open_run(run_dir)
        info = run_info(run)
        if space is not None and info["space"] != space:
            continue
        rows = [row for row in trained_rows(run)
                if (arm == "any" or row.get("arm") == arm)
                and (max_macs is None or row["macs"] <= max_macs)
                and (min_acc is None or (finite_number(row.get("val_acc")) and row["val_acc"] >= min_acc))]
        rows.sort(key=lambda r: (-r["val_acc"] if finite_number(r.get("val_acc")) else math.inf, r["macs"], r["key"]))
        out += [_summary(run, info, row) for row in rows]
    return out


def _summary(run: RunDir, info: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    return {"run": info["name"], "run_dir": str(run.path), "space": info["space"], "key": row["key"],
            "method": row.get("method"), "arm": row.get("arm"), "budget": row.get("budget"), "seed": row.get("seed"),
            "phase": row.get("phase"), "macs": row["macs"], "params": row["params"], "val_acc": row.get("val_acc"),
            "test_acc": row.get("test_acc"), "widths": row["arch"]["widths"], "masked": "masks" in row["arch"],
            "digest": row.get("digest")}


def format_architectures(rows: Iterable[Mapping[str, Any]]) -> str:
    """One line per network: run, key, method, arm, MACs, params, validation and test accuracy (%)."""
    rows = list(rows)
    if not rows:
        return "(no trained networks match)"
    run_width = max(3, *(len(r["run"]) for r in rows))
    lines = [f"{'run':{run_width}}  {'key':16}  {'method':10}  {'arm':9}  {'MACs':>8}  {'params':>8}  "
             f"{'val %':>6}  {'test %':>6}"]
    for r in rows:
        lines.append(f"{r['run']:{run_width}}  {r['key']:16}  {r['method'] or '-':10}  {r['arm']:9}  "
                     f"{format_macs(r['macs']):>8}  {format_macs(r['params']):>8}  {format_percent(r['val_acc']):>6}  "
                     f"{format_percent(r['test_acc']):>6}")
    return "\n".join(lines)
