"""The base-model cache: each base (or sparsity-regularised) network is trained once and reused.

A base model is identified by everything that determines its weights: the space's network, the dataset and
its validation carve, the training recipe, the regulariser (e.g. Network Slimming's L1 on BN scales) and
the base seed. It is stored content-addressed under the cache folder (``--cache-dir``, ``$PRUNENAS_CACHE``,
default ``~/.cache/prunenas/base-models``) with its *initial* and its *trained* weights, so that K
proposals at K targets cost one training, and the fine-tune and lottery arms can inherit either state.

A provider given published ``weights`` (:mod:`prunenas.pretrained`) trains nothing: its entry holds those
weights, evaluated on the run's validation and test splits like a trained model's, and its initial state is
the base seed's random initialisation (the published weights have none, so the lottery arm does not apply).

Two processes that need the same base model at once never train it twice nor leave a corrupt entry: an
exclusive file lock serialises training, training happens in ``KEY.partial/`` (resumable from its epoch
checkpoint), and the finished entry appears by an atomic rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from prunenas.arch import Architecture
from prunenas.data import load_data
from prunenas.errors import PrunenasError
from prunenas.fileio import atomic_write_bytes, atomic_write_text, locked
from prunenas.optimisation import Regularizer
from prunenas.pretrained import load_weights_state, weights_identity
from prunenas.proposers.channels import inherit as inherit_weights
from prunenas.proposers.proposal import Proposal
from prunenas.registry import Registry
from prunenas.spaces import Space
from prunenas.splits import Data
from prunenas.train import Trainer, evaluate, format_epoch, resolve_device, train
from prunenas.train_config import TrainConfig
from prunenas.weights import save_weights

CACHE_FORMAT = 1
ENV_CACHE = "PRUNENAS_CACHE"


@dataclass(frozen=True)
class RegularizerSpec:
    """A training regulariser by name and parameters (part of the cache key)."""

    kind: str
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, kind: str, **params: Any) -> RegularizerSpec:
        return cls(kind, tuple(sorted(params.items())))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": dict(self.params)}


RegularizerFactory = Callable[..., Regularizer]
StateFold = Callable[[Architecture, MutableMapping[str, torch.Tensor]], None]
REGULARIZERS: Registry[RegularizerFactory] = Registry("regularizer")
STATE_FOLDS: dict[str, StateFold] = {}


def register_regularizer(kind: str,
                         fold: StateFold | None = None) -> Callable[[RegularizerFactory], RegularizerFactory]:
    """Decorator: ``factory(space, **params) -> Regularizer``.

    A regulariser that trains tensors the plain network lacks (e.g. Sparse Structure Selection's block factors)
    gives ``fold(arch, state)``, which folds them into the plain network's weights in place and drops them.
    """
    if fold is not None:
        STATE_FOLDS[kind] = fold
    return REGULARIZERS.register(kind)  # type: ignore[return-value]


def build_regularizer(spec: RegularizerSpec | None, space: Space) -> Regularizer | None:
    return None if spec is None else REGULARIZERS.get(spec.kind)(space, **dict(spec.params))


@dataclass
class BaseModel:
    """A trained base network: its initial and trained weights and how good it is."""

    key: str
    arch: Architecture
    init_state: dict[str, torch.Tensor]
    trained_state: dict[str, torch.Tensor]
    val_acc: float
    meta: dict[str, Any] = field(default_factory=dict)

    def state(self, which: str = "trained") -> dict[str, torch.Tensor]:
        if which not in ("trained", "init"):
            raise PrunenasError(f"base-model state {which!r} must be 'trained' or 'init'")
        return self.trained_state if which == "trained" else self.init_state

    def model(self, which: str = "trained") -> nn.Module:
        """The base network with its trained (or initial) weights, in eval mode."""
        model = self.arch.build()
        model.load_state_dict(self.architecture_state(which))
        return model.eval()

    def inherit(self, proposal: Proposal, which: str = "trained") -> nn.Module:
        """The proposed network with weights sliced from this base model's trained or initial state.

        The ``finetune`` arm starts from ``trained``, the ``lottery`` arm from ``init`` (Frankle & Carbin 2019).
        Masked proposals keep dense widths; their masks are applied to the inherited weights.
        """
        if proposal.kept is None and proposal.arch.widths != self.arch.widths:
            raise PrunenasError(f"proposal {proposal.method!r} records no kept channels: nothing to inherit")
        kept = proposal.kept or {}
        return inherit_weights(self.arch, self.architecture_state(which), proposal.arch, kept)

    def architecture_state(self, which: str = "trained") -> dict[str, torch.Tensor]:
        """The state restricted to ``arch.build()``'s keys (drops a regulariser's extra tensors).

        A regulariser's extra tensors (e.g. Sparse Structure Selection's block scale factors) are folded into
        their modules' weights first by the folds registered with :func:`register_regularizer`, so the plain
        network computes what the trained one did.
        """
        keys = self.arch.build().state_dict().keys()
        state = self.state(which)
        if not keys >= state.keys():
            state = dict(state)
            for fold in STATE_FOLDS.values():
                fold(self.arch, state)
        return {k: state[k] for k in keys}


def default_cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "prunenas" / "base-models")


@dataclass(frozen=True)
class BaseTraining:
    """What a base model is: its data (dataset, split sizes, where the files are), its recipe, epochs and seed —
    or the published ``weights`` it is read from. Everything but where it runs (see :class:`BaseModelProvider`).
    ``None`` dataset/recipe: the space's own."""

    dataset: str | None = None
    recipe: str | None = None
    seed: int = 0
    epochs: int | None = None
    data_root: str | os.PathLike | None = None
    val_size: int | None = None
    subset: int | None = None
    weights: str | None = None  # published weights serve as the (unregularised) base model


