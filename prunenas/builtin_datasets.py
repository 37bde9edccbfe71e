"""The built-in datasets: Fashion-MNIST and MNIST (IDX files), CIFAR-10/100 (torchvision's pickle format, read
without running pickled code), a synthetic learnable set, and ImageNet (an ImageFolder decoded by DataLoader
workers). Each loader finds its files in ``root``, ``$PRUNENAS_DATA`` or its default folders, and names them and
the remedy when they are missing; :mod:`prunenas.data` registers them."""

from __future__ import annotations

import gzip
import io
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from prunenas.distributed import shard_bounds
from prunenas.splits import Augment, Batch, Data, DataError, Raw, batch_indices, default_val_size


def search_paths(root: str | os.PathLike | None, *defaults: str | Path) -> list[Path]:
    """Folders to look in: ``root``, ``$PRUNENAS_DATA``, then the defaults."""
    paths = [Path(p) for p in (root, os.environ.get("PRUNENAS_DATA")) if p]
    return paths + [Path(p).expanduser() for p in defaults]


def missing_files(name: str, paths: list[Path], how: str) -> DataError:
    """The error of a dataset whose files are in none of ``paths``, with ``how`` to get them."""
    return DataError(f"dataset {name}: files not found in {', '.join(map(str, paths))}; {how}")


# -- IDX (MNIST, Fashion-MNIST) ---------------------------------------------------------------------------

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): images -> (N, 1, H, W) uint8, labels -> (N,) uint8."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path} is corrupt: {err}") from None
    if len(data) < 8 or data[:2] != b"\x00\x00" or data[2] != 8 or data[3] not in (1, 3):
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    header = 4 + 4 * data[3]
    if len(data) < header:
        raise DataError(f"{path} is truncated: {len(data)} bytes, shorter than its {header}-byte header")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(data[3])]
    body = np.frombuffer(data, dtype=np.uint8, offset=header)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: {body.size} bytes for shape {dims}")
    body = body.reshape(dims)
    return body[:, None] if body.ndim == 3 else body


def find_idx(name: str, paths: list[Path], how: str) -> list[Path]:
    for folder in paths:
        found = []
        for stem in IDX_FILES:
            candidates = [folder / f"{stem}.gz", folder / stem]
            found.append(next((c for c in candidates if c.exists()), None))
        if all(found):
            return found  # type: ignore[return-value]
    raise missing_files(name, paths, how)


def load_idx_dataset(name: str, paths: list[Path], how: str, augmentation: Augment) -> Raw:
    train_x, train_y, test_x, test_y = (read_idx(p) for p in find_idx(name, paths, how))
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise DataError(f"dataset {name}: image and label counts differ")
    return Raw(train_x, train_y, test_x, test_y, 10, augmentation)


def fashion_mnist(*, root=None, download=True, **_) -> Raw:
    """Fashion-MNIST (Xiao et al. 2017): the gzipped IDX files, e.g. from Debian's dataset-fashion-mnist."""
    paths = search_paths(root, "/usr/share/datasets/fashion-mnist", "~/.cache/prunenas/fashion-mnist",
                         "~/.cache/prunenas/FashionMNIST/raw")
    how = ("install it with `apt-get install dataset-fashion-mnist`, or pass --data-root FOLDER with the four "
           "*-ubyte(.gz) files")
    try:
        return load_idx_dataset("fashion-mnist", paths, how, Augment(crop_pad=2, flip=True))
    except DataError as missing:
        if download and "not found" in str(missing) and _download("FashionMNIST", "~/.cache/prunenas"):
            return load_idx_dataset("fashion-mnist", paths, how, Augment(crop_pad=2, flip=True))
        raise


def mnist(*, root=None, download=True, **_) -> Raw:
    """MNIST: the IDX files (torchvision's MNIST/raw layout or a plain folder). No flips for digits."""
    paths = search_paths(root, "~/.cache/prunenas/MNIST/raw", "/usr/share/datasets/mnist")
    paths += [p / "MNIST" / "raw" for p in search_paths(root)]
    how = "pass --data-root FOLDER with the four *-ubyte(.gz) files (torchvision downloads them when online)"
    try:
        return load_idx_dataset("mnist", paths, how, Augment(crop_pad=2))
    except DataError as missing:
        if download and "not found" in str(missing) and _download("MNIST", "~/.cache/prunenas"):
            return load_idx_dataset("mnist", paths, how, Augment(crop_pad=2))
        raise


def _download(cls_name: str, folder: str) -> bool:
    """Try torchvision's download (online machines only); False when it fails or $PRUNENAS_NO_DOWNLOAD is set."""
    if os.environ.get("PRUNENAS_NO_DOWNLOAD"):
        return False
    try:
        getattr(torchvision.datasets, cls_name)(os.path.expanduser(folder), download=True)
        return True
    except Exception:  # noqa: BLE001 - offline or blocked: the caller reports the missing files
        return False


# -- CIFAR ------------------------------------------------------------------------------------------------


