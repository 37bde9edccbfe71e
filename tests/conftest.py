import random

import pytest
import torch

from prunenas.arch import Architecture
from prunenas.errors import ArchitectureError

# (family, options, input shape, classes): every family and option variant, at test-friendly sizes.
# ImageNet-size families run at 64x64 here (forward/backward); their MACs are also checked at 224.
FAMILY_CASES = [
    ("tiny", {}, (3, 16, 16), 4),
    ("tiny", {"blocks": 0}, (1, 8, 8), 3),
    ("vgg", {"depth": 11, "width_mult": 0.25}, (1, 32, 32), 10),
    ("vgg", {"depth": 16, "head": "mlp", "width_mult": 0.25}, (3, 32, 32), 10),
    ("vgg", {"depth": 19, "width_mult": 0.25}, (3, 32, 32), 100),
    ("vgg", {"depth": 13, "head": "imagenet", "conv_bias": True, "batch_norm": False, "width_mult": 0.125},
     (3, 64, 64), 20),
    ("vgg", {"depth": 11, "head": "imagenet-bn", "width_mult": 0.125}, (3, 64, 64), 20),
    ("resnet_cifar", {"depth": 20}, (3, 32, 32), 10),
    ("resnet_cifar", {"depth": 20, "shortcut": "B", "width_mult": 0.5}, (1, 32, 32), 10),
    ("preresnet", {"depth": 29, "width_mult": 0.5}, (3, 32, 32), 10),
    ("densenet", {"depth": 40, "growth": 6}, (3, 32, 32), 10),
    ("densenet", {"depth": 28, "bottleneck": True, "compression": 0.5}, (3, 32, 32), 10),
    ("resnet", {"depth": 18, "width_mult": 0.25}, (3, 64, 64), 20),
    ("resnet", {"depth": 50, "width_mult": 0.25, "downsample_bias": True}, (3, 64, 64), 20),
    ("mobilenetv2", {"width_mult": 0.5}, (3, 64, 64), 20),
    ("mobilenetv2", {"stem": "cifar", "width_mult": 0.5}, (3, 32, 32), 10),
    ("traced", {"model": "tests.traced_models:user_net", "shape": "3,16,16"}, (3, 16, 16), 10),
    ("vit", {"depth": 3, "embed_dim": 24, "heads": 3, "mlp_dim": 48, "patch": 4}, (3, 16, 16), 10),
]


def case_id(case):
    family, options, shape, _ = case
    return family + "-" + "-".join(f"{k}{v}" for k, v in options.items()) + f"-{shape[1]}px"


def make_arch(case, widths=None):
    family, options, shape, classes = case
    return Architecture.create(family, widths, options, shape, classes)


def random_arch(base: Architecture, rng: random.Random, remove_prob: float = 0.3) -> Architecture:
    """A random valid architecture of ``base``'s family: widths in [1, base], some blocks removed."""
    removed = {s.block for s in base.slots if s.removable and rng.random() < remove_prob}
    for _ in range(200):
        widths = [0 if s.block in removed else rng.randint(1, s.base) for s in base.slots]
        try:
            return base.with_widths(widths)
        except ArchitectureError:  # e.g. option-A stage widths that decrease: draw again
            continue
    raise AssertionError("could not draw a valid random architecture")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture()
def ray_env(monkeypatch, tmp_path):
    """Environment of tests that start Ray: loopback only (auth off), no usage stats, a private cache."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("PRUNENAS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def fashion_providers(tmp_path_factory):
    """Small Fashion-MNIST base models (3 epochs of the fast recipe on 4,000 images, ~77% validation accuracy)
    shared by the proposer tests of the whole session; each is trained on first use only. One thread: on a
    2-core machine shared with other work, two threads ran 7x slower than one (measured)."""
    from prunenas.proposers.basemodel import BaseModelProvider, BaseTraining
    from prunenas.spaces import load_space

    cache = tmp_path_factory.mktemp("fashion-base-models")
    return {name: BaseModelProvider(load_space(name), BaseTraining(epochs=3, subset=4000, val_size=1000),
                                    cache_dir=cache, threads=1, log=None)
            for name in ("vgg11-fashionmnist", "resnet20-fashionmnist")}


def planted_tiny_provider(weak: dict[int, list[int]]):
    """tiny-synthetic with the given channels of slots (stem 0, block inners 2 and 3) made nearly silent
    (producer filters x 1e-3), served with synthetic data: the known answer of the channel-pruning methods."""
    from prunenas.data import load_data
    from prunenas.proposers.basemodel import StaticProvider, base_model_from
    from prunenas.spaces import load_space

    space = load_space("tiny-synthetic")
    producers = {0: "stem.0", 2: "blocks.0.conv1", 3: "blocks.1.conv1"}
    torch.manual_seed(0)
    model = space.base.build()
    with torch.no_grad():
        for slot, channels in weak.items():
            model.get_submodule(producers[slot]).weight[channels] *= 1e-3
    data = load_data("synthetic", space.input_shape, space.num_classes, val_size=64, subset=256)
    return StaticProvider(space, {None: base_model_from(model, space.base)}, data=data)
