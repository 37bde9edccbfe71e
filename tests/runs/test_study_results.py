"""The committed Fashion-MNIST studies (experiments/results/) are real and their reports are regenerable.

Each run folder was committed without weights, checkpoints and Tune's folder; everything the report reads
(run.json, results.jsonl, plan.json, proposals/) is there, so `prunenas report` on it must write the same
report that is committed next to it.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from prunenas.cli.main import main
from prunenas.cli.status import run_status
from prunenas.errors import PrunenasError
from prunenas.runs import plots, rundir
from prunenas.runs.catalog import list_architectures
from prunenas.runs.groups import collect
from prunenas.runs.report import write_report
from prunenas.runs.rundir import RunDir

RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results"
STUDY = RESULTS / "fashionmnist-study"
SEEDS = {0, 1, 2}
# study -> (evaluation trainings, Optuna trials, methods)
STUDIES = {
    "fashionmnist-study": (102, 12, {"l1-norm", "slimming", "sfp", "magnitude", "thinet", "regression"}),
    "fashionmnist-resnet-study": (24, 3, {"sss", "l1-norm", "thinet"}),
    "fashionmnist-sfp-study": (18, 2, {"sfp"}),
    "fashionmnist-vit-study": (18, 3, {"activation", "l1-norm", "sss"}),
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
            for arm in yaml.safe_load((RESULTS / name / "experiment.yaml").read_text())["arms"]:
                assert set(group.values(arm, budget, "test_acc")) == SEEDS, (group.method, budget, arm)


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_the_committed_report_is_what_prunenas_report_writes_today(study, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(RESULTS / study, copy, ignore=shutil.ignore_patterns("report"))
    written = write_report(RunDir(copy), tmp_path / "again", "md", latency=False)
    assert sorted(written["files"]) == ["accuracy_vs_macs.png", "accuracy_vs_macs.svg", "report.md",
                                        "widths.png", "widths.svg"]
    # The text byte for byte; the plots' pixels depend on the matplotlib version, so their data is checked below.
    assert (tmp_path / "again" / "report.md").read_text() == (RESULTS / study / "report" / "report.md").read_text()


def proposed_test_accuracy_by_hand(study):
    """(MACs in millions, mean and sample std of test accuracy in %) per method, read straight from the files."""
    plan = json.loads((RESULTS / study / "plan.json").read_text())
    rows = {}
    for line in (RESULTS / study / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["key"]] = row
    points = {}
    for pid in plan["selected"]:
        picked = [rows[e["key"]] for e in plan["proposals"][pid]
                  if (e["arm"], e["budget"]) == ("proposed", "scratch-e")]
        accuracies = [100 * r["test_acc"] for r in picked]
        points.setdefault(picked[0]["method"], set()).add(
            (picked[0]["macs"] / 1e6, sum(accuracies) / len(accuracies), float(np.std(accuracies, ddof=1))))
    return points


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_the_accuracy_plot_shows_every_proposals_mean_and_std_from_the_rows(study, monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or [])
    plots.plot_accuracy_vs_macs(collect(RunDir(RESULTS / study)), tmp_path / "plot")
    plotted = {}
    for container in figures[0].axes[0].containers:  # one errorbar series per method
        line, _, (bars,) = container
        spans = [segment[:, 1] for segment in bars.get_segments()]
        plotted[container.get_label()] = sorted(zip(line.get_xdata(), line.get_ydata(),
                                                    [(high - low) / 2 for low, high in spans]))
    expected = proposed_test_accuracy_by_hand(study)
    assert set(plotted) == set(expected)
    for method, points in expected.items():
        assert np.allclose(plotted[method], sorted(points), rtol=0, atol=1e-9), method


def test_masked_twins_are_drawn_apart_from_dense_twins(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or [])
    groups = collect(RunDir(STUDY))
    plots.plot_accuracy_vs_macs(groups, tmp_path / "plot")
    lines = {line.get_label(): line for line in figures[0].axes[0].get_lines()}
    masked = {g.row("uniform")["macs"] for g in groups if g.method == "magnitude"}
    dense = {g.row("uniform")["macs"] for g in groups if g.method != "magnitude"}
    assert sorted(lines["uniform-sparsity twin (masked)"].get_xdata()) == sorted(m / 1e6 for m in masked)
    assert sorted(lines["uniform twin"].get_xdata()) == sorted(m / 1e6 for m in dense)


def test_the_resnet_studys_sss_twin_outside_one_percent_is_flagged_in_report_and_status():
    run = RunDir(RESULTS / "fashionmnist-resnet-study")
    sss = next(g for g in collect(run) if g.method == "sss")
    assert sss.row("uniform")["macs"] / sss.macs - 1 > 0.011  # the audit's +1.12%, from the committed rows
    flag = "sss at target 0.6: uniform twin +1.12% off the proposal's macs"
    assert flag in run_status(str(run.path))["controls_outside_tolerance"]
    assert f"- {flag}\n" in (run.path / "report" / "report.md").read_text()
    for other in sorted(set(STUDIES) - {"fashionmnist-resnet-study"}):
        assert "controls_outside_tolerance" not in run_status(str(RESULTS / other))


def test_report_json_prints_report_json_on_stdout_with_the_rows_means(tmp_path, capsys):
    study = "fashionmnist-sfp-study"
    code = main(["report", str(RESULTS / study), "--format", "json", "--no-latency", "--json",
                 "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    printed = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in report --json"))
    assert code == 0 and printed == json.loads((tmp_path / "report.json").read_text())
    assert "report.json" in err  # where the files went, off stdout
    means = {(r["macs"] / 1e6, 100 * r["proposed"]["mean"], 100 * r["proposed"]["std"])
             for r in printed["test"] if r["budget"] == "scratch-e"}
    assert np.allclose(sorted(means), sorted(proposed_test_accuracy_by_hand(study)["sfp"]), rtol=0, atol=1e-9)


def test_a_run_folder_of_the_previous_schema_still_reports_after_a_bump(monkeypatch, tmp_path):
    """The committed runs are schema 1; with the code at the next schema they must still read (report, arch list),
    and a folder newer than the code is refused in one line."""
    study = "fashionmnist-sfp-study"
    assert json.loads((RESULTS / study / "run.json").read_text())["schema"] == rundir.SCHEMA
    monkeypatch.setattr(rundir, "SCHEMA", rundir.SCHEMA + 1)
    write_report(RunDir(RESULTS / study), tmp_path / "again", "md", latency=False)
    assert (tmp_path / "again" / "report.md").read_text() == (RESULTS / study / "report" / "report.md").read_text()
    rows = [json.loads(line) for line in (RESULTS / study / "results.jsonl").read_text().splitlines()]
    trained = {row["key"] for row in rows if row["status"] == "ok"}
    assert {row["key"] for row in list_architectures([RESULTS / study])} == trained
    (tmp_path / "newer").mkdir()
    (tmp_path / "newer" / "run.json").write_text(json.dumps({"schema": rundir.SCHEMA + 1}))
    with pytest.raises(PrunenasError, match=f"has run-folder schema {rundir.SCHEMA + 1}; this prunenas reads schema "
                                            f"{rundir.OLDEST_READABLE_SCHEMA} to {rundir.SCHEMA}"):
        RunDir(tmp_path / "newer").state()
