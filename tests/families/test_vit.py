"""Vision Transformers: published counts, torchvision's weights, attention products, head slots, twins,
proposers, bad input and the AdamW recipe. (Shapes, gradients and counter parity run in the contract tests
of test_families.py / test_channels.py over the vit case of conftest.FAMILY_CASES.)"""

import json

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from prunenas.arch import Architecture
from prunenas.budget import target_from_ratio, uniform_twin
from prunenas.cli.main import main
from prunenas.cost import count
from prunenas.data import load_data
from prunenas.errors import ArchitectureError
from prunenas.optimisation import lr_factor, make_optimizer
from prunenas.proposers import Target, propose
from prunenas.proposers.basemodel import StaticProvider, base_model_from
from prunenas.proposers.channels import inherit
from prunenas.spaces import load_space
from prunenas.train import train
from prunenas.train_config import TrainConfig

# DeiT (Touvron et al. 2021, Table 1 and timm's deit_*_patch16_224): 5,717,416 / 22,050,664 parameters,
# 1.3 / 4.6 GFLOPs as they write it (multiply-accumulates); torchvision's card for vit_b_16.
PUBLISHED = {"deit-tiny-imagenet": (5_717_416, 1.3), "deit-small-imagenet": (22_050_664, 4.6)}
SMALL = {"depth": 3, "embed_dim": 24, "heads": 3, "mlp_dim": 48, "patch": 4}


def slot_index(arch, name):
    return next(i for i, s in enumerate(arch.slots) if s.name == name)


@pytest.mark.parametrize("space", list(PUBLISHED))
def test_deit_counts_equal_the_published_ones(space):
    params, gmacs = PUBLISHED[space]
    cost = count(load_space(space).base)
    assert cost.params == params
    assert round(cost.macs / 1e9, 1) == gmacs


def test_vit_b16_equals_torchvision_card_and_loads_its_state_dict():
    weights = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1
    arch = load_space("vit-b16-imagenet").base
    assert count(arch).params == weights.meta["num_params"] == 86_567_656
    assert round(count(arch).macs / 1e9, 3) == weights.meta["_ops"]  # 17.564 GMACs, attention products included
    torch.manual_seed(0)
    theirs = torchvision.models.vit_b_16().eval()
    with torch.no_grad():  # torchvision zero-initialises the head: outputs would all be 0 and compare trivially
        theirs.heads.head.weight.normal_(0.0, 0.02)
        theirs.heads.head.bias.normal_(0.0, 0.02)
    ours = arch.build().eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_attention_products_counted_in_closed_form_and_by_the_flop_counter():
    # 1 block, 8 features, 2 heads of 4, MLP 16, 4x4 patches of an 8x8 image: 4 patches + class token = 5 tokens
    arch = Architecture.create("vit", None, {"depth": 1, "embed_dim": 8, "heads": 2, "mlp_dim": 16, "patch": 4},
                               (1, 8, 8), 10)
    patch_embed = 16 * 8 * 4
    qkv, out_proj, mlp, head = 5 * 8 * 24, 5 * 8 * 8, 2 * 5 * 8 * 16, 8 * 10
    products = 2 * (5 * 5 * 4) * 2  # QK^T and A.V: tokens^2 x head_dim per head
    assert count(arch).macs == patch_embed + qkv + out_proj + mlp + head + products
    no_attention = arch.with_widths([8, 0, 16])
    assert count(arch).macs - count(no_attention).macs == qkv + out_proj + products
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        arch.build().eval()(torch.zeros(1, 1, 8, 8))
    assert counter.get_total_flops() // 2 == count(arch).macs


def test_pruned_heads_keep_the_head_dimension():
    base = Architecture.create("vit", None, SMALL, (3, 16, 16), 10)  # head_dim 8
    heads = slot_index(base, "encoder_layer_1.heads")
    widths = list(base.widths)
    widths[heads] = 1
    model = base.with_widths(widths).build()
    attention = model.encoder.layers.encoder_layer_1.self_attention
    assert (attention.heads, attention.head_dim) == (1, 8)
    assert attention.in_proj.weight.shape == (24, 24) and attention.out_proj.weight.shape == (24, 8)


