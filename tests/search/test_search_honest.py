"""Honest search (issue 14, items 1-2): ASHA stops weak trials and lets the others finish with a score; a
direct width search never trains, selects or evaluates a network over its MAC budget."""

import json
import statistics

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray import cloudpickle

from prunenas.cli.status import run_status
from prunenas.cost import count
from prunenas.experiment_file import experiment_from_dict
from prunenas.proposers import Proposal, Target
from prunenas.runs.rundir import RunDir
from prunenas.search.plan import budget_excess, suggest, target_excess, width_grid
from prunenas.search.search_phase import sampler_for
from prunenas.spaces import load_space

from .search_helpers import EXPERIMENT, cli, study, write

FULL = {f"direct/w{i}": w for i, w in enumerate(load_space("tiny-synthetic").upper)}
HONEST = dict(EXPERIMENT, proposers={"random": {}}, targets={"ratios": [0.5]}, seeds={"search": [0, 1], "eval": [2]},
              recipe={"name": "fast", "epochs": 1, "lr": [0.1, 1e-6]}, scheduler="asha", concurrency=1,
              search={"sampler": "tpe", "num_samples": 3, "direct": True, "select": "top-k", "top_k": 1})


def _enqueue_first(run, points):
    """Create the run's study with these points first (the search then enqueues none of its own)."""
    run.mkdir(parents=True)
    storage = JournalStorage(JournalFileBackend(str(run / "optuna.journal")))
    created = optuna.create_study(storage=storage, study_name="search", direction="maximize")
    for point in points:
        created.enqueue_trial(point)


@pytest.mark.usefixtures("ray_env")
def test_asha_stops_weak_trials_and_over_budget_widths_are_never_trained(tmp_path):
    run = tmp_path / "run"
    # run in turn (concurrency 1): the full-width network (100% MACs under a 50% budget), a trained proposal,
    # then the same proposal at a learning rate too small to learn: ASHA's first rung must stop it
    _enqueue_first(run, [{"method": "direct", **FULL, "lr": 0.1}, {"method": "random", "lr": 0.1},
                         {"method": "random", "lr": 1e-6}])
    proc = cli("search", write(tmp_path, HONEST), "--out", run, "--no-dashboard")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "finished"
    assert state["search"] == {"complete": 1, "stopped early": 1, "over budget": 1, "diverged": 0, "failed": 0}
    assert run_status(str(run))["search_outcomes"] == state["search"]
    over, complete, stopped = study(run).trials
    rows = RunDir(run).results.rows()
    search = [r for r in rows if r["phase"] == "search"]

    assert over.state == optuna.trial.TrialState.PRUNED and over.value is None and over.user_attrs["over_budget"]
    assert over.constraints["macs"] == pytest.approx(1 / 0.5 - 1 - 0.01)
    assert all(tuple(r["arch"]["widths"]) != tuple(FULL.values()) for r in rows)  # never trained nor evaluated

    assert complete.state == optuna.trial.TrialState.COMPLETE
    own = sorted((r for r in search if r["proposal"] == complete.user_attrs["proposal"]), key=lambda r: r["seed"])
    assert all(r["recipe"]["lr"] == 0.1 for r in own)
    assert [r["seed"] for r in own] == [0, 1]
    assert complete.value == pytest.approx(statistics.fmean(r["val_acc"] for r in own), abs=1e-12)
    assert complete.intermediate_values == {1: pytest.approx(own[0]["val_acc"], abs=1e-12)}  # seed 0's epoch 1

    assert stopped.state == optuna.trial.TrialState.PRUNED and list(stopped.intermediate_values) == [1]
    assert stopped.value == stopped.intermediate_values[1] < complete.intermediate_values[1]
    assert not [r for r in search if r["recipe"]["lr"] == 1e-6 and r["seed"] == 1]  # stopped before seed 1

    plan = json.loads((run / "plan.json").read_text())
    assert plan["selected"] == [own[0]["proposal"]]
    latest = RunDir(run).results.latest()  # top-k: evaluated on a seed no search training used
    trained = {e["arm"]: latest[e["key"]] for e in plan["proposals"][own[0]["proposal"]]}
    assert set(trained) == {"proposed", "uniform"} and all(r["status"] == "ok" for r in trained.values())
    assert {r["seed"] for r in trained.values()} == {2} and trained["proposed"]["phase"] == "eval"
    proposed, uniform = (count(load_space("tiny-synthetic").arch(trained[a]["arch"]["widths"])).macs
                         for a in ("proposed", "uniform"))
    assert abs(uniform / proposed - 1) <= 0.01  # the twin rule


def test_direct_widths_lie_on_the_rounding_grid_and_are_recorded():
    space = load_space("mobilenetv2-cifar10")  # multiple_of: 8
    for slot in range(len(space.upper)):
        low, high, step = width_grid(space, slot)
        grid = range(low, high + 1, step)
        assert all(space.round_width(slot, w) == w for w in grid)  # the space's rounding keeps each one
        assert space.lower[slot] <= low and high <= space.upper[slot] and high + step > space.upper[slot]
    exp = experiment_from_dict(dict(HONEST, space="mobilenetv2-cifar10", data={"name": "synthetic"}))
    widest = {f"direct/w{i}": width_grid(space, i)[1] for i in range(len(space.upper))}
    trial = optuna.trial.FixedTrial({"method": "direct", "lr": 0.1, **widest})
    spec = suggest(trial, exp)["trial"]
    assert trial.user_attrs["widths"] == spec["params"]["widths"] == list(space.upper)
    assert trial.user_attrs["over_budget"] and trial.constraints["macs"] == pytest.approx(1 / 0.5 - 1 - 0.01)


def test_a_proposal_over_its_target_is_not_selectable():
    exp = experiment_from_dict(HONEST)
    space, base = exp.space, count(exp.space.base).macs
    assert budget_excess(exp, 0.5 * base * 1.01) == pytest.approx(0) and budget_excess(exp, 0.5 * base) < 0
    full = Proposal(space.base, "direct", {}, Target(ratio=0.5), 0, None, {})
    assert target_excess(exp, full) == pytest.approx(1.0 - 0.01)
    half = space.arch((7, 12, 4, 4))  # the random proposer's widths at 50% (2.2% under the target)
    assert target_excess(exp, Proposal(half, "random", {}, Target(ratio=0.5), 0, None, {})) < 0


def test_the_nsga2_searcher_survives_tunes_pickling():
    """Tune pickles the searcher with its sampler; Optuna's NSGA-II holds a thread lock, which cannot be pickled."""
    exp = experiment_from_dict(dict(HONEST, search={"sampler": "nsga2", "objectives": ["val_acc", "macs"]}))
    sampler = cloudpickle.loads(cloudpickle.dumps(sampler_for(exp)))
    assert isinstance(sampler, optuna.samplers.NSGAIISampler)
    with sampler._thread_lock:  # a working lock of its own
        pass
