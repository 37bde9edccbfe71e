"""The report's tables and sentences, computed from the groups of a run: accuracy per arm with the paired
difference proposed − uniform, the cost of the controls, the verdict, fine-tune and distillation against
scratch training, and learning-rate sensitivity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prunenas.budget import within_tolerance
from prunenas.experiment import CONTROLS, FINETUNE_ARMS
from prunenas.runs.groups import ARM_ORDER, METRICS, Group, arms_present, collect, mean_compute
from prunenas.runs.rundir import RunDir
from prunenas.runs.stats import MIN_PAIRED_SEEDS, format_percent, has_interval, mean_std, paired_difference

# -- table ------------------------------------------------------------------------------------------------


def table_rows(groups: Sequence[Group], metric: str) -> list[dict[str, Any]]:
    """One record per proposal and budget: every arm's mean/std/n and the paired difference."""
    arms = arms_present(groups)
    out = []
    for g in groups:
        for budget in g.budgets:
            record: dict[str, Any] = {"proposal": g.pid, "method": g.method, "target": g.target_label,
                                      "budget": budget, "macs": g.macs, "params": g.params_count,
                                      "base_val_acc": g.base_val_acc, "metric": metric}
            for arm in arms:
                values = g.values(arm, "finetune" if arm in FINETUNE_ARMS else budget, metric)
                mean, std, n = mean_std(list(values.values()))
                record[arm] = {"mean": mean, "std": std, "n": n}
            record["proposed_minus_uniform"] = paired_difference(g.values("proposed", budget, metric),
                                                                 g.values("uniform", budget, metric))
            record["twin_error"] = {arm: g.worst_twin_error(arm) for arm in CONTROLS}
            out.append(record)
    return out


def _cell(stat: Mapping[str, float]) -> str:
    return "-" if stat["n"] == 0 else f"{format_percent(stat['mean'])} ± {format_percent(stat['std'])} (n={stat['n']})"


def _diff(d: Mapping[str, float]) -> str:
    if d["n"] == 0:
        return "-"
    if not has_interval(d):
        return f"{100 * d['mean']:+.2f} (n={d['n']})"
    return f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] (n={d['n']})"


