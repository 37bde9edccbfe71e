"""Presets of the papers that Proposers II reproduce (reference/seed_repo.md §2.2, §2.3, §3): ThiNet on
ResNet-50 and VGG-16, channel pruning's VGG-16-5x; the keep-ratios rule."""

import json

import pytest

from prunenas.arch import Architecture
from prunenas.budget import scratch_epochs
from prunenas.cli.main import main
from prunenas.cost import count
from prunenas.errors import SpaceError
from prunenas.recipes import RECIPES
from prunenas.spaces import load_space, space_from_dict

# Exact counts; the seed table (§3) gives 8.67M / 12.39M / 16.95M for ThiNet-30/50/70 (its ResNet-50 has biased
# downsample convs), 131.5M / 8.32M / 1.33M for ThiNet-Conv/GAP/Tiny, 130.9M for VGG-16-5x, 138.4M for VGG-16.
PARAMS = {
    ("resnet50-imagenet", "ThiNet-30"): 8_665_318,
    ("resnet50-imagenet", "ThiNet-50"): 12_381_864,
    ("resnet50-imagenet", "ThiNet-70"): 16_945_246,
    ("vgg16-imagenet", None): 138_357_544,
    ("vgg16-imagenet", "ThiNet-Conv"): 131_452_552,
    ("vgg16-imagenet", "VGG-16-5x"): 130_879_294,
    ("vgg16gap-imagenet", "ThiNet-GAP"): 8_322_696,
    ("vgg16gap-imagenet", "ThiNet-Tiny"): 1_325_368,
}
SEED_MILLIONS = {"ThiNet-30": 8.67, "ThiNet-50": 12.39, "ThiNet-70": 16.95}


@pytest.mark.parametrize(("space", "preset"), list(PARAMS), ids=str)
def test_preset_parameter_counts(space, preset):
    s = load_space(space)
    assert count(s.preset(preset) if preset else s.base).params == PARAMS[space, preset]


@pytest.mark.parametrize(("preset", "inner"), [("ThiNet-30", [19, 38, 76, 153]), ("ThiNet-50", [32, 64, 128, 256]),
                                               ("ThiNet-70", [44, 89, 179, 358])])
def test_thinet_resnet50_presets(preset, inner):
    space = load_space("resnet50-imagenet")
    arch = space.preset(preset)
    for slot, width in zip(arch.slots, arch.widths):
        expected = inner[slot.stage] if ".inner" in slot.name else slot.base  # stem and streams untouched
        assert width == expected, slot.name
    # with the seed's biased downsample convs, the parameter count rounds to the seed table's
    seed_model = Architecture.create("resnet", arch.widths, {"depth": 50, "downsample_bias": True},
                                     arch.input_shape, arch.num_classes)
    assert round(count(seed_model).params / 1e6, 2) == SEED_MILLIONS[preset]


def test_thinet_and_regression_vgg16_presets_match_the_seed_cfgs():
    assert load_space("vgg16-imagenet").preset("ThiNet-Conv").widths == (
        32, 32, 64, 64, 128, 128, 128, 256, 256, 256, 512, 512, 512, 4096, 4096)
    assert load_space("vgg16gap-imagenet").preset("ThiNet-Tiny").widths == (
        16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 256)
    assert load_space("vgg16-imagenet").preset("VGG-16-5x").widths[:13] == (
        24, 22, 41, 51, 108, 89, 111, 184, 276, 228, 512, 512, 512)


@pytest.mark.parametrize(("space", "preset", "epochs"), [
    ("resnet50-imagenet", "ThiNet-70", 141),  # the seed README's 141 epochs
    ("resnet50-imagenet", "ThiNet-30", 180), ("vgg16-imagenet", "VGG-16-5x", 180),  # the 2x cap
])
def test_scratch_b_epochs_of_the_presets(space, preset, epochs):
    s, recipe = load_space(space), RECIPES.get("imagenet-paper")
    schedule = scratch_epochs("B", recipe.epochs, count(s.base).macs, count(s.preset(preset)).macs, s.scratch_b_cap,
                              recipe.milestones)
    assert schedule.epochs == epochs


def test_info_shows_a_thinet_preset(capsys):
    assert main(["info", "resnet50-imagenet", "--preset", "ThiNet-30", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == PARAMS["resnet50-imagenet", "ThiNet-30"]
    assert [s["width"] for s in info["slots"] if s["name"].startswith("layer4.2.inner")] == [153, 153]


@pytest.mark.parametrize(("spec", "message"), [
    ({"rule": "keep-ratios"}, "needs 'ratios'"),
    ({"rule": "keep-ratios", "ratios": {"conv*": 1.5}}, r"must be in \(0, 1\]"),
    ({"rule": "keep-ratios", "ratios": {"layer*": 0.5}}, "pattern 'layer\\*' matches no slot"),
    ({"rule": "keep-ratios", "ratios": {"conv1": 0.5}, "keep": 1}, "has no key 'keep'"),
])
def test_keep_ratios_rule_errors(spec, message):
    data = {"family": "vgg", "options": {"depth": 11, "width_mult": 0.25}, "input_shape": [1, 32, 32],
            "num_classes": 10, "presets": {"P": spec}}
    with pytest.raises(SpaceError, match=message):
        space_from_dict("bad", data)


def test_keep_ratios_first_matching_pattern_wins_and_truncates():
    data = {"family": "vgg", "options": {"depth": 11, "width_mult": 0.25}, "input_shape": [1, 32, 32],
            "num_classes": 10, "presets": {"P": {"rule": "keep-ratios", "ratios": {"conv8": 0.9, "conv*": 0.3}}}}
    space = space_from_dict("ok", data)
    assert space.preset("P").widths == (4, 9, 19, 19, 38, 38, 38, 115)  # int(16 * 0.3) = 4, int(128 * 0.9) = 115
