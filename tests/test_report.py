"""The report's reading of a run: the Pareto front of the proposals and the cost error of the controls."""

from prunenas import report
from prunenas.report import Group


def _group(pid, macs, val, test, uniform_macs=None):
    rows = {("proposed", "scratch-e"): {0: {"status": "ok", "val_acc": val, "test_acc": test, "macs": macs}}}
    if uniform_macs is not None:
        rows[("uniform", "scratch-e")] = {s: {"status": "ok", "val_acc": val, "test_acc": test, "macs": uniform_macs,
                                               "params": 1, "arch": {}} for s in (0, 1)}
    return Group(pid, "m", {}, {"ratio": 0.5, "match": "macs"}, macs, 1, None, (1,), (2,), ("s",), rows)


def test_the_pareto_front_is_chosen_by_validation_accuracy(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig) or [])
    # by test accuracy the front would be a -> c; by validation (what selection may read) it is a -> b
    groups = [_group("a", 1e6, 0.80, 0.90), _group("b", 2e6, 0.85, 0.85), _group("c", 3e6, 0.84, 0.95)]
    report.plot_accuracy_vs_macs(groups, tmp_path / "plot")
    lines = {line.get_label(): line for line in figures[0].axes[0].get_lines()}
    front = lines["Pareto front (proposals, by validation)"]
    assert list(front.get_xdata()) == [1.0, 2.0] and list(front.get_ydata()) == [90.0, 85.0]  # drawn at test


def test_controls_outside_one_percent_are_flagged_once_per_network():
    inside, outside = _group("a", 1000, 0.8, 0.8, uniform_macs=1009), _group("b", 1000, 0.8, 0.8, uniform_macs=989)
    assert report.twin_flags([inside, outside]) == ["m at target 0.5: uniform twin -1.10% off the proposal's macs"]
    table = report.markdown_controls([inside, outside])
    assert "| +0.90% |" in table and "| -1.10% **outside ±1%** |" in table