class BaseModelProvider:
    """Trains (once) and serves the base models of one space and :class:`BaseTraining`, on ``device`` with
    ``threads``, cached in ``cache_dir``.

    Proposers receive a provider, so tests can inject a ready model (see :class:`StaticProvider`).
    """

    def __init__(self, space: Space, training: BaseTraining = BaseTraining(), *,
                 cache_dir: str | os.PathLike | None = None, device: str = "auto", threads: int | None = None,
                 log: Callable[[str], None] | None = print) -> None:
        self.space = space
        self.dataset = training.dataset or space.dataset
        self.recipe = training.recipe or space.recipe
        self.seed, self.epochs, self.weights = training.seed, training.epochs, training.weights
        self.data_root, self.val_size, self.subset = training.data_root, training.val_size, training.subset
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.device, self.threads, self.log = device, threads, log
        self.on_epoch: Callable[[dict[str, float]], None] | None = None  # progress of a base training
        self.trainer: Trainer = train  # or a launcher training on several workers
        self.trainings = 0  # base models this provider trained (the rest came from the cache)
        self.artifact_dir = self.cache_dir / "masks"
        self._data: Data | None = None

    def config(self) -> TrainConfig:
        overrides: dict[str, Any] = {"seed": self.seed, "device": self.device, "threads": self.threads}
        if self.epochs is not None:
            overrides["epochs"] = self.epochs
        return TrainConfig.from_recipe(self.recipe, **overrides)

    def data(self) -> Data:
        if self._data is None:
            self._data = load_data(self.dataset, self.space.input_shape, self.space.num_classes,
                                   val_size=self.val_size, subset=self.subset, root=self.data_root)
        return self._data

    def key(self, spec: RegularizerSpec | None = None) -> str:
        """Content address of the base model trained with ``spec`` (or loaded from ``weights``)."""
        identity = {"format": CACHE_FORMAT, "arch": self.space.base.digest(), "dataset": self.dataset,
                    "val_size": self.val_size, "subset": self.subset,
                    "regularizer": spec.to_dict() if spec else None}
        if self.weights:
            identity.update(weights=weights_identity(self.weights, self.space.base), seed=self.seed)
        else:
            identity["config"] = self.config().identity()
        text = json.dumps(identity, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def get(self, spec: RegularizerSpec | None = None) -> BaseModel:
        """The base model for ``spec``: from the cache, or trained now (once, even across processes)."""
        key = self.key(spec)
        entry = self.cache_dir / key
        if not entry.exists():
            with locked(self.cache_dir / f"{key}.lock"):
                if not entry.exists():  # another process may have finished it while we waited
                    if self.weights:
                        self._load_published(key, spec, entry)
                    else:
                        self._train(key, spec, entry)
        return _read_entry(entry, self.space.base)

    def _train(self, key: str, spec: RegularizerSpec | None, entry: Path) -> None:
        partial = entry.with_name(f"{key}.partial")
        partial.mkdir(parents=True, exist_ok=True)
        config = self.config()
        torch.manual_seed(config.seed)
        model = self.space.base.build()
        init_state = {k: v.clone() for k, v in model.state_dict().items()}
        regularizer = build_regularizer(spec, self.space)
        what = f"base model {key} ({self.space.name}, {self.dataset}, {config.epochs} epochs"
        if self.log:
            self.log(what + (f", regulariser {spec.kind} {dict(spec.params)})" if spec else ")"))
        result = self.trainer(model, self.data(), config, regularizer=regularizer,
                              checkpoint=partial / "checkpoint.pt", arch=self.space.base, on_epoch=self._progress,
                              evaluate_test=False)  # selection only
        trained = result.model
        _save_state(init_state, partial / "init.safetensors")
        save_weights(trained, partial / "trained.safetensors")
        meta = {"key": key, "space": self.space.name, "arch": self.space.base.to_dict(), "dataset": self.dataset,
                "regularizer": spec.to_dict() if spec else None, "config": asdict(config),
                "val_acc": result.val_acc, "test_acc": result.test_acc, "seconds": result.seconds,
                "curve": result.curve}
        atomic_write_text(partial / "meta.json", json.dumps(meta, indent=2, default=list) + "\n")
        (partial / "checkpoint.pt").unlink(missing_ok=True)
        os.replace(partial, entry)
        self.trainings += 1

    def _load_published(self, key: str, spec: RegularizerSpec | None, entry: Path) -> None:
        """An entry holding ``weights``, evaluated on the run's validation and test splits."""
        if spec is not None:
            raise PrunenasError(f"base.weights: {spec.kind} needs a base model trained with its regulariser; "
                                "published weights serve only methods that prune a plainly trained network")
        torch.manual_seed(self.seed)
        model = self.space.base.build()
        init_state = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(load_weights_state(self.weights, self.space.base))
        device = resolve_device(self.device)
        data = self.data()
        val_acc, _ = evaluate(model.to(device), data.val, device)
        test_acc, _ = evaluate(model, data.test, device)
        if self.log:
            self.log(f"base model {key} ({self.space.name}) = {self.weights}: val {val_acc:.2%}, test {test_acc:.2%}")
        partial = entry.with_name(f"{key}.partial")
        partial.mkdir(parents=True, exist_ok=True)
        _save_state(init_state, partial / "init.safetensors")
        save_weights(model, partial / "trained.safetensors")
        meta = {"key": key, "space": self.space.name, "arch": self.space.base.to_dict(), "dataset": self.dataset,
                "regularizer": None, "weights": self.weights, "init": f"random, seed {self.seed}",
                "val_acc": val_acc, "test_acc": test_acc, "seconds": 0.0, "curve": []}
        atomic_write_text(partial / "meta.json", json.dumps(meta, indent=2, default=list) + "\n")
        os.replace(partial, entry)


    def _progress(self, metrics: dict[str, float]) -> None:
        if self.log:
            self.log(format_epoch(metrics))
        if self.on_epoch:
            self.on_epoch(metrics)


class StaticProvider:
    """A provider serving given base models (tests, or models trained elsewhere)."""

    def __init__(self, space: Space, models: Mapping[RegularizerSpec | None, BaseModel], data: Data | None = None):
        self.space, self.models, self._data = space, dict(models), data
        self.trainings = 0

    def get(self, spec: RegularizerSpec | None = None) -> BaseModel:
        if spec not in self.models:
            raise PrunenasError(f"no base model for regulariser {spec}")
        return self.models[spec]

    def data(self) -> Data:
        if self._data is None:
            raise PrunenasError("this provider has no data")
        return self._data


def base_model_from(model: nn.Module, arch: Architecture, init_state: Mapping[str, torch.Tensor] | None = None,
                    val_acc: float = float("nan"), key: str = "static") -> BaseModel:
    """Wrap an in-memory network as a :class:`BaseModel`."""
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    init = {k: v.clone() for k, v in (init_state or trained).items()}
    return BaseModel(key, arch, init, trained, val_acc)


def _save_state(state: Mapping[str, torch.Tensor], path: Path) -> None:
    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in state.items()}))


def _read_entry(entry: Path, arch: Architecture) -> BaseModel:
    try:
        meta = json.loads((entry / "meta.json").read_text())
        init, trained = load_file(str(entry / "init.safetensors")), load_file(str(entry / "trained.safetensors"))
    except (OSError, json.JSONDecodeError) as err:
        raise PrunenasError(f"base-model cache entry {entry} is unreadable ({err}); delete it to retrain") from None
    return BaseModel(meta["key"], arch, init, trained, meta["val_acc"], meta)


def list_entries(cache_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Finished cache entries (their meta.json, plus size on disk)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    out = []
    for meta_path in sorted(root.glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        meta.pop("curve", None)
        meta["bytes"] = sum(p.stat().st_size for p in meta_path.parent.iterdir())
        out.append(meta)
    return out


def remove_entry(cache_dir: str | os.PathLike | None, key: str) -> None:
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    shutil.rmtree(root / key)
