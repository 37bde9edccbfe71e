"""Latency as a cost kind: targets, twins at equal predicted latency, the latency-knapsack proposer, the
``latency`` command and the latency flags of ``uniform`` / ``propose``.

Most tests run on a *synthetic* table: ``LatencyTable._fill`` is replaced by a closed form (each unit costs
``MS_PER_MAC x its MACs + MS_PER_UNIT``), so predictions are exact numbers the tests recompute independently
from :func:`prunenas.cost.macs` and the unit list, with no timing noise. Whole-network measurements stay real.
"""

import itertools
import json
import random
import re

import optuna
import pytest
import torch

from prunenas.budget import cost_of, uniform_widths
from prunenas.cli.main import main
from prunenas.cost import macs
from prunenas.errors import BudgetError
from prunenas.experiment import ExperimentError
from prunenas.experiment_file import experiment_from_dict
from prunenas.latency import Calibration, LatencyError, LatencyTable, units
from prunenas.latency.cost import LATENCY_TOLERANCE, _latency_cost, latency_cost
from prunenas.proposers import Proposal, ProposerError, Target, propose
from prunenas.proposers.basemodel import StaticProvider, base_model_from
from prunenas.proposers.latency_knapsack import knapsack_widths, width_options
from prunenas.search.plan import (
    budget_excess,
    pareto_cost,
    select_proposals,
    suggest,
    target_cost,
    target_object,
)
from prunenas.spaces import load_space

TINY = load_space("tiny-synthetic")
MS_PER_MAC, MS_PER_UNIT = 1e-5, 0.05
SCALE, INTERCEPT = 1.5, 0.2
DEVICE = ("cpu-torch", 1, 1)


def unit_ms(unit):
    """The synthetic table entry of a unit: its MACs (conv: per output position) times a constant, plus a fixed
    cost."""
    per_position = unit.in_channels // unit.groups * unit.out_channels * unit.kernel ** 2
    positions = unit.out_hw[0] * unit.out_hw[1] if unit.kind == "conv" else 1
    return MS_PER_MAC * (per_position * positions if unit.kind in ("conv", "linear") else 0) + MS_PER_UNIT


def expected_ms(arch):
    """The prediction, recomputed from the MAC counter and the number of table units."""
    return SCALE * (MS_PER_MAC * macs(arch) + MS_PER_UNIT * len(units(arch.layers))) + INTERCEPT


@pytest.fixture()
def synthetic(monkeypatch, tmp_path):
    """A latency table filled by the closed form, calibrated for the tiny space, in a private cache."""
    monkeypatch.setenv("PRUNENAS_CACHE", str(tmp_path / "cache"))
    _latency_cost.cache_clear()

    def fill(self, missing):
        self.overhead_ms = 0.0
        self.entries.update({u.key: unit_ms(u) for u in missing})

    monkeypatch.setattr(LatencyTable, "_fill", fill)
    cost = latency_cost(*DEVICE)
    cost.table.set_calibration(TINY.base, Calibration(SCALE, INTERCEPT, 8))
    yield cost
    _latency_cost.cache_clear()


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def latency_target(**kw):
    return Target(match="latency", latency_device=DEVICE, **kw)


# -- the cost kind and targets ----------------------------------------------------------------------------


def test_prediction_is_the_closed_form_of_the_synthetic_table(synthetic):
    rng = random.Random(0)
    for _ in range(5):
        arch = TINY.arch([rng.randint(1, u) for u in TINY.upper])
        assert cost_of(arch, synthetic) == pytest.approx(expected_ms(arch), rel=1e-12)
    assert latency_target(ratio=0.5).cost_kind(TINY) is synthetic  # the target resolves to the same table


def test_latency_targets_round_trip_and_reject_mixed_kinds():
    target = latency_target(cost=1.25)
    data = json.loads(json.dumps(target.to_dict()))
    assert data["latency_device"] == {"name": "cpu-torch", "batch": 1, "threads": 1}
    assert Target.from_dict(data) == target
    with pytest.raises(BudgetError, match="a latency target needs a latency device"):
        Target(ratio=0.5, match="latency")
    with pytest.raises(BudgetError, match="only a latency target takes one"):
        Target(ratio=0.5, latency_device=DEVICE)


