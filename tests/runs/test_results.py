import json
import multiprocessing

import pytest

from prunenas.fileio import atomic_write_text
from prunenas.runs.results import ResultsStore, mean_std, paired_difference, t_quantile


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
    d = paired_difference({0: 0.9, 1: 0.8, 2: 0.85, 3: 0.7}, {0: 0.8, 1: 0.8, 2: 0.8, 4: 0.1})
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.05)
    half = t_quantile(2) * mean_std([0.1, 0.0, 0.05])[1] / 3 ** 0.5
    assert (d["low"], d["high"]) == pytest.approx((0.05 - half, 0.05 + half))
    assert t_quantile(4) == 2.776 and t_quantile(100) == 1.96
