"""Phase 1 of a multi-fidelity search (``search.proxy``): screen many candidates by a cheap proxy, train a few.

The driver runs Optuna's ask/tell itself (the study in ``RUN/optuna.journal``, the sampled space of
:func:`prunenas.search.plan.suggest`): it asks ``screen`` distinct candidates within the budget, scores them by
the proxy in Tune trials that each take a batch of candidates (Ray's per-trial overhead is paid once per batch,
not per candidate), tells Optuna the proxy scores, chooses the ``promote`` best plus ``audit`` drawn uniformly
at random from the rest (:func:`prunenas.proxies.fidelity.choose_promoted`), and trains those exactly as a plain
search trains its trials (:func:`prunenas.search.search_phase.search_trial`: Scratch-E on the search seeds),
each row carrying its ``role`` and ``proxy_score``. ``fidelity_proxies`` then score the trained candidates.

Resume: every score is a row of ``RUN/screen.jsonl`` as soon as it is computed, so a driver killed mid-screen
re-scores only the candidates without one; the asked candidates (their sampled spec) are in the journal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from ray import tune

from prunenas import proxies
from prunenas.errors import PrunenasError
from prunenas.proxies.fidelity import choose_promoted
from prunenas.runs.screening import screen_key, screen_store
from prunenas.search import console, tuning
from prunenas.search.plan import enqueued_points, suggest, target_object
from prunenas.search.search_phase import sampler_for, search_trial
from prunenas.search.study import STUDY, storage
from prunenas.search.workers import trials_at_once
from prunenas.trial import Context, Trial, make_proposal, proposal_id, training_key

MAX_ASKS_PER_CANDIDATE = 20  # over-budget and repeated points are asked again, up to this many asks a candidate
Candidate = optuna.trial.FrozenTrial


def phase_screen(ctx: Context) -> None:
    exp = ctx.experiment
    x = exp.screening
    study = _open_study(ctx, exp)
    candidates = _candidates(study, exp)
    todo = _unscored(ctx, "screen", x.proxy, candidates)
    console.say(f"phase 1: screen {len(candidates)} candidate(s) by proxy {x.proxy}: "
                f"{len(candidates) - len(todo)} scored, {len(todo)} to score")
    _score(ctx, "screen", x.proxy, x.params, todo)
    scores = _scores(ctx, "screen", x.proxy)
    missing = [c.number for c in candidates if c.number not in scores]
    if missing:
        raise PrunenasError(f"phase 1 (screen): {len(missing)} candidate(s) have no proxy score (trials "
                            f"{missing[:5]}...); `prunenas resume {ctx.run.path}` scores them")
    promotion = choose_promoted([scores[c.number]["score"] for c in candidates], x.promote, x.audit,
                                seed=exp.search_seeds[0])
    roles = {**{i: "promoted" for i in promotion.promoted}, **{i: "audit" for i in promotion.audited}}
    _tell(study, candidates, scores, roles)
    chosen = [(i, candidates[i], roles[i]) for i in (*promotion.promoted, *promotion.audited)]
    fidelity = [batch for name, params in x.fidelity_proxies
                for batch in _batches(ctx, "fidelity", name, params, _unscored(ctx, "fidelity", name,
                                                                            [c for _, c, _ in chosen]))]
    _train(ctx, [_training_spec(c, i, role, scores[c.number]) for i, c, role in chosen], fidelity)
    summary = {"screened": len(candidates), "promoted": len(promotion.promoted), "audit": len(promotion.audited)}
    ctx.run.write_state(search=summary)
    console.say("phase 1: " + ", ".join(f"{n} {what}" for what, n in summary.items()))


# -- candidates -------------------------------------------------------------------------------------------


def _open_study(ctx: Context, exp: Any) -> optuna.Study:
    """Create or reopen the study (enqueued points first); a trial asked but never given its spec (the driver
    died in between) is failed: its candidate is asked again."""
    journal = storage(ctx.run)
    new = STUDY not in [s.study_name for s in optuna.get_all_study_summaries(journal)]
    study = optuna.create_study(storage=journal, study_name=STUDY, load_if_exists=True, direction="maximize",
                                sampler=sampler_for(exp))
    if new and exp.enqueue:
        for point in enqueued_points(exp):
            study.enqueue_trial(point, skip_if_exists=True)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if "spec" not in trial.user_attrs:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return study


def _candidates(study: optuna.Study, exp: Any) -> list[Candidate]:
    """The first ``screen`` distinct candidates within the budget, asked now where the study has fewer."""
    wanted = exp.screening.screen
    found = [t for t in study.get_trials(deepcopy=False) if "spec" in t.user_attrs]
    seen = {_identity(t.user_attrs["spec"]) for t in found}
    asks = 0
    while len(found) < wanted:
        if asks >= MAX_ASKS_PER_CANDIDATE * wanted:
            raise PrunenasError(f"phase 1 (screen): {asks} points asked, only {len(found)} distinct candidates within "
                                f"the budget; lower search.screen or widen the space")
        asks += 1
        trial = study.ask()
        spec = suggest(trial, exp)["trial"]
        if trial.user_attrs.get("over_budget") or _identity(spec) in seen:
            if not trial.user_attrs.get("over_budget"):
                trial.set_user_attr("repeated", True)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # never screened, never trained
            continue
        trial.set_user_attr("spec", spec)
        seen.add(_identity(spec))
        found.append(study.get_trials(deepcopy=False)[trial.number])
    return found[:wanted]


def _identity(spec: Mapping[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def _tell(study: optuna.Study, candidates: Sequence[Candidate], scores: Mapping[int, Mapping[str, Any]],
          roles: Mapping[int, str]) -> None:
    """Tell Optuna each candidate's proxy score, with its ``role`` (promoted, audit, screened) as a user attr."""
    for index, candidate in enumerate(candidates):
        if candidate.state != optuna.trial.TrialState.RUNNING:
            continue  # told before the driver was stopped
        trial = optuna.trial.Trial(study, candidate._trial_id)
        score = scores[candidate.number]["score"]
        trial.set_user_attr("proxy_score", score)
        trial.set_user_attr("role", roles.get(index, "screened"))
        trial.set_user_attr("proposal", scores[candidate.number]["proposal"])
        if score is None:  # the proxy failed on it: ranked last, no value
            study.tell(candidate.number, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(candidate.number, score)


# -- scoring ----------------------------------------------------------------------------------------------


def _scores(ctx: Context, stage: str, proxy: str) -> dict[int, dict[str, Any]]:
    """{Optuna trial number: score row} of ``proxy`` at ``stage``."""
    return {row["number"]: row for row in screen_store(ctx.run).latest().values()
            if row["stage"] == stage and row["proxy"] == proxy}


def _unscored(ctx: Context, stage: str, proxy: str, candidates: Sequence[Candidate]) -> list[Candidate]:
    done = _scores(ctx, stage, proxy)
    return [c for c in candidates if c.number not in done]


def _batches(ctx: Context, stage: str, proxy: str, params: Mapping[str, Any],
             todo: Sequence[Candidate]) -> list[dict[str, Any]]:
    """Tune configs scoring ``todo`` by ``proxy``, about ``len(todo) / trials at once`` candidates each."""
    size = max(1, math.ceil(len(todo) / trials_at_once(ctx.experiment)))
    items = [{"number": c.number, "spec": c.user_attrs["spec"]} for c in todo]
    return [{"batch": {"stage": stage, "proxy": proxy, "params": dict(params), "candidates": items[i:i + size]}}
            for i in range(0, len(items), size)]


def _score(ctx: Context, stage: str, proxy: str, params: Mapping[str, Any], todo: Sequence[Candidate]) -> None:
    """Score ``todo`` by ``proxy`` in Tune trials of a batch of candidates each."""
    if not todo:
        return
    batches = _batches(ctx, stage, proxy, params, todo)
    progress = console.Progress(ctx.run, f"{stage} {proxy}", len(batches), 1.0, rows=False)
    with progress:
        results = tuning.tuner(ctx, _score_batch, tuning.attempt_name(ctx, stage), {"job": tune.grid_search(batches)},
                               progress).fit()
    tuning.raise_if_all_failed(results, f"phase 1 ({stage} by {proxy})")


def _score_batch(config: dict, ctx: Context) -> None:
    """A Tune trial: score a batch of candidates by one proxy, appending each score to ``screen.jsonl``."""
    job, exp = config["job"]["batch"], ctx.experiment
    needs_base = proxies.PROXIES.get(job["proxy"]).needs_base
    context = proxies.ProxyContext(exp.space, data=ctx.data(), provider=ctx.provider() if needs_base else None,
                                   seed=exp.search_seeds[0], recipe=exp.recipe, device=ctx.device)
    store, seconds = screen_store(ctx.run), 0.0
    with tuning.counted(tuning.trial_tags(ctx, job["stage"], job["proxy"])):
        for item in job["candidates"]:
            spec = item["spec"]
            proposal = make_proposal(ctx, spec["method"], spec["params"], target_object(exp, spec["target"]))
            result = proxies.score(job["proxy"], proposal, context, job["params"])
            seconds += result.seconds
            store.append({"key": screen_key(job["stage"], job["proxy"], item["number"]), "stage": job["stage"],
                          "proxy": job["proxy"], "params": job["params"], "number": item["number"],
                          "proposal": proposal_id(proposal), "method": proposal.method,
                          "digest": proposal.arch.digest(),
                          "score": result.score if math.isfinite(result.score) else None, "seconds": result.seconds,
                          "images": result.images, "details": dict(result.details)})
    tune.report({"score": None, "final": True, "phase": job["stage"],
                 "summary": f"{job['proxy']}: {len(job['candidates'])} candidate(s) scored in {seconds:.1f}s"})


# -- full training of the promoted and audit candidates ---------------------------------------------------


def _training_spec(candidate: Candidate, index: int, role: str, score: Mapping[str, Any]) -> dict[str, Any]:
    """The candidate's search-trial spec, with what its rows record of the screening."""
    return {**candidate.user_attrs["spec"],
            "screening": {"role": role, "proxy": score["proxy"], "proxy_score": score["score"], "screen_index": index,
                          "optuna_trial": candidate.number}}


def _train(ctx: Context, specs: Sequence[dict[str, Any]], scorings: Sequence[dict[str, Any]]) -> None:
    """Train the chosen candidates as search trials (those without final rows on every search seed); the
    ``scorings`` (fidelity proxies' batches) run in the same Tune run, which saves one Tune start."""
    exp = ctx.experiment
    todo = [s for s in specs if not _trained(ctx, s)]
    console.say(f"phase 1: full training of {len(specs)} candidate(s) ({len(todo)} to train, "
                f"{len(exp.search_seeds)} seed(s) each); {len(scorings)} fidelity proxy batch(es) to score")
    if not todo and not scorings:
        return
    with tuning.progress(ctx, "search", "search", len(todo) * len(exp.search_seeds)) as progress:
        results = tuning.tuner(ctx, _train_or_score, tuning.attempt_name(ctx, "search"),
                               {"job": tune.grid_search([*({"trial": s} for s in todo), *scorings])}, progress).fit()
    tuning.raise_if_all_failed(results, "phase 1 (full training)")


def _train_or_score(config: dict, ctx: Context) -> None:
    """A Tune trial of the training run: a candidate's full training, or a batch of fidelity proxy scores."""
    if "batch" in config["job"]:
        _score_batch(config, ctx)
    else:
        search_trial(config["job"], ctx)


def _trained(ctx: Context, spec: Mapping[str, Any]) -> bool:
    """Whether every search seed of the candidate has a final row (ok or diverged)."""
    exp = ctx.experiment
    proposal = make_proposal(ctx, spec["method"], spec["params"], target_object(exp, spec["target"]))
    pid = proposal_id(proposal)
    return all(ctx.run.results.final(training_key(ctx, Trial(proposal.arch, "proposed", "scratch-e", seed,
                                                              spec["lr"], pid, proposal.method))) is not None
               for seed in exp.search_seeds)
