"""What one trial does, without Ray: the evaluation plan of the selected proposals, the cost error of the
controls, and where the test set is read (tiny network, synthetic data)."""

from prunenas.cost import count
from prunenas.experiment_file import experiment_from_dict
from prunenas.proposers import Proposal, Target, propose
from prunenas.runs.rundir import RunDir
from prunenas.trial import Context, Trial, evaluation_trials, proposal_id, run_trial

from .search.search_helpers import EXPERIMENT

EXP = experiment_from_dict({**EXPERIMENT, "arms": ["proposed", "uniform", "random"]})


def _saved(run, proposal):
    pid = proposal_id(proposal)
    proposal.save(run.proposal_path(pid))
    return pid


def test_a_network_two_methods_propose_is_trained_once_and_reported_for_both(tmp_path, monkeypatch):
    from prunenas.runs.groups import collect
    from prunenas.search import tune as search

    run = RunDir(tmp_path)
    run.create("shared", "")
    ctx = Context(EXP, run, threads=1)
    first = propose("random", EXP.space, Target(ratio=0.5), None, {}, seed=3)
    second = Proposal(first.arch, "direct", {"widths": list(first.arch.widths)}, first.target)
    pids = [_saved(run, first), _saved(run, second)]
    # the search trained the network once, under the first proposal (the key ignores the method)
    run.results.append({"key": "k" * 16, "phase": "search", "status": "ok", "proposal": pids[0], "method": "random",
                        "seed": EXP.search_seeds[0],
                        "digest": first.arch.digest(), "val_acc": 0.8, "macs": count(first.arch).macs,
                        "recipe": {"lr": 0.1}})
    monkeypatch.setattr(search, "_unevaluated", lambda ctx, keys: [])  # plan only: train nothing
    assert search._phase_evaluate(ctx) == 0
    plan = run.read_json("plan.json")
    assert sorted(plan["selected"]) == sorted(pids)
    keys = [{(e["arm"], e["seed"]): e["key"] for e in plan["proposals"][pid]} for pid in pids]
    assert keys[0] == keys[1]  # shared trainings: the same keys, trained once
    assert {g.method for g in collect(run)} == {"random", "direct"}


def test_every_control_training_carries_its_cost_error_against_the_proposal():
    ctx = Context(EXP, RunDir("unused"), threads=1)
    proposal = propose("random", EXP.space, Target(ratio=0.5), None, {}, seed=3)
    goal = count(proposal.arch).macs
    trainings = evaluation_trials(ctx, proposal, proposal_id(proposal))
    assert {t.arm for t in trainings} == {"proposed", "uniform", "random"}
    for t in trainings:
        expected = None if t.arm == "proposed" else count(t.arch).macs / goal - 1
        assert t.twin_error == expected, t.arm
    assert any(t.twin_error != 0 for t in trainings if t.arm == "uniform")  # the tiny net's twin is not exact


def test_the_row_of_a_control_records_its_cost_error(tmp_path):
    ctx = Context(EXP, RunDir(tmp_path), threads=1)
    proposal = propose("random", EXP.space, Target(ratio=0.5), None, {}, seed=3)
    uniform = next(t for t in evaluation_trials(ctx, proposal, proposal_id(proposal)) if t.arm == "uniform")
    row = run_trial(ctx, uniform, "eval")
    assert row["twin_error"] == count(uniform.arch).macs / count(proposal.arch).macs - 1


def test_only_the_evaluation_reads_the_test_set(tmp_path):
    training = Trial(EXP.space.base, "proposed", "scratch-e", 0)
    run = RunDir(tmp_path / "run")
    searched = run_trial(Context(EXP, run, threads=1), training, "search")
    assert searched["status"] == "ok" and searched["test_acc"] is None
    # reused as an evaluation row: the test accuracy of its saved weights, appended to the store
    evaluated = run_trial(Context(EXP, run, threads=1), training, "eval")
    assert evaluated["key"] == searched["key"] and evaluated["val_acc"] == searched["val_acc"]
    assert [r["test_acc"] for r in run.results.rows()] == [None, evaluated["test_acc"]]
    # the same training evaluated at its end, as an evaluation trial does: the same test accuracy
    fresh = run_trial(Context(EXP, RunDir(tmp_path / "fresh"), threads=1), training, "eval")
    assert fresh["test_acc"] == evaluated["test_acc"] and fresh["test_loss"] == evaluated["test_loss"]
    assert run_trial(Context(EXP, run, threads=1), training, "eval") == evaluated  # read once
    assert len(run.results.rows()) == 2


def test_the_base_model_is_trained_without_reading_the_test_set(tmp_path):
    base = Context(EXP, RunDir(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), threads=1).provider().get(None)
    assert base.val_acc > 0 and base.meta["test_acc"] is None


DISTILL = experiment_from_dict({**EXPERIMENT, "proposers": {"l1-norm": {}}, "base": {"epochs": 2},
                                "arms": ["proposed", "uniform", "finetune", "distill", "distill-scratch",
                                         "uniform-distill", "scratch-full"], "finetune": {"epochs": 1},
                                "distill": {"temperature": 3, "weight": 0.5}, "seeds": {"search": [0], "eval": [0]}})