def test_a_latency_target_below_the_floor_names_the_floor(synthetic):
    floor = expected_ms(TINY.arch(TINY.lower))
    with pytest.raises(LatencyError, match=f"below the floor of tiny-synthetic on cpu-torch/b1/t1: its smallest "
                                           f"architecture predicts {floor:.4g} ms"):
        latency_target(cost=floor * 0.9).absolute(TINY)
    assert latency_target(cost=floor * 1.1).absolute(TINY) == pytest.approx(floor * 1.1)


def test_a_calibration_with_a_falling_slope_is_refused(synthetic):
    synthetic.table.set_calibration(TINY.base, Calibration(-0.5, 3.0, 8))
    with pytest.raises(LatencyError, match="slope -0.5 <= 0"):
        latency_target(ratio=0.5).absolute(TINY)


# -- twins at equal predicted latency ---------------------------------------------------------------------


def test_uniform_twin_is_the_nearest_achievable_latency(synthetic):
    target = latency_target(ratio=0.6)
    goal = target.absolute(TINY)
    assert goal == pytest.approx(0.6 * expected_ms(TINY.base))
    proposal = propose("uniform", TINY, target)
    error = proposal.provenance["twin_error"]
    assert proposal.provenance["achieved_latency"] == pytest.approx(expected_ms(proposal.arch))
    assert error == pytest.approx(expected_ms(proposal.arch) / goal - 1)
    # independent reference: scan the multiplier finely; the twin is at least as close as any scanned width set
    scanned = min(abs(expected_ms(TINY.arch(uniform_widths(TINY, m / 1000))) / goal - 1) for m in range(1, 1001))
    assert abs(error) <= scanned + 1e-12 and abs(error) <= LATENCY_TOLERANCE


# -- latency-knapsack -------------------------------------------------------------------------------------


class AdditiveCost:
    """A cost that is a sum of per-slot terms (integers): the knapsack's linearisation is exact for it."""

    name, tolerance = "additive", 0.0

    def __init__(self, per_channel, constant):
        self.per_channel, self.constant = per_channel, constant

    def __call__(self, arch):
        return self.constant + sum(a * w for a, w in zip(self.per_channel, arch.widths))


@pytest.mark.parametrize("seed", range(4))
def test_knapsack_widths_are_optimal_against_brute_force(seed):
    rng = random.Random(seed)
    scores = {s: torch.tensor([rng.random() for _ in range(u)], dtype=torch.float64)
              for s, u in enumerate(TINY.upper)}
    cost = AdditiveCost([rng.randint(1, 4) for _ in TINY.upper], 7)
    options = [width_options(TINY, s) for s in range(len(TINY.upper))]
    smallest = cost(TINY.arch([o[0] for o in options]))
    # budget = goal - the smallest network's cost = 1000 grid units of 1: integer costs are exact on the grid
    goal = smallest + 1000 if sum(a * u for a, u in zip(cost.per_channel, TINY.upper)) > 1000 else smallest + 40
    resolution = int(goal - smallest)
    choice = knapsack_widths(TINY, scores, cost, goal, resolution=resolution)

    def importance(widths):  # sum of each slot's w largest scores, computed apart from the proposer's code
        return sum(sum(sorted(scores[s].tolist(), reverse=True)[:w]) for s, w in enumerate(widths))

    best = max(importance(widths) for widths in itertools.product(*options) if cost(TINY.arch(widths)) <= goal)
    assert cost(TINY.arch(choice.widths)) <= goal
    assert importance(choice.widths) == pytest.approx(best, rel=1e-12)
    assert choice.importance == pytest.approx(best, rel=1e-12)


def _tiny_base():
    torch.manual_seed(1)
    return base_model_from(TINY.base.build(), TINY.base)


def test_latency_knapsack_meets_a_latency_target_and_its_twin_matches_it(synthetic):
    provider = StaticProvider(TINY, {None: _tiny_base()})
    target = latency_target(ratio=0.7)
    goal = target.absolute(TINY)
    proposal = propose("latency-knapsack", TINY, target, provider, {"prune_tied": True})
    achieved = proposal.provenance["achieved_latency"]
    assert achieved == pytest.approx(expected_ms(proposal.arch)) and achieved <= goal * (1 + LATENCY_TOLERANCE)
    assert proposal.arch.widths != TINY.upper
    assert all(len(proposal.kept[s]) == w for s, w in enumerate(proposal.arch.widths))
    twin = propose("uniform", TINY, latency_target(cost=achieved))
    assert abs(twin.provenance["twin_error"]) <= LATENCY_TOLERANCE
    assert Proposal.from_dict(json.loads(json.dumps(proposal.to_dict()))).target == target


