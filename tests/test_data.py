"""Loaders on small files written in the exact on-disk formats; the in-memory pipeline."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from prunenas.builtin_datasets import read_idx
from prunenas.data import load_data
from prunenas.splits import Augment, DataError, TensorSplit, augment_batch


def write_idx(path, array, compress=True):
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(raw)


def make_idx_folder(folder, n_train=60, n_test=20, compress=True):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(n_test) % 10}
    for stem, array in arrays.items():
        write_idx(folder / f"{stem}{suffix}", array, compress)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx_files_padded_to_32(tmp_path, compress):
    arrays = make_idx_folder(tmp_path / "fm", compress=compress)
    data = load_data("fashion-mnist", (1, 32, 32), 10, val_size=10, root=tmp_path / "fm")
    assert (len(data.train), len(data.val), len(data.test)) == (50, 10, 20)
    images = data.test.images
    assert images.shape == (20, 1, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images[:, 0, 2:30, 2:30], torch.tensor(arrays["t10k-images-idx3-ubyte"], dtype=torch.uint8))
    assert images[:, :, :2].sum() == 0 and images[:, :, :, 30:].sum() == 0  # zero padding
    assert torch.equal(data.test.labels, torch.arange(20) % 10)


def test_validation_carve_is_fixed_by_the_seed_and_disjoint(tmp_path):
    make_idx_folder(tmp_path / "fm")
    a = load_data("fashion-mnist", (1, 28, 28), val_size=10, seed=3, root=tmp_path / "fm")
    b = load_data("fashion-mnist", (1, 28, 28), val_size=10, seed=3, root=tmp_path / "fm")
    c = load_data("fashion-mnist", (1, 28, 28), val_size=10, seed=4, root=tmp_path / "fm")
    assert torch.equal(a.val.images, b.val.images) and not torch.equal(a.val.images, c.val.images)
    train_rows = {bytes(x.numpy()) for x in a.train.images}
    assert not any(bytes(x.numpy()) in train_rows for x in a.val.images)
    assert len(load_data("fashion-mnist", (1, 28, 28), val_size=10, subset=7, root=tmp_path / "fm").train) == 7


def test_real_fashion_mnist_from_the_debian_package():
    data = load_data("fashion-mnist", (1, 32, 32), 10)
    assert (len(data.train), len(data.val), len(data.test)) == (55000, 5000, 10000)
    assert sorted(data.test.labels.bincount().tolist()) == [1000] * 10


def test_mnist_in_torchvision_raw_layout(tmp_path):
    make_idx_folder(tmp_path / "MNIST" / "raw", compress=False)
    data = load_data("mnist", (1, 28, 28), 10, val_size=5, root=tmp_path)
    assert len(data.train) == 55 and data.train.augmentation == Augment(crop_pad=2, flip=False)


def write_cifar(folder, kind):
    rng = np.random.default_rng(1)
    if kind == "cifar10":
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        base, key = folder / "cifar-10-batches-py", b"labels"
    else:
        base, names, key = folder / "cifar-100-python", ["train", "test"], b"fine_labels"
    base.mkdir(parents=True)
    for name in names:
        entry = {b"batch_label": b"x", b"data": rng.integers(0, 256, (8, 3072)).astype(np.uint8),
                 key: [int(v) for v in rng.integers(0, 10, 8)], b"filenames": [b"a.png"] * 8}
        with open(base / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)  # the format of the official python pickles
    return base


@pytest.mark.parametrize(("kind", "classes", "train"), [("cifar10", 10, 40), ("cifar100", 100, 8)])
def test_cifar_pickles(tmp_path, kind, classes, train):
    base = write_cifar(tmp_path, kind)
    data = load_data(kind, (3, 32, 32), classes, val_size=4, root=tmp_path)
    assert len(data.train) + len(data.val) == train and data.num_classes == classes
    with open(base / ("test_batch" if kind == "cifar10" else "test"), "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    assert torch.equal(data.test.images, torch.tensor(raw[b"data"]).view(-1, 3, 32, 32))
    assert data.train.augmentation == Augment(crop_pad=4, flip=True)


def test_cifar_refuses_pickles_with_code(tmp_path):
    base = write_cifar(tmp_path, "cifar100")
    with open(base / "train", "wb") as fh:
        pickle.dump({b"data": eval}, fh)  # not print: an in-process ray.init patches it
    with pytest.raises(DataError, match="refusing to unpickle builtins.eval"):
        load_data("cifar100", (3, 32, 32), 100, root=tmp_path)


def test_imagenet_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("n01", "n02"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    data = load_data("imagenet", (3, 32, 32), val_size=2, root=tmp_path)
    data.train.workers = data.val.workers = data.test.workers = 0
    assert (len(data.train), len(data.val), len(data.test), data.num_classes) == (10, 2, 4, 2)
    x, y = next(data.train.batches(4, shuffle=True, augment=True, generator=torch.Generator().manual_seed(0)))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    x, _ = next(data.test.batches(4))
    assert x.shape == (4, 3, 32, 32)


MISSING = [
    ("fashion-mnist", "apt-get install dataset-fashion-mnist"),
    ("cifar10", "cifar-10-batches-py/"),
    ("imagenet", "train/ and val/ in ImageFolder layout"),
]


@pytest.mark.parametrize(("name", "how"), MISSING)
def test_missing_data_names_dataset_paths_and_remedy(tmp_path, monkeypatch, name, how):
    monkeypatch.setattr("prunenas.builtin_datasets._download", lambda *a: False)
    monkeypatch.setattr("prunenas.builtin_datasets.search_paths", lambda root, *d: [tmp_path / "nothing"])
    with pytest.raises(DataError) as err:
        load_data(name, (3, 32, 32), root=tmp_path / "nothing")
    assert f"dataset {name}: files not found in {tmp_path / 'nothing'}" in str(err.value) and how in str(err.value)


def test_corrupt_idx_files(tmp_path):
    (tmp_path / "a.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="is corrupt"):
        read_idx(tmp_path / "a.gz")
    (tmp_path / "b").write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", 10, 28, 28) + b"\x00" * 100)
    with pytest.raises(DataError, match="is truncated"):
        read_idx(tmp_path / "b")
    (tmp_path / "c").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "c")


def test_shapes_that_cannot_fit(tmp_path):
    make_idx_folder(tmp_path / "fm")
    with pytest.raises(DataError, match="cannot fit them to 3x32x32"):
        load_data("fashion-mnist", (3, 32, 32), root=tmp_path / "fm")
    with pytest.raises(DataError, match="has 10 classes, the space expects 100"):
        load_data("fashion-mnist", (1, 32, 32), 100, root=tmp_path / "fm")


def test_synthetic_is_deterministic_and_any_shape():
    a = load_data("synthetic", (2, 12, 20), 3)
    b = load_data("synthetic", (2, 12, 20), 3)
    assert a.train.images.shape[1:] == (2, 12, 20) and torch.equal(a.train.images, b.train.images)
    assert set(a.train.labels.tolist()) == {0, 1, 2}


def test_augmentation_crops_and_flips_per_image():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, Augment(crop_pad=1, flip=True), g)
    assert out.shape == x.shape
    g = torch.Generator().manual_seed(0)
    shifts = torch.randint(0, 3, (2, 2), generator=g)
    flips = torch.rand(2, generator=g) < 0.5
    for i in range(2):
        padded = torch.nn.functional.pad(x[i], (1, 1, 1, 1))
        expect = padded[:, shifts[0, i]:shifts[0, i] + 4, shifts[1, i]:shifts[1, i] + 4]
        assert torch.equal(out[i], expect.flip(2) if flips[i] else expect)


def test_batches_cover_the_split_and_normalise():
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    split = TensorSplit(images, torch.arange(10), torch.full((1, 1, 1, 1), 0.5), torch.full((1, 1, 1, 1), 0.25))
    seen = torch.cat([y for _, y in split.batches(3, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    x, _ = next(split.batches(10))
    torch.testing.assert_close(x, (images.float() / 255 - 0.5) / 0.25)
    assert sum(len(y) for _, y in split.batches(3, drop_last=True)) == 9