def test_the_distillation_arms_their_budgets_networks_and_recipes(tmp_path):
    from prunenas.budget import scratch_full_epochs
    from prunenas.trial import make_proposal, training_config, training_key

    run = RunDir(tmp_path / "run")
    run.create("distill", "")
    ctx = Context(DISTILL, run, cache_dir=str(tmp_path / "cache"), threads=1)
    proposal = make_proposal(ctx, "l1-norm", {}, Target(ratio=0.5))
    trainings = {t.arm: t for t in evaluation_trials(ctx, proposal, proposal_id(proposal))}
    assert {(a, t.budget) for a, t in trainings.items()} == {
        ("proposed", "scratch-e"), ("uniform", "scratch-e"), ("finetune", "finetune"), ("distill", "finetune"),
        ("distill-scratch", "scratch-e"), ("uniform-distill", "scratch-e"), ("scratch-full", "scratch-full")}
    assert trainings["uniform-distill"].arch == trainings["uniform"].arch
    assert trainings["uniform-distill"].twin_error == trainings["uniform"].twin_error
    assert {a for a, t in trainings.items() if t.arch == proposal.arch} == {
        "proposed", "finetune", "distill", "distill-scratch", "scratch-full"}
    configs = {a: training_config(ctx, t) for a, t in trainings.items()}
    assert {a for a, c in configs.items() if (c.temperature, c.distill_weight) == (3.0, 0.5)} == {
        "distill", "distill-scratch", "uniform-distill"}
    assert configs["distill"].identity() == {**configs["finetune"].identity(), "temperature": 3.0,
                                             "distill_weight": 0.5}
    # the whole pipeline: 2 base epochs at the base's MACs + 1 fine-tuning epoch, in epochs of the proposal
    assert configs["scratch-full"].epochs == scratch_full_epochs(2, count(DISTILL.space.base).macs,
                                                                 count(proposal.arch).macs, 1)
    assert len({training_key(ctx, t) for t in trainings.values()}) == len(trainings)
    # a teacher arm's key depends on the teacher (the base model), a scratch arm's does not
    other = Context(experiment_from_dict({**DISTILL.source, "base": {"epochs": 3}}), run, threads=1)
    assert training_key(other, trainings["distill-scratch"]) != training_key(ctx, trainings["distill-scratch"])
    assert training_key(other, trainings["proposed"]) == training_key(ctx, trainings["proposed"])
    rows = {arm: run_trial(ctx, trainings[arm], "eval") for arm in ("distill", "distill-scratch")}
    assert all(r["status"] == "ok" and r["recipe"]["temperature"] == 3.0 for r in rows.values())
    assert rows["distill"]["init"] == "trained" and rows["distill-scratch"]["init"] == "scratch"
    # compute by hand: images = epochs x whole batches (drop_last); a training step ~3x the forward MACs, the teacher
    # one forward; the pipeline adds the base model's training (shared by this run's one proposal)
    n, base_config = len(ctx.data().train), ctx.provider().config()
    base_train = 3 * count(DISTILL.space.base).macs * 2 * (n // base_config.batch_size * base_config.batch_size)
    for arm, row in rows.items():
        images = configs[arm].epochs * (n // configs[arm].batch_size * configs[arm].batch_size)
        own = 3 * count(proposal.arch).macs * images + count(DISTILL.space.base).macs * images
        assert row["compute"]["images"] == images and row["compute"]["train_macs"] == own, arm
        assert row["compute"]["pipeline_macs"] == row["compute"]["pipeline_macs_amortised"] == own + base_train
        assert row["compute"]["shared_by"] == 1 and row["compute"]["seconds"] == row["seconds"]
    scratch = run_trial(ctx, trainings["proposed"], "eval")["compute"]
    assert scratch["train_macs"] == scratch["pipeline_macs"] == 3 * count(proposal.arch).macs * scratch["images"]
    assert "base_model" not in scratch and scratch["teacher_macs"] == 0
    make_proposal(ctx, "l1-norm", {}, Target(ratio=0.7))  # a second proposal from the same base model
    twin = run_trial(ctx, trainings["uniform-distill"], "eval")["compute"]
    assert twin["shared_by"] == 2 and twin["pipeline_macs"] == twin["train_macs"] + base_train
    assert twin["pipeline_macs_amortised"] == twin["train_macs"] + base_train / 2


def test_an_inherit_arm_on_a_proposal_with_nothing_to_inherit_is_an_error():
    import pytest

    from prunenas.errors import PrunenasError

    ctx = Context(DISTILL, RunDir("unused"), threads=1)
    widths = propose("random", EXP.space, Target(ratio=0.5), None, {}, seed=3).arch
    proposal = Proposal(widths, "direct", {"widths": list(widths.widths)}, Target(ratio=0.5))
    with pytest.raises(PrunenasError, match="arms: finetune inherits the base model's weights, and the direct "
                                            "proposal p records no kept channels"):
        evaluation_trials(ctx, proposal, "p")


def test_lr_grid_trains_every_arm_at_every_rate_the_same_number_of_times():
    from collections import Counter

    exp = experiment_from_dict({**EXPERIMENT, "arms": ["proposed", "uniform", "random"], "lr_grid": [0.2, 0.05],
                                "budgets": ["scratch-e", "scratch-b"]})
    ctx = Context(exp, RunDir("unused"), threads=1)
    proposal = propose("random", exp.space, Target(ratio=0.5), None, {}, seed=3)
    trainings = evaluation_trials(ctx, proposal, proposal_id(proposal), lr=0.1)  # the grid, not the search's rate
    assert Counter((t.arm, t.budget, t.lr) for t in trainings) == {
        (arm, budget, lr): 2 for arm in ("proposed", "uniform", "random") for budget in ("scratch-e", "scratch-b")
        for lr in (0.2, 0.05)}
