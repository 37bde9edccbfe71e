"""prunenas export / arch list on hand-built run folders holding real (briefly trained) tiny networks.

The run folders are written with the run's own helpers (RunDir, ResultsStore rows as trial.run_trial
writes them, proposals with masks files in RUN/proposals, weights as safetensors), so the exporter reads
exactly the layout a search produces, without a 40-second search per test module.
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

import prunenas
from prunenas.arch import Architecture
from prunenas.budget import target_from_ratio, uniform_twin
from prunenas.cli.main import main
from prunenas.cost import count
from prunenas.errors import PrunenasError
from prunenas.fileio import file_sha256
from prunenas.masks import reapply_masks
from prunenas.proposers import Proposal, Target
from prunenas.proposers.magnitude import write_masks
from prunenas.runs.catalog import list_architectures, open_run
from prunenas.runs.export import decode_meta, export, read_meta, select_best, select_trial, state_sha256, verify
from prunenas.runs.rundir import RunDir
from prunenas.spaces import load_space
from prunenas.trial import arch_dict
from prunenas.weights import save_weights

TINY = load_space("tiny-synthetic").base  # widths [8, 16, 8, 8], input 3x16x16, 4 classes
RECIPE = {"name": "fast", "epochs": 1, "lr": 0.05, "seed": 0}


def brief_training(arch: Architecture, steps: int = 4) -> torch.nn.Module:
    """A few SGD steps on random data: weights and BatchNorm statistics away from their initial values."""
    torch.manual_seed(0)
    model = arch.build().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        x = torch.randn(16, *arch.input_shape)
        y = torch.randint(arch.num_classes, (16,))
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        reapply_masks(model)
    return model.eval()


def key_of(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()[:16]


class FakeRun:
    """A run folder written row by row: ``add`` trains the network, saves its weights and appends its row."""

    def __init__(self, path, name: str, space: str) -> None:
        self.run = RunDir(path)
        self.run.create(name, yaml.safe_dump({"name": name, "space": space, "data": {"name": "synthetic"}}))
        self.run.write_state(status="finished", phase=3)
        self.models: dict[str, torch.nn.Module] = {}

    def proposal(self, arch: Architecture, method: str) -> str:
        proposal = Proposal(arch, method, {"prune_tied": False}, Target(ratio=0.5), seed=0,
                            provenance={"base_model": "b" * 20, "base_val_acc": 0.5, "space": "tiny-synthetic"})
        pid = key_of(f"{method}-{arch.digest()}")
        proposal.save(self.run.proposal_path(pid))
        return pid

    def add(self, key: str, arch: Architecture, arm: str = "proposed", method: str = "l1-norm",
            status: str = "ok", weights: bool = True, **metrics) -> str:
        cost = count(arch)
        row = {"key": key, "phase": "eval", "arm": arm, "budget": "scratch-e", "seed": 0, "method": method,
               "proposal": self.proposal(arch, method), "arch": arch_dict(arch), "digest": arch.digest(),
               "macs": cost.macs, "params": cost.params, "epochs": 1, "recipe": RECIPE, "init": "scratch",
               "status": status, **metrics}
        if weights:
            model = brief_training(arch)
            save_weights(model, self.run.weights_path(key), {"key": key})
            self.models[key] = model
            row["weights"] = f"weights/{key}.safetensors"
        self.run.results.append(row)
        return key


def masked_tiny(folder) -> Architecture:
    """The base tiny network with ~30% of every conv's weights kept (a magnitude-style proposal)."""
    generator = torch.Generator().manual_seed(1)
    masks = {layer.name: torch.rand(layer.weight_shape, generator=generator) < 0.3
             for layer in TINY.layers if layer.kind == "conv"}
    return write_masks(TINY, masks, folder)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs. ``tiny`` (tiny-synthetic): proposed, uniform, masked, failed rows whose test accuracies
    disagree with their validation accuracies; ``res`` (resnet20-fashionmnist): a pruned ResNet-20."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    tiny = FakeRun(root / "tiny-run", "tiny", "tiny-synthetic")
    masked = masked_tiny(tiny.run.path / "proposals")
    small = TINY.with_widths([4, 8, 4, 0])  # block 1 removed: an identity in the residual stream
    keys = {
        # the key "big" first has a failed row, then its final ok row (the latest row of a key counts)
        "failed-then-ok": tiny.add(key_of("big"), TINY, status="failed", weights=False),
        "big": tiny.add(key_of("big"), TINY, val_acc=0.80, test_acc=0.10, val_loss=0.9, test_loss=0.1),
        "small": tiny.add(key_of("small"), small, val_acc=0.70, test_acc=0.95, val_loss=0.3, test_loss=2.0),
        "masked": tiny.add(key_of("masked"), masked, method="magnitude", val_acc=0.75, test_acc=0.99,
                           val_loss=0.5, test_loss=0.01),
        "uniform": tiny.add(key_of("uniform"), TINY.with_widths([6, 12, 6, 6]), arm="uniform", val_acc=0.90,
                            test_acc=0.20, val_loss=0.8, test_loss=0.9),
        # a failed row with the best numbers and no weights: never selected
        "failed": tiny.add(key_of("failed"), TINY.with_widths([7, 16, 7, 7]), status="failed", weights=False,
                           val_acc=0.99, test_acc=0.99),
    }
    space = load_space("resnet20-fashionmnist")
    pruned = uniform_twin(space, target_from_ratio(space, 0.5, "macs")).arch
    res = FakeRun(root / "res-run", "res", "resnet20-fashionmnist")
    keys["resnet"] = res.add(key_of("resnet"), pruned, val_acc=0.60, test_acc=0.61)
    return {"tiny": tiny, "res": res, "keys": keys, "root": root}


