"""The report's "Proxy fidelity" section on a hand-made run folder (search rows with roles and proxy scores, a
screen file; no training): the correlations against scipy's, the mean over search seeds, the fidelity proxies
side by side, report.json's object, and nothing for a plain search."""

import json
import statistics

import pytest
from scipy import stats

from prunenas.runs import plots
from prunenas.runs.report import write_report
from prunenas.runs.rundir import RunDir
from prunenas.runs.screening import proxy_fidelity, screen_key, screen_store

# proposal -> (role, proxy score, val_acc of seed 0, val_acc of seed 1, snip score)
CANDIDATES = {
    "p0": ("promoted", 9.0, 0.80, 0.82, 1.0), "p1": ("promoted", 8.5, 0.78, 0.74, 3.0),
    "a0": ("audit", 1.0, 0.60, 0.62, 2.0), "a1": ("audit", 3.0, 0.66, 0.70, 5.0),
    "a2": ("audit", 2.0, 0.70, 0.64, 4.0), "a3": ("audit", 5.0, 0.71, 0.69, 6.0),
    "a4": ("audit", 4.0, 0.59, 0.65, 9.0), "a5": ("audit", 6.0, 0.75, 0.77, 8.0),
}


def _row(pid, seed, role, score, acc, index):
    return {"key": f"{pid}-{seed}", "phase": "search", "status": "ok", "proposal": pid, "seed": seed, "macs": 100,
            "method": "direct",
            "val_acc": acc, "role": role, "proxy": "synflow", "proxy_score": score, "screen_index": index}


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "_save", lambda fig, path: [path.with_suffix(".png")])  # no image files: faster
    run = RunDir(tmp_path / "run")
    run.create("screened", "name: screened\n")
    for index, (pid, (role, score, acc0, acc1, snip)) in enumerate(CANDIDATES.items()):
        run.results.append(_row(pid, 0, role, score, acc0, index))
        run.results.append(_row(pid, 1, role, score, acc1, index))
        for stage, proxy, value in (("screen", "synflow", score), ("fidelity", "snip", snip)):
            screen_store(run).append({"key": screen_key(stage, proxy, index), "stage": stage, "proxy": proxy,
                                      "params": {}, "number": index, "proposal": pid, "score": value, "seconds": 0.5})
    screen_store(run).append({"key": screen_key("screen", "synflow", 99), "stage": "screen", "proxy": "synflow",
                              "params": {}, "number": 99, "proposal": "never-trained", "score": 0.1, "seconds": 0.5})
    return run


def _means(pids):
    return [statistics.fmean(CANDIDATES[p][2:4]) for p in pids]


def test_fidelity_matches_scipy_on_the_audit_and_on_all_trained(run):
    data = proxy_fidelity(run)
    assert (data["screened"], data["promoted"], data["audit"]) == (9, 2, 6)
    assert data["screen_seconds"] == pytest.approx(4.5)
    main = data["proxies"][0]
    audit = [p for p in CANDIDATES if CANDIDATES[p][0] == "audit"]
    scores = [CANDIDATES[p][1] for p in audit]
    assert main["audit"]["kendall"]["value"] == pytest.approx(stats.kendalltau(scores, _means(audit)).statistic)
    assert main["audit"]["spearman"]["value"] == pytest.approx(stats.spearmanr(scores, _means(audit)).statistic)
    everything = list(CANDIDATES)
    assert main["trained"]["kendall"]["value"] == pytest.approx(
        stats.kendalltau([CANDIDATES[p][1] for p in everything], _means(everything)).statistic)
    # top-1 regret on all trained: the proxy's best (p0, mean 0.81) is the best trained: 0
    assert main["trained"]["top1_regret"] == pytest.approx(0.0)
    # on the audit: the proxy's best is a5 (0.76), the best is a5 too; by snip the best is a4 (0.62) -> 0.14
    snip = data["proxies"][1]
    assert snip["proxy"] == "snip" and snip["stage"] == "fidelity"
    assert snip["audit"]["top1_regret"] == pytest.approx(0.76 - 0.62)
    assert snip["audit"]["kendall"]["value"] == pytest.approx(
        stats.kendalltau([CANDIDATES[p][4] for p in audit], _means(audit)).statistic)
    low, high = main["audit"]["kendall"]["low"], main["audit"]["kendall"]["high"]
    assert -1 <= low <= main["audit"]["kendall"]["value"] <= high <= 1


