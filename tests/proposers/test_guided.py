"""Guided and transferred pruning (Liu et al. 2019, §5): stage averaging, stage matching, scaling to a target,
sources, errors, CLI."""

import json
import subprocess
import sys

import pytest
import torch

from prunenas.arch import Architecture
from prunenas.cost import count
from prunenas.proposers import ProposerError, Target, propose
from prunenas.proposers.guided import pattern_shape, slot_roles, stage_pattern
from prunenas.proposers.magnitude import write_masks
from prunenas.spaces import load_space

VGG11 = load_space("vgg11-fashionmnist")  # base widths 16, 32, 64, 64, 128, 128, 128, 128 over stages 0,1,2,2,3,3,4,4
VGG_SOURCE = [16, 8, 64, 16, 128, 32, 32, 96]
VGG_PATTERN = {(0, "conv"): 1.0, (1, "conv"): 0.25, (2, "conv"): 0.625, (3, "conv"): 0.625, (4, "conv"): 0.5}


def test_stage_pattern_of_hand_made_architectures():
    assert stage_pattern(VGG11.arch(VGG_SOURCE)) == pytest.approx(VGG_PATTERN)
    resnet = load_space("resnet20-fashionmnist")  # streams 8/16/32; block layer1.1 removed
    source = resnet.arch([8, 4, 0, 2, 16, 12, 8, 4, 32, 32, 16, 16])
    assert slot_roles(source)[:2] == ["stream", "conv"]
    assert stage_pattern(source) == pytest.approx({
        (0, "conv"): (0.5 + 0.25) / 2, (0, "stream"): 1.0, (1, "conv"): (1 + 0.5 + 0.25) / 3, (1, "stream"): 0.75,
        (2, "conv"): (1 + 0.5 + 0.5) / 3, (2, "stream"): 1.0})
    mlp = load_space("vgg16-cifar10").preset("A")  # the hidden FC layer is its own role
    assert stage_pattern(mlp)[5, "fc"] == 1.0 and stage_pattern(mlp)[0, "conv"] == 0.75


def test_target_slots_take_the_same_role_at_the_nearest_stage():
    tiny = load_space("tiny-synthetic").base  # stem (stage 0, conv), stream (1, stream), inners (1, conv)
    shape, used = pattern_shape({(0, "conv"): 0.5, (2, "conv"): 0.8, (1, "stream"): 0.9}, tiny)
    assert shape == [0.5, 0.9, 0.5, 0.5]  # stage 1 conv: stages 0 and 2 are equally near, the lower wins
    assert used == {"stage0.conv": "stage0.conv", "stage1.stream": "stage1.stream", "stage1.conv": "stage0.conv"}
    shape, used = pattern_shape({(0, "conv"): 0.5, (1, "conv"): 0.7}, tiny)
    assert shape[1] == pytest.approx(0.6) and used["stage1.stream"] == "overall mean"  # a role the source lacks


@pytest.mark.parametrize("form", ["architecture", "proposal"])
def test_guided_follows_the_stage_pattern_and_meets_the_target(tmp_path, form):
    source = VGG11.arch(VGG_SOURCE)
    if form == "architecture":
        path = source.save(tmp_path / "source.json")
    else:
        proposal = propose("guided", VGG11, Target(), None, {"source": str(source.save(tmp_path / "a.json"))})
        path = proposal.save(tmp_path / "proposal.json")
        assert proposal.arch.widths == (16, 8, 40, 40, 80, 80, 64, 64)  # no target: the pattern's own widths
    target = Target(ratio=0.4)
    guided = propose("guided", VGG11, target, None, {"source": str(path)})
    macs, goal = count(guided.arch).macs, target.absolute(VGG11)
    assert 0.97 * goal <= macs <= 1.01 * goal
    pattern = [VGG_PATTERN[s.stage, "conv"] for s in VGG11.slots]
    m = guided.provenance["multiplier"]  # one multiplier for every slot, widths clamped to the base
    assert all(abs(w - min(b, m * b * p)) <= 1 for w, b, p in zip(guided.arch.widths, VGG11.upper, pattern))
    assert guided.arch.widths[0] == 16 and guided.arch.widths[1] < 16  # stage 0 kept all, stage 1 a quarter
    assert guided.kept is None and guided.provenance["source_pattern"]["stage1.conv"] == 0.25


