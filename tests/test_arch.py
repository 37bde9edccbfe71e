import json

import pytest
import torch
from safetensors.torch import save_file

from prunenas.arch import Architecture, MaskRef, from_dict, load_architecture
from prunenas.errors import ArchitectureError
from prunenas.fileio import file_sha256

from .conftest import FAMILY_CASES, case_id, make_arch


@pytest.mark.parametrize("case", FAMILY_CASES, ids=[case_id(c) for c in FAMILY_CASES])
def test_json_round_trip_rebuilds_the_same_network(case, tmp_path):
    arch = make_arch(case)
    path = arch.save(tmp_path / "arch.json")
    again = load_architecture(path)
    assert again == arch and again.digest() == arch.digest()
    torch.manual_seed(0)
    a = arch.build().state_dict()
    torch.manual_seed(0)
    b = again.build().state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_digest_is_stable_and_sensitive_to_every_field():
    arch = Architecture.create("resnet_cifar", None, {"depth": 20}, (3, 32, 32), 10)
    assert arch.digest() == Architecture.create("resnet_cifar", None, {"depth": 20}).digest()
    assert len(arch.digest()) == 16
    changed = [
        arch.with_widths([arch.widths[0]] + [arch.widths[1] - 1] + list(arch.widths[2:])),
        Architecture.create("resnet_cifar", None, {"depth": 20, "shortcut": "B"}),
        Architecture.create("resnet_cifar", None, {"depth": 32}),
        Architecture.create("resnet_cifar", None, {"depth": 20}, (1, 32, 32), 10),
        Architecture.create("resnet_cifar", None, {"depth": 20}, (3, 32, 32), 100),
        Architecture.create("vgg", None, {"depth": 11}),
    ]
    digests = {c.digest() for c in changed}
    assert arch.digest() not in digests and len(digests) == len(changed)


def test_defaults_are_normalised_into_the_options():
    a = Architecture.create("resnet_cifar", None, {"depth": 56})
    b = Architecture.create("resnet_cifar", None, {"depth": 56, "shortcut": "A", "width_mult": 1})
    assert a == b and a.opts["shortcut"] == "A"


BAD = [
    ({"family": "nope", "widths": []}, "unknown family 'nope'; choose one of: densenet"),
    ({"family": "tiny", "widths": [8, 16, 8]}, "has 4 width slots, got 3 widths"),
    ({"family": "tiny", "widths": [0, 16, 8, 8]}, "width 0 (slot 'stem') is 0; allowed 1..8"),
    ({"family": "tiny", "widths": [-3, 16, 8, 8]}, "is -3; allowed 1..8"),
    ({"family": "tiny", "widths": [9, 16, 8, 8]}, "is 9, above its bound 8"),
    ({"family": "tiny", "widths": [8, 16, 8.5, 8]}, "widths are integers"),
    ({"family": "tiny", "widths": [8, 16, -1, 8]}, "allowed 0 (block removed) or 1..8"),
    ({"family": "tiny", "widths": [8, 16, 8, 8], "options": {"depth": 3}}, "has no option 'depth'"),
    ({"family": "resnet_cifar", "widths": [], "options": {"depth": 21}}, "depth 21 is not 6n+2"),
    ({"family": "resnet_cifar", "widths": [], "options": {"shortcut": "C"}}, "'C' not in {A, B}"),
    ({"family": "vgg", "widths": [], "options": {"depth": "16"}}, "'16' is not a int"),
    ({"family": "tiny", "widths": [8, 16, 8, 8], "input_shape": [3, 16]}, "must be 3 positive integers"),
    ({"family": "tiny", "widths": [8, 16, 8, 8], "num_classes": 0}, "num_classes 0"),
    ({"family": "tiny", "widths": [8, 16, 8, 8], "colour": "red"}, "unknown key 'colour'"),
    ({"widths": [8]}, "missing key 'family'"),
    ({"family": "tiny", "widths": "8,16"}, "widths must be a list"),
    ([1, 2], "is a JSON object"),
]


@pytest.mark.parametrize(("data", "message"), BAD, ids=[m for _, m in BAD])
def test_invalid_architectures_are_rejected_precisely(data, message):
    with pytest.raises(ArchitectureError) as err:
        from_dict(data)
    assert message in str(err.value)


def test_option_a_stage_widths_must_not_decrease():
    base = Architecture.create("resnet_cifar", None, {"depth": 20})
    widths = list(base.widths)
    stream2 = next(i for i, s in enumerate(base.slots) if s.name == "stage2.stream")
    widths[stream2] = 8  # below stage 1's 16
    with pytest.raises(ArchitectureError, match="must not decrease"):
        base.with_widths(widths)
    Architecture.create("resnet_cifar", widths, {"depth": 20, "shortcut": "B"})  # projection: allowed


def test_removable_block_goes_to_zero_as_a_unit():
    base = Architecture.create("resnet", None, {"depth": 50, "width_mult": 0.25}, (3, 64, 64), 10)
    first = next(i for i, s in enumerate(base.slots) if s.removable)
    widths = list(base.widths)
    widths[first] = 0
    with pytest.raises(ArchitectureError, match="a block is removed only with all its inner widths 0"):
        base.with_widths(widths)
    widths[first + 1] = 0
    assert base.with_widths(widths).build()(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_malformed_json_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ArchitectureError, match="is not valid JSON"):
        load_architecture(path)
    with pytest.raises(ArchitectureError, match="cannot read architecture file"):
        load_architecture(tmp_path / "missing.json")


def _masked(tmp_path, shape_fix=None):
    base = Architecture.create("tiny", None, {"blocks": 1}, (3, 8, 8), 2)
    model = base.build()
    mask = (torch.rand_like(model.get_submodule("down.0").weight) > 0.5).to(torch.uint8)
    if shape_fix:
        mask = mask[:shape_fix]
    path = tmp_path / "arch.masks.safetensors"
    save_file({"down.0": mask}, str(path))
    return base, MaskRef(str(path), file_sha256(path)), mask


def test_masks_enter_digest_json_and_build(tmp_path):
    base, ref, mask = _masked(tmp_path)
    arch = Architecture.create("tiny", None, {"blocks": 1}, (3, 8, 8), 2, ref)
    assert arch.digest() != base.digest()
    again = load_architecture(arch.save(tmp_path / "arch.json"))
    assert again.digest() == arch.digest()
    assert json.loads((tmp_path / "arch.json").read_text())["masks"]["file"] == "arch.masks.safetensors"
    weight = again.build().get_submodule("down.0").weight
    assert torch.equal(weight != 0, mask.bool() & (weight != 0)) and (weight[~mask.bool()] == 0).all()


def test_masks_of_wrong_shape_are_rejected(tmp_path):
    _, ref, _ = _masked(tmp_path, shape_fix=3)
    with pytest.raises(ArchitectureError, match=r"mask for 'down.0' has shape \[3, 8, 3, 3\], the weight has"):
        Architecture.create("tiny", None, {"blocks": 1}, (3, 8, 8), 2, ref)
