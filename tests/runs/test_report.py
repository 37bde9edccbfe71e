"""The report's reading of a run on hand-made groups (no run folder, no training): the interval column and
verdict, the Pareto front of the proposals and the cost error of the controls."""
import json

import pytest

from prunenas.runs import latency_report, plots, report, tables
from prunenas.runs.groups import Group, best_learning_rate
from prunenas.runs.tables import markdown_table, verdict

MACS = 6_710_000


def group(proposed, uniform):
    rows = {("proposed", "scratch-e"): {s: {"status": "ok", "test_acc": v, "macs": MACS} for s, v in proposed.items()},
            ("uniform", "scratch-e"): {s: {"status": "ok", "test_acc": v, "macs": MACS} for s, v in uniform.items()}}
    return Group("p", "l1-norm", {}, {"ratio": 0.7}, MACS, 484_000, 0.822, (8,), (16,), ("conv1",), rows)


def diff_cell(g):
    return markdown_table([g]).splitlines()[2].split(" | ")[-1].rstrip(" |")


def test_two_seeds_print_the_mean_without_an_interval():
    # the demo's l1-norm row at 0.7 before this rule: "+0.78 [+0.78, +0.78] (n=2)"
    g = group({0: 0.7789, 1: 0.7633}, {0: 0.7711, 1: 0.7555})
    assert diff_cell(g) == "+0.78 (n=2)"
    assert "too few to test" in verdict([g])[0]


def test_identical_differences_are_not_called_significant():
    g = group({0: 0.90, 1: 0.80, 2: 0.70}, {0: 0.89, 1: 0.79, 2: 0.69})
    assert diff_cell(g) == "+1.00 (n=3)"
    assert "identical differences give no interval" in verdict([g])[0] and "significant" not in verdict([g])[0]


@pytest.mark.parametrize("proposed, verdict_end", [
    ({0: 0.91, 1: 0.915, 2: 0.92}, "— significant."),
    ({0: 0.91, 1: 0.80, 2: 0.94}, "— no significant difference."),
])
def test_three_varying_seeds_give_the_t_interval_and_a_verdict(proposed, verdict_end):
    g = group(proposed, {0: 0.90, 1: 0.90, 2: 0.90})
    assert diff_cell(g).endswith("(n=3)") and "[" in diff_cell(g)
    assert verdict([g])[0].endswith(verdict_end)


def _group(pid, macs, val, test, uniform_macs=None):
    rows = {("proposed", "scratch-e"): {0: {"status": "ok", "val_acc": val, "test_acc": test, "macs": macs}}}
    if uniform_macs is not None:
        rows[("uniform", "scratch-e")] = {s: {"status": "ok", "val_acc": val, "test_acc": test, "macs": uniform_macs,
                                               "params": 1, "arch": {}} for s in (0, 1)}
    return Group(pid, "m", {}, {"ratio": 0.5, "match": "macs"}, macs, 1, None, (1,), (2,), ("s",), rows)


def test_the_pareto_front_is_chosen_by_validation_accuracy(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or [])
    # by test accuracy the front would be a -> c; by validation (what selection may read) it is a -> b
    groups = [_group("a", 1e6, 0.80, 0.90), _group("b", 2e6, 0.85, 0.85), _group("c", 3e6, 0.84, 0.95)]
    plots.plot_accuracy_vs_macs(groups, tmp_path / "plot")
    lines = {line.get_label(): line for line in figures[0].axes[0].get_lines()}
    front = lines["Pareto front (proposals, by validation)"]
    assert list(front.get_xdata()) == [1.0, 2.0] and list(front.get_ydata()) == [90.0, 85.0]  # drawn at test


def test_controls_outside_one_percent_are_flagged_once_per_network():
    inside, outside = _group("a", 1000, 0.8, 0.8, uniform_macs=1009), _group("b", 1000, 0.8, 0.8, uniform_macs=989)
    assert tables.twin_flags([inside, outside]) == ["m at target 0.5: uniform twin -1.10% off the proposal's macs"]
    table = tables.markdown_controls([inside, outside])
    assert "| +0.90% |" in table and "| -1.10% **outside ±1%** |" in table


