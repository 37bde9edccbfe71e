import subprocess
import sys
import zipfile

import pytest

from prunenas.errors import SpaceError
from prunenas.spaces import load_space, space_names, spaces_dir

REQUIRED = ["vgg16-cifar10", "vgg19-cifar10", "vgg19-cifar100", "resnet20-cifar10", "resnet56-cifar10",
            "resnet110-cifar10", "preresnet164-cifar10", "densenet40-cifar10", "resnet18-imagenet",
            "resnet34-imagenet", "resnet50-imagenet", "mobilenetv2-cifar10", "vgg11-fashionmnist",
            "resnet20-fashionmnist", "tiny-synthetic", "vgg16-imagenet", "vgg16gap-imagenet", "vit-tiny-fashionmnist",
            "deit-tiny-imagenet", "deit-small-imagenet", "vit-b16-imagenet"]


def test_required_spaces_exist():
    assert set(REQUIRED) <= set(space_names())


@pytest.mark.parametrize("name", space_names())
def test_space_loads_with_valid_bounds(name):
    space = load_space(name)
    assert space.name == name and len(space.lower) == len(space.upper) == len(space.slots)
    assert all(1 <= lo <= hi for lo, hi in zip(space.lower, space.upper))
    for preset in space.presets:
        assert space.preset(preset).widths != space.base.widths


def test_presets_computed_from_the_seed_rules():
    # reference/seed_repo.md §2.1 cfgs
    r56a = load_space("resnet56-cifar10").preset("A")
    inner = [w for s, w in zip(r56a.slots, r56a.widths) if not s.tied]
    assert inner == [14] * 7 + [16, 14] + [32] + [28] * 8 + [64] + [57] * 7 + [64]
    r110b = load_space("resnet110-cifar10").preset("B")
    inner = [w for s, w in zip(r110b.slots, r110b.widths) if not s.tied]
    assert inner == [8] * 17 + [16] + [32] + [19] * 17 + [64] + [44] * 17
    r34b = load_space("resnet34-imagenet").preset("B")
    inner = [w for s, w in zip(r34b.slots, r34b.widths) if not s.tied]
    assert inner == [64, 32, 32, 128, 51, 51, 128, 256, 153, 153, 153, 153, 256, 512, 512, 512]
    vgg = load_space("vgg16-cifar10").preset("A")
    assert list(vgg.widths[:13]) == [32, 64, 128, 128, 256, 256, 256, 256, 256, 256, 256, 256, 256]


def test_fashionmnist_spaces_are_cpu_sized():
    from prunenas.cost import count

    assert 5e6 < count(load_space("vgg11-fashionmnist").base).macs < 15e6
    assert load_space("vgg11-fashionmnist").input_shape == (1, 32, 32)


def test_unknown_space_lists_the_builtins():
    with pytest.raises(SpaceError, match="unknown space 'nope'; built-in spaces: deit-small-imagenet, deit-tiny"):
        load_space("nope")


@pytest.mark.parametrize(("text", "message"), [
    ("family: tiny\ninput_shape: [3, 8, 8]\nnum_classes: 2\ncolour: red\n", "unknown key 'colour'"),
    ("family: tiny\nnum_classes: 2\n", "missing key 'input_shape'"),
    ("family: tiny\ninput_shape: [3, 8, 8]\nnum_classes: 2\nmultiple_of: 0\n", "multiple_of 0"),
    ("family: nope\ninput_shape: [3, 8, 8]\nnum_classes: 2\n", "unknown family 'nope'"),
    ("family: tiny\ninput_shape: [3, 8, 8]\nnum_classes: 2\npresets: {A: {rule: magic}}\n",
     "unknown preset rule 'magic'"),
    ("[1, 2", "is not valid YAML"),
])
def test_bad_space_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=message):
        load_space(path)


def test_spaces_are_shipped_inside_the_wheel(tmp_path):
    """search_spaces/ is data installed with the package, also by non-editable installs."""
    root = spaces_dir().parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(root)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("prunenas-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"prunenas/search_spaces/{n}.yaml" for n in REQUIRED} <= set(names)
