"""The analytic counter: closed forms, golden published counts, torchvision parity, full-size spaces."""

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from prunenas.arch import Architecture
from prunenas.cost import count, thop_macs
from prunenas.spaces import load_space, space_names

# Exact parameter counts: torchvision's model cards, akamaster's CIFAR ResNets (option A), and the seed's
# L1-norm presets (Li et al. 2017: VGG-16-A 5.4M, ResNet-56-B 0.73M, ResNet-110-B 1.16M; seed_repo.md §3).
GOLDEN_PARAMS = {
    ("resnet18-imagenet", None): 11_689_512,
    ("resnet34-imagenet", None): 21_797_672,
    ("resnet50-imagenet", None): 25_557_032,
    ("resnet20-cifar10", None): 269_722,
    ("resnet56-cifar10", None): 853_018,
    ("resnet110-cifar10", None): 1_727_962,
    ("vgg16-cifar10", None): 14_987_722,  # seed table: 14.99M
    ("vgg19-cifar10", None): 20_035_018,  # Network Slimming: 20.04M
    ("preresnet164-cifar10", None): 1_703_258,  # Network Slimming: 1.70M
    ("vgg16-cifar10", "A"): 5_397_034,  # 5.40M
    ("resnet56-cifar10", "A"): 773_336,  # 0.773M
    ("resnet56-cifar10", "B"): 735_712,  # 0.736M
    ("resnet110-cifar10", "A"): 1_688_522,  # 1.689M
    ("resnet110-cifar10", "B"): 1_168_424,  # 1.168M
    ("resnet34-imagenet", "A"): 20_151_764,  # 20.15M
    ("resnet34-imagenet", "B"): 19_469_372,  # 19.47M
}
# torchvision's model cards list these conv+linear GMACs ("GFLOPS"): 1.81, 3.66, 4.09.
GOLDEN_MACS = {"resnet18-imagenet": 1_814_073_344, "resnet34-imagenet": 3_663_761_408,
               "resnet50-imagenet": 4_089_184_256}


@pytest.mark.parametrize(("space", "preset"), list(GOLDEN_PARAMS), ids=lambda v: str(v))
def test_golden_parameter_counts(space, preset):
    s = load_space(space)
    arch = s.preset(preset) if preset else s.base
    assert count(arch).params == GOLDEN_PARAMS[space, preset]


@pytest.mark.parametrize("space", list(GOLDEN_MACS))
def test_golden_macs(space):
    assert count(load_space(space).base).macs == GOLDEN_MACS[space]


def test_closed_form_for_a_tiny_network():
    # stem 3->8 3x3 at 16x16, down 8->16 3x3 stride 2 -> 8x8, two blocks 16->8->16 at 8x8, fc 16->4
    arch = Architecture.create("tiny", None, {}, (3, 16, 16), 4)
    convs = 3 * 8 * 9 * 256 + 8 * 16 * 9 * 64 + 2 * (16 * 8 * 9 * 64 + 8 * 16 * 9 * 64)
    assert count(arch).macs == convs + 16 * 4
    params = 3 * 8 * 9 + 8 * 16 * 9 + 2 * (16 * 8 * 9 * 2) + 2 * (8 + 16 + 2 * (8 + 16)) + 16 * 4 + 4
    assert count(arch).params == params
    assert count(arch).flops == 2 * count(arch).macs


def test_removed_block_costs_nothing():
    arch = Architecture.create("tiny", None, {}, (3, 16, 16), 4)
    removed = arch.with_widths([8, 16, 0, 8])
    assert count(arch).macs - count(removed).macs == 16 * 8 * 9 * 64 * 2


TORCHVISION = [
    ("resnet", {"depth": 18}, torchvision.models.resnet18),
    ("resnet", {"depth": 34}, torchvision.models.resnet34),
    ("resnet", {"depth": 50}, torchvision.models.resnet50),
    ("mobilenetv2", {}, torchvision.models.mobilenet_v2),
    ("vgg", {"depth": 11, "head": "imagenet", "conv_bias": True}, torchvision.models.vgg11_bn),
    ("vgg", {"depth": 16, "head": "imagenet", "conv_bias": True, "batch_norm": False}, torchvision.models.vgg16),
]


@pytest.mark.parametrize(("family", "options", "factory"), TORCHVISION, ids=lambda v: getattr(v, "__name__", ""))
def test_base_networks_equal_torchvision(family, options, factory):
    """Same parameter count, same MACs at 224x224, and torchvision's weights load and give the same outputs."""
    ours_arch = Architecture.create(family, None, options, (3, 224, 224), 1000)
    theirs = factory().eval()
    ours = ours_arch.build().eval()
    ours.load_state_dict(theirs.state_dict())
    assert count(ours_arch).params == sum(p.numel() for p in theirs.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        theirs(torch.zeros(1, 3, 224, 224))
    assert count(ours_arch).macs == counter.get_total_flops() // 2
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_mobilenetv2_imagenet_space_equals_torchvision():
    """The built-in space's base network is torchvision's mobilenet_v2: its card (3,504,872 params, 300.77 M
    MACs), its counted params and FlopCounterMode MACs, and its state dict loads strictly."""
    arch = load_space("mobilenetv2-imagenet").base
    theirs = torchvision.models.mobilenet_v2().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        theirs(torch.zeros(1, 3, 224, 224))
    cost = count(arch)
    assert (cost.params, cost.macs) == (sum(p.numel() for p in theirs.parameters()), counter.get_total_flops() // 2)
    assert (cost.params, round(cost.macs / 1e6, 2)) == (3_504_872, 300.77)
    arch.build().load_state_dict(theirs.state_dict())


@pytest.mark.parametrize("space", space_names())
def test_every_space_counts_equal_to_thop(space):
    """thop hooks modules, so it never counts attention's products between activations (family product_macs)."""
    arch = load_space(space).base
    assert count(arch).macs - arch.family_obj.product_macs(arch) == thop_macs(arch, count_norm=False)
