"""The committed Fashion-MNIST studies (experiments/results/) are real and their reports are regenerable.

Each run folder was committed without weights, checkpoints and Tune's folder; everything the report reads
(run.json, results.jsonl, plan.json, proposals/) is there, so `prunenas report` on it must write the same
report that is committed next to it.
"""
import shutil
from pathlib import Path

import pytest

from prunenas.cli.status import run_status
from prunenas.runs import report
from prunenas.runs.report import collect, write_report
from prunenas.runs.rundir import RunDir

RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results"
STUDY = RESULTS / "fashionmnist-study"
SEEDS = {0, 1, 2}
# study -> (evaluation trainings, Optuna trials, methods)
STUDIES = {
    "fashionmnist-study": (102, 12, {"l1-norm", "slimming", "sfp", "magnitude", "thinet", "regression"}),
    "fashionmnist-resnet-study": (24, 3, {"sss", "l1-norm", "thinet"}),
    "fashionmnist-sfp-study": (18, 2, {"sfp"}),
}


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_the_study_finished_with_every_planned_training_ok(name):
    trainings, trials, _ = STUDIES[name]
    status = run_status(str(RESULTS / name))
    assert status["status"] == "finished" and status["evaluation"] == f"{trainings}/{trainings} trainings done"
    assert list(status["trainings"]) == ["ok"] and status["search_trials"] == {"COMPLETE": trials}


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_every_proposal_has_three_paired_seeds_in_every_arm_and_budget(name):
    groups = collect(RunDir(RESULTS / name))
    assert {g.method for g in groups} == STUDIES[name][2]
    for group in groups:
        for budget in group.budgets:
            for arm in ("proposed", "uniform", "random"):
                assert set(group.values(arm, budget, "test_acc")) == SEEDS, (group.method, budget, arm)


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_the_committed_report_is_what_prunenas_report_writes_today(study, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(RESULTS / study, copy, ignore=shutil.ignore_patterns("report"))
    written = write_report(RunDir(copy), tmp_path / "again", "md", latency=False)
    assert sorted(written["files"]) == ["accuracy_vs_macs.png", "accuracy_vs_macs.svg", "report.md",
                                        "widths.png", "widths.svg"]
    for name in written["files"]:  # byte for byte, plots included (same matplotlib as the committed ones)
        assert (tmp_path / "again" / name).read_bytes() == (RESULTS / study / "report" / name).read_bytes(), name


def test_masked_twins_are_drawn_apart_from_dense_twins(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig) or [])
    groups = collect(RunDir(STUDY))
    report.plot_accuracy_vs_macs(groups, tmp_path / "plot")
    lines = {line.get_label(): line for line in figures[0].axes[0].get_lines()}
    masked = {g.row("uniform")["macs"] for g in groups if g.method == "magnitude"}
    dense = {g.row("uniform")["macs"] for g in groups if g.method != "magnitude"}
    assert sorted(lines["uniform-sparsity twin (masked)"].get_xdata()) == sorted(m / 1e6 for m in masked)
    assert sorted(lines["uniform twin"].get_xdata()) == sorted(m / 1e6 for m in dense)
