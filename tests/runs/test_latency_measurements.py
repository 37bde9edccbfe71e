"""Latency measured once per run (``RUN/latency.json``) and read by the report, on hand-made run folders of the
tiny space (no training): what the measurement stores and skips, the report's determinism, the ±5% rule of
latency targets and the command line."""
import json

import pytest

from prunenas.cli.main import main
from prunenas.cost import count
from prunenas.latency import Calibration, Device, LatencyError, LatencyTable, measure, units
from prunenas.latency.cost import _latency_cost, latency_cost
from prunenas.proposers import Proposal, Target
from prunenas.runs import latency_measurements
from prunenas.runs.groups import Group, collect
from prunenas.runs.latency_measurements import measure_run, pair_records
from prunenas.runs.report import report_data, write_report
from prunenas.runs.rundir import RunDir
from prunenas.runs.tables import verdict
from prunenas.spaces import load_space

SPACE = load_space("tiny-synthetic")
NARROW = SPACE.arch([max(1, w // 4) for w in SPACE.upper])
MACS_TARGET = Target(ratio=0.5)
DEVICE = ("cpu-torch", 1, 1)
LATENCY_TARGET = Target(cost=1.0, match="latency", latency_device=DEVICE)


@pytest.fixture(autouse=True)
def private_latency_cache(monkeypatch, tmp_path):
    """No latency table of the user's cache is read: predictions exist only where a test makes them."""
    monkeypatch.setenv("PRUNENAS_CACHE", str(tmp_path / "cache"))
    _latency_cost.cache_clear()
    yield
    _latency_cost.cache_clear()


def make_run(path, target=MACS_TARGET, pairs=((NARROW, SPACE.base),), accuracy=((0.80, 0.81, 0.82),) * 2):
    """A finished run folder: one proposal per (proposed, uniform) pair with three seeds of rows each."""
    run = RunDir(path)
    run.create("hand-made", "")
    plan = {"selected": [], "proposals": {}}
    for i, (proposed, uniform) in enumerate(pairs):
        pid = f"p{i}"
        Proposal(proposed, "random", {}, target).save(run.proposal_path(pid))
        plan["selected"].append(pid)
        for arm, arch, values in (("proposed", proposed, accuracy[0]), ("uniform", uniform, accuracy[1])):
            for seed, acc in enumerate(values):
                key = f"{pid}-{arm}-{seed}"
                run.results.append({"key": key, "phase": "eval", "status": "ok", "arm": arm, "seed": seed,
                                    "method": "random", "arch": arch.to_dict(), "macs": count(arch).macs,
                                    "params": count(arch).params, "val_acc": acc, "test_acc": acc})
                plan["proposals"].setdefault(pid, []).append({"arm": arm, "budget": "scratch-e", "seed": seed,
                                                              "key": key})
    run.write_json("plan.json", plan)
    run.write_state(status="finished", phase=3)
    return run


def test_the_measurement_stores_both_arms_on_one_fingerprint_per_device_and_skips_them_after(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run")
    lines = []
    data = measure_run(run, collect(run), repeats=3, warmup=1, say=lines.append)
    assert data == json.loads((run.path / "latency.json").read_text())
    digests = {NARROW.digest(), SPACE.base.digest()}  # the networks' own identity: what rows and keys use
    assert set(data["networks"]) == digests
    for device in (Device("cpu-torch", 1, 1), Device("cpu-torch", 64, 1)):  # a MAC-target run: b1 and b64, 1 thread
        entries = [data["networks"][d][device.name] for d in digests]
        assert {e["fingerprint"] for e in entries} == {device.key()} and {e["samples"] for e in entries} == {3}
        assert all(0 < e["min_ms"] <= e["median_ms"] and e["iqr_ms"] >= 0 for e in entries)
        assert "predicted_ms" not in entries[0]  # no predictor in the (empty) latency cache
        assert data["fingerprints"][device.key()] == device.fingerprint()
    assert sum(" ms, uniform " in line for line in lines) == 2  # one line per pair and device

    def refuse(*args, **kwargs):
        raise AssertionError("a stored pair was measured again")

    monkeypatch.setattr(latency_measurements, "measure", refuse)
    before = (run.path / "latency.json").read_text()
    measure_run(run, collect(run), say=lines.append)
    assert (run.path / "latency.json").read_text() == before and lines[-1].endswith("already measured")
    with pytest.raises(AssertionError, match="measured again"):
        measure_run(run, collect(run), force=True)


def test_a_twin_two_proposals_share_is_measured_once_with_both_in_one_session(tmp_path, monkeypatch):
    other = SPACE.arch([max(1, w // 2) for w in SPACE.upper])
    run = make_run(tmp_path / "run", pairs=((NARROW, SPACE.base), (other, SPACE.base)))
    sessions = []

    def spy(networks, device, repeats, warmup):
        sessions.append((device.name, sorted(n.digest() for n in networks)))
        return measure(networks, device, repeats, warmup)

    monkeypatch.setattr(latency_measurements, "measure", spy)
    data = measure_run(run, collect(run), repeats=2, warmup=0)
    three = sorted(a.digest() for a in (NARROW, other, SPACE.base))
    assert sessions == [("cpu-torch/b1/t1", three), ("cpu-torch/b64/t1", three)]
    records = pair_records(run, collect(run), data)
    shared = [r["uniform"] for r in records if r["device"] == "cpu-torch/b1/t1"]
    assert len(records) == 4 and shared[0] == shared[1]  # both pairs compare against the same measurement


def test_a_latency_target_pair_is_measured_on_its_device_with_the_prediction(tmp_path, monkeypatch):
    per_unit, scale, intercept = 0.25, 2.0, 0.5

    def fill(self, missing):  # a closed-form table: every unit costs the same
        self.overhead_ms = 0.0
        self.entries.update({u.key: per_unit for u in missing})

    monkeypatch.setattr(LatencyTable, "_fill", fill)
    latency_cost(*DEVICE).table.set_calibration(SPACE.base, Calibration(scale, intercept, 8))
    run = make_run(tmp_path / "run", target=LATENCY_TARGET)
    data = measure_run(run, collect(run), repeats=2, warmup=0)
    for arch in (NARROW, SPACE.base):
        (name, entry), = data["networks"][arch.digest()].items()  # only the target's device
        assert name == "cpu-torch/b1/t1" and entry["samples"] == 2
        assert entry["predicted_ms"] == pytest.approx(scale * per_unit * len(units(arch.layers)) + intercept)


def hand_group(pid, proposed_acc, uniform_acc, match="latency"):
    rows = {(arm, "scratch-e"): {s: {"status": "ok", "test_acc": v, "arch": arch.to_dict(), "macs": 1_000_000}
                                 for s, v in enumerate(acc)}
            for arm, arch, acc in (("proposed", NARROW, proposed_acc), ("uniform", SPACE.base, uniform_acc))}
    target = LATENCY_TARGET.to_dict() if match == "latency" else MACS_TARGET.to_dict()
    return Group(pid, f"m{pid}", {}, target, 1_000_000, 1, None, (1,), (2,), ("s",), rows)


def hand_measurements(medians):
    """latency.json with the given (proposed, uniform) medians on cpu-torch/b1/t1 (NARROW, base)."""
    key = "f" * 16
    entry = {"iqr_ms": 0.01, "min_ms": 0.5, "samples": 30, "fingerprint": key}
    return {"format": latency_measurements.FORMAT, "fingerprints": {key: {}},
            "networks": {NARROW.digest(): {"cpu-torch/b1/t1": {**entry, "median_ms": medians[0]}},
                         SPACE.base.digest(): {"cpu-torch/b1/t1": {**entry, "median_ms": medians[1]}}}}


@pytest.mark.parametrize("uniform_ms, match, unequal", [
    (1.06, "latency", True),   # uniform / proposed - 1 = +6%: beyond ±5%
    (0.94, "latency", True),   # -6%
    (1.04, "latency", False),  # +4%: within
    (1.06, "macs", False),     # a MAC target does not promise equal latency: nothing is excluded
])
def test_a_latency_target_pair_more_than_5_percent_apart_is_left_out_of_the_verdict(tmp_path, uniform_ms, match,
                                                                                      unequal):
    run = RunDir(tmp_path)  # pair_records reads masks relative to the run's proposals folder only
    flagged = hand_group("a", (0.90, 0.91, 0.92), (0.80, 0.80, 0.81), match)
    kept = hand_group("b", (0.80, 0.82, 0.81), (0.80, 0.80, 0.80), match)
    records = pair_records(run, [flagged], hand_measurements((1.0, uniform_ms)))
    assert records[0]["ratio"] == pytest.approx(1 / uniform_ms)
    assert records[0]["measured_twin_error"] == pytest.approx(uniform_ms - 1) and records[0]["unequal"] is unequal
    data = report_data({"name": "r"}, [flagged, kept], records)
    assert data["verdict"] == verdict([kept] if unequal else [flagged, kept])
    assert data["latency"][0]["unequal"] is unequal


def test_the_report_reads_latency_json_and_is_the_same_bytes_every_time(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", target=LATENCY_TARGET)
    run.write_json("latency.json", hand_measurements((1.0, 1.25)))  # uniform +25%: left out of the verdict
    monkeypatch.setattr(latency_measurements, "measure", lambda *a, **k: pytest.fail("the report measured"))
    first = write_report(run, tmp_path / "one", "md")
    write_report(run, tmp_path / "two", "md")
    assert "latency.md" in first["files"]
    for name in ("report.md", "latency.md"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    latency_md = (tmp_path / "one" / "latency.md").read_text()
    assert "| 1.000 (IQR 0.010) | 1.250 (IQR 0.010) | 0.80 |" in latency_md
    assert "uniform twin +25.0% off the proposal's measured latency (1.000 vs 1.250 ms)" in latency_md
    assert first["data"]["verdict"] == [] and "Left out of the verdict" in first["text"]


def test_without_latency_json_the_report_writes_no_latency_md_and_keeps_an_old_one(tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "report"
    out.mkdir()
    (out / "latency.md").write_text("measured by an older report\n")
    written = write_report(run, out, "md")
    assert "latency.md" not in written["files"] and written["data"]["latency"] is None
    assert (out / "latency.md").read_text() == "measured by an older report\n"
    assert "`prunenas latency measure RUN`" in written["text"]
    write_report(run, tmp_path / "fresh", "md")
    assert not (tmp_path / "fresh" / "latency.md").exists()


def test_latency_measure_command_measures_a_finished_run_once(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    code = main(["latency", "measure", str(run.path), "--repeats", "2", "--warmup", "0", "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out) == json.loads((run.path / "latency.json").read_text())
    assert err.count(" ms, uniform ") == 2 and "written to" in err  # one progress line per pair and device
    assert main(["latency", "measure", str(run.path)]) == 0 and capsys.readouterr().out.count("already measured") == 2


@pytest.mark.parametrize("argv, status, words", [
    (["latency", "measure"], "finished", "latency measure needs a RUN folder"),
    (["latency", "measure", "RUN", "--latency-device", "cpu-torch"], "finished", "--latency-device and --preset do "
                                                                                 "not apply"),
    (["latency", "measure", "RUN"], "running", "its search measures latency itself after training"),
    (["latency", "tiny-synthetic"], "finished", "latency needs --latency-device"),
    (["latency", "tiny-synthetic", "--latency-device", "cpu-torch", "--force"], "finished", "--force applies to"),
])
def test_bad_latency_measure_input_is_one_line_exit_2(tmp_path, capsys, argv, status, words):
    run = make_run(tmp_path / "run")
    run.write_state(status=status)
    code = main([str(run.path) if a == "RUN" else a for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not (run.path / "latency.json").exists()


def test_phase_3_measures_in_the_driver_and_a_device_that_cannot_leaves_the_run_unmeasured(tmp_path, monkeypatch,
                                                                                          capsys):
    from types import SimpleNamespace

    from prunenas.search import tune

    run = make_run(tmp_path / "run")
    tune._phase_latency(SimpleNamespace(run=run))
    out = capsys.readouterr().out
    assert "phase 3: latency of 1 proposal(s) and their twins" in out and out.count(" ms, uniform ") == 2
    assert out.count("2 network(s) of 1 pair(s), interleaved") == 2
    assert len(json.loads((run.path / "latency.json").read_text())["networks"]) == 2

    def absent(*args, **kwargs):
        raise LatencyError("latency device cuda-torch is not available here")

    monkeypatch.setattr(tune, "measure_run", absent)
    tune._phase_latency(SimpleNamespace(run=run))
    assert f"no latency measured (latency device cuda-torch is not available here); measure later with `prunenas " \
           f"latency measure {run.path}`" in capsys.readouterr().out


def test_a_twin_two_proposals_share_reports_each_proposals_own_twin_error(tmp_path):
    """One uniform network trained once for two latency proposals: its row records the error against the first
    proposal only; the plan records each proposal's, and the report's groups take that."""
    other = SPACE.arch([max(1, w // 2) for w in SPACE.upper])
    run = make_run(tmp_path / "run", target=LATENCY_TARGET, pairs=((NARROW, SPACE.base), (other, SPACE.base)))
    plan = json.loads((run.path / "plan.json").read_text())
    for pid, error in (("p0", -0.011), ("p1", -0.029)):
        for entry in plan["proposals"][pid]:
            entry["key"] = f"p0-{entry['arm']}-{entry['seed']}" if entry["arm"] == "uniform" else entry["key"]
            if entry["arm"] == "uniform":
                entry["twin_error"] = error
    run.write_json("plan.json", plan)
    for seed in range(3):  # the shared row, with the first proposal's error
        row = run.results.latest()[f"p0-uniform-{seed}"]
        run.results.append({**row, "twin_error": -0.011})
    errors = {g.pid: g.worst_twin_error("uniform") for g in collect(run)}
    assert errors == {"p0": -0.011, "p1": -0.029}
