"""One trial = one network trained once: the pure (Ray-free) logic of the search and evaluation phases.

:func:`make_proposal` turns a sampled (method, parameters, target) into a Proposal; :func:`evaluation_trials` gives
the networks of the arms compared with it (the proposal itself, its uniform twin at the same cost, random
widths at the same cost, fine-tuned and lottery-ticket versions); :func:`run_trial` trains one of them —
or returns its existing row — and appends the row to the run's results store.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prunenas.arch import Architecture, from_dict
from prunenas.budget import budget_recipe, cost_error, cost_of, uniform_twin
from prunenas.cost import count
from prunenas.data import load_data
from prunenas.environment import environment
from prunenas.errors import PrunenasError, TrainingDiverged
from prunenas.experiment import CONTROLS, TEACHER_ARMS, UNIFORM_ARMS, Experiment
from prunenas.faults import fault_point
from prunenas.fileio import locked
from prunenas.proposers import PROPOSERS, Proposal, Target, load_proposal, propose
from prunenas.proposers.basemodel import BaseModelProvider
from prunenas.proposers.proposal import achieved, save_with_masks
from prunenas.recipes import RECIPES
from prunenas.runs.results import FINAL
from prunenas.runs.rundir import RunDir
from prunenas.splits import Data
from prunenas.train import Trainer, evaluate_on_test, train
from prunenas.train_config import TrainConfig
from prunenas.weights import load_weights, save_weights

TRAINING_PASSES = 3  # MACs of one training step per image: forward ~1x, backward ~2x the forward MACs
INITS = {"proposed": "scratch", "uniform": "scratch", "random": "scratch", "finetune": "trained", "lottery": "init",
         "distill": "trained", "distill-scratch": "scratch", "uniform-distill": "scratch", "scratch-full": "scratch"}


@dataclass
class Context:
    """What every trial of a run shares: the experiment, the run folder, the base-model cache, the data."""

    experiment: Experiment
    run: RunDir
    cache_dir: str | None = None
    threads: int | None = None
    device: str = "auto"
    log: Callable[[str], None] | None = None
    node: str | None = None  # the Ray node a trial runs on (recorded in its rows)
    workers: int = 1  # data-parallel workers per training (recorded in its rows; not part of its key)
    trainer: Trainer = train  # what runs train() on those workers (prunenas.search.workers when more than one)
    _data: Data | None = field(default=None, repr=False)

    def data(self) -> Data:
        if self._data is None:
            e = self.experiment
            self._data = load_data(e.dataset, e.space.input_shape, e.space.num_classes, val_size=e.val_size,
                                   subset=e.subset, root=e.data_root)
        return self._data

    def provider(self) -> BaseModelProvider:
        e = self.experiment
        provider = BaseModelProvider(e.space, e.base_training, cache_dir=self.cache_dir, device=self.device,
                                     threads=self.threads, log=self.log)
        provider._data = self._data
        provider.trainer = self.trainer
        provider.artifact_dir = self.run.proposals_dir
        return provider


# -- proposals ------------------------------------------------------------------------------------------


def make_proposal(ctx: Context, method: str, params: Mapping[str, Any], target: Target) -> Proposal:
    """The proposal of ``method`` (or of directly sampled widths, ``method == "direct"``), saved in the run."""
    space = ctx.experiment.space
    if method == "direct":
        arch = space.arch(params["widths"])
        proposal = Proposal(arch, "direct", {"widths": list(arch.widths)}, target, 0, None,
                            achieved(space, arch, target.cost_kind(space)))
    else:
        provider = ctx.provider() if PROPOSERS.get(method).needs_base else None
        proposal = propose(method, space, target, provider, dict(params), seed=0)
    path = ctx.run.proposal_path(proposal_id(proposal))
    if not path.exists():
        save_with_masks(proposal, path)
    return load_proposal(path)


def proposal_id(proposal: Proposal) -> str:
    """Stable id of a proposal: method, parameters, target, seed, architecture and base model."""
    identity = {"method": proposal.method, "params": proposal.params, "target": proposal.target.to_dict(),
                "seed": proposal.seed, "arch": proposal.arch.digest(),
                "base": proposal.provenance.get("base_model")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def search_rows_by_proposal(digests: Mapping[str, str], rows: Iterable[Mapping[str, Any]]) -> dict[str, list]:
    """The search rows of every proposal ``{proposal id: architecture digest}`` that has any: the ok search
    rows of its architecture, whichever proposal trained them.

    A from-scratch training's key ignores the method, so a network that two methods propose (presets are
    offered to every method that has them) is trained once, under the proposal that came first; both
    proposals are scored by it, so both are selected, evaluated (sharing their scratch trainings) and reported.
    """
    by_digest: dict[str, list] = {}
    for row in rows:
        if row["phase"] == "search" and row["status"] == "ok":
            by_digest.setdefault(row["digest"], []).append(row)
    return {pid: by_digest[digest] for pid, digest in digests.items() if digest in by_digest}


# -- trainings ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One network trained once — DESIGN's trial, the unit a Tune trial runs: architecture, arm, budget, seed,
    learning rate and initial weights. (Ray's and Optuna's objects are "Tune trials" and "Optuna trials".)"""

    arch: Architecture
    arm: str
    budget: str  # scratch-e | scratch-b | finetune | scratch-full
    seed: int
    lr: float | None = None
    proposal: str | None = None  # proposal id (group of twins; whose kept channels the inherit arms use)
    method: str | None = None
    twin_error: float | None = None  # uniform/random arms: cost / the proposal's cost - 1 (budget.cost_error)

    @property
    def init(self) -> str:
        return INITS[self.arm]

    @property
    def uses_base(self) -> bool:
        """Whether the training reads the method's base model (its weights or, as a teacher, its logits)."""
        return self.init != "scratch" or self.arm in TEACHER_ARMS

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["arch"] = arch_dict(self.arch)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], run: RunDir) -> Trial:
        data = dict(data)
        data["arch"] = from_dict(data["arch"], base_dir=run.proposals_dir)
        return cls(**data)


