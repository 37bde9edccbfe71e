"""A multi-fidelity search end to end (tiny network, synthetic data, 2 CPUs): 6 candidates screened by synflow,
the top 2 and 1 random other trained fully, snip scoring the trained ones, the report's fidelity section; then a
resume that finds scores missing re-scores only those and retrains nothing."""

import json

import optuna
import pytest

from prunenas.runs.rundir import RunDir

from .search_helpers import EXPERIMENT, cli, study, trained_keys, write

pytestmark = pytest.mark.usefixtures("ray_env")

SCREENED = dict(EXPERIMENT, proposers={"random": {}}, targets={"ratios": [0.5]}, arms=["proposed"],
                seeds={"search": [0], "eval": [0]}, recipe={"name": "fast", "epochs": 1},
                search={"sampler": "tpe", "direct": True, "proxy": "synflow", "screen": 6, "promote": 2, "audit": 1,
                        "fidelity_proxies": ["snip"]})


def _screen_rows(run, stage):
    return [json.loads(line) for line in (run / "screen.jsonl").read_text().splitlines()
            if json.loads(line)["stage"] == stage]


def test_screening_search_trains_the_promoted_and_audit_candidates_only(tmp_path):
    path = write(tmp_path, SCREENED)
    dry = cli("search", path, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "phase 1  screen: 6 candidate(s) by proxy synflow" in dry.stdout
    run = tmp_path / "run"
    proc = cli("search", path, "--out", run, "--no-dashboard")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    screened = _screen_rows(run, "screen")
    assert len(screened) == 6 and len({r["number"] for r in screened}) == 6
    # the promoted are the proxy's best two (by the scores in screen.jsonl); the audit one is another
    by_score = sorted(screened, key=lambda r: -r["score"])
    search = [r for r in RunDir(run).results.latest().values() if r["phase"] == "search"]
    assert len(search) == 3 and all(r["status"] == "ok" for r in search)  # exactly K + R trained, one seed each
    roles = {r["proposal"]: r["role"] for r in search}
    assert {r["proposal"] for r in by_score[:2]} == {p for p, role in roles.items() if role == "promoted"}
    audit = [p for p, role in roles.items() if role == "audit"]
    assert len(audit) == 1 and audit[0] in {r["proposal"] for r in by_score[2:]}
    score_of = {r["proposal"]: r["score"] for r in screened}
    assert all(r["proxy_score"] == score_of[r["proposal"]] and r["proxy"] == "synflow" for r in search)
    # Optuna was told every proxy score, with each candidate's role
    told = [t for t in study(run).trials if "spec" in t.user_attrs]
    assert len(told) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in told)
    assert sorted(t.user_attrs["role"] for t in told) == ["audit", "promoted", "promoted", "screened", "screened",
                                                         "screened"]
    assert all(t.value == score_of[t.user_attrs["proposal"]] for t in told)
    assert {r["proposal"] for r in _screen_rows(run, "fidelity")} == set(roles)  # snip scored the trained ones
    report = cli("report", run, "--no-latency")
    assert report.returncode == 0, report.stderr
    text = (run / "report" / "report.md").read_text()
    assert "## Proxy fidelity" in text and "| synflow | all trained | 3 |" in text and "| snip (fidelity) |" in text
    assert (run / "report" / "proxy_fidelity.png").exists()
    # resume finds two screening scores missing: it scores those two again and trains nothing
    kept = [line for line in (run / "screen.jsonl").read_text().splitlines()
            if json.loads(line)["number"] not in {by_score[3]["number"], by_score[4]["number"]}]
    (run / "screen.jsonl").write_text("\n".join(kept) + "\n")
    RunDir(run).write_state(status="running", phase=1)
    trained_before = trained_keys(run)
    resumed = cli("resume", run, "--no-dashboard")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "6 candidate(s) by proxy synflow: 4 scored, 2 to score" in resumed.stdout
    assert "(0 to train" in resumed.stdout
    rescored = _screen_rows(run, "screen")[4:]
    assert sorted(r["number"] for r in rescored) == sorted([by_score[3]["number"], by_score[4]["number"]])
    assert [r["score"] for r in sorted(rescored, key=lambda r: r["number"])] == \
        [r["score"] for r in sorted(by_score[3:5], key=lambda r: r["number"])]  # synflow is deterministic
    assert trained_keys(run) == trained_before
