"""Bad input anywhere: one line on stderr saying what is wrong and what is allowed, exit code 2, no traceback,
nothing written."""

import gzip
import json
import os

import pytest
import yaml

from prunenas.arch import load_architecture
from prunenas.cli.main import main
from prunenas.errors import PrunenasError
from prunenas.experiment_file import load_experiment
from prunenas.proposers import load_proposal
from prunenas.spaces import load_space

GOOD = {"space": "tiny-synthetic", "data": {"name": "synthetic"}, "proposers": {"l1-norm": {}},
        "targets": {"ratios": [0.5]}}


def exp(**changes):
    data = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            data.setdefault(section, {})[sub] = value
        else:
            data[section] = value
    return data


def bad_masks(tmp):
    import torch
    from safetensors.torch import save_file

    from prunenas.fileio import file_sha256

    save_file({"down.0": torch.ones(3, 3, dtype=torch.uint8)}, str(tmp / "m.safetensors"))
    return {"family": "tiny", "widths": [8, 16, 8, 8], "input_shape": [3, 16, 16], "num_classes": 4,
            "masks": {"file": "m.safetensors", "sha256": file_sha256(tmp / "m.safetensors")}}


BINARY = b"\x89PNG\r\n\x1a\n\xff\xfe"  # not UTF-8 from its first byte
FOLDER = object()  # create a folder where a file is expected


