"""The traced family: model references traced by torch.fx, checked against independent references.

* function preservation: zeroing the dropped channels of the original network gives the outputs of the
  resized network with inherited weights (a wrong dependency pass breaks this);
* the hand-written families: tracing their modules gives the same slots, MACs and params;
* torchvision: params and MACs equal torchvision's model cards and ``FlopCounterMode / 2``.
"""

import json
import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from prunenas.arch import Architecture, from_dict
from prunenas.cost import count
from prunenas.errors import ArchitectureError, PrunenasError
from prunenas.families.tracing import analyse
from prunenas.proposers import Target, propose
from prunenas.proposers.basemodel import StaticProvider, base_model_from
from prunenas.proposers.channels import inherit, zero_channels
from prunenas.references import coverage
from prunenas.spaces import traced_space
from tests.conftest import FAMILY_CASES, case_id, random_arch

USER = "tests.traced_models:user_net"
SMALL = (3, 32, 32)  # forward/backward of the torchvision models; their MACs are counted at 224x224
TORCHVISION = ["resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
               "regnet_x_400mf", "densenet121", "convnext_tiny"]


def flop_counter_macs(arch: Architecture) -> tuple[int, int]:
    """MACs (FlopCounterMode / 2) and params of ``arch``'s network, built and run on the meta device."""
    with torch.device("meta"):
        model = arch.build().eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.empty(1, *arch.input_shape))
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters())