def strict_json(text):
    """Parse ``text`` refusing NaN and Infinity, which Python's json accepts but JSON does not."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_report_json_writes_null_where_two_seeds_give_no_interval():
    g = group({0: 0.7789, 1: 0.7633}, {0: 0.7711, 1: 0.7555})
    data = strict_json(report.report_json(report.report_data({"name": "r", "status": "finished"}, [g])))
    difference = data["test"][0]["proposed_minus_uniform"]
    assert difference["mean"] == pytest.approx(0.0078) and difference["n"] == 2
    assert difference["low"] is None and difference["high"] is None
    assert data["validation"][0]["proposed"] == {"mean": None, "std": None, "n": 0}  # no val_acc in these rows
    with pytest.raises(ValueError, match="Out of range float values"):
        report.report_json({"low": float("nan")})


def _latency_record(proposed_ms, uniform_ms, predicted=None):
    entry = {"iqr_ms": 0.02, "min_ms": 0.9, "samples": 30, "fingerprint": "abc"}
    record = {"method": "l1-norm", "target": "0.5", "macs": 3_360_000, "device": "cpu-torch/b64/t1",
              "proposed": {**entry, "median_ms": proposed_ms}, "uniform": {**entry, "median_ms": uniform_ms},
              "ratio": proposed_ms / uniform_ms, "unequal": False}
    if predicted:
        record["proposed"]["predicted_ms"], record["uniform"]["predicted_ms"] = predicted
    return record


def test_latency_md_is_the_stored_medians_of_each_proposal_and_its_twin():
    fingerprint = {"runtime": "cpu-torch", "batch": 64, "threads": 1, "cpu": "Some CPU", "torch": "2.9"}
    text = latency_report.markdown_latency([_latency_record(7.5, 10.0)], {"abc": fingerprint})
    assert "| l1-norm | 0.5 | 3.36M | cpu-torch/b64/t1 | 7.500 (IQR 0.020) | 10.000 (IQR 0.020) | 0.75 |" in text
    assert "predicted" not in text and "Median (interquartile range) of 30 forward passes" in text
    assert "- abc: cpu-torch batch 64, 1 thread(s), cpu Some CPU, torch 2.9" in text
    predicted = latency_report.markdown_latency([_latency_record(7.5, 10.0, (7.0, 9.5))], {"abc": fingerprint})
    assert predicted.splitlines()[2].endswith("| 0.75 | 7.000 / 9.500 |")


def _rows(values, train_macs, pipeline_macs):
    return {s: {"status": "ok", "test_acc": v, "val_acc": v, "macs": MACS,
                "compute": {"train_macs": train_macs, "pipeline_macs": pipeline_macs}} for s, v in values.items()}


def test_fine_tune_and_distillation_verdicts_pair_seeds_and_state_each_regimes_compute():
    scratch, finetune = {0: 0.80, 1: 0.82, 2: 0.81}, {0: 0.83, 1: 0.84, 2: 0.85}
    rows = {("proposed", "scratch-e"): _rows(scratch, 100, 100), ("finetune", "finetune"): _rows(finetune, 100, 500),
            ("scratch-full", "scratch-full"): _rows({0: 0.86, 1: 0.84, 2: 0.87}, 500, 500)}
    g = Group("p", "l1-norm", {}, {"ratio": 0.35}, MACS, 1, 0.9, (8,), (16,), ("conv1",), rows)
    by_label = {r["comparison"]: r for r in tables.comparison_rows([g])}
    assert set(by_label) == {"fine-tune − scratch (scratch-e)", "fine-tune − scratch-full"}
    post, total = by_label["fine-tune − scratch (scratch-e)"], by_label["fine-tune − scratch-full"]
    # differences 0.03, 0.02, 0.04: mean 0.03, sd 0.01, t(2) = 4.3027 -> half-width 0.02484
    assert post["difference"]["mean"] == pytest.approx(0.03) and post["difference"]["n"] == 3
    assert post["difference"]["high"] - post["difference"]["mean"] == pytest.approx(4.302653 * 0.01 / 3**0.5)
    assert (post["regime"], post["train_ratio"], post["pipeline_ratio"]) == ("post-pruning", 1.0, 5.0)
    assert (total["regime"], total["train_ratio"], total["pipeline_ratio"]) == ("total", 0.2, 1.0)
    table = tables.markdown_comparisons([g])
    assert "| l1-norm | 0.35 | fine-tune − scratch (scratch-e) | post-pruning | 1.00× | 5.00× | +3.00 [" in table
    assert "| better |" in table  # 95% CI [+0.52, +5.48] excludes 0


def test_the_fine_tuning_arms_fill_every_scratch_budgets_row():
    """finetune and distill train once, on the fine-tuning schedule: each budget's row shows that training."""
    rows = {("proposed", "scratch-e"): _rows({0: 0.80, 1: 0.82}, 100, 100),
            ("proposed", "scratch-b"): _rows({0: 0.84, 1: 0.86}, 300, 300),
            ("finetune", "finetune"): _rows({0: 0.83, 1: 0.85}, 100, 500),
            ("distill", "finetune"): _rows({0: 0.87, 1: 0.89}, 200, 600)}
    g = Group("p", "l1-norm", {}, {"ratio": 0.35}, MACS, 1, 0.9, (8,), (16,), ("conv1",), rows)
    records = tables.table_rows([g], "test_acc")
    assert [r["budget"] for r in records] == ["scratch-b", "scratch-e"]
    for record in records:
        assert record["finetune"]["mean"] == pytest.approx(0.84) and record["finetune"]["n"] == 2
        assert record["distill"]["mean"] == pytest.approx(0.88) and record["distill"]["n"] == 2


def test_each_arm_is_reported_at_its_best_validation_learning_rate():
    def rates(val_by_rate):
        return {rate: {s: {"status": "ok", "val_acc": v, "test_acc": 1 - v} for s, v in enumerate(vals)}
                for rate, vals in val_by_rate.items()}
    assert best_learning_rate(rates({0.05: [0.8, 0.9], 0.1: [0.86, 0.86]})) == 0.1  # 0.86 > 0.85
    assert best_learning_rate(rates({0.1: [0.8], 0.05: [0.8]})) == 0.05  # a tie: the smaller rate
    failed = rates({0.05: [0.7], 0.1: [0.9]})
    failed[0.1][0]["status"] = "diverged"
    assert best_learning_rate(failed) == 0.05
