"""Export a trained network of a run folder: its architecture JSON, its weights, an ONNX or a ``torch.export`` file.

A run folder holds one results row per trained network (``RUN/results.jsonl``) and its final weights
(``RUN/weights/KEY.safetensors``). :func:`select_best` picks a row by *validation* accuracy (never test),
:func:`select_trial` by key; :func:`export` writes it in one of :data:`FORMATS`:

- ``json``: the architecture JSON (``prunenas.load_architecture(path).build()`` rebuilds the network), with a
  ``meta`` object; a masks file is copied beside it;
- ``safetensors``: the trained weights (loadable into that build), with the architecture JSON beside them;
- ``onnx``: ``torch.onnx.export`` (dynamo exporter) of the trained model, batch dimension dynamic;
- ``pt2``: ``torch.export.export`` of the trained model saved with ``torch.export.save``, batch dimension dynamic.

Every export carries the same facts (:func:`trial_meta`): MACs, params, validation and test accuracy,
provenance (run, key, method and its parameters, target, arm, budget, seed, recipe, base model) and checksums
(``weights_sha256``: the run's weights file; ``state_sha256``: the tensors themselves, see :func:`state_sha256`).
They sit in the JSON's ``meta``, in the safetensors header, in the ONNX ``metadata_props`` and inside the pt2
archive (``extra/prunenas.json``). Binary exports get the architecture JSON beside them (same stem, ``.json``),
whose ``meta`` adds ``file`` and ``file_sha256``: the checksum of the exported file. Every file is written
atomically (temp file + rename); an existing file is replaced.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from prunenas import __version__
from prunenas.arch import Architecture, from_dict, load_architecture
from prunenas.errors import PrunenasError
from prunenas.fileio import atomic_write_bytes, file_sha256
from prunenas.runs.catalog import LIST_HINT, check_arm, run_info, trained_rows
from prunenas.runs.export_choices import FORMATS, SELECTION_METRICS, SUFFIXES
from prunenas.runs.rundir import RunDir
from prunenas.runs.stats import finite_number

if TYPE_CHECKING:
    from torch import nn

EXPORT_FORMAT = "prunenas.export/1"
PT2_META = "prunenas.json"  # name of the metadata entry inside a pt2 archive (torch.export.save extra_files)


@dataclass(frozen=True)
class TrainedNetwork:
    """One trained network of a run folder: its results row (status ``ok``) and where its files lie."""

    run: RunDir
    row: Mapping[str, Any]

    @property
    def key(self) -> str:
        return self.row["key"]

    @cached_property
    def arch(self) -> Architecture:
        """The architecture (a masks file resolved in ``RUN/proposals``, where the run keeps it)."""
        return from_dict(self.row["arch"], base_dir=self.run.proposals_dir)

    @property
    def weights_path(self) -> Path:
        return self.run.path / self.row.get("weights", f"weights/{self.key}.safetensors")

    def state(self) -> dict[str, torch.Tensor]:
        """The trained weights (state dict) as the run saved them."""
        path = self.weights_path
        if not path.exists():
            raise PrunenasError(f"trial {self.key}: weights file {path} is missing")
        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise PrunenasError(f"trial {self.key}: {path} is not a safetensors file: {err}") from None

    def model(self) -> nn.Module:
        """The trained network, rebuilt from its architecture, in evaluation mode on the CPU."""
        model = self.arch.build()
        try:
            model.load_state_dict(self.state())
        except RuntimeError as err:
            first = str(err).splitlines()[0]
            raise PrunenasError(f"trial {self.key}: weights do not fit its architecture: {first}") from None
        return model.eval()


def select_best(run: RunDir, metric: str = "val_acc", arm: str = "proposed",
                max_macs: int | None = None) -> TrainedNetwork:
    """The trained network with the best validation ``metric`` among rows of ``arm`` (``any``: every arm) with
    at most ``max_macs`` MACs.

    Ties go to fewer MACs, then fewer params, then the smaller key, so the choice is deterministic. Test
    accuracy is never read: ``metric`` must be one of :data:`SELECTION_METRICS`.
    """
    if metric not in SELECTION_METRICS:
        raise PrunenasError(f"--metric {metric!r}: networks are selected on validation metrics only; choose one "
                            f"of {', '.join(SELECTION_METRICS)} (test accuracy is for the report)")
    check_arm(arm)
    if max_macs is not None and max_macs <= 0:
        raise PrunenasError(f"--max-macs {max_macs} must be a positive integer")
    candidates = [row for row in trained_rows(run)
                  if (arm == "any" or row.get("arm") == arm)
                  and (max_macs is None or row["macs"] <= max_macs)
                  and finite_number(row.get(metric))]
    if not candidates:
        where = ["status ok", f"arm {arm}" if arm != "any" else "any arm", f"a {metric}"]
        if max_macs is not None:
            where.append(f"MACs <= {max_macs}")
        raise PrunenasError(f"no trained network in {run.path} matches ({', '.join(where)}); "
                            + LIST_HINT.format(run=run.path))
    sign = -1 if SELECTION_METRICS[metric] else 1
    best = min(candidates, key=lambda r: (sign * r[metric], r["macs"], r["params"], r["key"]))
    return TrainedNetwork(run, best)


def select_trial(run: RunDir, key: str) -> TrainedNetwork:
    """The trained network whose key is ``key`` or starts with it (the prefix must be unique)."""
    latest = run.results.latest()
    matches = [key] if key in latest else sorted(k for k in latest if key and k.startswith(key))
    if not matches:
        raise PrunenasError(f"no trial with key {key!r} in {run.path}; " + LIST_HINT.format(run=run.path))
    if len(matches) > 1:
        raise PrunenasError(f"key prefix {key!r} matches {len(matches)} trials in {run.path} "
                            f"({', '.join(matches[:5])}{', ...' if len(matches) > 5 else ''}); give more digits")
    row = latest[matches[0]]
    if row.get("status") != "ok":
        raise PrunenasError(f"trial {row['key']} has status {row.get('status')!r}: only trained networks (status "
                            "ok) have weights to export")
    return TrainedNetwork(run, row)


# -- metadata -------------------------------------------------------------------------------------------


def trial_meta(trial: TrainedNetwork) -> dict[str, Any]:
    """What every export of ``trial`` carries: cost, accuracy (labelled), provenance and checksums."""
    row, info = trial.row, run_info(trial.run)
    proposal = _proposal(trial)
    provenance = proposal.get("provenance", {})
    state = trial.state()
    return {
        "format": EXPORT_FORMAT,
        "run": info["name"],
        "run_dir": str(trial.run.path),
        "key": trial.key,
        "space": info["space"],
        "dataset": info["dataset"],
        "digest": trial.arch.digest(),
        "macs": row["macs"],
        "params": row["params"],
        "val_acc": row.get("val_acc"),
        "test_acc": row.get("test_acc"),
        "accuracy_note": "final epoch; val_acc on the validation split carved from the training set (used for "
                         "selection), test_acc on the test set (report only)",
        "method": row.get("method"),
        "method_params": proposal.get("params"),
        "target": proposal.get("target"),
        "proposal": row.get("proposal"),
        "arm": row.get("arm"),
        "budget": row.get("budget"),
        "seed": row.get("seed"),
        "phase": row.get("phase"),
        "init": row.get("init"),
        "epochs": row.get("epochs"),
        "recipe": row.get("recipe"),
        "base_model": provenance.get("base_model"),
        "base_val_acc": provenance.get("base_val_acc"),
        "weights_sha256": file_sha256(trial.weights_path),
        "state_sha256": state_sha256(state),
        "prunenas": __version__,
        "torch": torch.__version__,
    }


def _proposal(trial: TrainedNetwork) -> dict[str, Any]:
    """The proposal JSON the row came from (method parameters, target, base model), or ``{}``."""
    pid = trial.row.get("proposal")
    if not pid:
        return {}
    try:
        return json.loads(trial.run.proposal_path(pid).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors of a state dict: names (sorted), dtypes, shapes and bytes.

    Independent of the file format, so the checksum inside an export can be checked against the weights of
    any copy (the run's file, the exported safetensors, a pt2 program's state dict).
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def encode_meta(meta: Mapping[str, Any]) -> dict[str, str]:
    """Flat string metadata (safetensors header, ONNX ``metadata_props``): every value JSON-encoded."""
    return {key: json.dumps(value, sort_keys=True) for key, value in meta.items()}


def decode_meta(props: Mapping[str, str]) -> dict[str, Any]:
    """Inverse of :func:`encode_meta` (keys that are not JSON, e.g. added by other tools, stay strings)."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


