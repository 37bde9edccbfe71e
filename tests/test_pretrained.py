"""Published weights as the base model: local state-dict files, torchvision names, clear errors."""

import urllib.error

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from prunenas.cli.main import main
from prunenas.errors import PrunenasError
from prunenas.experiment import ExperimentError
from prunenas.experiment_file import experiment_from_dict
from prunenas.pretrained import load_weights_state, torchvision_builder
from prunenas.proposers.basemodel import BaseModelProvider, BaseTraining
from prunenas.spaces import load_space
from prunenas.train import evaluate


@pytest.fixture(scope="module")
def small_resnet18(tmp_path_factory):
    """A ResNet-18 space at 32x32 and 10 classes (torchvision's layout loads into it), and a random torchvision
    ResNet-18 of that shape saved as .pth and .safetensors."""
    folder = tmp_path_factory.mktemp("pretrained")
    space_file = folder / "resnet18-small.yaml"
    space_file.write_text("family: resnet\noptions: {depth: 18}\ndataset: synthetic\ninput_shape: [3, 32, 32]\n"
                          "num_classes: 10\n")
    torch.manual_seed(3)
    theirs = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(theirs.state_dict(), folder / "resnet18.pth")
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(folder / "resnet18.safetensors"))
    return load_space(str(space_file)), theirs, folder


def provider(space, weights, cache):
    return BaseModelProvider(space, BaseTraining(val_size=256, weights=str(weights)),
                             cache_dir=cache, threads=1, log=None)


def test_local_weights_become_the_base_model_evaluated_on_the_val_split(small_resnet18, tmp_path):
    space, theirs, folder = small_resnet18
    served = provider(space, folder / "resnet18.pth", tmp_path)
    base = served.get()
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(base.trained_state[key], value, rtol=0, atol=0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(base.model()(x), theirs(x))
    assert base.val_acc == evaluate(theirs, served.data().val)[0]  # torchvision's own network on the same split
    assert base.meta["test_acc"] == evaluate(theirs, served.data().test)[0]
    assert served.trainings == 0 and base.meta["weights"] == str(folder / "resnet18.pth")
    assert served.get().key == base.key  # from the cache now


def test_safetensors_and_pth_files_give_the_same_state(small_resnet18):
    space, theirs, folder = small_resnet18
    for suffix in (".pth", ".safetensors"):
        state = load_weights_state(str(folder / f"resnet18{suffix}"), space.base)
        assert state.keys() == theirs.state_dict().keys()
        assert all(torch.equal(state[k], v) for k, v in theirs.state_dict().items())


def test_cache_key_follows_the_file_contents(small_resnet18, tmp_path):
    space, theirs, folder = small_resnet18
    copy = tmp_path / "copy.pth"
    copy.write_bytes((folder / "resnet18.pth").read_bytes())
    key = provider(space, copy, tmp_path).key()
    assert key == provider(space, folder / "resnet18.pth", tmp_path).key()
    assert key != BaseModelProvider(space, cache_dir=tmp_path, log=None).key()  # a trained base is another model
    changed = {k: v + 1 if v.is_floating_point() else v for k, v in theirs.state_dict().items()}
    torch.save(changed, copy)
    assert provider(space, copy, tmp_path).key() != key


def test_weights_of_another_network_are_refused(small_resnet18, tmp_path):
    space, _, _ = small_resnet18
    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(PrunenasError, match=r"does not fit the base network.*unexpected \(e\.g\. layer1\.2\."):
        provider(space, tmp_path / "resnet34.pth", tmp_path).get()


def test_torchvision_builders_match_the_spaces():
    assert torchvision_builder(load_space("resnet34-imagenet").base) == "resnet34"
    assert torchvision_builder(load_space("vgg16bn-imagenet").base) == "vgg16_bn"
    assert torchvision_builder(load_space("vgg16-imagenet").base) == "vgg16"
    with pytest.raises(PrunenasError, match="torchvision publishes no weights"):
        torchvision_builder(load_space("vgg16gap-imagenet").base)


EXPERIMENT = {"space": "resnet18-imagenet", "proposers": {"l1-norm": {}}, "targets": {"ratios": [0.5]},
              "base": {"weights": "torchvision:DEFAULT"}}


@pytest.mark.parametrize(("change", "message"), [
    ({"base": {"weights": "model.ckpt"}}, "must be a state-dict file"),
    ({"arms": ["proposed", "lottery"]}, "lottery restarts from the base model's initial weights"),
    ({"proposers": {"slimming": {}}}, "slimming trains its base model with a regulariser"),
    ({"space": "vgg16gap-imagenet"}, "torchvision publishes no weights"),
])
def test_experiment_refuses_what_published_weights_cannot_serve(change, message):
    with pytest.raises(ExperimentError, match=message):
        experiment_from_dict({**EXPERIMENT, **change})


def test_failed_download_names_the_file_to_provide_and_writes_nothing(tmp_path, monkeypatch, capsys):
    def offline(url, dst, **_):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    (tmp_path / "exp.yaml").write_text(str(EXPERIMENT).replace("'", '"'))
    assert main(["search", str(tmp_path / "exp.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no network" in err
    assert f"put that file at {tmp_path / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth'}" in err
    assert not (tmp_path / "run").exists()
