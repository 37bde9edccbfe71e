import pytest

from prunenas.experiment import ExperimentError
from prunenas.experiment_file import experiment_from_dict, load_experiment
from prunenas.search.plan import enqueued_points, grid_points, select_proposals, target_setting

BASE = {"space": "resnet56-cifar10", "proposers": {"l1-norm": {}, "uniform": {}}, "targets": {"ratios": [0.5]}}


def test_overrides_are_kept_in_the_source_that_resume_reads():
    exp = load_experiment("experiments/quickstart.yaml").with_overrides(num_samples=9, epochs=1, sampler=None)
    again = experiment_from_dict(exp.source)
    assert (again.num_samples, again.epochs, again.sampler) == (9, 1, "tpe")


def test_presets_join_the_targets_of_methods_that_have_presets():
    exp = experiment_from_dict(BASE)
    assert target_setting(exp, "l1-norm") == [0.5, "preset:A", "preset:B"]
    assert target_setting(exp, "uniform") == [0.5]
    only = experiment_from_dict({**BASE, "proposers": {"l1-norm": {}}, "targets": {"presets": ["B"]}})
    assert target_setting(only, "l1-norm") == ["preset:B"]
    with pytest.raises(ExperimentError, match="proposers.uniform: no target to propose at"):
        experiment_from_dict({**BASE, "targets": {"presets": ["B"]}})
    with pytest.raises(ExperimentError, match="targets.presets: 'C' is not a preset of resnet56-cifar10"):
        experiment_from_dict({**BASE, "targets": {"presets": ["C"]}})


def test_enqueued_and_grid_points():
    exp = experiment_from_dict({**BASE, "proposers": {"l1-norm": {"normalization": ["max", "mean"]}}})
    assert enqueued_points(exp) == [{"method": "l1-norm", "l1-norm/normalization": "mean", "l1-norm/target": t}
                                    for t in (0.5, "preset:A", "preset:B")]
    assert len(grid_points(exp)) == 2 * 3


def test_budget_restricted_to_some_targets():
    exp = experiment_from_dict({**BASE, "targets": {"ratios": [0.3, 0.6]},
                                "budgets": ["scratch-e", {"name": "scratch-b", "targets": [0.6]}]})
    assert exp.budgets == ("scratch-e", "scratch-b") and exp.budget_targets == {"scratch-b": (0.6,)}
    with pytest.raises(ExperimentError, match="budgets: 'scratch-c' not in"):
        experiment_from_dict({**BASE, "budgets": [{"name": "scratch-c", "targets": [0.5]}]})


def test_selection_all_top_k_and_pareto():
    scores = {"a": (0.90, 100), "b": (0.92, 200), "c": (0.88, 50), "d": (0.91, 300)}
    exp = experiment_from_dict(BASE)
    assert select_proposals(exp, scores) == ["b", "d", "a", "c"]
    disjoint = {**BASE, "seeds": {"search": [0], "eval": [1, 2]}}
    assert select_proposals(experiment_from_dict({**disjoint, "search": {"select": "top-k", "top_k": 2}}),
                            scores) == ["b", "d"]
    assert select_proposals(experiment_from_dict({**disjoint, "search": {"select": "pareto"}}), scores) == [
        "b", "a", "c"]


@pytest.mark.parametrize("select", ["top-k", "pareto"])
def test_selected_proposals_are_not_evaluated_on_their_search_seeds(select):
    # a search training reused as the winner's evaluation row would carry the luck that selected it
    overlapping = {**BASE, "seeds": {"search": [0, 1], "eval": [1, 2, 3]}, "search": {"select": select}}
    with pytest.raises(ExperimentError, match=rf"seeds.eval: \[1, 2, 3\] shares seed\(s\) \[1\] with "
                                              rf"seeds.search while search.select is {select}"):
        experiment_from_dict(overlapping)
    assert experiment_from_dict({**overlapping, "search": {"select": "all"}}).eval_seeds == (1, 2, 3)


def test_expected_values_need_a_tag():
    with pytest.raises(ExperimentError, match="expected.rows\\[0\\].tag: 'maybe' not in"):
        experiment_from_dict({**BASE, "expected": {"rows": [{"target": 0.5, "value": "93", "tag": "maybe"}]}})


@pytest.mark.parametrize("arm", ["finetune", "lottery", "distill", "distill-scratch", "uniform-distill",
                                 "scratch-full"])