def test_magnitude_refuses_a_latency_target(synthetic):
    with pytest.raises(ProposerError, match="masks weights, which does not change latency"):
        propose("magnitude", TINY, latency_target(ratio=0.7), StaticProvider(TINY, {None: _tiny_base()}))


# -- the command line -------------------------------------------------------------------------------------


def test_latency_command_measures_and_predicts(synthetic, capsys):
    code, out, _ = run(capsys, "latency", "tiny-synthetic", "--latency-device", "cpu-torch", "--repeats", "3",
                       "--warmup", "1", "--json")
    result = json.loads(out)
    assert code == 0 and result["samples"] == 3 and result["measured_ms"] > 0 and result["iqr_ms"] >= 0
    assert result["predicted_ms"] == pytest.approx(expected_ms(TINY.base))
    assert result["fingerprint"] == synthetic.device.key() and result["device"] == "cpu-torch/b1/t1"


def test_latency_calibrate_reports_the_predictor_next_to_the_mac_baseline(synthetic, capsys):
    code, out, _ = run(capsys, "latency", "calibrate", "tiny-synthetic", "--latency-device", "cpu-torch", "--n", "4",
                       "--repeats", "2", "--warmup", "0")
    assert code == 0 and "table predictor" in out and "MAC baseline" in out and "fit on 2, scored on 2" in out


def test_uniform_command_takes_a_latency_ratio(synthetic, capsys, tmp_path):
    code, out, _ = run(capsys, "uniform", "tiny-synthetic", "--latency-ratio", "0.6", "--latency-device", "cpu-torch",
                       "--json", "--out", str(tmp_path / "twin.json"))
    result = json.loads(out)
    assert code == 0 and result["match"] == "latency" and result["latency_device"] == "cpu-torch/b1/t1"
    assert result["target"] == pytest.approx(0.6 * expected_ms(TINY.base))
    assert result["achieved"] == pytest.approx(expected_ms(TINY.arch(result["widths"])))
    assert abs(result["error"]) <= LATENCY_TOLERANCE and (tmp_path / "twin.json").exists()


@pytest.mark.parametrize("argv, words", [
    (["uniform", "tiny-synthetic", "--latency-ms", "1", "--latency-device", "tpu"], "unknown latency device 'tpu'"),
    (["uniform", "tiny-synthetic", "--latency-ms", "1", "--latency-device", "cpu-torch", "--latency-batch", "0"],
     "batch 0 must be a positive integer"),
    (["uniform", "tiny-synthetic", "--latency-ms", "1", "--latency-device", "cpu-torch", "--latency-threads", "-1"],
     "threads -1 must be a positive integer"),
    (["uniform", "tiny-synthetic", "--latency-ms", "0.001", "--latency-device", "cpu-torch"], "below the floor"),
    (["uniform", "tiny-synthetic", "--latency-ms", "1"], "need --latency-device"),
    (["uniform", "tiny-synthetic", "--ratio", "0.5", "--latency-device", "cpu-torch"], "applies to latency targets"),
    (["propose", "l1-norm", "tiny-synthetic", "--latency-ms", "0.001", "--latency-device", "cpu-torch"],
     "below the floor"),
    (["latency", "calibrate", "--latency-device", "cpu-torch"], "latency calibrate needs a SPACE"),
])
def test_bad_latency_input_is_one_line_exit_2_nothing_written(synthetic, capsys, tmp_path, argv, words):
    out = tmp_path / "out.json"
    code, _, err = run(capsys, *argv, "--out", str(out)) if argv[0] != "latency" else run(capsys, *argv)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


# -- experiment files -------------------------------------------------------------------------------------

LATENCY_EXPERIMENT = {"space": "tiny-synthetic", "data": {"name": "synthetic"}, "proposers": {"latency-knapsack": {}},
                      "targets": {"latency_ratios": [0.6, 0.8],
                                  "latency_device": {"name": "cpu-torch", "batch": 1, "threads": 1}}}


def latency_experiment(**targets):
    data = json.loads(json.dumps(LATENCY_EXPERIMENT))
    data["targets"] = {k: v for k, v in {**data["targets"], **targets}.items() if v is not None}
    return data


