"""Sparse Structure Selection: the proximal step, where the factors sit, factor 0 = block removed, the factors
in the base-model cache, targets by penalty and by MACs, a real Fashion-MNIST ResNet losing blocks, and a ViT
losing attention and MLP branches independently."""

import math
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from prunenas.cli.main import main
from prunenas.cost import count
from prunenas.data import load_data
from prunenas.errors import BudgetError
from prunenas.proposers import ProposerError, Target, propose
from prunenas.proposers.basemodel import (
    BaseModelProvider,
    BaseTraining,
    RegularizerSpec,
    StaticProvider,
    base_model_from,
)
from prunenas.proposers.channels import inherit
from prunenas.proposers.sss import (
    SCALE,
    BlockScales,
    branch_names,
    branch_outputs,
    fold_block_scales,
    install_block_scales,
    removable_blocks,
    soft_threshold,
    without_blocks,
)
from prunenas.spaces import load_space
from prunenas.train import train
from prunenas.train_config import TrainConfig

from ..conftest import FAMILY_CASES, case_id, make_arch

WITH_BLOCKS = [c for c in FAMILY_CASES if c[0] in ("tiny", "resnet_cifar", "preresnet", "resnet", "mobilenetv2", "vit")
               and c[1].get("blocks", 1) > 0]


def test_proximal_step_on_scale_factors():
    factors = torch.tensor([0.5, -0.05, 0.01, -0.5, 0.0])
    assert soft_threshold(factors, 0.1).tolist() == pytest.approx([0.4, 0.0, 0.0, -0.4, 0.0])
    assert torch.equal(soft_threshold(factors, 0.0), factors)


def test_regulariser_shrinks_the_factors_by_the_steps_learning_rate_times_gamma():
    arch = load_space("tiny-synthetic").base
    model = arch.build()
    reg = BlockScales(arch, gamma=2.0)
    reg.prepare(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reg.attach(optimizer)
    assert {id(p) for p in reg.factors.values()} <= {id(p) for p in model.parameters()}  # trained with the rest
    with torch.no_grad():
        reg.factors[0].fill_(0.5)
        reg.factors[1].fill_(-0.1)
    reg.before_step(model)
    optimizer.param_groups[0]["lr"] = 1.0  # a scheduler moving on after the step must not matter
    reg.after_step(model)
    assert reg.factors[0].item() == pytest.approx(0.3) and reg.factors[1].item() == 0.0


@pytest.mark.parametrize(("family", "expected"), [
    ("tiny", "blocks.1.bn2"), ("resnet_cifar", "layer1.1.bn2"), ("preresnet", "layer1.1.conv3"),
    ("resnet", "layer1.1.bn2"), ("mobilenetv2", "features.3.conv.3"),
    ("vit", "encoder.layers.encoder_layer_1.self_attention.out_proj"), ("vit", "encoder.layers.encoder_layer_1.mlp.3"),
])
def test_factor_sits_on_the_module_writing_into_the_residual_stream(family, expected):
    case = next(c for c in WITH_BLOCKS if c[0] == family)
    outputs = branch_outputs(make_arch(case))
    assert expected in outputs.values()


@pytest.mark.parametrize("case", WITH_BLOCKS, ids=case_id)
def test_a_zero_factor_computes_exactly_the_network_without_that_block(case):
    arch = make_arch(case)
    torch.manual_seed(0)
    model = arch.build().eval()
    factors = install_block_scales(model, arch)
    blocks = removable_blocks(arch)
    gone = sorted(blocks)[len(blocks) // 2]
    with torch.no_grad():
        for block, factor in factors.items():
            factor.fill_(0.0 if block == gone else 0.5 + 0.1 * (block % 7))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert f"{branch_outputs(arch)[gone]}.{SCALE}" in state
    fold_block_scales(arch, state)
    pruned = inherit(arch, state, without_blocks(arch, blocks, {gone}), {}).eval()
    x = torch.randn(2, *arch.input_shape)
    with torch.no_grad():
        assert torch.allclose(model(x), pruned(x), rtol=1e-4, atol=1e-5)


def scaled_base(space, values):
    """A base model of ``space`` whose block factors hold ``values`` (block order)."""
    torch.manual_seed(0)
    model = space.base.build()
    factors = install_block_scales(model, space.base)
    with torch.no_grad():
        for (_, factor), value in zip(sorted(factors.items()), values):
            factor.fill_(value)
    return StaticProvider(space, {RegularizerSpec.of("sss", gamma=0.01): base_model_from(model, space.base)})


def test_targets_by_penalty_and_by_macs_remove_the_smallest_factors():
    space = load_space("resnet20-fashionmnist")
    provider = scaled_base(space, [0.9, 0.2, 0.0, -0.05, 0.6, -0.3, 0.0])  # 7 removable blocks
    ids = sorted(removable_blocks(space.base))
    by_penalty = propose("sss", space, Target(), provider)
    assert by_penalty.provenance["removed_blocks"] == ["layer1.2", "layer3.2"]  # the exact zeros
    wanted = without_blocks(space.base, removable_blocks(space.base), {ids[1], ids[2], ids[3], ids[6]})
    by_macs = propose("sss", space, Target(cost=count(wanted).macs), provider)
    assert by_macs.arch == wanted  # |factor| order: 0, 0, 0.05, 0.2
    assert all(by_macs.kept[s] == () for s in range(len(wanted.widths)) if wanted.widths[s] == 0)
    with pytest.raises(BudgetError, match="unreachable by removing blocks"):
        propose("sss", space, Target(ratio=0.1), provider)
    with pytest.raises(ProposerError, match="has no removable branches"):
        propose("sss", load_space("vgg11-fashionmnist"), Target(ratio=0.5), provider)
    with pytest.raises(ProposerError, match="has no presets"):
        propose("sss", space, Target(preset="A"), provider)


def test_sss_removes_blocks_of_a_fashion_mnist_resnet_at_a_strong_penalty(tmp_path):
    space = load_space("resnet20-fashionmnist")
    provider = BaseModelProvider(space, BaseTraining(epochs=3, subset=4000, val_size=1000),
                                 cache_dir=tmp_path, threads=1, log=None)
    proposal = propose("sss", space, Target(), provider, {"gamma": 0.5})
    base = provider.get(RegularizerSpec.of("sss", gamma=0.5))
    assert base.val_acc > 0.5
    assert {k for k in base.trained_state if k.endswith(SCALE)} == {f"{n}.{SCALE}" for n in
                                                                  branch_outputs(space.base).values()}
    assert not any(k.endswith(SCALE) for k in base.architecture_state())
    assert_folded_network_computes_the_trained_function(space, base, proposal)
    arch = proposal.arch
    removed = proposal.provenance["removed_blocks"]
    assert len(removed) >= 1 and proposal.provenance["depth_removed"] == len(removed)
    assert all(proposal.provenance["block_scales"][name] == 0.0 for name in removed)
    assert arch == space.arch(arch.widths) and sum(w == 0 for w in arch.widths) == len(removed)
    model = arch.build()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, *arch.input_shape))
    assert counter.get_total_flops() // 2 == count(arch).macs < count(space.base).macs
    data = load_data("fashion-mnist", arch.input_shape, arch.num_classes, val_size=500, subset=1000)
    result = train(arch, data, TrainConfig.from_recipe("fast", epochs=1, threads=1), evaluate_test=False)
    # one epoch on 1,000 images: it learns (below the loss of a uniform guess, ln 10), not that it learns well
    assert result.val_loss < math.log(10) and result.macs == count(arch).macs
    at_macs = propose("sss", space, Target(ratio=0.7), provider, {"gamma": 0.5})
    assert count(at_macs.arch).macs <= 0.7 * 1.01 * count(space.base).macs