def trial(runs, name, run="tiny"):
    return select_trial(runs[run].run, runs["keys"][name])


def model_of(runs, name, run="tiny"):
    return runs[run].models[runs["keys"][name]]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def inputs(arch, batch, seed=0):
    return torch.randn(batch, *arch.input_shape, generator=torch.Generator().manual_seed(seed))


# -- selection ------------------------------------------------------------------------------------------


def test_best_ranks_on_validation_accuracy_never_test(runs):
    run, keys = runs["tiny"].run, runs["keys"]
    # test accuracy would pick "masked" (0.99) or "small" (0.95); validation picks "big" (0.80)
    assert select_best(run).key == keys["big"]
    assert select_best(run, metric="val_acc", arm="proposed").key == keys["big"]
    # lower validation loss is better: "small" (0.3), although its test loss is the worst
    assert select_best(run, metric="val_loss").key == keys["small"]
    for metric in ("test_acc", "test_loss", "macs"):
        with pytest.raises(PrunenasError, match="validation metrics only"):
            select_best(run, metric=metric)


def test_best_never_reads_test_accuracy(runs, tmp_path):
    """The same rows with every test accuracy removed give the same choices."""
    source = runs["tiny"].run
    run = RunDir(tmp_path / "copy")
    run.create("copy", (source.path / "experiment.yaml").read_text())
    for row in source.results.rows():
        run.results.append({k: v for k, v in row.items() if not k.startswith("test_")})
    for kwargs in ({}, {"arm": "any"}, {"metric": "val_loss"}, {"max_macs": count(TINY).macs // 2}):
        assert select_best(run, **kwargs).key == select_best(source, **kwargs).key


def test_best_respects_arm_and_max_macs(runs):
    run, keys = runs["tiny"].run, runs["keys"]
    rows = {r["key"]: r for r in run.results.latest().values()}
    big, small, masked = (rows[keys[n]]["macs"] for n in ("big", "small", "masked"))
    assert small < masked < big  # the masked network counts only its non-zero weights
    assert select_best(run, arm="uniform").key == keys["uniform"]
    assert select_best(run, arm="any").key == keys["uniform"]  # 0.90; the failed row's 0.99 is not a candidate
    assert select_best(run, max_macs=big - 1).key == keys["masked"]
    assert select_best(run, max_macs=masked).key == keys["masked"]
    assert select_best(run, max_macs=masked - 1).key == keys["small"]
    nothing = r"no trained network .*matches \(status ok, arm proposed, a val_acc, MACs <= 10\); .*prunenas arch list"
    with pytest.raises(PrunenasError, match=nothing):
        select_best(run, max_macs=10)
    with pytest.raises(PrunenasError, match="--arm 'best'"):
        select_best(run, arm="best")


def test_best_ties_are_deterministic(tmp_path):
    run = RunDir(tmp_path / "ties")
    run.create("ties", "space: tiny-synthetic\n")

    def row(key, macs, params, val):
        run.results.append({"key": key, "arm": "proposed", "status": "ok", "macs": macs, "params": params,
                            "val_acc": val, "arch": arch_dict(TINY)})

    row("c" * 16, 500, 50, 0.7)
    row("b" * 16, 400, 60, 0.7)  # same accuracy, fewer MACs: wins
    row("d" * 16, 900, 10, 0.6)
    assert select_best(run).key == "b" * 16
    row("a" * 16, 400, 60, 0.7)  # same accuracy, MACs and params: the smaller key
    assert select_best(run).key == "a" * 16
    row("e" * 16, 400, 59, 0.7)  # fewer params
    assert select_best(run).key == "e" * 16
    row("f" * 16, 1, 1, float("nan"))  # no accuracy: not a candidate
    assert select_best(run).key == "e" * 16


def test_trial_by_key_or_unique_prefix(runs, tmp_path):
    run, keys = runs["tiny"].run, runs["keys"]
    assert select_trial(run, keys["small"]).key == keys["small"]
    assert select_trial(run, keys["small"][:6]).key == keys["small"]
    with pytest.raises(PrunenasError, match=r"no trial with key 'zzz' .*prunenas arch list"):
        select_trial(run, "zzz")
    with pytest.raises(PrunenasError, match="status 'failed'"):
        select_trial(run, keys["failed"])
    prefixed = RunDir(tmp_path / "prefix")
    prefixed.create("p", "space: tiny-synthetic\n")
    for key in ("abc1" + "0" * 12, "abc2" + "0" * 12):
        prefixed.results.append({"key": key, "status": "ok", "arch": arch_dict(TINY), "macs": 1, "params": 1})
    with pytest.raises(PrunenasError, match="key prefix 'abc' matches 2 trials"):
        select_trial(prefixed, "abc")
    assert select_trial(prefixed, "abc2").key == "abc2" + "0" * 12


# -- formats --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["big", "masked"])
def test_json_and_safetensors_round_trip(runs, tmp_path, name):
    t = trial(runs, name)
    written = export(t, "safetensors", tmp_path / "net.safetensors")
    assert written.arch_json == tmp_path / "net.json"
    arch = prunenas.load_architecture(written.arch_json)
    assert arch.digest() == t.arch.digest() == written.meta["digest"]
    model = arch.build()
    model.load_state_dict(load_file(str(written.path)))  # strict: every tensor, nothing else
    model.eval()
    x = inputs(arch, 5)
    with torch.no_grad():
        assert torch.equal(model(x), model_of(runs, name)(x))
    if name == "masked":
        assert written.masks == tmp_path / written.masks.name and written.masks.exists()
        assert file_sha256(written.masks) == arch.masks.sha256
    # the json format writes the same architecture JSON (without file checksum: no file of its own)
    only = export(t, "json", tmp_path / "only" / "arch.json")
    assert prunenas.load_architecture(only.path).digest() == t.arch.digest()
    assert "file_sha256" not in read_meta(only.path) and read_meta(only.path)["weights_sha256"]


def test_json_rebuilds_in_a_plain_python_session(runs, tmp_path):
    """Exported folder on its own (masks included): a fresh interpreter rebuilds the network and its outputs."""
    t = trial(runs, "masked")
    export(t, "safetensors", tmp_path / "out" / "net.safetensors")
    script = (
        "import json, sys, torch\n"
        "import prunenas\n"
        "from safetensors.torch import load_file\n"
        "torch.set_num_threads(1)\n"
        "arch = prunenas.load_architecture('net.json')\n"
        "model = arch.build()\n"
        "model.load_state_dict(load_file('net.safetensors'))\n"
        "model.eval()\n"
        "x = torch.randn(3, *arch.input_shape, generator=torch.Generator().manual_seed(7))\n"
        "print(json.dumps({'digest': arch.digest(), 'logits': model(x).tolist()}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path / "out", capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["digest"] == t.arch.digest()
    with torch.no_grad():
        expected = model_of(runs, "masked")(inputs(t.arch, 3, seed=7))
    assert torch.equal(torch.tensor(result["logits"]), expected)


@pytest.mark.parametrize(("name", "run"), [("small", "tiny"), ("masked", "tiny"), ("resnet", "res")])
def test_onnx_matches_pytorch(runs, tmp_path, name, run):
    """Tiny net with a removed block, a masked net, a pruned ResNet-20 (option-A residual stream)."""
    t = trial(runs, name, run)
    written = export(t, "onnx", tmp_path / "net.onnx")
    proto = onnx.load(str(written.path))
    onnx.checker.check_model(proto)
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # dynamic batch dimension
    session = ort.InferenceSession(str(written.path), providers=["CPUExecutionProvider"])
    model = model_of(runs, name, run)
    for size, seed in ((1, 1), (5, 2)):
        x = inputs(t.arch, size, seed)
        (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            torch_out = model(x).numpy()
        assert onnx_out.shape == torch_out.shape
        assert np.abs(onnx_out - torch_out).max() <= 1e-4
    meta = decode_meta({p.key: p.value for p in proto.metadata_props})
    assert meta["key"] == t.key and meta["macs"] == t.row["macs"] and meta["params"] == t.row["params"]
    assert (meta["val_acc"], meta["test_acc"]) == (t.row["val_acc"], t.row["test_acc"])
    assert meta["state_sha256"] == state_sha256(t.state())
    assert verify(written.path)["file_sha256"] == file_sha256(written.path)


def test_pt2_round_trip(runs, tmp_path):
    t = trial(runs, "small")
    written = export(t, "pt2", tmp_path / "net.pt2")
    program = torch.export.load(str(written.path))
    for size in (1, 3):  # dynamic batch
        x = inputs(t.arch, size, seed=size)
        with torch.no_grad():
            assert torch.allclose(program.module()(x), model_of(runs, "small")(x), atol=1e-6)
    sidecar = json.loads((tmp_path / "net.json").read_text())["meta"]
    assert sidecar["file"] == "net.pt2" and sidecar["file_sha256"] == file_sha256(written.path)
    assert read_meta(written.path)["key"] == t.key  # embedded in the archive too
    assert verify(written.path)["key"] == t.key


def test_metadata_in_every_format_and_checksums_verify(runs, tmp_path):
    t = trial(runs, "masked")
    run_weights = t.run.path / t.row["weights"]
    for fmt in ("json", "safetensors", "onnx", "pt2"):
        written = export(t, fmt, tmp_path / fmt)
        meta = read_meta(written.path)
        assert meta["format"] == "prunenas.export/1"
        assert (meta["run"], meta["key"], meta["method"], meta["arm"], meta["budget"], meta["seed"]) == (
            "tiny", t.key, "magnitude", "proposed", "scratch-e", 0)
        assert (meta["macs"], meta["params"]) == (t.row["macs"], t.row["params"])
        assert (meta["val_acc"], meta["test_acc"]) == (0.75, 0.99)
        assert meta["method_params"] == {"prune_tied": False} and meta["target"] == {"ratio": 0.5, "match": "macs"}
        assert meta["recipe"] == RECIPE and meta["base_model"] == "b" * 20 and meta["space"] == "tiny-synthetic"
        assert meta["weights_sha256"] == file_sha256(run_weights)
        assert meta["state_sha256"] == state_sha256(load_file(str(run_weights)))
        assert verify(written.path)["key"] == t.key
        assert written.path.name == f"{fmt}.{fmt}"  # the format's suffix is appended to --out
    # the exported weights hash to the same state checksum as the run's
    weights = tmp_path / "safetensors.safetensors"
    assert state_sha256(load_file(str(weights))) == read_meta(tmp_path / "safetensors.json")["state_sha256"]


def test_tampered_exports_fail_verification(runs, tmp_path):
    t = trial(runs, "small")
    for fmt in ("safetensors", "onnx"):
        written = export(t, fmt, tmp_path / f"net.{fmt}")
        data = bytearray(written.path.read_bytes())
        data[-1] ^= 0xFF
        written.path.write_bytes(bytes(data))
        with pytest.raises(PrunenasError, match="file_sha256"):
            verify(written.path)


def test_outputs_are_replaced_atomically_and_named_by_default(runs, tmp_path, monkeypatch):
    t = trial(runs, "big")
    target = tmp_path / "net.safetensors"
    export(trial(runs, "small"), "safetensors", target)
    inode = target.stat().st_ino
    export(t, "safetensors", target)  # replaces the other network's export
    assert target.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert read_meta(target)["key"] == t.key and verify(target)["key"] == t.key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.json", "net.safetensors"]  # no temp files left
    monkeypatch.chdir(tmp_path)
    written = export(t, "json")  # no --out: RUNNAME-KEY.json in the current folder
    assert str(written.path) == f"tiny-{t.key}.json" and (tmp_path / written.path).exists()
    folder = export(t, "onnx", "exports/")
    assert folder.path.parent.name == "exports" and folder.path.name == f"tiny-{t.key}.onnx"
    with pytest.raises(PrunenasError, match="architecture JSON beside it"):
        export(t, "onnx", tmp_path / "model.json")


# -- listing --------------------------------------------------------------------------------------------


def test_arch_list_across_runs_and_filters(runs):
    tiny, res, keys = runs["tiny"].run.path, runs["res"].run.path, runs["keys"]
    everything = list_architectures([tiny, res])
    assert [r["key"] for r in everything] == [keys[n] for n in ("uniform", "big", "masked", "small", "resnet")]
    assert {r["run"] for r in everything} == {"tiny", "res"}
    assert [r["key"] for r in list_architectures([tiny, res], space="resnet20-fashionmnist")] == [keys["resnet"]]
    assert len(list_architectures([tiny, res], space="tiny-synthetic")) == 4
    masked_macs = next(r["macs"] for r in everything if r["key"] == keys["masked"])
    capped = list_architectures([tiny, res], max_macs=masked_macs)
    assert all(r["macs"] <= masked_macs for r in capped) and keys["big"] not in {r["key"] for r in capped}
    # --min-acc is on validation accuracy: "small" (val 0.70, test 0.95) is out at 0.75
    assert [r["key"] for r in list_architectures([tiny], min_acc=0.75)] == [keys[n] for n in ("uniform", "big",
                                                                                               "masked")]
    assert [r["key"] for r in list_architectures([tiny], arm="uniform")] == [keys["uniform"]]
    with pytest.raises(PrunenasError, match="unknown space 'nope'"):
        list_architectures([tiny], space="nope")
    with pytest.raises(PrunenasError, match="fraction"):
        list_architectures([tiny], min_acc=75)


def test_cli_arch_list(runs, capsys):
    tiny, res, keys = runs["tiny"].run.path, runs["res"].run.path, runs["keys"]
    code, out, _ = cli(capsys, "arch", "list", tiny, res)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 1 + 5
    assert lines[0].split() == ["run", "key", "method", "arm", "MACs", "params", "val", "%", "test", "%"]
    small = next(line for line in lines if keys["small"] in line).split()
    assert small[:4] == ["tiny", keys["small"], "l1-norm", "proposed"] and small[-2:] == ["70.00", "95.00"]
    code, out, _ = cli(capsys, "arch", "list", tiny, res, "--space", "resnet20-fashionmnist", "--json")
    assert code == 0 and [r["key"] for r in json.loads(out)] == [keys["resnet"]]
    code, out, _ = cli(capsys, "arch", "list", tiny, "--min-acc", "0.99")
    assert code == 0 and "no trained networks match" in out


def test_cli_export(runs, tmp_path, capsys):
    tiny, keys = runs["tiny"].run.path, runs["keys"]
    out = tmp_path / "best.json"
    code, stdout, _ = cli(capsys, "export", tiny, "--best", "--format", "json", "--out", out)
    assert code == 0 and keys["big"] in stdout and f"wrote {out}" in stdout
    assert read_meta(out)["key"] == keys["big"]
    small = runs["tiny"].run.results.latest()[keys["small"]]["macs"]
    code, stdout, _ = cli(capsys, "export", tiny, "--best", "--max-macs", small, "--arm", "proposed", "--metric",
                          "val_acc", "--format", "safetensors", "--out", tmp_path / "capped.safetensors", "--json")
    assert code == 0 and json.loads(stdout)["meta"]["key"] == keys["small"]
    code, stdout, _ = cli(capsys, "export", tiny, "--trial", keys["uniform"][:8], "--format", "json", "--out",
                          tmp_path / "u.json")
    assert code == 0 and read_meta(tmp_path / "u.json")["arm"] == "uniform"


@pytest.mark.parametrize(("argv", "message"), [
    (["export", "{root}/nowhere", "--best", "--format", "json"], "run folder {root}/nowhere does not exist"),
    (["export", "{root}", "--best", "--format", "json"], "is not a prunenas run folder"),
    (["export", "{tiny}", "--trial", "0000000", "--format", "json"], "no trial with key '0000000'"),
    (["export", "{tiny}", "--trial", "{small}", "--max-macs", "5", "--format", "json"],
     "--max-macs select among networks with --best"),
    (["export", "{tiny}", "--best", "--arm", "lotto", "--format", "json"], "--arm 'lotto'"),
    (["arch", "list", "{tiny}", "{root}/nowhere"], "run folder {root}/nowhere does not exist"),
    (["arch", "list", "{tiny}", "--space", "nope"], "unknown space 'nope'"),
])
def test_cli_bad_input_is_one_line_exit_2(runs, capsys, argv, message):
    names = {"root": runs["root"], "tiny": runs["tiny"].run.path, "small": runs["keys"]["small"]}
    code, out, err = cli(capsys, *[a.format(**names) for a in argv])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("prunenas: error: ") and message.format(**names) in err


@pytest.mark.parametrize(("argv", "message"), [
    (["export", "{tiny}", "--best", "--format", "tflite"], "invalid choice: 'tflite'"),
    (["export", "{tiny}", "--best", "--metric", "test_acc", "--format", "json"], "invalid choice: 'test_acc'"),
    (["export", "{tiny}", "--format", "json"], "one of the arguments --best --trial is required"),
])
def test_cli_usage_errors_exit_2(runs, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(tiny=runs["tiny"].run.path) for a in argv])
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1


def test_cli_entry_point_missing_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "prunenas", "export", str(tmp_path / "none"), "--best",
                           "--format", "onnx"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"prunenas: error: run folder {tmp_path / 'none'} does not exist\n"


def test_open_run_rejects_a_folder_without_run_json(tmp_path):
    with pytest.raises(PrunenasError, match="not a prunenas run folder"):
        open_run(tmp_path)
