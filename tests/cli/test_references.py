"""Model references through the CLI: ``info`` of a reference against the hand-written family, a space YAML
with ``model:``, and ``--weights`` (the user's trained state dict) as the base model of ``propose``."""

import json
from pathlib import Path

import torch
import yaml

from prunenas.cli.main import main
from prunenas.references import module_sources
from prunenas.spaces import load_space
from tests.traced_models import user_net

USER = "tests.traced_models:user_net"


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_info_of_torchvision_resnet18_equals_the_hand_written_space(capsys):
    traced = run_json(capsys, ["info", "torchvision:resnet18", "--json"])
    ours = run_json(capsys, ["info", "resnet18-imagenet", "--json"])
    assert (traced["family"], traced["input_shape"], traced["num_classes"]) == ("traced", [3, 224, 224], 1000)
    assert (traced["macs"], traced["params"]) == (ours["macs"], ours["params"]) == (1_814_073_344, 11_689_512)
    assert sorted(traced["widths"]) == sorted(ours["widths"])
    # only the model's output (fc, 1000 classes) is frozen: every conv reads or writes a searchable slot
    assert [(f["producer"], f["channels"]) for f in traced["frozen"]] == [("fc", 1000)]
    assert traced["searchable_share"] == 1.0 and "searchable_share" not in ours


def test_space_yaml_with_model_is_the_reference_with_its_bounds(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"model": USER, "input_shape": [3, 16, 16], "num_classes": 10,
                                    "dataset": "synthetic", "multiple_of": 2, "min_ratio": 0.5}))
    space, reference = load_space(path), load_space(USER, (3, 16, 16), 10)
    assert space.base.digest() == reference.base.digest() and space.name == "mine"
    assert space.lower == tuple(max(1, -(-b // 2)) for b in reference.upper)
    assert space.round_width(0, 7.2) == 8 and reference.round_width(0, 7.2) == 7


def test_weights_are_the_base_model_of_propose(tmp_path, capsys):
    """Planted: the first half of res.0's filters nearly zero in the user's state dict; L1-norm drops them
    first, which it would not do for a base model it trained itself."""
    space = load_space(USER, (3, 16, 16), 10)
    slot = [s.name for s in space.slots].index("res.0")
    torch.manual_seed(0)
    model = user_net()
    with torch.no_grad():
        model.res[0].weight[:4] *= 1e-3
    torch.save(model.state_dict(), tmp_path / "mine.pth")
    out = run_json(capsys, ["propose", "l1-norm", USER, "--input-shape", "3,16,16", "--ratio", "0.5",
                            "--weights", str(tmp_path / "mine.pth"), "--data", "synthetic", "--subset", "64",
                            "--val-size", "32", "--cache-dir", str(tmp_path / "cache"), "--threads", "1", "--json"])
    kept = set(out["kept"][str(slot)])
    assert len(kept) < 8 and (kept <= {4, 5, 6, 7} or kept >= {4, 5, 6, 7})
    meta = json.loads((tmp_path / "cache" / out["provenance"]["base_model"] / "meta.json").read_text())
    assert meta["weights"] == str(tmp_path / "mine.pth") and meta["curve"] == []  # loaded, not trained


def test_classes_and_input_shape_reach_a_torchvision_factory(capsys):
    """--classes 10 becomes resnet18(num_classes=10): only the head changes (512 x 10 weights + 10 biases)."""
    info = run_json(capsys, ["info", "torchvision:resnet18", "--input-shape", "3,32,32", "--classes", "10", "--json"])
    assert (info["input_shape"], info["num_classes"]) == ([3, 32, 32], 10)
    assert info["options"]["model"] == "torchvision:resnet18?num_classes=10"
    assert info["params"] == 11_689_512 - (512 * 1000 + 1000) + (512 * 10 + 10)


def test_a_user_module_is_found_for_shipping_and_libraries_are_not():
    """A search on a cluster ships the folder of the user's top-level package (here tests/) to the workers."""
    assert module_sources(load_space(USER, (3, 16, 16)).base) == [Path(__file__).resolve().parents[1]]
    assert module_sources(load_space("torchvision:resnet18", (3, 32, 32)).base) == []
    assert module_sources(load_space("tiny-synthetic").base) == []
