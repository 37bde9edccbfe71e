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
from prunenas.families.base import Slot
from prunenas.families.tracing import analyse
from prunenas.proposers import Target, propose
from prunenas.proposers.basemodel import StaticProvider, base_model_from
from prunenas.proposers.channels import inherit, zero_channels
from prunenas.proposers.select import keep_channels, top_channels
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
    """Half of every slot's channels at random: half of the whole groups of a slot that grouped convs with a
    fixed group width read, half of every group's channels where their group count is fixed."""
    rng = random.Random(seed)
    kept = {}
    for s, (w, slot) in enumerate(zip(base.widths, base.slots)):
        if s in skip:
            continue
        size = slot.group_width if slot.group_width > 1 else w // slot.group_count
        groups = [list(range(start, start + size)) for start in range(0, w, size)]
        if slot.group_width > 1:
            chosen = [c for group in rng.sample(groups, max(1, len(groups) // 2)) for c in group]
        elif slot.group_count > 1:
            chosen = [c for group in groups for c in rng.sample(group, max(1, size // 2))]
        else:
            chosen = rng.sample(range(w), max(1, w // 2))
        kept[s] = tuple(sorted(chosen))
    return kept


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


# -- grouped convolutions ----------------------------------------------------------------------------------
RESNEXT = "tests.traced_models:tiny_resnext"


def test_grouped_convs_keep_the_group_count_of_resnext_and_the_group_width_of_regnet():
    resnext = traced_space(RESNEXT, (3, 16, 16)).base  # 4 groups in both stages, of 4 and of 8 channels
    assert [(slot.name, slot.group_count) for slot in resnext.slots if slot.step > 1] == [
        ("stage1.a.0", 4), ("stage1.b.0", 4), ("stage2.a.0", 4), ("stage2.b.0", 4)]
    regnet = traced_space("torchvision:regnet_x_400mf").base  # 16 channels per group, in 2 to 25 groups
    inner = [slot for slot in regnet.slots if slot.step > 1]
    assert len(inner) == 22 and all(slot.group_width == 16 and not slot.tied for slot in inner)
    name = "trunk_output.block4.block4-0.f.b.0"
    conv = next(layer for layer in regnet.layers if layer.name == name)
    assert (conv.groups, conv.inputs) == (25, (conv.output,))  # a's output is b's input and output
    narrow = regnet.with_widths([160 if s == conv.output else w for s, w in enumerate(regnet.widths)])
    assert next(layer for layer in narrow.layers if layer.name == name).groups == 10  # 160 / 16
    with torch.device("meta"):
        module = narrow.build().get_submodule(name)
    assert (module.groups, tuple(module.weight.shape)) == (10, (160, 16, 3, 3))
    assert coverage(regnet).grouped[0] == (inner_index(regnet), "group width", 16)


def inner_index(arch: Architecture) -> int:
    return next(s for s, slot in enumerate(arch.slots) if slot.step > 1)


def test_widths_and_kept_channels_of_grouped_slots_are_whole_groups():
    resnext = traced_space(RESNEXT, (3, 16, 16)).base
    s = inner_index(resnext)  # stage1.a.0: 16 channels in 4 groups
    with pytest.raises(ArchitectureError, match="4 groups of equal width .*: a multiple of 4"):
        resnext.with_widths([10 if i == s else w for i, w in enumerate(resnext.widths)])
    regnet = traced_space("torchvision:regnet_x_400mf").base
    with pytest.raises(ArchitectureError, match="whole groups of 16 channels"):
        regnet.with_widths([24 if i == inner_index(regnet) else w for i, w in enumerate(regnet.widths)])
    state = resnext.build().state_dict()
    narrow = resnext.with_widths([8 if i == s else w for i, w in enumerate(resnext.widths)])
    with pytest.raises(ArchitectureError, match=r"per group \[2, 2, 3, 1\] differ"):
        inherit(resnext, state, narrow, {s: (0, 1, 4, 5, 8, 9, 10, 12)})


def test_resnext_function_preserved_and_per_group_slicing_is_checked():
    base = traced_space(RESNEXT, (3, 16, 16)).base
    for seed in range(3):
        kept = half_kept(base, seed=seed)
        zeroed, pruned = zeroed_and_pruned(base, kept, (3, 16, 16))
        assert torch.allclose(zeroed, pruned, atol=1e-5, rtol=0)
    s = inner_index(base)  # read by the grouped conv stage1.b.0: inherit another 2 channels of every group
    other = tuple(c for g in range(4) for c in range(4 * g, 4 * g + 4) if c not in kept[s])
    zeroed, pruned = zeroed_and_pruned(base, kept, (3, 16, 16), inherited={**kept, s: other})
    assert (zeroed - pruned).abs().max() > 1e-4  # a hundred times the error of the right channels


def test_selection_keeps_whole_groups_or_as_many_of_every_group():
    scores = torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 5])  # channel 7 is the best, but its group's mean is 1.25
    by_width = Slot("a", 8, 0, group_width=4)
    assert keep_channels(by_width, scores, 4) == (4, 5, 6, 7) and top_channels(scores, 4) == (0, 1, 2, 7)
    scores = torch.tensor([3.0, 1, 2, 0, 9, 8, 7, 0])  # the best two of each group of four
    assert keep_channels(Slot("b", 8, 0, group_count=2), scores, 4) == (0, 2, 4, 5)


@pytest.mark.parametrize("method", ["uniform", "random", "l1-norm"])
def test_proposers_on_grouped_slots_keep_whole_groups(method):
    space = traced_space(RESNEXT, (3, 16, 16))
    provider = StaticProvider(space, {None: base_model_from(space.base.build(), space.base)})
    proposal = propose(method, space, Target(ratio=0.5), provider, params={"prune_tied": True}
                       if method == "l1-norm" else {}, seed=0)
    arch = proposal.arch
    assert abs(count(arch).macs / count(space.base).macs - 0.5) < 0.05
    for s, slot in enumerate(arch.slots):
        assert arch.widths[s] % slot.step == 0
        if proposal.kept is not None and slot.group_count > 1:
            per_group = [sum(c // (slot.base // 4) == g for c in proposal.kept[s]) for g in range(4)]
            assert per_group == [arch.widths[s] // 4] * 4
    model = provider.get(None).inherit(proposal) if proposal.kept is not None else arch.build()
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


# -- timm ---------------------------------------------------------------------------------------------------
TIMM = "timm:mobilenetv3_small_050"


def test_timm_reference_info_proposals_and_function(capsys):
    import timm  # the dev extra installs it (make test)

    from prunenas.cli.main import main

    assert main(["info", TIMM, "--input-shape", "3,64,64", "--classes", "10", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    space = traced_space(f"{TIMM}?num_classes=10", (3, 64, 64))
    assert info["options"]["model"] == f"{TIMM}?num_classes=10" and info["searchable_share"] >= 0.9
    model = timm.create_model("mobilenetv3_small_050", num_classes=10)
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert (info["macs"], info["params"]) == flop_counter_macs(space.base)
    provider = StaticProvider(space, {None: base_model_from(space.base.build(), space.base)})
    x = torch.randn(2, 3, 64, 64)
    for method, params in (("uniform", {}), ("l1-norm", {"prune_tied": True})):
        proposal = propose(method, space, Target(ratio=0.5), provider, params=params, seed=0)
        assert count(proposal.arch).macs <= 0.5 * info["macs"] * 1.01
        assert proposal.arch.build().eval()(x).shape == (2, 10)
    zeroed, pruned = zeroed_and_pruned(space.base, half_kept(space.base), (3, 64, 64))
    assert torch.allclose(zeroed, pruned, atol=1e-5, rtol=0)


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
    assert coverage(torchvision_space.base).share >= 0.9  # regnet_x_400mf: its grouped convs included


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