def test_an_arm_needing_a_base_model_is_an_error_for_a_method_without_one(arm):
    with pytest.raises(ExperimentError, match=rf"^arms: {arm} needs the base model of the method, and uniform has "
                                              rf"none \(it prunes no trained network\); drop {arm} or uniform$"):
        experiment_from_dict({**BASE, "arms": ["proposed", arm]})
    direct = {**BASE, "proposers": {"l1-norm": {}}, "search": {"direct": True}, "arms": ["proposed", arm]}
    with pytest.raises(ExperimentError, match=f"arms: {arm} needs the base model of the method, and direct has"):
        experiment_from_dict(direct)
    assert experiment_from_dict({**BASE, "proposers": {"l1-norm": {}}, "arms": ["proposed", arm]}).arms[1] == arm


def test_a_teacher_trains_at_least_as_long_as_its_scratch_b_students():
    study = {**BASE, "space": "vgg11-fashionmnist", "proposers": {"l1-norm": {}}, "targets": {"ratios": [0.35]},
             "arms": ["proposed", "distill-scratch"], "budgets": ["scratch-e", "scratch-b"],
             "recipe": {"name": "fast", "epochs": 8}}
    # Scratch-B at 35% of the MACs: int(8 / 0.35) = 22 epochs
    with pytest.raises(ExperimentError, match=r"base.epochs: the teacher trains 21 epochs, fewer than its scratch-b "
                                              r"students \(22\)"):
        experiment_from_dict({**study, "base": {"epochs": 21}})
    assert experiment_from_dict({**study, "base": {"epochs": 22}}).base_schedule_epochs == 22
    with pytest.raises(ExperimentError, match=r"teacher trains 7 epochs, fewer than its scratch-e students \(8\)"):
        experiment_from_dict({**study, "base": {"epochs": 7}, "budgets": ["scratch-e"]})


def test_distillation_and_lr_grid_settings():
    exp = experiment_from_dict({**BASE, "distill": {"temperature": 2, "weight": 1}, "lr_grid": [0.05, 0.1]})
    assert (exp.distill_temperature, exp.distill_weight, exp.lr_grid) == (2.0, 1.0, (0.05, 0.1))
    assert experiment_from_dict(BASE).lr_grid is None


@pytest.mark.parametrize(("changes", "message"), [
    ({"distill": {"temperature": 0}}, "distill.temperature: 0 must be a number > 0"),
    ({"distill": {"temperature": -1.5}}, "distill.temperature: -1.5 must be a number > 0"),
    ({"distill": {"weight": 1.2}}, r"distill.weight: 1.2 must be a number in \[0, 1\]"),
    ({"distill": {"weight": -0.1}}, r"distill.weight: -0.1 must be a number in \[0, 1\]"),
    ({"lr_grid": [0.1, 0]}, "lr_grid: 0 must be a positive number"),
    ({"lr_grid": [0.1, 0.05, 0.1]}, "lr_grid: 0.1 appears more than once"),
    ({"lr_grid": []}, "lr_grid: empty"),
])
def test_bad_distillation_and_lr_grid(changes, message):
    with pytest.raises(ExperimentError, match=message):
        experiment_from_dict({**BASE, **changes})


def test_the_distillation_study_plans_every_arm_at_both_rates_and_three_seeds():
    from prunenas.search.plan import estimate

    exp = load_experiment("experiments/fashionmnist-distill-study.yaml")
    plan = estimate(exp, train_images=8000)["evaluation"]
    arms = {(a["arm"], a["budget"]): (a["trials"], a["epochs"]) for a in plan["arms"]}
    assert set(arms) == {(arm, budget) for arm in ("proposed", "uniform", "distill-scratch", "uniform-distill")
                         for budget in ("scratch-e", "scratch-b")} | {
        ("finetune", "finetune"), ("distill", "finetune"), ("scratch-full", "scratch-full")}
    assert {trials for trials, _ in arms.values()} == {2 * 3} and plan["trials"] == 66
    # Scratch-B: int(8 / 0.35) = 22; scratch-full: (24 base epochs x MACs(base)) / (0.35 MACs(base)) = 68, + 8
    assert arms[("proposed", "scratch-b")][1] == [22] and arms[("scratch-full", "scratch-full")][1] == [76]