def training_config(ctx: Context, training: Trial) -> TrainConfig:
    """Recipe, epochs (Scratch-E/B/full from budget.budget_recipe only), learning rate, seed, threads, and the
    distillation settings of the teacher arms."""
    e = ctx.experiment
    if training.budget == "finetune":
        recipe = RECIPES.get(e.finetune_recipe)
        recipe = recipe.with_epochs(e.finetune_epochs) if e.finetune_epochs else recipe
    else:
        recipe = budget_recipe(RECIPES.get(e.recipe), training.budget, e.space, training.arch, e.epochs,
                               pipeline=(e.base_schedule_epochs, e.finetune_schedule_epochs))
    overrides: dict[str, Any] = {"seed": training.seed, "threads": ctx.threads, "device": ctx.device}
    if training.lr is not None:
        overrides["lr"] = training.lr
    if training.arm in TEACHER_ARMS:
        overrides.update(temperature=e.distill_temperature, distill_weight=e.distill_weight)
    return TrainConfig.from_recipe(recipe, **overrides)


def training_key(ctx: Context, training: Trial, config: TrainConfig | None = None) -> str:
    """Digest of everything that determines the trained weights."""
    e = ctx.experiment
    config = config or training_config(ctx, training)
    recipe = config.identity()
    identity = {"arch": training.arch.digest(), "arm": training.arm, "budget": training.budget, "recipe": recipe,
                "data": [e.dataset, e.val_size, e.subset], "init": training.init}
    if training.uses_base:
        base = [e.base_recipe, e.base_epochs, e.base_seed] + ([e.base_weights] if e.base_weights else [])
        identity.update(proposal=training.proposal, base=base)
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=list).encode()).hexdigest()[:16]