def test_the_seed_ceiling_is_the_rank_correlation_between_the_two_seeds(run):
    data = proxy_fidelity(run)
    ceiling = data["seed_ceiling"]
    assert ceiling["seeds"] == [0, 1]
    audit = [p for p in CANDIDATES if CANDIDATES[p][0] == "audit"]
    for subset, pids in (("audit", audit), ("trained", list(CANDIDATES))):
        first, second = [CANDIDATES[p][2] for p in pids], [CANDIDATES[p][3] for p in pids]
        assert ceiling[subset]["n"] == len(pids)
        assert ceiling[subset]["kendall"]["value"] == pytest.approx(stats.kendalltau(first, second).statistic)
        assert ceiling[subset]["spearman"]["value"] == pytest.approx(stats.spearmanr(first, second).statistic)
    tau = stats.kendalltau([CANDIDATES[p][2] for p in audit], [CANDIDATES[p][3] for p in audit]).statistic
    text = write_report(run, fmt="md", latency=False)["text"]
    assert f"| seed 0 vs seed 1 (ceiling) | audit (unbiased) | 6 | {tau:+.2f} [" in text


def test_one_search_seed_has_no_seed_ceiling(tmp_path):
    run = RunDir(tmp_path / "one-seed")
    run.create("one-seed", "name: one-seed\n")
    for index, (pid, (role, score, acc0, _, _)) in enumerate(CANDIDATES.items()):
        run.results.append(_row(pid, 0, role, score, acc0, index))
    assert proxy_fidelity(run)["seed_ceiling"] is None
    assert "(ceiling)" not in write_report(run, fmt="md", latency=False)["text"]


def test_report_md_and_json_carry_the_section(run):
    text = write_report(run, fmt="md", latency=False)["text"]
    tau = stats.kendalltau([CANDIDATES[p][1] for p in CANDIDATES], _means(CANDIDATES)).statistic
    assert "## Proxy fidelity" in text and "9 candidate(s) screened by proxy `synflow`" in text
    line = next(x for x in text.splitlines() if x.startswith("| synflow | all trained | 8 |"))
    assert line.split(" | ")[3].startswith(f"{tau:+.2f} [")
    assert "| snip (fidelity) | audit (unbiased) | 6 |" in text
    data = write_report(run, fmt="json", latency=False)["data"]["proxy_fidelity"]
    assert data["proxies"][0]["trained"]["n"] == 8 and len(data["candidates"]) == 8
    assert json.loads(json.dumps(data, allow_nan=False)) == data  # JSON without NaN


def test_status_shows_the_fidelity_in_one_line(run):
    from prunenas.cli.status import run_status

    tau = stats.kendalltau([CANDIDATES[p][1] for p in CANDIDATES], _means(CANDIDATES)).statistic
    line = run_status(str(run.path))["proxy_fidelity"]
    assert line.startswith("synflow: Kendall tau ") and f"{tau:+.2f} [" in line and "(9 screened)" in line
    between = stats.kendalltau([CANDIDATES[p][2] for p in CANDIDATES], [CANDIDATES[p][3] for p in CANDIDATES])
    assert f"between seeds {between.statistic:+.2f} [" in line


def test_a_plain_search_has_no_section(tmp_path):
    run = RunDir(tmp_path / "plain")
    run.create("plain", "name: plain\n")
    run.results.append({**_row("p", 0, None, None, 0.5, 0), "role": None})
    assert proxy_fidelity(run) is None
    assert "Proxy fidelity" not in write_report(run, fmt="md", latency=False)["text"]
