"""Datasets by name: the registry (:func:`register_dataset`), :func:`load_data` (train / validation / test splits
in a space's input shape) and the planned size of a run's training set.

The built-in datasets are in :mod:`prunenas.builtin_datasets`, the splits and the fast in-memory input pipeline
in :mod:`prunenas.splits`. ImageNet uses an ImageFolder with DataLoader workers (RandomResizedCrop/flip for
training, resize-256/centre-crop-224 for evaluation).

The validation split is carved from the training set with a fixed seed; the test set is never used for
selection. Register your own dataset with :func:`register_dataset`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

from prunenas.builtin_datasets import cifar10, cifar100, fashion_mnist, imagenet, mnist, synthetic
from prunenas.registry import Registry
from prunenas.splits import Data, DataError, Raw, TensorSplit, default_val_size

Loader = Callable[..., "Raw | Data"]
DATASETS: Registry[Loader] = Registry("dataset")


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator for ``loader(*, root, input_shape, num_classes, seed, val_size, subset) -> Raw | Data``.

    Return a :class:`Raw` (in-memory arrays; :func:`load_data` carves validation, normalises and pads) or,
    for datasets that do not fit in memory, a ready :class:`Data`. Ignore the keywords you do not need.
    """
    return DATASETS.register(name)  # type: ignore[return-value]


for _name, _loader in (("fashion-mnist", fashion_mnist), ("mnist", mnist), ("cifar10", cifar10),
                       ("cifar100", cifar100), ("synthetic", synthetic), ("imagenet", imagenet)):
    register_dataset(_name)(_loader)


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