def test_removed_branches_change_depth_and_compute_the_identity():
    base = Architecture.create("vit", None, SMALL, (3, 16, 16), 10)
    removed = base.with_widths([base.widths[0]] + [0] * (len(base.widths) - 1))  # every branch removed
    model = removed.build().eval()
    assert not any(isinstance(m, torch.nn.Linear) for m in model.encoder.layers.modules())
    tokens = torch.randn(2, 17, 24)
    with torch.no_grad():
        assert torch.equal(model.encoder.layers(tokens), tokens)


@pytest.mark.parametrize(("widths", "message"), [
    ([24, 2.5, 48, 3, 48, 3, 48], r"width 1 \(slot 'encoder_layer_0.heads'\) is 2.5; widths are integers"),
    ([24, 4, 48, 3, 48, 3, 48], r"width 1 \(slot 'encoder_layer_0.heads'\) is 4, above its bound 3"),
])
def test_bad_head_counts(widths, message):
    with pytest.raises(ArchitectureError, match=message):
        Architecture.create("vit", widths, SMALL, (3, 16, 16), 10)


@pytest.mark.parametrize(("options", "shape", "message"), [
    ({"embed_dim": 24, "heads": 5}, (3, 16, 16), "embed_dim 24 is not divisible by heads 5"),
    ({"patch": 5}, (3, 16, 16), "input 16x16 is not a multiple of the patch size 5"),
])
def test_bad_vit_options(options, shape, message):
    with pytest.raises(ArchitectureError, match=message):
        Architecture.create("vit", None, {**SMALL, **options}, shape, 10)


def test_bad_head_count_in_an_architecture_file_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "arch.json"
    path.write_text(json.dumps({"family": "vit", "options": SMALL, "widths": [24, 9, 48, 3, 48, 3, 48],
                                "input_shape": [3, 16, 16], "num_classes": 10}))
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "encoder_layer_0.heads" in err and "above its bound 3" in err


def test_uniform_twin_rounds_heads_to_whole_heads_and_channels_to_the_multiple():
    space = load_space("deit-tiny-imagenet")  # 3 heads per block: a coarse step
    heads = [i for i, s in enumerate(space.slots) if s.unit == "heads"]
    for ratio in (0.3, 0.5, 0.7):
        twin = uniform_twin(space, target_from_ratio(space, ratio))
        assert all(twin.arch.widths[i] in (1, 2, 3) for i in heads)
        assert all(w % 8 == 0 for i, w in enumerate(twin.arch.widths) if i not in heads)
        assert twin.error == count(twin.arch).macs / target_from_ratio(space, ratio) - 1
    assert space.lower[heads[0]] == 1 and space.multiple(heads[0]) == 1 and space.multiple(0) == 8


def planted_vit_provider():
    """vit-tiny-fashionmnist with head 2 of block 0 and MLP neurons 0..63 of block 1 made nearly silent."""
    space = load_space("vit-tiny-fashionmnist")
    torch.manual_seed(0)
    model = space.base.build()
    with torch.no_grad():
        in_proj = model.encoder.layers.encoder_layer_0.self_attention.in_proj.weight  # rows: q | k | v, 4 heads of 16
        for part in range(3):
            in_proj[part * 64 + 32: part * 64 + 48] *= 1e-3
        model.encoder.layers.encoder_layer_1.mlp[0].weight[:64] *= 1e-3
    data = load_data("synthetic", space.input_shape, space.num_classes, val_size=64, subset=256)
    return space, StaticProvider(space, {None: base_model_from(model, space.base)}, data=data)


