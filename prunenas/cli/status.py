"""``prunenas status``: where a run (or a Ray Job running one) stands."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from prunenas.errors import PrunenasError
from prunenas.runs.groups import collect
from prunenas.runs.rundir import RunDir
from prunenas.runs.screening import fidelity_line, proxy_fidelity
from prunenas.runs.tables import twin_flags
from prunenas.search.monitor import job_status
from prunenas.search.study import trial_states
from prunenas.trial import evaluated


def run_status(target: str, address: str | None = None) -> dict[str, Any]:
    """Phase, trainings done/failed, search trials by state, the best proposal so far (by validation) and
    the controls whose cost misses their proposal's by more than ±1%."""
    if not Path(target).exists():
        if address is None:
            raise PrunenasError(f"{target} is neither a run folder nor (without --address) a job id")
        info = job_status(address, target)
        run = info["metadata"].get("prunenas_run")
        if run and Path(run, "run.json").exists():
            info.update(run_status(run))
        return info
    run = RunDir(target)
    state = run.state()
    latest = run.results.latest()
    statuses = Counter(row["status"] for row in latest.values())
    searched = [r for r in latest.values() if r["phase"] == "search" and r["status"] == "ok"]
    best = max(searched, key=lambda r: (r["val_acc"], -r["macs"]), default=None)
    info: dict[str, Any] = {"run": str(run.path), "status": state.get("status"), "phase": state.get("phase"),
                            "trainings": dict(statuses), "search_trials": trial_states(run)}
    if "search" in state:  # written after phase 1: trials stopped early (ASHA) and over budget are both PRUNED
        info["search_outcomes"] = state["search"]
    if best:
        info["best_so_far"] = (f"{best['method']} proposal {best['proposal']}: val {best['val_acc']:.2%} at "
                               f"{best['macs'] / 1e6:.2f}M MACs")
    fidelity = proxy_fidelity(run)
    if fidelity:
        info["proxy_fidelity"] = fidelity_line(fidelity)
    plan = run.read_json("plan.json")
    if plan:
        keys = {e["key"] for entries in plan["proposals"].values() for e in entries}
        done = sum(1 for k in keys if evaluated(latest.get(k)))
        info["evaluation"] = f"{done}/{len(keys)} trainings done"
        flags = twin_flags(collect(run))
        if flags:
            info["controls_outside_tolerance"] = flags
    return info


def cmd_status(args: argparse.Namespace) -> int:
    """Print :func:`run_status` as ``key: value`` lines, or as one JSON object."""
    info = run_status(args.target, args.address)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0
