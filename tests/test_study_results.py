"""The committed Fashion-MNIST study (experiments/results/fashionmnist-study) is real and its report is regenerable.

The run folder was committed without weights, checkpoints and Tune's folder; everything the report reads
(run.json, results.jsonl, plan.json, proposals/) is there, so `prunenas report` on it must write the same
report that is committed next to it.
"""
import shutil
from pathlib import Path

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