def test_experiment_latency_targets_become_latency_targets_of_the_device(synthetic):
    exp = experiment_from_dict(latency_experiment())
    assert (exp.match, exp.latency_device, exp.target) == ("latency", DEVICE, ("latency_ratio", [0.6, 0.8]))
    assert target_object(exp, 0.6) == latency_target(ratio=0.6)
    assert target_cost(exp, 0.8) == pytest.approx(0.8 * expected_ms(TINY.base))
    ms = experiment_from_dict(latency_experiment(latency_ratios=None, latency_ms=[1.5]))
    assert target_object(ms, 1.5) == latency_target(cost=1.5)


def test_dry_run_plans_a_latency_study(synthetic, capsys, tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(json.dumps(latency_experiment()))
    code, out, _ = run(capsys, "search", str(path), "--dry-run", "--json")
    assert code == 0 and json.loads(out)


@pytest.mark.parametrize("targets, words", [
    ({"latency_device": None}, "targets.latency_device: missing (required by latency targets)"),
    ({"latency_device": {"name": "tpu"}}, "targets.latency_device: unknown latency device 'tpu'"),
    ({"latency_device": {"name": "cpu-torch", "batch": 0}}, "batch 0 must be a positive integer"),
    ({"latency_ratios": None, "latency_ms": [0.001]}, "is below the smallest architecture of tiny-synthetic"),
    ({"ratios": [0.5]}, "targets: give one of ratios, macs, latency_ratios, latency_ms; not ratios and latency_ratios"),
    ({"match": "macs"}, "targets.match: macs goes with ratios or macs"),
])
def test_bad_latency_experiments_are_one_line(synthetic, targets, words):
    with pytest.raises(ExperimentError, match=re.escape(words)):
        experiment_from_dict(latency_experiment(**targets))


# -- latency as a search objective and as the direct search's constraint ------------------------------------


def test_objective_latency_needs_latency_targets():
    data = {**latency_experiment(), "targets": {"ratios": [0.5]}, "search": {"objectives": ["val_acc", "latency"]}}
    with pytest.raises(ExperimentError, match=re.escape("search.objectives: latency is the predicted latency")):
        experiment_from_dict(data)


def test_pareto_selection_on_latency_is_the_nondominated_set_of_predicted_latencies(synthetic):
    exp = experiment_from_dict({**latency_experiment(), "search": {"objectives": ["val_acc", "latency"],
                                                                   "sampler": "nsga2", "select": "pareto"},
                               "seeds": {"search": [0], "eval": [1]}})
    rng = random.Random(0)
    archs = {f"p{i}": TINY.arch([rng.randint(lo, hi) for lo, hi in zip(TINY.lower, TINY.base.widths)])
             for i in range(12)}
    accuracy = {pid: rng.choice([0.5, 0.6, 0.7, 0.8]) for pid in archs}
    for arch in archs.values():
        assert pareto_cost(exp, arch) == pytest.approx(expected_ms(arch))  # not the MACs
    chosen = select_proposals(exp, {pid: (accuracy[pid], pareto_cost(exp, a)) for pid, a in archs.items()})

    def dominated(p):  # another candidate at least as accurate and faster, or more accurate and as fast
        return any((accuracy[q] >= accuracy[p] and expected_ms(archs[q]) < expected_ms(archs[p]) - 1e-12)
                   or (accuracy[q] > accuracy[p] and expected_ms(archs[q]) <= expected_ms(archs[p]) + 1e-12)
                   for q in archs if q != p)
    assert set(chosen) == {p for p in archs if not dominated(p)}


def test_direct_search_with_latency_targets_is_constrained_by_predicted_latency(synthetic):
    exp = experiment_from_dict({**latency_experiment(latency_ratios=[0.6]), "proposers": {"random": {}},
                                "search": {"direct": True, "objectives": ["val_acc", "latency"],
                                           "sampler": "nsga2"}})
    limit = 0.6 * expected_ms(TINY.base) * (1 + LATENCY_TOLERANCE)
    rng = random.Random(1)
    for _ in range(30):
        arch = TINY.arch([rng.randint(lo, hi) for lo, hi in zip(TINY.lower, TINY.base.widths)])
        assert (budget_excess(exp, cost_of(arch, exp.cost_kind)) > 0) == (expected_ms(arch) > limit)
    widest = optuna.trial.FixedTrial({"method": "direct", **{f"direct/w{i}": w for i, w in enumerate(TINY.upper)}})
    suggest(widest, exp)  # the full-width network: predicted latency 1/0.6 of the budget
    assert widest.user_attrs["over_budget"]
    assert widest.constraints["latency"] == pytest.approx(1 / 0.6 - 1 - LATENCY_TOLERANCE)
