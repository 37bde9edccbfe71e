"""The README's study numbers are what the committed rows say: its tables and the figures quoted in its
reading of the studies are recomputed here from experiments/results/ (rows by the report code, latencies
from each run's committed latency.md, a measurement file)."""
import re
from pathlib import Path

import pytest

from prunenas.runs.groups import collect
from prunenas.runs.rundir import RunDir
from prunenas.runs.stats import significant
from prunenas.runs.tables import markdown_table, table_rows

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
README = (ROOT / "README.md").read_text()


def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def readme_table(after):
    """Rows of the first markdown table after the line starting with ``after`` (header and rule dropped)."""
    lines = README[README.index(after):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(cells(line))
    return rows[2:]


def report_rows(study, metric="test_acc"):
    """The report's test-accuracy table of a committed run, as cells, keyed by (method, target, budget)."""
    lines = markdown_table(collect(RunDir(RESULTS / study)), metric).splitlines()
    return {tuple(c[:3]): c for c in map(cells, lines[2:]) if len(c) > 3}


def latency(study):
    """Batch-64 forward times (ms) of proposal and twin by (method, target), from the run's latency.md."""
    text = (RESULTS / study / "report" / "latency.md").read_text()
    return {(c[0], c[1]): (float(c[5]), float(c[6])) for c in map(cells, text.splitlines()[2:]) if len(c) == 7}


def plain(text):
    return " ".join(text.replace("−", "-").split())


def test_the_study_table_is_the_committed_reports():
    expected = report_rows("fashionmnist-study")
    rows = readme_table("## A measured study")
    assert len(rows) == len(expected)
    for row in rows:  # the report's cells without params and base val
        full = expected[tuple(row[:3])]
        assert row == full[:4] + full[6:], row


def test_the_resnet_table_is_the_committed_report_and_latency():
    expected, ms = report_rows("fashionmnist-resnet-study"), latency("fashionmnist-resnet-study")
    rows = readme_table("**The ResNet half**")
    assert len(rows) == len(expected)
    for row in rows:
        full = next(c for key, c in expected.items() if key[0] == row[0])
        without_n = [re.sub(r" \(n=\d+\)$", "", c) for c in full]
        proposed, uniform = ms[full[0], full[1]]
        assert row == [full[0], full[3], full[4]] + without_n[6:] + [f"{proposed:.2f} / {uniform:.2f} ms"], row


def test_the_vit_table_is_the_committed_report_and_the_proposals_widths():
    expected = report_rows("fashionmnist-vit-study")
    run = RunDir(RESULTS / "fashionmnist-vit-study")
    widths = {g.method: g.widths for g in collect(run)}
    rows = readme_table("**The Vision Transformer study**")
    assert len(rows) == len(expected)
    for row in rows:
        full = next(c for key, c in expected.items() if key[0] == row[0])
        without_n = [re.sub(r" \(n=\d+\)$", "", c) for c in full]
        assert row[:6] == [full[0], full[3], full[4]] + without_n[6:], row
        stream, *blocks = widths[row[0]]  # stream, then (heads, MLP) of each block
        heads, mlp = ",".join(map(str, blocks[0::2])), ",".join(map(str, blocks[1::2]))
        assert stream == 64 and row[6].endswith(f"{heads} / {mlp}"), row


def test_the_quoted_figures_of_the_study_are_the_rows():
    rows = table_rows(collect(RunDir(RESULTS / "fashionmnist-study")), "test_acc")
    text = plain(README)
    structured = {"l1-norm", "slimming", "thinet", "regression"}
    differences = [r["proposed_minus_uniform"] for r in rows if r["method"] in structured | {"magnitude"}]
    compared = [100 * d["mean"] for d in differences]
    assert len(compared) == 15 and not any(significant(d) for d in differences)
    assert f"the means range from {min(compared):+.2f} to {max(compared):+.2f} points" in text
    gaps = [100 * (r["uniform"]["mean"] - r["random"]["mean"]) for r in rows if r["method"] in structured]
    below = [g for g in gaps if g > 0]
    assert f"in {len(below)} of the {len(gaps)} structured settings, by at most {max(below):.2f} points" in text
    mean = {(r["method"], r["target"], r["budget"]): 100 * r["proposed"]["mean"] for r in rows}
    gains = [round(mean[m, "0.6", "scratch-b"], 2) - round(mean[m, "0.6", "scratch-e"], 2)
             for m in {r["method"] for r in rows}]
    assert f"adds {min(gains):.2f}-{max(gains):.2f} points to every proposal" in text.replace("–", "-")


def test_the_quoted_latencies_cite_latency_md_and_are_its_numbers():
    ms = latency("fashionmnist-study")
    text = plain(README).replace("–", "-")
    masked = ms["magnitude", "0.6"][0]
    structured = [p for (method, target), (p, _) in ms.items() if target == "0.6" and method != "magnitude"]
    assert (f"(`report/latency.md`: {masked:.1f} ms per batch of 64 on this CPU at 60% MACs, the structured "
            f"proposals {min(structured):.1f}-{max(structured):.1f} ms)") in text


@pytest.mark.parametrize("target", ["0.6", "0.35"])
def test_the_sfp_rerun_numbers_are_its_rows(target):
    row = report_rows("fashionmnist-sfp-study")[("sfp", target, "scratch-e")]
    proposed, uniform, _, difference = (re.sub(r" \(n=\d+\)$", "", c) for c in row[6:])
    text = plain(README)
    for quoted in (proposed, uniform, difference.split(" ", 1)[1]):
        assert plain(quoted) in text, quoted


def test_the_distill_table_is_the_committed_reports_verdicts():
    from prunenas.runs.tables import markdown_comparisons

    lines = markdown_comparisons(collect(RunDir(RESULTS / "fashionmnist-distill-study"))).split("\n\n")[0]
    expected = [cells(line)[2:] for line in lines.splitlines()[2:]]
    assert readme_table("**The distillation study**") == expected


def test_the_quoted_learning_rate_figures_of_the_distill_study_are_the_rows():
    rows = [r for r in RunDir(RESULTS / "fashionmnist-distill-study").results.latest().values()
            if r["status"] == "ok" and (r["phase"] == "eval" or r.get("test_from_weights"))]

    def mean(arm, budget, lr):
        values = [r["test_acc"] for r in rows if (r["arm"], r["budget"], r["recipe"]["lr"]) == (arm, budget, lr)]
        assert len(values) == 3
        return f"{100 * sum(values) / len(values):.2f}%"

    text = plain(README)
    assert (f"Fine-tuning is best at 0.01 ({mean('finetune', 'finetune', 0.01)}; {mean('finetune', 'finetune', 0.1)} "
            f"at 0.1), Scratch-E at 0.1 ({mean('proposed', 'scratch-e', 0.1)}; {mean('proposed', 'scratch-e', 0.01)} "
            "at 0.01)") in text


def test_the_latency_table_is_the_committed_report_and_latency_md():
    study = "fashionmnist-latency-study"
    expected = report_rows(study)
    text = (RESULTS / study / "report" / "latency.md").read_text()
    measured = {c[0]: (c[4].split()[0], c[5].split()[0]) for c in map(cells, text.splitlines()[2:]) if len(c) == 8}
    rows = readme_table("**The latency study**")
    assert len(rows) == len(expected) == len(measured)
    for row in rows:
        full = next(c for key, c in expected.items() if key[0] == row[0])
        without_n = [re.sub(r" \(n=\d+\)$", "", c) for c in full]
        proposed, uniform = measured[row[0]]
        assert row == [full[0], full[3], full[4]] + without_n[6:] + [f"{proposed} / {uniform} ms"], row


def test_the_latency_studys_calibration_figures_are_its_file():
    import json

    cal = json.loads((RESULTS / "fashionmnist-latency-study" / "calibration.json").read_text())
    p, m = cal["predictor"], cal["macs_baseline"]
    assert (f"median error was {p['median_abs_pct']:.1f}% against {m['median_abs_pct']:.1f}% for the MAC line, but "
            f"it ranked them better, Kendall τ {p['kendall_tau']:.2f} against {m['kendall_tau']:.2f}, and ordered "
            f"{100 * p['equal_macs_order_acc']:.0f}% of {p['equal_macs_pairs']} equal-MACs pairs right against "
            f"{100 * m['equal_macs_order_acc']:.0f}%") in plain(README)


def test_the_proxy_table_is_the_committed_studies_fidelity():
    from prunenas.runs.screening import proxy_fidelity

    def tau(c):
        return f"{c['value']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]"

    data = [proxy_fidelity(RunDir(RESULTS / name))
            for name in ("fashionmnist-proxy-study", "fashionmnist-proxy-spread-study")]
    expected = [[entry["proxy"]] + [cell for d in data for cell in
                                    (tau(d["proxies"][i]["audit"]["kendall"]),
                                     f"{100 * d['proxies'][i]['audit']['top1_regret']:.2f}")]
                for i, entry in enumerate(data[0]["proxies"])]
    expected.append(["seed 0 vs seed 1 (ceiling)"] + [c for d in data
                                                      for c in (tau(d["seed_ceiling"]["audit"]["kendall"]), "-")])
    assert readme_table("**The proxy studies**") == expected


def test_the_quoted_proxy_throughputs_are_the_benchmarks_file():
    import json

    rates = {r["proxy"]: r for r in json.loads((RESULTS / "bench_proxies.json").read_text())["throughput"]}
    text = plain(README)
    assert f"`adaptive-bn` {rates['adaptive-bn']['per_minute']:.1f} candidates a minute" in text
    assert (f"`snip` {rates['snip']['per_minute']:.0f}, `synflow` {rates['synflow']['per_minute']:.0f}, "
            f"`short-train` (200 steps) {rates['short-train']['per_minute']:.1f}") in text