def randomise_norms(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so a wrongly zeroed channel shows."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def half_kept(base: Architecture, skip=(), seed: int = 0) -> dict[int, tuple[int, ...]]:
    rng = random.Random(seed)
    return {s: tuple(sorted(rng.sample(range(w), max(1, w // 2)))) for s, w in enumerate(base.widths)
            if s not in skip}


def zeroed_and_pruned(base: Architecture, kept: dict, shape, inherited: dict | None = None):
    """Outputs of the base network with the dropped channels zeroed, and of the pruned network that inherits
    the ``inherited`` channels (default: the kept ones)."""
    torch.manual_seed(0)
    model = base.build().eval()
    randomise_norms(model)
    arch = base.with_widths([len(kept[s]) if s in kept else w for s, w in enumerate(base.widths)])
    pruned = inherit(base, model.state_dict(), arch, inherited or kept).eval()
    zero_channels(model, base, {s: sorted(set(range(base.widths[s])) - set(k)) for s, k in kept.items()})
    x = torch.randn(2, *shape)
    with torch.no_grad():
        return model(x), pruned(x)


# -- a user's own module ----------------------------------------------------------------------------------
def test_user_module_slots_follow_residual_concat_and_gate():
    space = traced_space(USER, (3, 16, 16))
    producers = sorted(sorted(layer.name for layer in space.base.layers if layer.output == s)
                       for s in range(len(space.base.widths)))
    assert producers == sorted([
        ["res.3", "stem.0"],            # the residual add ties the stem and the block's last conv
        ["res.0"],
        ["left"],                       # concatenated with right.0: two slots, offsets in norm and mix
        ["right.0"],
        ["mix", "se.fc2"],              # the squeeze-excitation gate ties its expansion to the gated channels
        ["se.fc1"],
    ])
    assert space.num_classes == 10 and space.base.opts["graph"]
    head = next(layer for layer in space.base.layers if layer.name == "head")
    assert head.output is None and head.in_repeat == 16  # flatten of 4x4 positions; the output is fixed


def test_user_module_costs_equal_flop_counter_at_random_widths():
    base = traced_space(USER, (3, 16, 16)).base
    rng = random.Random(1)
    for _ in range(5):
        arch = random_arch(base, rng)
        assert (count(arch).macs, count(arch).params) == flop_counter_macs(arch)


def test_user_module_function_preserved_and_a_wrong_channel_map_is_caught():
    base = traced_space(USER, (3, 16, 16)).base
    kept = half_kept(base)
    zeroed, pruned = zeroed_and_pruned(base, kept, (3, 16, 16))
    assert torch.allclose(zeroed, pruned, atol=1e-5)
    stem = next(s for s, slot in enumerate(base.slots) if slot.name == "stem.0")
    dropped = tuple(sorted(set(range(base.widths[stem])) - set(kept[stem])))
    wrong = {**kept, stem: dropped[:len(kept[stem])]}  # inherit the channels that were zeroed instead
    zeroed, pruned = zeroed_and_pruned(base, kept, (3, 16, 16), inherited=wrong)
    assert not torch.allclose(zeroed, pruned, atol=1e-3)


@pytest.mark.parametrize("method", ["uniform", "random", "l1-norm"])
def test_proposers_run_on_a_user_module(method):
    space = traced_space(USER, (3, 16, 16))
    provider = StaticProvider(space, {None: base_model_from(space.base.build(), space.base)})
    proposal = propose(method, space, Target(ratio=0.5), provider, seed=0)
    assert abs(count(proposal.arch).macs / count(space.base).macs - 0.5) < 0.05  # 6 slots: coarse steps
    assert proposal.arch.build()(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_block_removal_says_it_does_not_apply():
    space = traced_space(USER, (3, 16, 16))
    provider = StaticProvider(space, {None: base_model_from(space.base.build(), space.base)})
    with pytest.raises(PrunenasError, match="removable"):
        propose("sss", space, Target(ratio=0.5), provider, seed=0)


def test_architecture_round_trips_and_the_digest_pins_the_graph():
    base = traced_space(USER, (3, 16, 16)).base
    arch = base.with_widths([max(1, w - 1) for w in base.widths])
    again = from_dict(json.loads(json.dumps(arch.to_dict())))
    assert again == arch and again.digest() == arch.digest()
    other = dict(arch.to_dict(), options={**arch.opts, "graph": "0" * 16})
    with pytest.raises(ArchitectureError, match="now traces to graph"):
        from_dict(other)


def test_frozen_channels_are_listed_with_node_and_op():
    space = traced_space("tests.traced_models:shuffle", (3, 12, 12))
    reasons = [reason for name, _, reason in coverage(space.base).frozen if name == "a"]
    assert len(reasons) == 1 and "view" in reasons[0] and "reshape" in reasons[0]
    assert [slot.name for slot in space.base.slots] == ["b"]  # b's channels stay searchable


# -- the hand-written families ----------------------------------------------------------------------------
# the vit family is left out: the traced family refuses attention (products between activations it cannot describe)
@pytest.mark.parametrize("case", [c for c in FAMILY_CASES if c[0] not in ("traced", "vit")], ids=case_id)
def test_tracing_a_family_module_gives_its_slots_macs_and_params(case):
    family, options, shape, classes = case
    native = Architecture.create(family, None, options, shape, classes)
    query = "&".join(f"{k}={v}" for k, v in {"family": family, "channels": shape[0], "classes": classes,
                                               **options}.items())
    traced = traced_space(f"tests.traced_models:family_net?{query}", shape).base
    by_producers = {frozenset(layer.name for layer in traced.layers if layer.output == s): s
                    for s in range(len(traced.widths))}
    native_sets = [frozenset(layer.name for layer in native.layers if layer.output == s)
                   for s in range(len(native.widths))]
    assert set(by_producers) == set(native_sets)  # the same partition into slots
    to_traced = [by_producers[p] for p in native_sets]
    rng = random.Random(0)
    for _ in range(20):
        arch = random_arch(native, rng, remove_prob=0.0)
        widths = [0] * len(traced.widths)
        for s, t in enumerate(to_traced):
            widths[t] = arch.widths[s]
        assert count(traced.with_widths(widths)) == count(arch)


# -- torchvision --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=TORCHVISION)
def torchvision_space(request):
    return traced_space(f"torchvision:{request.param}")


def test_torchvision_costs_equal_the_model_card_and_flop_counter(torchvision_space):
    from torchvision.models import get_model_weights

    base = torchvision_space.base
    meta = get_model_weights(base.opts["model"].split(":")[1]).DEFAULT.meta
    cost = count(base)
    assert cost.params == meta["num_params"]
    assert round(cost.macs / 1e9, 3) == pytest.approx(meta["_ops"], abs=1e-9)
    assert (cost.macs, cost.params) == flop_counter_macs(base)
    uniform = propose("uniform", torchvision_space, Target(ratio=0.5)).arch
    assert (count(uniform).macs, count(uniform).params) == flop_counter_macs(uniform)


def test_torchvision_searchable_share(torchvision_space):
    share = coverage(torchvision_space.base).share
    if torchvision_space.base.opts["model"] == "torchvision:regnet_x_400mf":
        # grouped 3x3 convs (fixed group width) are frozen: resizing them needs whole groups kept together
        assert 0.75 < share < 0.9
        return
    assert share >= 0.9


def test_torchvision_function_preserved(torchvision_space):
    base = torchvision_space.base
    mixing = set(coverage(base).mixing_norm_slots)  # LayerNorm statistics change when channels go
    zeroed, pruned = zeroed_and_pruned(base, half_kept(base, skip=mixing), SMALL)
    assert torch.allclose(zeroed, pruned, atol=1e-5, rtol=0)


def test_torchvision_l1_norm_proposal_trains_and_exports_to_onnx(torchvision_space):
    import onnx

    space = torchvision_space
    for method in ("uniform", "random"):
        arch = propose(method, space, Target(ratio=0.5), seed=0).arch
        assert abs(count(arch).macs / count(space.base).macs - 0.5) <= 0.01
    provider = StaticProvider(space, {None: base_model_from(space.base.build(), space.base)})
    proposal = propose("l1-norm", space, Target(ratio=0.5), provider, params={"prune_tied": True}, seed=0)
    assert count(proposal.arch).macs <= 0.5 * count(space.base).macs * 1.01
    model = provider.get(None).inherit(proposal).train()
    x = torch.randn(2, *SMALL)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    program = torch.onnx.export(model.eval(), (x,), dynamo=True, verbose=False)
    onnx.checker.check_model(program.model_proto)


# -- bad input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("reference", "shape", "message"), [
    ("no_such_package.models:net", (3, 8, 8), "cannot import 'no_such_package.models'"),
    ("tests.traced_models:missing", (3, 8, 8), "has no callable 'missing'"),
    ("tests.traced_models:not_a_module", (3, 8, 8), "returned a str, not a torch.nn.Module"),
    ("tests.traced_models:raises", (3, 8, 8), "the factory raised RuntimeError: the factory broke"),
    ("tests.traced_models:branchy", (3, 8, 8), r"cannot be traced by torch.fx at \(root\).*control flow"),
    (USER, (1, 16, 16), "rejects input 1x16x16: RuntimeError"),
    ("torchvision:resnet_no", None, "torchvision has no classification model 'resnet_no'"),
    ("resnet50", None, "is not SOURCE:NAME"),
    (USER, None, "needs an input shape"),
])
def test_bad_references_give_one_line(reference, shape, message):
    with pytest.raises(PrunenasError, match=message) as info:
        traced_space(reference, shape)
    assert "\n" not in str(info.value)


def test_analysis_is_cached_per_reference_and_shape():
    assert analyse(USER, (3, 16, 16)) is analyse(USER, (3, 16, 16))