def test_l1_norm_drops_planted_weak_heads_and_neurons():
    space, provider = planted_vit_provider()
    proposal = propose("l1-norm", space, Target(ratio=0.75), provider)
    heads, mlp = slot_index(proposal.arch, "encoder_layer_0.heads"), slot_index(proposal.arch, "encoder_layer_1.mlp")
    assert 2 not in proposal.kept[heads] and len(proposal.kept[heads]) < 4
    assert not set(proposal.kept[mlp]) & set(range(64)) and proposal.arch.widths[mlp] <= 64
    assert count(proposal.arch).macs <= target_from_ratio(space, 0.75) * 1.01
    base = provider.get(None)
    pruned = inherit(base.arch, base.architecture_state(), proposal.arch, proposal.kept)
    assert pruned(torch.randn(2, *space.input_shape)).shape == (2, 10)


def test_uniform_and_random_propose_vit_widths_at_the_target():
    space = load_space("vit-tiny-fashionmnist")
    target = target_from_ratio(space, 0.5)
    uniform = propose("uniform", space, Target(ratio=0.5), seed=1)
    assert abs(count(uniform.arch).macs / target - 1) <= 0.01
    # random widths in coarse head steps may miss +-1%: the closest is taken and its error recorded
    random = propose("random", space, Target(ratio=0.5), seed=1)
    assert random.arch.widths != uniform.arch.widths
    assert random.provenance["twin_error"] == pytest.approx(count(random.arch).macs / target - 1)
    assert abs(random.provenance["twin_error"]) < 0.02


def test_warmup_cosine_schedule():
    steps = dict(steps_per_epoch=10, epochs=10, milestones=(), gamma=0.1)  # 100 steps, 10 of warm-up
    factors = [lr_factor("warmup-cosine", s, **steps) for s in (0, 5, 10, 55, 100)]
    assert factors == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])


def test_adamw_vit_recipe_decays_weights_only_and_trains():
    config = TrainConfig.from_recipe("adamw-vit", epochs=2, batch_size=64, threads=1)
    assert (config.optimizer, config.schedule, config.label_smoothing, config.augment) == (
        "adamw", "warmup-cosine", 0.1, True)
    assert "optimizer" in config.identity() and "optimizer" not in TrainConfig.from_recipe("fast").identity()
    arch = Architecture.create("vit", None, SMALL, (3, 16, 16), 4)
    model = arch.build()
    optimizer = make_optimizer(model, config)
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed, free = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and free["weight_decay"] == 0.0
    assert {p.ndim for p in decayed["params"]} >= {2} and {p.ndim for p in free["params"]} == {1}
    data = load_data("synthetic", arch.input_shape, 4, val_size=128, subset=512)
    result = train(arch, data, config, evaluate_test=False)
    assert result.curve[-1]["train_loss"] < result.curve[0]["train_loss"]


def test_magnitude_masks_the_linear_weights_of_a_vit():
    space, provider = planted_vit_provider()
    proposal = propose("magnitude", space, Target(ratio=0.5), provider)
    masked = set(proposal.arch.masks.load())
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj" in masked and "heads.head" not in masked
    model = provider.get(None).inherit(proposal)

    def layer_macs(nonzero):  # weights x positions: 64 patches for the conv, 65 tokens for the encoder's linears
        return sum(int((m.weight != 0).sum() if nonzero else m.weight.numel()) * positions
                   for m, positions in [(model.conv_proj, 64), (model.heads.head, 1)] +
                   [(m, 65) for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)])

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *space.input_shape))  # the dense kernels: products + every weight
    products = counter.get_total_flops() // 2 - layer_macs(nonzero=False)
    assert products == 4 * 2 * 65**2 * 64  # 4 blocks, QK^T and A.V, 65 tokens, 4 heads x 16 features
    assert count(proposal.arch).macs == layer_macs(nonzero=True) + products
    assert abs(count(proposal.arch).macs / count(space.base).macs - 0.5) <= 0.01
