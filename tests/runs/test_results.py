import json
import multiprocessing

import pytest
import scipy.stats

from prunenas.fileio import atomic_write_text
from prunenas.runs.results import ResultsStore
from prunenas.runs.stats import has_interval, mean_std, paired_difference, significant, t_quantile


def test_append_and_latest(tmp_path):
    store = ResultsStore(tmp_path / "results.jsonl")
    store.append({"key": "a", "status": "failed"})
    store.append({"key": "b", "status": "ok", "val_acc": 0.5})
    store.append({"key": "a", "status": "ok", "val_acc": 0.7})
    assert [r["key"] for r in store.rows()] == ["a", "b", "a"]
    assert store.latest()["a"]["val_acc"] == 0.7
    assert store.final("a")["status"] == "ok" and store.final("missing") is None


def test_truncated_last_line_is_ignored_with_a_warning_and_the_next_row_starts_fresh(tmp_path):
    path = tmp_path / "results.jsonl"
    store = ResultsStore(path)
    store.append({"key": "a", "status": "ok"})
    with open(path, "a") as fh:
        fh.write('{"key": "b", "sta')  # a writer killed mid-row
    with pytest.warns(UserWarning, match="results.jsonl:2: ignoring a truncated or corrupt row"):
        assert [r["key"] for r in store.rows()] == ["a"]
    store.append({"key": "c", "status": "ok"})
    with pytest.warns(UserWarning):
        assert [r["key"] for r in store.rows()] == ["a", "c"]


def _writer(path, worker):
    store = ResultsStore(path)
    for i in range(40):
        store.append({"key": f"{worker}-{i}", "status": "ok", "padding": "x" * 5000})


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "results.jsonl"
    procs = [multiprocessing.Process(target=_writer, args=(path, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 160 and len({json.loads(line)["key"] for line in lines}) == 160


def test_a_crash_during_an_atomic_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "file.json"
    atomic_write_text(path, "old")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["file.json"]


def test_statistics():
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, 0.1414213562, 2))
    assert mean_std([0.5])[1:] == (0.0, 1) and mean_std([])[2] == 0


# Student's t 97.5% quantiles as printed in standard tables (e.g. NIST/SEMATECH e-Handbook, Table 1.3.6.7.2).
PUBLISHED_T975 = {1: 12.706, 2: 4.303, 4: 2.776, 10: 2.228, 30: 2.042, 40: 2.021, 60: 2.000, 100: 1.984}


@pytest.mark.parametrize("df", sorted(PUBLISHED_T975))
def test_t_quantile_is_the_published_one_also_beyond_30_degrees_of_freedom(df):
    assert t_quantile(df) == pytest.approx(PUBLISHED_T975[df], abs=5e-4)


def test_paired_difference_is_the_t_interval_of_the_per_seed_differences():
    d = paired_difference({0: 0.9, 1: 0.8, 2: 0.85, 3: 0.7}, {0: 0.8, 1: 0.8, 2: 0.8, 4: 0.1})
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.05)
    # by hand: differences 0.10, 0.00, 0.05; sample std 0.05; half-width t(0.975, 2) x 0.05 / sqrt(3)
    half = 4.302652729749462 * 0.05 / 3 ** 0.5
    assert (d["low"], d["high"]) == pytest.approx((0.05 - half, 0.05 + half))
    # a second implementation: scipy's one-sample t test of the differences
    interval = scipy.stats.ttest_1samp([0.10, 0.0, 0.05], 0.0).confidence_interval(0.95)
    assert (d["low"], d["high"]) == pytest.approx((interval.low, interval.high))


def test_many_seeds_get_the_t_interval_not_the_normal_one():
    diffs = [0.01 * (k % 7) for k in range(41)]
    d = paired_difference(dict(enumerate(diffs)), dict.fromkeys(range(41), 0.0))
    interval = scipy.stats.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    assert (d["low"], d["high"]) == pytest.approx((interval.low, interval.high), rel=1e-9)


@pytest.mark.parametrize("proposed, uniform", [
    ({0: 0.9, 1: 0.8}, {0: 0.85, 1: 0.7}),                           # two seeds: no usable interval
    ({0: 0.9, 1: 0.8, 2: 0.7}, {0: 0.85, 1: 0.75, 2: 0.65}),          # the same difference in every seed
])
def test_no_interval_and_never_significant_from_two_seeds_or_identical_differences(proposed, uniform):
    d = paired_difference(proposed, uniform)
    assert d["mean"] > 0 and not has_interval(d) and not significant(d)


def test_significant_only_when_the_interval_excludes_zero():
    better = paired_difference({0: 0.9, 1: 0.91, 2: 0.92}, {0: 0.8, 1: 0.8, 2: 0.8})
    unclear = paired_difference({0: 0.9, 1: 0.7, 2: 0.92}, {0: 0.8, 1: 0.8, 2: 0.8})
    worse = paired_difference({0: 0.8, 1: 0.8, 2: 0.8}, {0: 0.9, 1: 0.91, 2: 0.92})
    assert significant(better) and significant(worse) and not significant(unclear)