# -- export ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    """Files written by :func:`export`: the export itself, the architecture JSON, a masks file."""

    path: Path
    arch_json: Path
    masks: Path | None
    meta: dict[str, Any]

    @property
    def files(self) -> list[Path]:
        return [p for p in dict.fromkeys((self.path, self.arch_json, self.masks)) if p is not None]


def default_name(trial: TrainedNetwork, fmt: str) -> str:
    """``RUNNAME-KEY.EXT`` (e.g. ``quickstart-3f9a0c21d7e4b5a6.onnx``)."""
    return f"{run_info(trial.run)['name']}-{trial.key}{SUFFIXES[fmt]}"


def output_path(trial: TrainedNetwork, fmt: str, out: str | os.PathLike | None) -> Path:
    """``out`` (the format's suffix appended when it ends otherwise), :func:`default_name` inside ``out`` if it
    is a folder (or ends with ``/``), or :func:`default_name` in the current folder."""
    if out is None:
        return Path(default_name(trial, fmt))
    path = Path(out)
    if path.is_dir() or str(out).endswith(("/", os.sep)):
        return path / default_name(trial, fmt)
    if fmt != "json" and path.suffix == ".json":
        raise PrunenasError(f"--out {out}: a {fmt} export gets its architecture JSON beside it as "
                            f"{path.with_suffix('.json').name}; name the {fmt} file {path.stem}{SUFFIXES[fmt]}")
    return path if path.name.endswith(SUFFIXES[fmt]) else path.with_name(path.name + SUFFIXES[fmt])


