"""The report's interval column and verdict on hand-made groups (no run folder, no training)."""
import pytest

from prunenas.report import Group, markdown_table, verdict


def group(proposed, uniform):
    rows = {("proposed", "scratch-e"): {s: {"status": "ok", "test_acc": v} for s, v in proposed.items()},
            ("uniform", "scratch-e"): {s: {"status": "ok", "test_acc": v} for s, v in uniform.items()}}
    return Group("p", "l1-norm", {}, {"ratio": 0.7}, 6_710_000, 484_000, 0.822, (8,), (16,), ("conv1",), rows)


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
