"""A multi-fidelity search in the run folder: the proxy scores (``RUN/screen.jsonl``) and the proxy's measured
fidelity, the report's "Proxy fidelity" section.

``screen.jsonl`` holds one row per proxy score, appended by the screening trials as they go (the same
append-only store as ``results.jsonl``; resume scores only what has no row): ``stage`` ``screen`` for the
screening proxy over every screened candidate, ``fidelity`` for the ``search.fidelity_proxies`` over the fully
trained ones. The promoted and audit candidates' search rows in ``results.jsonl`` carry ``role``,
``proxy`` and ``proxy_score``; their validation accuracy (the mean over the search seeds) is what the proxy
is measured against, on the audit candidates (unbiased) and on all trained ones
(:func:`prunenas.proxies.fidelity.fidelity_summary`). With two or more search seeds, the rank correlation
between two seeds' accuracies is the *seed ceiling*: how well one full training ranks the candidates of another,
which no proxy can be expected to beat.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from prunenas.proxies.fidelity import MIN_PAIRS, ROLES, fidelity_summary, rank_correlation
from prunenas.runs.results import ResultsStore
from prunenas.runs.rundir import RunDir
from prunenas.runs.stats import finite_number, format_percent

SCREEN_FILE = "screen.jsonl"
STAGES = ("screen", "fidelity")


def screen_store(run: RunDir) -> ResultsStore:
    """The run's proxy scores, one row per (stage, proxy, candidate)."""
    return ResultsStore(run.path / SCREEN_FILE)


def screen_key(stage: str, proxy: str, number: int) -> str:
    """Key of a proxy score: the stage, the proxy and the candidate's Optuna trial number."""
    return f"{stage}:{proxy}:{number}"


def trained_candidates(run: RunDir) -> list[dict[str, Any]]:
    """The fully trained candidates of a screening: ``proposal``, ``role``, ``proxy_score``, ``val_acc`` (mean
    over the search seeds), ``seeds``, ``seed_acc`` ({seed as text: val_acc}, JSON's keys) and ``macs``, in
    screening order; empty for a plain search."""
    by_proposal: dict[str, list[dict[str, Any]]] = {}
    for row in run.results.latest().values():
        if row["phase"] == "search" and row["status"] == "ok" and row.get("role") in ROLES:
            by_proposal.setdefault(row["proposal"], []).append(row)
    out = [{"proposal": pid, "role": rows[0]["role"], "proxy": rows[0].get("proxy"),
            "proxy_score": rows[0].get("proxy_score"), "index": rows[0].get("screen_index"),
            "val_acc": statistics.fmean(r["val_acc"] for r in rows),
            "seeds": len(rows), "seed_acc": {str(r["seed"]): r["val_acc"] for r in rows},
            "macs": rows[0]["macs"]} for pid, rows in by_proposal.items()]
    return sorted(out, key=lambda c: (c["index"] is None, c["index"], c["proposal"]))


def proxy_fidelity(run: RunDir) -> dict[str, Any] | None:
    """The proxy's fidelity on the run's trained candidates (None for a plain search): the screening proxy and
    every fidelity proxy, each with ``audit`` and ``trained`` Kendall tau, Spearman rho (bootstrap 95%
    intervals) and top-1 regret; plus how many candidates were screened and what the screening cost."""
    candidates = trained_candidates(run)
    if not candidates:
        return None
    scores = screen_store(run).latest().values()
    screened = [r for r in scores if r.get("stage") == "screen"]
    main = {"proxy": candidates[0]["proxy"], "stage": "screen",
            "params": screened[0].get("params") if screened else None, **fidelity_summary(candidates, "proxy_score")}
    table = [main]
    for name, by_proposal in _fidelity_scores(scores).items():
        rows = [{**c, "proxy_score": by_proposal.get(c["proposal"])} for c in candidates]
        table.append({"proxy": name, "params": by_proposal.get("params"), "stage": "fidelity",
                      **fidelity_summary(rows, "proxy_score")})
    return {"screened": len(screened), "promoted": sum(c["role"] == "promoted" for c in candidates),
            "audit": sum(c["role"] == "audit" for c in candidates),
            "screen_seconds": sum(r.get("seconds", 0.0) for r in screened), "proxies": table,
            "seed_ceiling": seed_ceiling(candidates), "candidates": candidates}