def test_sss_cli(tmp_path):
    cmd = [sys.executable, "-m", "prunenas", "propose", "sss", "tiny-synthetic", "--ratio", "0.5", "--base-epochs",
           "1", "--cache-dir", str(tmp_path), "--param", "gamma=1.0", "--threads", "1", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert '"removed_blocks"' in proc.stdout and "regulariser sss" in proc.stderr


def vit_without(space, names):
    """The base ViT with the named branches removed, written by hand: a heads or MLP slot set to 0."""
    return space.base.with_widths([0 if slot.name in names else w for slot, w in zip(space.slots, space.upper)])


def test_vit_has_one_factor_per_attention_and_mlp_branch_and_targets_remove_the_smallest():
    space = load_space("vit-tiny-fashionmnist")  # 4 blocks: 8 branches, attention then MLP per block
    names = [f"encoder_layer_{b}.{part}" for b in range(4) for part in ("heads", "mlp")]
    assert list(branch_names(space.base).values()) == names
    assert len(set(branch_outputs(space.base).values())) == 8
    provider = scaled_base(space, [0.9, 0.0, 0.3, 0.8, -0.05, 0.7, 0.6, 0.0])
    by_penalty = propose("sss", space, Target(), provider)
    assert by_penalty.provenance["removed_blocks"] == ["encoder_layer_0.mlp", "encoder_layer_3.mlp"]
    assert by_penalty.arch == vit_without(space, {"encoder_layer_0.mlp", "encoder_layer_3.mlp"})
    wanted = vit_without(space, {"encoder_layer_0.mlp", "encoder_layer_3.mlp", "encoder_layer_2.heads"})
    by_macs = propose("sss", space, Target(cost=count(wanted).macs), provider)
    assert by_macs.arch == wanted  # |factor| order: 0, 0, 0.05 (an attention branch), 0.3
    model = by_macs.arch.build()
    assert not hasattr(model.encoder.layers.encoder_layer_2, "self_attention")
    assert hasattr(model.encoder.layers.encoder_layer_2, "mlp")


def test_sss_removes_branches_of_a_vit_at_a_strong_penalty(tmp_path):
    space = load_space("vit-tiny-fashionmnist")
    provider = BaseModelProvider(space, BaseTraining(dataset="synthetic", epochs=2, subset=1500, val_size=200),
                                 cache_dir=tmp_path, threads=1, log=None)
    proposal = propose("sss", space, Target(), provider, {"gamma": 30.0})
    base = provider.get(RegularizerSpec.of("sss", gamma=30.0))
    scales, removed = proposal.provenance["block_scales"], proposal.provenance["removed_blocks"]
    assert len(scales) == 8 and 1 <= len(removed) < 8 and all(scales[name] == 0.0 for name in removed)
    assert proposal.arch == vit_without(space, set(removed))
    assert_folded_network_computes_the_trained_function(space, base, proposal)


def test_branch_removal_on_a_family_without_removable_branches_is_one_line_and_exit_2(tmp_path, capsys):
    code = main(["propose", "sss", "vgg11-fashionmnist", "--ratio", "0.5", "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "has no removable branches" in err


def assert_folded_network_computes_the_trained_function(space, base, proposal):
    """Removed factors are exactly 0 and the kept ones are folded: the inherited network is the trained one."""
    trained = space.base.build()
    install_block_scales(trained, space.base)
    trained.load_state_dict(base.trained_state)
    x = torch.randn(4, *space.input_shape)
    with torch.no_grad():
        assert torch.allclose(base.inherit(proposal).eval()(x), trained.eval()(x), rtol=1e-4, atol=1e-4)
