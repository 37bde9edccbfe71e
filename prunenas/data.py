"""Datasets as train / validation / test splits in a space's input shape, and a fast input pipeline.

Datasets that fit in memory (Fashion-MNIST, MNIST, CIFAR-10/100, synthetic) are held as one uint8 tensor per
split, moved once to the training device; normalisation and augmentation (random crop from a zero-padded
image + horizontal flip) run per batch on that device, with no per-sample Python. ImageNet uses an
ImageFolder with DataLoader workers (RandomResizedCrop/flip for training, resize-256/centre-crop-224 for
evaluation).

The validation split is carved from the training set with a fixed seed; the test set is never used for
selection. Register your own dataset with :func:`register_dataset`.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from prunenas.distributed import shard_bounds
from prunenas.errors import PrunenasError
from prunenas.registry import Registry

Batch = tuple[torch.Tensor, torch.Tensor]


class DataError(PrunenasError):
    """Missing or corrupt dataset files."""


@dataclass(frozen=True)
class Augment:
    """Training augmentation: random crop from a ``crop_pad``-zero-padded image, horizontal flip."""

    crop_pad: int = 0
    flip: bool = False


class Split(Protocol):
    def __len__(self) -> int: ...

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False,
                shard: tuple[int, int] = (0, 1)) -> Iterator[Batch]: ...


@dataclass
class TensorSplit:
    """A split held in memory: uint8 images (N, C, H, W) and int64 labels, on one device."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    augmentation: Augment = field(default_factory=Augment)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> TensorSplit:
        device = torch.device(device)
        if self.images.device == device:
            return self
        return replace(self, images=self.images.to(device), labels=self.labels.to(device),
                       mean=self.mean.to(device), std=self.std.to(device))

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False,
                shard: tuple[int, int] = (0, 1)) -> Iterator[Batch]:
        """Batches of ``batch_size`` images; with ``shard = (rank, workers)``, worker ``rank``'s slice of each
        global batch (the same permutation and augmentation draws on every worker)."""
        for index in batch_indices(len(self), batch_size, shuffle, generator, drop_last):
            first, stop = shard_bounds(len(index), *shard)
            mine = index[first:stop].to(self.images.device)
            x = self.images[mine].float().div_(255)
            if augment:
                x = augment_batch(x, self.augmentation, generator, first=first, total=len(index))
            yield (x - self.mean) / self.std, self.labels[mine]


def batch_indices(n: int, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                  drop_last: bool) -> Iterator[torch.Tensor]:
    """Row indices of each global batch of an ``n``-row split (a ``generator`` permutation when ``shuffle``)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def augment_batch(x: torch.Tensor, aug: Augment, generator: torch.Generator | None, *, first: int = 0,
                  total: int | None = None) -> torch.Tensor:
    """Random crop (zero padding ``aug.crop_pad``) and horizontal flip, vectorised over the batch.

    ``x`` may be rows ``first:first + len(x)`` of a global batch of ``total`` images (one worker's shard): the
    draws are made for all ``total`` and the shard's are used, so every image is augmented as on one worker."""
    n, _, h, w = x.shape
    total = n if total is None else total
    mine = slice(first, first + n)
    if aug.crop_pad:
        p = aug.crop_pad
        shifts = torch.randint(0, 2 * p + 1, (2, total), generator=generator)[:, mine].to(x.device)
        padded = F.pad(x, (p, p, p, p))
        rows = (torch.arange(h, device=x.device)[None, :] + shifts[0][:, None])[:, None, :, None]
        cols = (torch.arange(w, device=x.device)[None, :] + shifts[1][:, None])[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, channel, rows, cols]
    if aug.flip:
        flip = (torch.rand(total, generator=generator)[mine] < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


@dataclass
class Data:
    """Train, validation and test splits of one dataset, in one input shape."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]

    def to(self, device: torch.device | str) -> Data:
        """Move in-memory splits to ``device`` (once; a no-op where they already are)."""
        moved = {k: getattr(self, k).to(device) if isinstance(getattr(self, k), TensorSplit) else getattr(self, k)
                 for k in ("train", "val", "test")}
        return replace(self, **moved)


# -- registry ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """What a dataset loader returns: uint8 arrays (N, C, H, W) and labels for train and test."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    augmentation: Augment


Loader = Callable[..., "Raw | Data"]
DATASETS: Registry[Loader] = Registry("dataset")


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator for ``loader(*, root, input_shape, num_classes, seed, val_size, subset) -> Raw | Data``.

    Return a :class:`Raw` (in-memory arrays; :func:`load_data` carves validation, normalises and pads) or,
    for datasets that do not fit in memory, a ready :class:`Data`. Ignore the keywords you do not need.
    """
    return DATASETS.register(name)  # type: ignore[return-value]


def load_data(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int | None = None,
    *,
    val_size: int | None = None,
    subset: int | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    download: bool = True,
) -> Data:
    """Load dataset ``name`` in ``input_shape``, carving ``val_size`` validation images from the training set.

    Args:
        val_size: validation images (default: 10% of the training set, at most 5,000).
        subset: use only this many training images (after carving validation), e.g. for quick CPU runs.
        seed: the carve is a fixed permutation of this seed, the same for every model compared.
        root: a folder to search first; also ``$PRUNENAS_DATA``.
        download: let torchvision download missing files (online machines only).
    """
    raw = DATASETS.get(name)(root=root, input_shape=tuple(input_shape), num_classes=num_classes, seed=seed,
                             val_size=val_size, subset=subset, download=download)
    if isinstance(raw, Data):
        return raw
    train_x, test_x = fit_shape(raw.train_images, input_shape, name), fit_shape(raw.test_images, input_shape, name)
    if num_classes is not None and num_classes != raw.num_classes:
        raise DataError(f"dataset {name} has {raw.num_classes} classes, the space expects {num_classes}")
    if val_size is None:
        val_size = default_val_size(len(train_x))
    if not 0 <= val_size < len(train_x):
        raise DataError(f"val_size {val_size} must be in [0, {len(train_x)})")
    order = np.random.default_rng(seed).permutation(len(train_x))
    val_idx, train_idx = order[:val_size], order[val_size:]
    if subset is not None:
        if not 0 < subset <= len(train_idx):
            raise DataError(f"subset {subset} must be in [1, {len(train_idx)}]")
        train_idx = train_idx[:subset]
    mean, std = channel_stats(train_x[train_idx])

    def split(images: np.ndarray, labels: np.ndarray) -> TensorSplit:
        return TensorSplit(torch.from_numpy(np.ascontiguousarray(images)),
                           torch.from_numpy(labels.astype(np.int64)), mean, std, raw.augmentation)

    return Data(name, split(train_x[train_idx], raw.train_labels[train_idx]),
                split(train_x[val_idx], raw.train_labels[val_idx]), split(test_x, raw.test_labels),
                raw.num_classes, tuple(input_shape))


# Training-set sizes of the built-in datasets (for dry runs, which must not need the data).
TRAIN_SIZES = {"fashion-mnist": 60000, "mnist": 60000, "cifar10": 50000, "cifar100": 50000, "imagenet": 1281167,
               "synthetic": 2048}


def default_val_size(train_images: int, cap: int = 5000) -> int:
    """Validation images carved by default: 10% of the training set, at most ``cap``."""
    return min(cap, train_images // 10)


def planned_train_images(name: str, val_size: int | None = None, subset: int | None = None) -> int:
    """Training images a run of dataset ``name`` will use, without loading it (built-in datasets only)."""
    if name not in TRAIN_SIZES:
        raise DataError(f"dataset {name}: its size is unknown before loading it (built-in: {', '.join(TRAIN_SIZES)})")
    total = TRAIN_SIZES[name]
    carved = default_val_size(total, cap=10000 if name == "imagenet" else 5000) if val_size is None else val_size
    return min(subset, total - carved) if subset else total - carved


def fit_shape(images: np.ndarray, shape: tuple[int, int, int], name: str) -> np.ndarray:
    """Zero-pad images (centred) to ``shape`` (e.g. 28x28 Fashion-MNIST to 32x32)."""
    c, h, w = shape
    n, ci, hi, wi = images.shape
    if ci != c or hi > h or wi > w or (h - hi) % 2 or (w - wi) % 2:
        raise DataError(f"dataset {name} has images {ci}x{hi}x{wi}; cannot fit them to {c}x{h}x{w} "
                        "(zero-padding only, by an even amount)")
    if (hi, wi) == (h, w):
        return images
    out = np.zeros((n, c, h, w), dtype=images.dtype)
    out[:, :, (h - hi) // 2:(h + hi) // 2, (w - wi) // 2:(w + wi) // 2] = images
    return out


def channel_stats(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images in [0, 1] units, shaped (1, C, 1, 1)."""
    x = images.astype(np.float64) / 255
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3)) + 1e-8
    return (torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
            torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))