def export(trial: TrainedNetwork, fmt: str, out: str | os.PathLike | None = None) -> Exported:
    """Write ``trial`` in format ``fmt`` (one of :data:`FORMATS`) to ``out`` (see :func:`output_path`)."""
    if fmt not in FORMATS:
        raise PrunenasError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    path = output_path(trial, fmt, out)
    meta = trial_meta(trial)
    arch_json = path if fmt == "json" else path.with_suffix(".json")
    if fmt == "safetensors":
        _write_safetensors(trial, path, meta)
    elif fmt == "onnx":
        _write_onnx(trial, path, meta)
    elif fmt == "pt2":
        _write_pt2(trial, path, meta)
    if fmt != "json":
        meta = {**meta, "file": path.name, "file_format": fmt, "file_sha256": file_sha256(path)}
    masks = _write_arch_json(trial.arch, arch_json, meta)
    return Exported(path, arch_json, masks, meta)


def _write_arch_json(arch: Architecture, path: Path, meta: Mapping[str, Any]) -> Path | None:
    """The architecture JSON with ``meta``; a masks file is copied beside it first (its content-addressed name),
    referenced relative to the JSON as :meth:`Architecture.save` does."""
    data = arch.to_dict()
    masks = None
    if arch.masks is not None:
        source = Path(arch.masks.path)
        masks = path.parent / source.name
        if not masks.exists() or file_sha256(masks) != arch.masks.sha256:
            atomic_write_bytes(masks, source.read_bytes())
        data["masks"]["file"] = masks.name
    data["meta"] = dict(meta)
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
    return masks


def _write_safetensors(trial: TrainedNetwork, path: Path, meta: Mapping[str, Any]) -> None:
    state = {k: v.contiguous() for k, v in trial.state().items()}
    atomic_write_bytes(path, save(state, metadata=encode_meta(meta)))


def example_input(arch: Architecture, batch: int = 2) -> torch.Tensor:
    """A fixed random batch of ``arch``'s input shape (the trace input of the ONNX and pt2 exports)."""
    return torch.randn(batch, *arch.input_shape, generator=torch.Generator().manual_seed(0))