def corrupt_idx(tmp):
    folder = tmp / "fm"
    folder.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (folder / f"{stem}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 5))
    return folder


def mismatched_weights(tmp):
    """A state dict of the user's network at another width than the reference's (stem 8 channels, not 12)."""
    import torch

    from tests.traced_models import user_net

    torch.save(user_net(width=8).state_dict(), tmp / "w.pth")


USER = "tests.traced_models:user_net"

CASES = [
    # model references (a user's module, torchvision, timm)
    ("ref-unimportable", {}, ["info", "no_such_package.models:net", "--input-shape", "3,8,8"],
     "cannot import 'no_such_package.models'"),
    ("ref-not-a-module", {}, ["info", "tests.traced_models:not_a_module", "--input-shape", "3,8,8"],
     "the factory returned a str, not a torch.nn.Module"),
    ("ref-untraceable", {}, ["uniform", "tests.traced_models:branchy", "--input-shape", "3,8,8", "--ratio", "0.5"],
     "cannot be traced by torch.fx at (root): TraceError: symbolically traced variables cannot be used as inputs "
     "to control flow"),
    ("ref-shape-rejected", {}, ["train", USER, "--input-shape", "1,16,16", "--data", "synthetic", "--out", "r"],
     "model 'tests.traced_models:user_net' rejects input 1x16x16: RuntimeError"),
    ("ref-needs-shape", {}, ["info", USER], "model 'tests.traced_models:user_net' needs an input shape C,H,W"),
    ("ref-malformed-shape", {}, ["info", USER, "--input-shape", "3,16"], "'3,16' is not C,H,W"),
    ("ref-weights-do-not-fit", {"w.pth": mismatched_weights},
     ["propose", "l1-norm", USER, "--input-shape", "3,16,16", "--ratio", "0.5", "--weights", "w.pth",
      "--out", "r.json"], "does not fit the base network"),
    ("ref-weights-not-a-state-dict-file", {}, ["propose", "l1-norm", USER, "--input-shape", "3,16,16",
                                               "--ratio", "0.5", "--weights", "w.txt"],
     "--weights 'w.txt' must be a state-dict file"),
    ("ref-flags-on-a-built-in-space", {}, ["info", "tiny-synthetic", "--classes", "3"],
     "fixes its input shape and classes; --input-shape and --classes apply to model references"),
    ("space-model-and-family", {"s.yaml": {"family": "tiny", "model": USER, "input_shape": [3, 16, 16]}},
     ["info", "s.yaml"], "a space names either 'family' (a built-in family) or 'model'"),
    ("exp-reference-without-shape", {"e.yaml": exp(space=USER)}, ["search", "e.yaml", "--out", "r"],
     "space: model 'tests.traced_models:user_net' needs an input shape"),
    # experiment files
    ("exp-unknown-key", {"e.yaml": exp(colour="red")}, ["search", "e.yaml", "--out", "r"], "colour: unknown key"),
    ("exp-wrong-type", {"e.yaml": exp(search__num_samples="many")}, ["search", "e.yaml", "--out", "r"],
     "search.num_samples: 'many' is not a int"),
    ("exp-empty-proposers", {"e.yaml": exp(proposers={})}, ["search", "e.yaml", "--out", "r"], "proposers: empty"),
    ("exp-ratio-zero", {"e.yaml": exp(targets={"ratios": [0]})}, ["search", "e.yaml", "--out", "r"],
     "targets.ratios: 0 must be a ratio in (0, 1]"),
    ("exp-ratio-above-one", {"e.yaml": exp(targets={"ratios": [1.5]})}, ["search", "e.yaml", "--out", "r"],
     "targets.ratios: 1.5 must be a ratio in (0, 1]"),
    ("exp-unknown-space", {"e.yaml": exp(space="resnet9000")}, ["search", "e.yaml", "--out", "r"],
     "space: unknown space 'resnet9000'"),
    ("exp-unknown-dataset", {"e.yaml": exp(data={"name": "svhn"})}, ["search", "e.yaml", "--out", "r"],
     "data.name: unknown dataset 'svhn'; choose one of"),
    ("exp-unknown-proposer", {"e.yaml": exp(proposers={"oracle": {}})}, ["search", "e.yaml", "--out", "r"],
     "proposers.oracle: unknown proposer; choose from"),
    ("exp-unknown-parameter", {"e.yaml": exp(proposers={"l1-norm": {"strength": 1}})},
     ["search", "e.yaml", "--out", "r"], "proposers.l1-norm.strength: unknown key"),
    ("exp-unknown-sampler", {"e.yaml": exp(search__sampler="annealing")}, ["search", "e.yaml", "--out", "r"],
     "search.sampler: 'annealing' not in {tpe, nsga2, random, grid}"),
    ("exp-seeds-not-integers", {"e.yaml": exp(seeds__eval=[0.5])}, ["search", "e.yaml", "--out", "r"],
     "seeds.eval: [0.5] must be a non-empty list of integers"),
    ("exp-negative-resources", {"e.yaml": exp(resources__cpu=-1)}, ["search", "e.yaml", "--out", "r"],
     "resources.cpu: -1 must be >= 0.01"),
    ("exp-infeasible-target", {"e.yaml": exp(targets={"macs": [1000]})}, ["search", "e.yaml", "--out", "r"],
     "is below the smallest architecture of tiny-synthetic"),
    ("exp-unknown-arm", {"e.yaml": exp(arms=["winner"])}, ["search", "e.yaml", "--out", "r"],
     "arms: 'winner' not in"),
    ("exp-base-arm-without-base-model", {"e.yaml": exp(proposers={"uniform": {}}, arms=["proposed", "finetune"])},
     ["search", "e.yaml", "--out", "r"], "arms: finetune needs the base model of the method, and uniform has none"),
    ("exp-temperature-zero", {"e.yaml": exp(distill__temperature=0)}, ["search", "e.yaml", "--out", "r"],
     "distill.temperature: 0 must be a number > 0"),
    ("exp-distill-weight-above-one", {"e.yaml": exp(distill__weight=2)}, ["search", "e.yaml", "--out", "r"],
     "distill.weight: 2 must be a number in [0, 1]"),
    ("exp-lr-grid-negative", {"e.yaml": exp(lr_grid=[0.1, -0.1])}, ["search", "e.yaml", "--out", "r"],
     "lr_grid: -0.1 must be a positive number"),
    ("exp-lr-grid-duplicate", {"e.yaml": exp(lr_grid=[0.1, 0.1])}, ["search", "e.yaml", "--out", "r"],
     "lr_grid: 0.1 appears more than once"),
    ("exp-grid-with-range", {"e.yaml": exp(search__sampler="grid", targets={"ratios": {"low": 0.3, "high": 0.6}})},
     ["search", "e.yaml", "--out", "r"], "the grid sampler needs lists of choices"),
    ("exp-nsga2-one-objective", {"e.yaml": exp(search__sampler="nsga2")}, ["search", "e.yaml", "--out", "r"],
     "nsga2 is for two objectives"),
    # multi-fidelity search (search.proxy): audit defaults to 10, so 2 + 10 exceeds 5
    ("exp-promote-audit-exceed-screen", {"e.yaml": exp(search={"proxy": "synflow", "screen": 5, "promote": 2})},
     ["search", "e.yaml", "--out", "r"], "search: promote 2 + audit 10 = 12 exceeds screen 5"),
    ("exp-unknown-proxy", {"e.yaml": exp(search={"proxy": "oracle", "screen": 5, "promote": 2, "audit": 1})},
     ["search", "e.yaml", "--out", "r"], "search.proxy: unknown proxy 'oracle'; choose one of: adaptive-bn"),
    ("exp-unknown-proxy-parameter", {"e.yaml": exp(search={"proxy": {"name": "snip", "steps": 3}, "screen": 5,
                                                          "promote": 2, "audit": 1})},
     ["search", "e.yaml", "--out", "r"], "search.proxy: proxy 'snip' has no parameter 'steps'"),
    ("exp-adaptive-bn-without-batch-norm",
     {"e.yaml": exp(space="vit-tiny-fashionmnist", data={"name": "fashion-mnist"},
                    search={"proxy": "adaptive-bn", "screen": 20, "promote": 2})},
     ["search", "e.yaml", "--out", "r"], "recalibrates batch norms, but space 'vit-tiny-fashionmnist' has none"),
    ("exp-unknown-fidelity-proxy", {"e.yaml": exp(search={"proxy": "snip", "screen": 5, "promote": 2, "audit": 1,
                                                         "fidelity_proxies": ["synflow", "zen"]})},
     ["search", "e.yaml", "--out", "r"], "search.fidelity_proxies[1]: unknown proxy 'zen'"),
    ("exp-screen-without-proxy", {"e.yaml": exp(search={"screen": 5, "promote": 2})},
     ["search", "e.yaml", "--out", "r"], "search.promote: applies to a multi-fidelity search only"),
    ("exp-proxy-with-grid", {"e.yaml": exp(search={"proxy": "snip", "screen": 5, "promote": 2, "audit": 1,
                                                  "sampler": "grid"})},
     ["search", "e.yaml", "--out", "r"], "search.sampler: grid enumerates every point"),
    ("exp-proxy-with-num-samples", {"e.yaml": exp(search={"proxy": "snip", "screen": 5, "promote": 2, "audit": 1,
                                                         "num_samples": 8})},
     ["search", "e.yaml", "--out", "r"], "search.num_samples: a multi-fidelity search trains"),
    ("flag-num-samples-with-proxy", {"e.yaml": exp(search={"proxy": "snip", "screen": 5, "promote": 2, "audit": 1})},
     ["search", "e.yaml", "--out", "r", "--num-samples", "8"], "--num-samples 8: a multi-fidelity search trains"),
    ("flag-grid-over-ranges", {"e.yaml": exp(recipe={"lr": {"low": 0.01, "high": 0.1}})},
     ["search", "e.yaml", "--out", "r", "--sampler", "grid"],
     "--sampler grid: recipe.lr: the grid sampler needs lists of choices, not ranges"),
    ("flag-num-samples-zero", {"e.yaml": exp()}, ["search", "e.yaml", "--out", "r", "--num-samples", "0"],
     "--num-samples 0 must be at least 1"),
    ("exp-malformed-yaml", {"e.yaml": "space: [tiny"}, ["search", "e.yaml", "--out", "r"], "is not valid YAML"),
    ("exp-storage-not-writable", {"e.yaml": exp(), "blocker": "a file"}, ["search", "e.yaml", "--out", "blocker/r"],
     "cannot write the run folder"),
    # architecture files
    ("arch-malformed", {"a.json": "{oops"}, ["info", "a.json"], "a.json is not valid JSON"),
    ("arch-wrong-family", {"a.json": {"family": "lenet", "widths": [1]}}, ["info", "a.json"],
     "unknown family 'lenet'; choose one of: densenet"),
    ("arch-width-count", {"a.json": {"family": "tiny", "widths": [8, 16]}}, ["info", "a.json"],
     "has 4 width slots, got 2 widths"),
    ("arch-width-zero", {"a.json": {"family": "tiny", "widths": [8, 0, 8, 8]}}, ["info", "a.json"],
     "width 1 (slot 'stream') is 0; allowed 1..16"),
    ("arch-width-negative", {"a.json": {"family": "tiny", "widths": [8, 16, -2, 8]}}, ["info", "a.json"],
     "is -2; allowed 0 (block removed) or 1..8"),
    ("arch-width-above-bound", {"a.json": {"family": "tiny", "widths": [8, 17, 8, 8]}}, ["info", "a.json"],
     "is 17, above its bound 16"),
    ("arch-masks-wrong-shape", {"a.json": bad_masks}, ["info", "a.json"], "mask for 'down.0' has shape [3, 3]"),
    ("arch-masks-missing", {"a.json": {"family": "tiny", "widths": [8, 16, 8, 8],
                                       "masks": {"file": "gone.safetensors", "sha256": "0"}}},
     ["info", "a.json"], "gone.safetensors does not exist"),
    # files that are not text files: binary, empty, a folder (permissions cannot be tested as root, who reads
    # a chmod-000 file anyway)
    ("arch-binary", {"a.json": BINARY}, ["info", "a.json"],
     "cannot read architecture file a.json: not UTF-8 text (byte 0x89 at offset 0)"),
    ("arch-empty", {"a.json": ""}, ["info", "a.json"], "a.json is not valid JSON: Expecting value at line 1"),
    ("arch-folder", {"a.json": FOLDER}, ["info", "a.json"], "cannot read architecture file a.json: Is a directory"),
    ("arch-masks-folder", {"m.safetensors": FOLDER, "a.json": {"family": "tiny", "widths": [8, 16, 8, 8],
                                                                "masks": {"file": "m.safetensors", "sha256": "0"}}},
     ["info", "a.json"], "cannot read masks file"),
    ("space-binary", {"s.yaml": BINARY}, ["info", "s.yaml"], "cannot read space file s.yaml: not UTF-8 text"),
    ("space-empty", {"s.yaml": ""}, ["info", "s.yaml"], "s.yaml: a space is a YAML mapping"),
    ("exp-binary", {"e.yaml": BINARY}, ["search", "e.yaml", "--out", "r"],
     "cannot read experiment file e.yaml: not UTF-8 text"),
    ("exp-empty", {"e.yaml": ""}, ["search", "e.yaml", "--out", "r"], "e.yaml: space: missing (required)"),
    ("exp-folder", {"e.yaml": FOLDER}, ["search", "e.yaml", "--out", "r"],
     "cannot read experiment file e.yaml: Is a directory"),
    ("guided-source-binary", {"s.json": BINARY},
     ["propose", "guided", "tiny-synthetic", "--ratio", "0.5", "--param", "source=s.json"],
     "cannot read source file s.json: not UTF-8 text"),
    ("run-state-binary", {"run/run.json": BINARY}, ["status", "run"], "cannot read run file"),
    ("run-state-folder", {"run/run.json": FOLDER}, ["report", "run"], "run.json: Is a directory"),
    ("run-plan-binary", {"run/run.json": {"schema": 1, "status": "running", "name": "x"}, "run/plan.json": BINARY},
     ["report", "run", "--no-latency"], "cannot read run file"),
    # command line
    ("cli-missing-argument", {}, ["info"], "the following arguments are required: target"),
    ("cli-missing-run-folder", {}, ["report", "no-such-run"], "is not a prunenas run folder (no run.json)"),
    ("cli-finished-run", {"run/run.json": {"schema": 1, "status": "finished", "name": "x"},
                          "run/experiment.yaml": exp()},
     ["resume", "run"], "is finished; nothing to resume"),
    ("cli-unknown-schema", {"run/run.json": {"schema": 99, "status": "running"}}, ["status", "run"],
     "has run-folder schema 99; this prunenas reads schema 1"),
    ("cli-unknown-proposer", {}, ["propose", "oracle", "tiny-synthetic", "--ratio", "0.5"],
     "unknown proposer 'oracle'; choose one of"),
    ("cli-bad-param", {}, ["propose", "l1-norm", "tiny-synthetic", "--ratio", "0.5", "--param", "x"],
     "--param 'x' must be KEY=VALUE"),
    ("cli-unknown-recipe", {"a.json": {"family": "tiny", "widths": [8, 16, 8, 8], "input_shape": [3, 16, 16],
                                       "num_classes": 4}},
     ["train", "a.json", "--data", "synthetic", "--recipe", "slow"], "unknown recipe 'slow'; choose one of"),
    # data
    ("data-missing-folder", {"a.json": {"family": "tiny", "widths": [8, 16, 8, 8], "input_shape": [3, 32, 32]}},
     ["train", "a.json", "--data", "cifar10", "--data-root", "nowhere"],
     "dataset cifar10: files not found in nowhere"),
    ("data-corrupt-idx", {"a.json": {"family": "tiny", "widths": [8, 16, 8, 8], "input_shape": [1, 32, 32]},
                          "fm": corrupt_idx},
     ["train", "a.json", "--data", "fashion-mnist", "--data-root", "fm"], "is truncated"),
    ("data-corrupt-cifar", {"a.json": {"family": "tiny", "widths": [8, 16, 8, 8], "input_shape": [3, 32, 32],
                                       "num_classes": 100},
                            "c/cifar-100-python/train": "garbage", "c/cifar-100-python/test": "garbage"},
     ["train", "a.json", "--data", "cifar100", "--data-root", "c"], "is not a CIFAR batch file"),
]


def create(tmp_path, files):
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is FOLDER:
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif callable(content):
            result = content(tmp_path)
            if isinstance(result, dict):
                path.write_text(json.dumps(result))
        elif isinstance(content, dict):
            path.write_text(yaml.safe_dump(content) if name.endswith(".yaml") else json.dumps(content))
        else:
            path.write_text(content)


def snapshot(root):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize(("name", "files", "argv", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, monkeypatch, capsys, name, files, argv, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRUNENAS_NO_DOWNLOAD", "1")
    monkeypatch.setenv("PRUNENAS_CACHE", str(tmp_path / "cache"))
    create(tmp_path, files)
    before = snapshot(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0] and "Traceback" not in err
    assert snapshot(tmp_path) == before, "bad input must not write anything"
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.parametrize("kind", ["binary", "folder"])
@pytest.mark.parametrize("loader, suffix", [(load_architecture, ".json"), (load_proposal, ".json"),
                                            (load_space, ".yaml"), (load_experiment, ".yaml")],
                         ids=["architecture", "proposal", "space", "experiment"])
def test_every_file_loader_reports_an_unreadable_file_in_one_line(tmp_path, loader, suffix, kind):
    path = tmp_path / f"input{suffix}"
    path.mkdir() if kind == "folder" else path.write_bytes(BINARY)
    with pytest.raises(PrunenasError) as raised:
        loader(path)
    message = str(raised.value)
    assert str(path) in message and "\n" not in message
    assert ("not UTF-8 text" if kind == "binary" else "Is a directory") in message
