"""The screening's plan and its candidates, without Ray: base models a proxy needs, the dry-run's counts, and
the asking of distinct candidates within the budget (an in-memory Optuna study)."""

import json

import optuna
import pytest

from prunenas.budget import cost_of
from prunenas.errors import PrunenasError
from prunenas.experiment_file import experiment_from_dict
from prunenas.search.plan import base_model_specs, budget_excess, estimate
from prunenas.search.screening import _candidates

DIRECT = {"space": "tiny-synthetic", "data": {"name": "synthetic"}, "proposers": {"random": {}},
          "targets": {"ratios": [0.5]},
          "search": {"direct": True, "proxy": "synflow", "screen": 6, "promote": 2, "audit": 1}}


def _exp(**search):
    return experiment_from_dict({**DIRECT, "search": {**DIRECT["search"], **search}})


def test_a_proxy_that_inherits_weights_makes_phase_0_train_the_base_model():
    assert base_model_specs(_exp()) == []  # random and direct widths need no base model, nor does synflow
    assert base_model_specs(_exp(proxy="adaptive-bn")) == [("adaptive-bn", None)]
    assert base_model_specs(_exp(fidelity_proxies=[{"name": "adaptive-bn", "batches": 2}])) == [("adaptive-bn", None)]


def test_the_dry_run_counts_the_promoted_and_audit_trainings():
    plan = estimate(_exp(), train_images=1000)
    assert plan["search"]["trials"] == 3 and plan["search"]["screening"]["screen"] == 6
    assert plan["evaluation"]["proposals"] == 3


def test_candidates_are_distinct_and_within_the_budget():
    exp = _exp()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    found = _candidates(study, exp)
    specs = [t.user_attrs["spec"] for t in found]
    assert len(specs) == 6 and len({json.dumps(s, sort_keys=True) for s in specs}) == 6
    for spec in specs:
        if spec["method"] == "direct":
            assert budget_excess(exp, cost_of(exp.space.arch(spec["params"]["widths"]), "macs")) <= 0
    others = [t for t in study.trials if "spec" not in t.user_attrs]
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in others)
    assert _candidates(study, exp) == found  # asked again: the same candidates, nothing new asked
    assert len(study.trials) == len(found) + len(others)


def test_a_space_with_fewer_distinct_candidates_than_screen_is_refused():
    exp = experiment_from_dict({**DIRECT, "search": {"proxy": "synflow", "screen": 3, "promote": 1, "audit": 1}})
    study = optuna.create_study(direction="maximize")
    with pytest.raises(PrunenasError, match="only 1 distinct candidates within the budget"):
        _candidates(study, exp)
