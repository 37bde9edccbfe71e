"""The committed Fashion-MNIST study (experiments/results/fashionmnist-study) is real and its report is regenerable.

The run folder was committed without weights, checkpoints and Tune's folder; everything the report reads
(run.json, results.jsonl, plan.json, proposals/) is there, so `prunenas report` on it must write the same
report that is committed next to it.
"""
import shutil
from pathlib import Path

from prunenas import report
from prunenas.report import collect, write_report
from prunenas.rundir import RunDir
from prunenas.status import run_status

STUDY = Path(__file__).resolve().parents[1] / "experiments" / "results" / "fashionmnist-study"
SEEDS = {0, 1, 2}


def test_the_study_finished_with_every_planned_training_ok():
    status = run_status(str(STUDY))
    assert status["status"] == "finished" and status["evaluation"] == "102/102 trainings done"
    assert list(status["trainings"]) == ["ok"] and status["search_trials"] == {"COMPLETE": 12}


def test_every_proposal_has_three_paired_seeds_in_every_arm_and_budget():
    groups = collect(RunDir(STUDY))
    methods = {g.method for g in groups}
    assert methods == {"l1-norm", "slimming", "sfp", "magnitude", "thinet", "regression"}
    for group in groups:
        for budget in group.budgets:
            for arm in ("proposed", "uniform", "random"):
                assert set(group.values(arm, budget, "test_acc")) == SEEDS, (group.method, budget, arm)


def test_the_committed_report_is_what_prunenas_report_writes_today(tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(STUDY, copy, ignore=shutil.ignore_patterns("report"))
    written = write_report(RunDir(copy), tmp_path / "again", "md", latency=False)
    assert sorted(written["files"]) == ["accuracy_vs_macs.png", "accuracy_vs_macs.svg", "report.md",
                                        "widths.png", "widths.svg"]
    for name in written["files"]:  # byte for byte, plots included (same matplotlib as the committed ones)
        assert (tmp_path / "again" / name).read_bytes() == (STUDY / "report" / name).read_bytes(), name


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