def run_trial(ctx: Context, training: Trial, phase: str,
                 on_epoch: Callable[[dict[str, float]], None] | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train ``training`` (resuming its checkpoint) unless its key already has a final row; return the row.
    ``extra`` adds fields to a new row (a screened candidate's ``role`` and ``proxy_score``).

    Only the evaluation phase (``phase == "eval"``) reads the test set: a search row reused as an evaluation
    row gets its test accuracy from its saved weights then (:func:`add_test_accuracy`).

    Raises TrainingDiverged (recorded as ``diverged``) and any other error (recorded as ``failed`` with its
    traceback in ``errors/KEY.txt``) after writing the row, so the caller (a Ray trial) fails visibly.
    """
    config = training_config(ctx, training)
    key = training_key(ctx, training, config)
    with locked(ctx.run.checkpoint_path(key).with_suffix(".lock")):  # one trainer per key, even across a resume
        return _train_unless_final(ctx, training, phase, on_epoch, config, key, extra or {})


def _train_unless_final(ctx: Context, training: Trial, phase: str, on_epoch: Callable[[dict[str, float]], None] | None,
                        config: Any, key: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    store = ctx.run.results
    existing = store.final(key)
    if existing is not None:
        if existing["status"] == "diverged":
            raise TrainingDiverged(existing["diverged_epoch"], existing["diverged_step"], float("nan"))
        if phase == "eval" and not evaluated(existing):
            return add_test_accuracy(ctx, existing, config)
        return existing
    cost = count(training.arch)
    row: dict[str, Any] = {"key": key, "phase": phase, "arm": training.arm, "budget": training.budget,
                           "seed": training.seed, "method": training.method, "proposal": training.proposal,
                           "arch": arch_dict(training.arch), "digest": training.arch.digest(), "macs": cost.macs,
                           "params": cost.params, "epochs": config.epochs, "recipe": config.identity(),
                           "init": training.init, "environment": {**environment(config.device), "node": ctx.node},
                           "workers": ctx.workers, **extra}
    if training.twin_error is not None:
        row["twin_error"] = training.twin_error
    started = time.time()
    try:
        fault_point("trial.start", key=key, arm=training.arm, method=training.method)
        result = ctx.trainer(_initial(ctx, training), ctx.data(), config, checkpoint=ctx.run.checkpoint_path(key),
                             arch=training.arch, on_epoch=on_epoch, evaluate_test=phase == "eval",
                             teacher=_teacher(ctx, training))
    except TrainingDiverged as err:
        store.append({**row, "status": "diverged", "diverged_epoch": err.epoch, "diverged_step": err.step,
                      "error": str(err), "seconds": time.time() - started})
        raise
    except Exception as err:
        path = ctx.run.error_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(traceback.format_exc())
        store.append({**row, "status": "failed", "error": f"{type(err).__name__}: {err}",
                      "traceback": str(path.relative_to(ctx.run.path)), "seconds": time.time() - started})
        raise
    weights = ctx.run.weights_path(key)
    save_weights(result.model, weights, {"key": key, "digest": training.arch.digest()})
    row.update(status="ok", val_acc=result.val_acc, val_loss=result.val_loss, test_acc=result.test_acc,
               test_loss=result.test_loss, curve=[_epoch_summary(m) for m in result.curve],
               images_per_s=result.images_per_s, seconds=result.seconds,
               compute=training_compute(ctx, training, sum(m["images"] for m in result.curve), result.seconds),
               weights=str(weights.relative_to(ctx.run.path)), finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    store.append(row)
    ctx.run.checkpoint_path(key).unlink(missing_ok=True)
    return row


def training_compute(ctx: Context, training: Trial, images: int, seconds: float) -> dict[str, Any]:
    """What ``training`` cost, in MAC x images (``TRAINING_PASSES`` x forward MACs per trained image, plus the
    teacher's forward pass for the teacher arms) and seconds, and what its whole pipeline cost: this training plus
    the base-model training it depended on (its weights or its logits), stated whole and amortised over the run's
    proposals made from that base model. A training that needs no base model is its own pipeline."""
    macs = count(training.arch).macs
    teacher = count(ctx.experiment.space.base).macs * images if training.arm in TEACHER_ARMS else 0
    own = TRAINING_PASSES * macs * images + teacher
    out: dict[str, Any] = {"train_macs": own, "teacher_macs": teacher, "images": images, "seconds": seconds,
                           "pipeline_macs": own, "pipeline_macs_amortised": own, "pipeline_seconds": seconds}
    if training.uses_base:
        base = _base_model(ctx, training)
        base_macs = TRAINING_PASSES * count(base.arch).macs * sum(m.get("images", 0) for m in base.meta["curve"])
        shared = max(1, sum(load_proposal(ctx.run.proposal_path(pid)).provenance.get("base_model") == base.key
                            for pid in ctx.run.proposal_ids()))
        out.update(base_model=base.key, base_macs=base_macs, base_seconds=base.meta.get("seconds", 0.0),
                   shared_by=shared, pipeline_macs=own + base_macs, pipeline_macs_amortised=own + base_macs / shared,
                   pipeline_seconds=seconds + base.meta.get("seconds", 0.0))
    return out


def evaluated(row: Mapping[str, Any] | None) -> bool:
    """Whether an evaluation training is done: its row is final and, if ok, has its test accuracy (a search
    row reused by the evaluation gets it in the evaluation phase)."""
    return row is not None and row["status"] in FINAL and (row["status"] != "ok" or row.get("test_acc") is not None)


def add_test_accuracy(ctx: Context, row: Mapping[str, Any], config: TrainConfig) -> dict[str, Any]:
    """``row`` (a search training reused by the evaluation) with the test accuracy of its saved weights,
    appended to the store; the test set is read here, in the evaluation phase, and not before."""
    model = load_weights(from_dict(row["arch"], base_dir=ctx.run.path / "proposals").build(),
                         ctx.run.path / row["weights"])
    test_acc, test_loss = evaluate_on_test(model, ctx.data(), config)
    updated = {**row, "test_acc": test_acc, "test_loss": test_loss, "test_from_weights": True}
    ctx.run.results.append(updated)
    return updated


def arch_dict(arch: Architecture) -> dict[str, Any]:
    """JSON of ``arch`` for the run folder: a masks file is named relative to ``RUN/proposals``."""
    data = arch.to_dict()
    if arch.masks is not None:
        data["masks"]["file"] = Path(arch.masks.path).name
    return data


def _initial(ctx: Context, training: Trial) -> Architecture | Any:
    if training.init == "scratch":
        return training.arch
    proposal = load_proposal(ctx.run.proposal_path(training.proposal))
    return ctx.provider().get(_base_spec(ctx, proposal)).inherit(proposal, training.init)


def _teacher(ctx: Context, training: Trial) -> Any:
    """The teacher of a teacher arm: the method's base model with its trained weights; None for other arms."""
    if training.arm not in TEACHER_ARMS:
        return None
    return _base_model(ctx, training).model("trained")


def _base_model(ctx: Context, training: Trial) -> Any:
    return ctx.provider().get(_base_spec(ctx, load_proposal(ctx.run.proposal_path(training.proposal))))


def _base_spec(ctx: Context, proposal: Proposal):
    return PROPOSERS.get(proposal.method).base_spec(ctx.experiment.space, proposal.target, proposal.params)


def _epoch_summary(m: Mapping[str, float]) -> dict[str, float]:
    return {k: round(m[k], 6) for k in ("epoch", "train_loss", "train_acc", "val_acc", "val_loss", "lr", "seconds")}


# -- the arms of one proposal ---------------------------------------------------------------------------


def evaluation_trials(ctx: Context, proposal: Proposal, pid: str, lr: float | None = None) -> list[Trial]:
    """Every training of the evaluation phase for one proposal: arms x budgets x evaluation seeds, at ``lr``
    (the search's), or at every learning rate of the experiment's ``lr_grid`` — the same number for every arm.

    Twins share seeds and recipe. ``uniform``: base widths x one multiplier at the proposal's achieved cost
    (masked proposals: the same sparsity in every layer); ``random``: random widths at that cost, one draw per
    seed; ``finetune`` (the finetune recipe) and ``lottery`` inherit the kept channels of the base model's
    trained / initial weights; ``distill`` (the finetune recipe) inherits the trained ones and learns from the base
    model's logits, ``distill-scratch`` (the proposal) and ``uniform-distill`` (the uniform twin) learn from them
    from scratch; ``scratch-full`` trains the proposal from scratch with the whole pipeline's compute.

    Experiment validation rejects these base-model arms for methods without a base model; a proposal that still
    has nothing to inherit is an error here, never a silent skip.
    """
    e = ctx.experiment
    match = proposal.target.cost_kind(e.space)
    goal = cost_of(proposal.arch, match)
    out: list[Trial] = []
    for arm in e.arms:
        if INITS[arm] != "scratch" and proposal.kept is None and proposal.arch.masks is None:
            raise PrunenasError(f"arms: {arm} inherits the base model's weights, and the {proposal.method} proposal "
                                f"{pid} records no kept channels; drop {arm} or {proposal.method}")
        budgets = [b for b in e.arm_budgets(arm) if applies(e, b, proposal)]
        for seed in e.eval_seeds:
            arch = _arm_arch(ctx, proposal, arm, seed, goal)
            error = cost_error(cost_of(arch, match), goal) if arm in (*CONTROLS, *UNIFORM_ARMS) else None
            out += [Trial(arch, arm, budget, seed, rate, pid, proposal.method, error)
                    for budget in budgets for rate in e.lr_grid or (lr,)]
    return out


def applies(experiment: Experiment, budget: str, proposal: Proposal) -> bool:
    """Whether ``budget`` is trained for ``proposal`` (``budgets: [{name, targets}]`` restricts it)."""
    only = experiment.budget_targets.get(budget)
    if only is None:
        return True
    target = proposal.target
    value = f"preset:{target.preset}" if target.preset else target.ratio if target.ratio is not None else target.cost
    return value in only


def _arm_arch(ctx: Context, proposal: Proposal, arm: str, seed: int, goal: float) -> Architecture:
    space, target = ctx.experiment.space, proposal.target
    match = target.cost_kind(space)
    if arm in UNIFORM_ARMS:
        info = PROPOSERS.get(proposal.method) if proposal.method in PROPOSERS else None
        if info is not None and info.own_twin:
            base = ctx.provider().get(_base_spec(ctx, proposal))
            return info.twin_fn(proposal, base, ctx.run.proposals_dir)
        return uniform_twin(space, goal, match).arch
    if arm == "random":
        return propose("random", space, Target(cost=goal, match=target.match, latency_device=target.latency_device),
                       None, {}, seed=seed).arch
    return proposal.arch
