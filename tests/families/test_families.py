"""Contract tests over every family and option variant: shapes, gradients, channel counts, counting."""

import random

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunenas.cost import count, thop_macs
from prunenas.families import FAMILIES

from ..conftest import FAMILY_CASES, case_id, make_arch, random_arch

CASES = pytest.mark.parametrize("case", FAMILY_CASES, ids=[case_id(c) for c in FAMILY_CASES])


def variants(case):
    """The base architecture and two random pruned ones (some with removed blocks)."""
    base = make_arch(case)
    rng = random.Random(case_id(case))
    return [base, random_arch(base, rng), random_arch(base, rng, remove_prob=0.9)]


def flop_counter_macs(model, shape):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


def test_every_family_has_a_case():
    assert {c[0] for c in FAMILY_CASES} == set(FAMILIES)


@CASES
def test_forward_shape_and_every_parameter_gets_a_gradient(case):
    for arch in variants(case):
        model = arch.build().train()
        out = model(torch.randn(2, *arch.input_shape))
        assert out.shape == (2, arch.num_classes)
        out.square().mean().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


@CASES
def test_built_modules_match_the_layer_list(case):
    for arch in variants(case):
        model = arch.build()
        described = {layer.name: layer for layer in arch.layers}
        built = {n for n, m in model.named_modules()
                 if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm))}
        modules = {name for name, layer in described.items() if layer.kind != "embedding"}
        assert built == modules, "modules not described (or described but not built)"
        for name, layer in described.items():
            module = model.get_submodule(name)
            assert tuple(module.weight.shape) == layer.weight_shape, name
            if layer.kind == "conv":
                assert (module.in_channels, module.out_channels, module.kernel_size[0], module.stride[0],
                        module.groups, module.bias is not None) == (
                    layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.groups, layer.bias)
            elif layer.kind == "linear":
                assert (module.in_features, module.out_features) == (layer.in_channels, layer.out_channels)
                assert (module.bias is not None) == layer.bias
            elif layer.kind == "bn":
                assert module.num_features == layer.out_channels


@CASES
def test_built_channel_counts_equal_the_widths(case):
    for arch in variants(case):
        for slot, width in enumerate(arch.widths):
            producers = [layer for layer in arch.layers if layer.output == slot]
            assert all(layer.slot_channels == width for layer in producers)
            assert all(layer.out_channels == width * layer.out_parts * layer.out_repeat for layer in producers)
            assert producers or width == 0, f"slot {arch.slots[slot].name} has no producer"
            for layer in arch.layers:
                if slot in layer.inputs and layer.kind != "linear":
                    offset = sum(arch.widths[s] for s in layer.inputs)
                    assert layer.in_channels == offset


@CASES
def test_counter_equals_flop_counter_mode_and_thop(case):
    for arch in variants(case):
        cost = count(arch)
        model = arch.build()
        assert cost.params == sum(p.numel() for p in model.parameters())
        assert cost.macs == flop_counter_macs(model, arch.input_shape)
        # thop hooks modules: it cannot see attention's products between activations
        without_products = cost.macs - arch.family_obj.product_macs(arch)
        assert without_products == thop_macs(arch, count_norm=False)
        assert thop_macs(arch, count_norm=True) > without_products  # thop's default adds norm "ops"


@CASES
def test_same_seed_same_weights(case):
    arch = make_arch(case)
    torch.manual_seed(3)
    a = arch.build().state_dict()
    torch.manual_seed(3)
    b = arch.build().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