def test_transferred_from_vgg16_cifar10_to_vgg19_cifar100():
    """The paper's transfer: the pattern of VGG-16-A on CIFAR-10 designs VGG-19 for CIFAR-100."""
    space = load_space("vgg19-cifar100")
    proposal = propose("transferred", space, Target(ratio=0.5), None, {"source": "vgg16-cifar10:A"})
    widths = proposal.arch.widths  # VGG-19: 2, 2, 4, 4, 4 convs per stage
    assert widths[0] == widths[1] and len(set(widths[4:8])) == 1 and len(set(widths[8:])) == 1
    assert widths[8] / 512 == pytest.approx(0.5 * widths[4] / 256, abs=0.01)  # stage 3 keeps half of stage 2's ratio
    assert widths[0] / 64 == pytest.approx(0.75 * widths[2] / 128, abs=0.02)
    assert proposal.provenance["stage_match"]["stage4.conv"] == "stage4.conv"
    assert count(proposal.arch).macs <= 1.01 * Target(ratio=0.5).absolute(space)
    shallower = propose("transferred", load_space("resnet56-cifar10"), Target(ratio=0.6), None,
                        {"source": "resnet110-cifar10:B"})  # another depth of the family
    assert shallower.provenance["source_pattern"]["stage0.stream"] == 1.0
    assert count(shallower.arch).macs <= 1.01 * Target(ratio=0.6).absolute(load_space("resnet56-cifar10"))


def test_source_and_target_errors(tmp_path):
    vgg16 = load_space("vgg16-cifar10")
    with pytest.raises(ProposerError, match="give the source architecture"):
        propose("guided", vgg16, Target(ratio=0.5), None)
    with pytest.raises(ProposerError, match="needs a source of the same network .* use 'transferred'"):
        propose("guided", load_space("vgg19-cifar10"), Target(ratio=0.5), None, {"source": "vgg16-cifar10:A"})
    with pytest.raises(ProposerError, match="needs a source of family 'resnet_cifar'"):
        propose("transferred", load_space("resnet56-cifar10"), Target(ratio=0.5), None, {"source": "vgg16-cifar10:A"})
    with pytest.raises(ProposerError, match="has no preset 'Z'"):
        propose("guided", vgg16, Target(ratio=0.5), None, {"source": "vgg16-cifar10:Z"})
    with pytest.raises(ProposerError, match="neither a file nor SPACE:PRESET"):
        propose("guided", vgg16, Target(ratio=0.5), None, {"source": str(tmp_path / "missing")})
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ProposerError, match="not valid JSON"):
        propose("guided", vgg16, Target(ratio=0.5), None, {"source": str(tmp_path / "bad.json")})
    with pytest.raises(ProposerError, match="has no presets"):
        propose("guided", vgg16, Target(preset="A"), None, {"source": "vgg16-cifar10:A"})
    tiny = load_space("tiny-synthetic")
    masked = write_masks(tiny.base, {"stem.0": torch.rand(8, 3, 3, 3) > 0.5}, tmp_path)
    with pytest.raises(ProposerError, match="guided sparsification .* is not offered"):
        propose("guided", tiny, Target(ratio=0.5), None, {"source": str(masked.save(tmp_path / "masked.json"))})


def test_guided_and_transferred_cli(tmp_path):
    cmd = [sys.executable, "-m", "prunenas", "propose", "transferred", "vgg19-cifar100", "--ratio", "0.5",
           "--param", "source=vgg16-cifar10:A", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["method"] == "transferred" and out["provenance"]["achieved_macs_ratio"] <= 0.505
    source = Architecture.create("vgg", VGG_SOURCE, VGG11.options, VGG11.input_shape, VGG11.num_classes)
    path = source.save(tmp_path / "source.json")
    cmd = [sys.executable, "-m", "prunenas", "propose", "guided", "vgg11-fashionmnist", "--ratio", "0.4", "--param",
           f"source={path}", "--out", str(tmp_path / "guided.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "guided on vgg11-fashionmnist" in proc.stdout and (tmp_path / "guided.json").exists()
    cmd = [sys.executable, "-m", "prunenas", "propose", "guided", "vgg11-fashionmnist", "--ratio", "0.4"]
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode == 2 and "give the source architecture" in bad.stderr