def seed_ceiling(candidates: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Kendall tau and Spearman rho (bootstrap intervals) between the validation accuracies of the two lowest
    search seeds that every candidate was trained on, on the audit and on all trained candidates; None with fewer
    than two such seeds. The proxy is scored against the seeds' mean, which is less noisy than one seed: a proxy
    may come out a little above this ceiling by chance, never far above it."""
    shared = set.intersection(*(set(c["seed_acc"]) for c in candidates))
    if len(shared) < 2:
        return None
    first, second = sorted(shared, key=int)[:2]

    def of(chosen: list[dict[str, Any]]) -> dict[str, Any]:
        x, y = [c["seed_acc"][first] for c in chosen], [c["seed_acc"][second] for c in chosen]
        return {"n": len(chosen), "kendall": rank_correlation(x, y, "kendall"),
                "spearman": rank_correlation(x, y, "spearman")}

    return {"seeds": [int(first), int(second)], "audit": of([c for c in candidates if c["role"] == "audit"]),
            "trained": of(candidates)}


def _fidelity_scores(scores: Any) -> dict[str, dict[str, Any]]:
    """{fidelity proxy: {proposal: score, "params": its parameters}} from the ``fidelity`` rows."""
    out: dict[str, dict[str, Any]] = {}
    for row in scores:
        if row.get("stage") == "fidelity":
            entry = out.setdefault(row["proxy"], {"params": row.get("params")})
            entry[row["proposal"]] = row.get("score")
    return out


def markdown_fidelity(data: Mapping[str, Any]) -> str:
    """The "Proxy fidelity" section of report.md (without its heading)."""
    main = data["proxies"][0]
    lines = [f"{data['screened']} candidate(s) screened by proxy `{main['proxy']}` {main['params'] or ''} "
             f"({data['screen_seconds']:.1f} s of proxy time in all); trained fully: {data['promoted']} promoted "
             f"(the proxy's best) + {data['audit']} audit (drawn uniformly at random from the rest). Accuracy: "
             "validation, mean over the search seeds. The audit row is the unbiased estimate of how well the proxy "
             "ranks; the promoted candidates are the proxy's favourites, a narrow slice. Intervals: 95% "
             f"bootstrap (none below {MIN_PAIRS} candidates). Top-1 regret: best accuracy minus the accuracy of "
             "the proxy's best, in points. The seed ceiling is the rank correlation between two search seeds' "
             "accuracies: how well one full training ranks the candidates of another, which no proxy can be expected "
             "to beat.", "",
             "| proxy | candidates | n | Kendall τ [95% CI] | Spearman ρ [95% CI] | top-1 regret |",
             "|---|---|---|---|---|---|"]
    for entry in data["proxies"]:
        lines += _table_rows(entry["proxy"] + (" (fidelity)" if entry["stage"] == "fidelity" else ""), entry)
    ceiling = data.get("seed_ceiling")
    if ceiling:
        lines += _table_rows("seed {} vs seed {} (ceiling)".format(*ceiling["seeds"]), ceiling)
    return "\n".join(lines)


def _table_rows(name: str, entry: Mapping[str, Any]) -> list[str]:
    """The audit and all-trained rows of one proxy (or of the seed ceiling, which has no top-1 regret)."""
    out = []
    for subset, label in (("audit", "audit (unbiased)"), ("trained", "all trained")):
        f = entry[subset]
        regret = format_percent(f["top1_regret"]) if "top1_regret" in f else "-"
        out.append(f"| {name} | {label} | {f['n']} | {_correlation(f['kendall'])} | {_correlation(f['spearman'])} | "
                   f"{regret} |")
    return out


def fidelity_line(data: Mapping[str, Any]) -> str:
    """The screening proxy's fidelity in one line (``prunenas status``)."""
    main = data["proxies"][0]
    audit, trained = main["audit"], main["trained"]
    ceiling = data.get("seed_ceiling")
    between_seeds = f"; between seeds {_correlation(ceiling['trained']['kendall'])}" if ceiling else ""
    return (f"{main['proxy']}: Kendall tau {_correlation(audit['kendall'])} on {audit['n']} audit, "
            f"{_correlation(trained['kendall'])} on {trained['n']} trained{between_seeds}; top-1 regret "
            f"{format_percent(trained['top1_regret'])} points ({data['screened']} screened)")


def _correlation(c: Mapping[str, Any]) -> str:
    if not finite_number(c.get("value")):
        return "-"
    interval = f" [{c['low']:+.2f}, {c['high']:+.2f}]" if finite_number(c.get("low")) else ""
    return f"{c['value']:+.2f}{interval}"