def markdown_table(groups: Sequence[Group], metric: str = "test_acc") -> str:
    arms = arms_present(groups)
    header = ["method", "target", "budget", "MACs", "params", "base val"] + arms + ["proposed − uniform (95% CI)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table_rows(groups, metric):
        cells = [r["method"], r["target"], r["budget"], f"{r['macs'] / 1e6:.2f}M", f"{r['params'] / 1e6:.3f}M",
                 format_percent(r["base_val_acc"])] + [_cell(r[a]) for a in arms] + [_diff(r["proposed_minus_uniform"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\n{METRICS[metric].capitalize()} in % at the final epoch, mean ± std over seeds (n); "
                 "proposed − uniform is paired by seed with a 95% t interval (none below "
                 f"{MIN_PAIRED_SEEDS} seeds or when every seed gives the same difference); base val = the base "
                 "model's validation accuracy.")
    return "\n".join(lines)


def results_table(run: RunDir, metric: str = "test_acc") -> str:
    groups = collect(run)
    return markdown_table(groups, metric) if groups else "(no evaluated proposals yet)"


# -- cost of the controls -------------------------------------------------------------------------------


def twin_flags(groups: Sequence[Group]) -> list[str]:
    """One line per control (uniform twin, random widths) whose cost misses its proposal's by more than ±1%:
    that comparison is not at equal cost."""
    flags = []
    for g in groups:
        uniform = g.worst_twin_error("uniform")  # one network for every seed
        misses = [("uniform twin", uniform)] if uniform is not None else []
        misses += [(f"random widths (seed {seed})", e) for seed, e in g.twin_errors("random").items()]
        flags += [f"{g.method} at target {g.target_label}: {which} {100 * error:+.2f}% off the proposal's "
                  f"{g.target.get('match', 'macs')}" for which, error in misses
                  if not within_tolerance(error, g.tolerance)]
    return flags


def markdown_controls(groups: Sequence[Group]) -> str:
    """The cost error of every proposal's controls; ones outside ±1% are marked."""
    def cell(error: float | None, tolerance: float) -> str:
        if error is None:
            return "-"
        return f"{100 * error:+.2f}%" + ("" if within_tolerance(error, tolerance) else
                                         f" **outside ±{100 * tolerance:g}%**")

    lines = ["| method | target | MACs | params | uniform twin | random widths (worst seed) |",
             "|---|---|---|---|---|---|"]
    for g in groups:
        lines.append(f"| {g.method} | {g.target_label} | {g.macs / 1e6:.2f}M | {g.params_count / 1e6:.3f}M | "
                     f"{cell(g.worst_twin_error('uniform'), g.tolerance)} | "
                     f"{cell(g.worst_twin_error('random'), g.tolerance)} |")
    lines.append("\nCost error = the control's cost / the proposal's cost − 1 (MACs, or params with `match: params`); "
                 "the design holds them to ±1%; larger errors are marked.")
    return "\n".join(lines)


# -- verdict ----------------------------------------------------------------------------------------------


def verdict(groups: Sequence[Group], metric: str = "test_acc") -> list[str]:
    """Sentences computed from the paired differences: where proposals beat uniform, significantly or not."""
    lines = []
    for r in table_rows(groups, metric):
        d = r["proposed_minus_uniform"]
        where = f"{r['method']} at target {r['target']} ({r['macs'] / 1e6:.2f}M MACs, {r['budget']})"
        if d["n"] == 0:
            lines.append(f"{where}: no paired proposed/uniform results yet.")
        elif d["n"] < MIN_PAIRED_SEEDS:
            lines.append(f"{where}: {100 * d['mean']:+.2f} points vs uniform from {d['n']} seed(s) — too few to "
                         f"test (a verdict needs {MIN_PAIRED_SEEDS}).")
        elif not has_interval(d):
            lines.append(f"{where}: {100 * d['mean']:+.2f} points vs uniform in every one of {d['n']} seeds — "
                         "identical differences give no interval; not tested.")
        elif d["low"] > 0:
            lines.append(f"{where}: beats the uniform twin by {100 * d['mean']:+.2f} points "
                         f"(95% CI [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}], n={d['n']}) — significant.")
        elif d["high"] < 0:
            lines.append(f"{where}: worse than the uniform twin by {100 * -d['mean']:.2f} points "
                         f"(95% CI [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}], n={d['n']}) — significant.")
        else:
            lines.append(f"{where}: {100 * d['mean']:+.2f} points vs uniform, 95% CI [{100 * d['low']:+.2f}, "
                         f"{100 * d['high']:+.2f}] includes 0 (n={d['n']}) — no significant difference.")
    return lines


# -- fine-tune / distill vs scratch ---------------------------------------------------------------------------

# (label, arm, its budget or None for each scratch budget, reference arm, its budget or None, compute regime)
COMPARISONS = (
    ("fine-tune − scratch", "finetune", "finetune", "proposed", None, "post-pruning"),
    ("distill − scratch", "distill", "finetune", "proposed", None, "post-pruning"),
    ("teacher, from scratch: distill-scratch − scratch", "distill-scratch", None, "proposed", None, "post-pruning"),
    ("inherited weights under a teacher: distill − distill-scratch", "distill", "finetune", "distill-scratch", None,
     "post-pruning"),
    ("widths under a teacher: distill-scratch − uniform-distill", "distill-scratch", None, "uniform-distill", None,
     "post-pruning"),
    ("fine-tune − scratch-full", "finetune", "finetune", "scratch-full", "scratch-full", "total"),
    ("distill − scratch-full", "distill", "finetune", "scratch-full", "scratch-full", "total"),
)


def comparison_rows(groups: Sequence[Group], metric: str = "test_acc") -> list[dict[str, Any]]:
    """Every :data:`COMPARISONS` entry a group has both arms of: the paired difference (95% CI) and the ratio of
    the two arms' mean compute — post-pruning (``train_macs``) and whole pipeline (``pipeline_macs``) — so a
    reader sees whether the comparison is at equal compute. Rows without ``compute`` give no ratio."""
    out = []
    for g in groups:
        for label, arm, budget, ref, ref_budget, regime in COMPARISONS:
            for scratch in g.budgets if budget is None or ref_budget is None else [None]:
                a, b = (budget or scratch, ref_budget or scratch)
                values, reference = g.values(arm, a, metric), g.values(ref, b, metric)
                if not values or not reference:
                    continue
                where = "" if scratch is None else f" ({scratch})"
                out.append({"method": g.method, "target": g.target_label, "comparison": label + where,
                            "regime": regime, "difference": paired_difference(values, reference),
                            "train_ratio": _compute_ratio(g, (arm, a), (ref, b), "train_macs"),
                            "pipeline_ratio": _compute_ratio(g, (arm, a), (ref, b), "pipeline_macs")})
    return out


def _compute_ratio(g: Group, first: tuple[str, str], second: tuple[str, str], key: str) -> float | None:
    means = [mean_compute(g.arms.get(slot, {}), key) for slot in (first, second)]
    return None if None in means else means[0] / means[1]


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _significance(d: Mapping[str, float]) -> str:
    if d["n"] < MIN_PAIRED_SEEDS or not has_interval(d):
        return "not tested"
    if d["low"] > 0 or d["high"] < 0:
        return "better" if d["low"] > 0 else "worse"
    return "no significant difference"


def markdown_comparisons(groups: Sequence[Group], metric: str = "test_acc") -> str:
    """The verdict table: fine-tune and distillation against scratch training, at post-pruning and total compute."""
    lines = ["| method | target | comparison | regime | compute (post-pruning) | compute (pipeline) | "
             "difference (95% CI) | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in comparison_rows(groups, metric):
        lines.append(f"| {r['method']} | {r['target']} | {r['comparison']} | {r['regime']} | "
                     f"{_ratio(r['train_ratio'])} | {_ratio(r['pipeline_ratio'])} | {_diff(r['difference'])} | "
                     f"{_significance(r['difference'])} |")
    lines.append(f"\n{METRICS[metric].capitalize()} difference in points, paired by seed, each arm at its best "
                 "validation learning rate (with `lr_grid`); compute = the first arm's mean compute / the second's "
                 "(post-pruning: this training in MAC × images, a teacher's forward pass included; pipeline: plus the "
                 "base-model training it depended on). A comparison is at equal compute where its ratio is ~1×; "
                 "`scratch-full` trains with the whole prune pipeline's compute (base training + fine-tuning).")
    return "\n".join(lines)


def teacher_lines(groups: Sequence[Group]) -> list[str]:
    """The teacher of each method's distillation arms: its base model and validation accuracy."""
    seen, lines = set(), []
    for g in groups:
        row = next((g.row(arm) for arm in ("distill", "distill-scratch", "uniform-distill") if g.row(arm)), None)
        key = (row or {}).get("compute", {}).get("base_model")
        if row is None or (g.method, key) in seen:
            continue
        seen.add((g.method, key))
        lines.append(f"{g.method}: the base model{f' {key}' if key else ''}, validation accuracy "
                     f"{format_percent(g.base_val_acc)}%")
    return lines


def markdown_lr_sensitivity(groups: Sequence[Group]) -> str:
    """Accuracy of every arm at every learning rate of ``lr_grid``; the rate each arm is reported at in bold."""
    rates = sorted({rate for g in groups for by_rate in g.lr_arms.values() for rate in by_rate})
    lines = ["| method | target | arm | budget | " + " | ".join(f"lr {rate:g}" for rate in rates) + " |",
             "|" + "---|" * (4 + len(rates))]
    for g in groups:
        for (arm, budget), by_rate in sorted(g.lr_arms.items(), key=lambda item: _arm_rank(item[0])):
            cells = []
            for rate in rates:
                test = mean_std(_ok(by_rate.get(rate, {}), "test_acc"))
                val = mean_std(_ok(by_rate.get(rate, {}), "val_acc"))
                cell = "-" if test[2] == 0 else f"{format_percent(test[0])} ± {format_percent(test[1])} " \
                                                f"(val {format_percent(val[0])})"
                cells.append(f"**{cell}**" if rate == g.best_lr[(arm, budget)] and cell != "-" else cell)
            lines.append(f"| {g.method} | {g.target_label} | {arm} | {budget} | " + " | ".join(cells) + " |")
    lines.append("\nTest accuracy in %, mean ± std over seeds (validation accuracy in brackets); each arm is reported "
                 "at the learning rate in bold, the best by mean validation accuracy — every arm is trained at every "
                 "rate.")
    return "\n".join(lines)


def _ok(rows: Mapping[int, Mapping[str, Any]], metric: str) -> list[float]:
    return [r[metric] for r in rows.values() if r.get("status") == "ok" and r.get(metric) is not None]


def _arm_rank(slot: tuple[str, str]) -> tuple[int, str]:
    arm, budget = slot
    return (ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER), budget)