class _ArraysOnly(pickle.Unpickler):
    """Unpickles the CIFAR format (dicts of bytes, lists and numpy arrays) and nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"refusing to unpickle {module}.{name} from a dataset file")
        return super().find_class(module, name)


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            entry = _ArraysOnly(io.BytesIO(fh.read()), encoding="bytes").load()
        images = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as err:
        raise DataError(f"{path} is not a CIFAR batch file: {err!r}") from None
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels


def load_cifar(name: str, folder_name: str, train_files: list[str], test_file: str, label_key: bytes,
               classes: int, root, download: bool = True) -> Raw:
    paths = search_paths(root, "~/.cache/prunenas", "./data")
    how = f"pass --data-root FOLDER containing {folder_name}/ (torchvision's format; downloaded when online)"
    for attempt in range(2):
        for folder in paths:
            base = folder / folder_name
            if all((base / f).exists() for f in [*train_files, test_file]):
                parts = [read_cifar_batch(base / f, label_key) for f in train_files]
                test_x, test_y = read_cifar_batch(base / test_file, label_key)
                return Raw(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                           test_x, test_y, classes, Augment(crop_pad=4, flip=True))
        if attempt == 0 and not (download and _download(name.upper().replace("-", ""), "~/.cache/prunenas")):
            break
    raise missing_files(name, paths, how)


def cifar10(*, root=None, download=True, **_) -> Raw:
    """CIFAR-10 in torchvision's python-pickle format (cifar-10-batches-py/)."""
    return load_cifar("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                      b"labels", 10, root, download)


def cifar100(*, root=None, download=True, **_) -> Raw:
    """CIFAR-100 (fine labels) in torchvision's python-pickle format (cifar-100-python/)."""
    return load_cifar("cifar100", "cifar-100-python", ["train"], "test", b"fine_labels", 100, root, download)


# -- synthetic --------------------------------------------------------------------------------------------


def synthetic(*, input_shape=(3, 32, 32), num_classes=None, train: int = 2048, test: int = 512, **_) -> Raw:
    """Deterministic, learnable images: one smooth random prototype per class plus noise and a shift."""
    classes = num_classes or 4
    rng = np.random.default_rng(1234)
    c, h, w = input_shape
    coarse = rng.normal(size=(classes, c, max(2, h // 4), max(2, w // 4)))
    protos = F.interpolate(torch.tensor(coarse, dtype=torch.float32), size=(h, w), mode="bilinear",
                           align_corners=False).numpy()

    def draw(n: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        r = np.random.default_rng(stream)
        labels = r.integers(0, classes, n)
        x = protos[labels] + 0.8 * r.normal(size=(n, c, h, w))
        x = np.roll(x, r.integers(-1, 2), axis=3)
        return np.clip(x * 40 + 128, 0, 255).astype(np.uint8), labels.astype(np.int64)

    train_x, train_y = draw(train, 1)
    test_x, test_y = draw(test, 2)
    return Raw(train_x, train_y, test_x, test_y, classes, Augment(crop_pad=1, flip=False))


# -- ImageNet (ImageFolder, DataLoader workers) --------------------------------------------------------------

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class FolderSplit:
    """Images in an ImageFolder, decoded by DataLoader workers; ``augment`` picks the training transform."""

    train_view: object  # torchvision ImageFolder with the training transform
    eval_view: object  # the same files with the evaluation transform
    indices: list[int]
    workers: int = 8

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device: torch.device | str) -> FolderSplit:
        return self  # batches are moved to the device by the trainer

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False,
                shard: tuple[int, int] = (0, 1)) -> Iterator[Batch]:
        """Decoded batches; with ``shard = (rank, workers)``, worker ``rank``'s slice of each global batch."""
        view = self.train_view if augment else self.eval_view
        shards = [index[slice(*shard_bounds(len(index), *shard))].tolist()
                  for index in batch_indices(len(self), batch_size, shuffle, generator, drop_last)]
        loader = DataLoader(Subset(view, self.indices), batch_sampler=shards, num_workers=self.workers,
                            generator=generator, pin_memory=torch.cuda.is_available(), persistent_workers=False)
        yield from loader


def imagenet(*, root=None, input_shape=(3, 224, 224), seed=0, val_size=None, subset=None, **_) -> Data:
    """ImageNet in ImageFolder layout (``train/CLASS/*.JPEG``, ``val/CLASS/*.JPEG``).

    Training: RandomResizedCrop + flip; evaluation: resize to size/0.875 and centre crop. The validation split
    is ``val_size`` images of ``train/`` (evaluation transform); ``val/`` is the test set.
    """
    paths = search_paths(root, "~/.cache/prunenas/imagenet", "/datasets/imagenet")
    folder = next((p for p in paths if (p / "train").is_dir() and (p / "val").is_dir()), None)
    if folder is None:
        raise missing_files("imagenet", paths, "pass --data-root FOLDER holding train/ and val/ in ImageFolder layout")
    size = input_shape[1]
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    eval_tf = transforms.Compose([transforms.Resize(int(size / 0.875)), transforms.CenterCrop(size),
                                  transforms.ToTensor(), norm])
    train_aug, train_eval = (datasets.ImageFolder(folder / "train", t) for t in (train_tf, eval_tf))
    test_view = datasets.ImageFolder(folder / "val", eval_tf)
    if train_aug.classes != test_view.classes:
        raise DataError(f"imagenet: {folder}/train and {folder}/val have different class folders")
    order = np.random.default_rng(seed).permutation(len(train_aug)).tolist()
    val_size = default_val_size(len(order), cap=10000) if val_size is None else val_size
    if not 0 <= val_size < len(order):
        raise DataError(f"val_size {val_size} must be in [0, {len(order)})")
    val_idx, train_idx = order[:val_size], order[val_size:]
    train_idx = train_idx[:subset] if subset else train_idx
    test_idx = list(range(len(test_view)))
    return Data("imagenet", FolderSplit(train_aug, train_eval, train_idx), FolderSplit(train_aug, train_eval, val_idx),
                FolderSplit(test_view, test_view, test_idx), len(train_aug.classes), tuple(input_shape))