def exported_program(model: nn.Module, arch: Architecture) -> Any:
    """``torch.export.export`` of ``model`` with a dynamic batch dimension (traced at batch 2)."""
    batch = torch.export.Dim("batch", min=1)
    try:
        return torch.export.export(model, (example_input(arch),), dynamic_shapes=({0: batch},))
    except Exception as err:  # torch reports tracing failures with many exception types; keep the first line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PrunenasError(f"torch.export cannot trace {arch.family} {list(arch.widths)}: {first}") from err


def _write_onnx(trial: TrainedNetwork, path: Path, meta: Mapping[str, Any]) -> None:
    import onnx  # only the ONNX export needs it, and it is slow to import

    program = exported_program(trial.model(), trial.arch)
    onnx_program = torch.onnx.export(program, (example_input(trial.arch),), dynamo=True, input_names=["input"],
                                     output_names=["logits"], verbose=False)
    proto = onnx_program.model_proto
    onnx.helper.set_model_props(proto, encode_meta(meta))
    proto.doc_string = (f"prunenas {meta['method']} {meta['arm']} network {meta['key']} of run {meta['run']}: "
                        f"{meta['macs']:,} MACs, {meta['params']:,} params")
    atomic_write_bytes(path, proto.SerializeToString())


def _write_pt2(trial: TrainedNetwork, path: Path, meta: Mapping[str, Any]) -> None:
    program = exported_program(trial.model(), trial.arch)
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={PT2_META: json.dumps(meta, sort_keys=True)})
    atomic_write_bytes(path, buffer.getvalue())


# -- reading exports back -------------------------------------------------------------------------------


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata embedded in an export (JSON ``meta``, safetensors header, ONNX props, pt2 archive)."""
    path = Path(path)
    if not path.exists():
        raise PrunenasError(f"{path} does not exist")
    suffix = path.suffix
    if suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise PrunenasError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}") from None
        return dict(data.get("meta", {})) if isinstance(data, dict) else {}
    if suffix == ".safetensors":
        with safe_open(str(path), "pt") as fh:
            return decode_meta(fh.metadata() or {})
    if suffix == ".onnx":
        import onnx  # only ONNX files need it, and it is slow to import

        proto = onnx.load(str(path), load_external_data=False)
        return decode_meta({p.key: p.value for p in proto.metadata_props})
    if suffix == ".pt2":
        extra = {PT2_META: ""}
        torch.export.load(str(path), extra_files=extra)
        return json.loads(extra[PT2_META]) if extra[PT2_META] else {}
    raise PrunenasError(f"{path}: unknown export suffix {suffix!r}; exports end in "
                        + ", ".join(SUFFIXES.values()))


def verify(path: str | os.PathLike) -> dict[str, Any]:
    """Check an export against its checksums; return its architecture JSON's ``meta``.

    The file's SHA-256 must equal ``file_sha256`` in the JSON beside it (binary exports), the embedded
    metadata must name the same trial and weights, and the tensors of a safetensors or pt2 export must hash to
    ``state_sha256``. A mismatch raises :class:`PrunenasError`.
    """
    path = Path(path)
    arch_json = path if path.suffix == ".json" else path.with_suffix(".json")
    meta = read_meta(arch_json)
    load_architecture(arch_json)  # rebuildable, masks checksum included
    if path != arch_json:
        if file_sha256(path) != meta.get("file_sha256"):
            raise PrunenasError(f"{path} does not match the file_sha256 recorded in {arch_json}")
        embedded = read_meta(path)
        for key in ("key", "weights_sha256", "state_sha256"):
            if embedded.get(key) != meta.get(key):
                raise PrunenasError(f"{path}: embedded {key} {embedded.get(key)!r} differs from {arch_json}")
        state = _exported_state(path)
        if state is not None and state_sha256(state) != meta["state_sha256"]:
            raise PrunenasError(f"{path}: the tensors do not match state_sha256")
    return meta


def _exported_state(path: Path) -> dict[str, torch.Tensor] | None:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix == ".pt2":
        return dict(torch.export.load(str(path)).state_dict)  # parameters and persistent buffers
    return None  # ONNX folds and renames tensors; its file checksum is the check
