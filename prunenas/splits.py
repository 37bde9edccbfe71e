"""Train / validation / test splits and the in-memory input pipeline.

Datasets that fit in memory are held as one uint8 tensor per split (:class:`TensorSplit`), moved once to the
training device; normalisation and augmentation (random crop from a zero-padded image + horizontal flip) run per
batch on that device, with no per-sample Python. :class:`Raw` is what a dataset loader returns before
:func:`prunenas.data.load_data` carves the validation split.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from prunenas.distributed import shard_bounds
from prunenas.errors import PrunenasError

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


@dataclass(frozen=True)
class Raw:
    """What a dataset loader returns: uint8 arrays (N, C, H, W) and labels for train and test."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    augmentation: Augment


def default_val_size(train_images: int, cap: int = 5000) -> int:
    """Validation images carved by default: 10% of the training set, at most ``cap``."""
    return min(cap, train_images // 10)