def search_paths(root: str | os.PathLike | None, *defaults: str | Path) -> list[Path]:
    """Folders to look in: ``root``, ``$PRUNENAS_DATA``, then the defaults."""
    paths = [Path(p) for p in (root, os.environ.get("PRUNENAS_DATA")) if p]
    return paths + [Path(p).expanduser() for p in defaults]


def _missing(name: str, paths: list[Path], how: str) -> DataError:
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
    raise _missing(name, paths, how)


def load_idx_dataset(name: str, paths: list[Path], how: str, augmentation: Augment) -> Raw:
    train_x, train_y, test_x, test_y = (read_idx(p) for p in find_idx(name, paths, how))
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise DataError(f"dataset {name}: image and label counts differ")
    return Raw(train_x, train_y, test_x, test_y, 10, augmentation)


@register_dataset("fashion-mnist")
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


@register_dataset("mnist")
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
    raise _missing(name, paths, how)


@register_dataset("cifar10")
def cifar10(*, root=None, download=True, **_) -> Raw:
    """CIFAR-10 in torchvision's python-pickle format (cifar-10-batches-py/)."""
    return load_cifar("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                      b"labels", 10, root, download)


@register_dataset("cifar100")
def cifar100(*, root=None, download=True, **_) -> Raw:
    """CIFAR-100 (fine labels) in torchvision's python-pickle format (cifar-100-python/)."""
    return load_cifar("cifar100", "cifar-100-python", ["train"], "test", b"fine_labels", 100, root, download)


# -- synthetic --------------------------------------------------------------------------------------------


@register_dataset("synthetic")
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


@register_dataset("imagenet")
def imagenet(*, root=None, input_shape=(3, 224, 224), seed=0, val_size=None, subset=None, **_) -> Data:
    """ImageNet in ImageFolder layout (``train/CLASS/*.JPEG``, ``val/CLASS/*.JPEG``).

    Training: RandomResizedCrop + flip; evaluation: resize to size/0.875 and centre crop. The validation split
    is ``val_size`` images of ``train/`` (evaluation transform); ``val/`` is the test set.
    """
    paths = search_paths(root, "~/.cache/prunenas/imagenet", "/datasets/imagenet")
    folder = next((p for p in paths if (p / "train").is_dir() and (p / "val").is_dir()), None)
    if folder is None:
        raise _missing("imagenet", paths, "pass --data-root FOLDER holding train/ and val/ in ImageFolder layout")
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
