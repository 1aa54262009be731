"""Batches from an in-memory ``ArrayDataset``, without DataLoader workers.

Images are uint8 NHWC and become float32 NCHW in [0, 1]; feature datasets (audio) are stored as
float32 NCHW already in [0, 1] and pass through unchanged (copied, never shared with the dataset).

The whole dataset is one array, so a batch is one fancy-index plus one vectorised crop/flip:
faster than per-sample transforms and exactly reproducible, since every random draw comes from one
``torch.Generator`` seeded from (seed, epoch).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ..errors import DataError
from .datasets import ArrayDataset

PAD = 4  # random-crop padding, in pixels (the standard CIFAR recipe)


def _as_nchw_float(x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.uint8:  # float32 NCHW features, already in [0, 1]
        return x.to(torch.float32, copy=True).contiguous()
    return x.permute(0, 3, 1, 2).contiguous().float().div_(255)


def to_tensors(ds: ArrayDataset, indices: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x float32 NCHW in [0, 1], y int64)`` for ``indices`` (default: all)."""
    x, y = (ds.x, ds.y) if indices is None else (ds.x[indices], ds.y[indices])
    return _as_nchw_float(torch.from_numpy(np.ascontiguousarray(x))), torch.tensor(y)


def _generator(seed: int, epoch: int) -> torch.Generator:
    # SeedSequence mixes (seed, epoch) so nearby pairs give unrelated streams
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop with ``PAD`` zero pixels each side plus random horizontal flip, on a uint8 NHWC
    batch, as a single gather: the flip is folded into the column index."""
    n, h, w, _ = x.shape
    padded = torch.nn.functional.pad(x, (0, 0, PAD, PAD, PAD, PAD))
    top = torch.randint(0, 2 * PAD + 1, (n, 1), generator=gen)
    left = torch.randint(0, 2 * PAD + 1, (n, 1), generator=gen)
    flip = torch.rand(n, 1, generator=gen) < 0.5
    rows = top + torch.arange(h)
    cols = left + torch.where(flip, torch.arange(w - 1, -1, -1), torch.arange(w))
    return padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


class BatchIterator:
    """Iterates ``(x float32 NCHW in [0, 1], y int64)`` batches of ``ds``.

    The order (``shuffle``) and the augmentation (``augment``: random crop + flip) of one pass are a
    pure function of (seed, epoch): iterating twice gives identical batches, and resuming a run at
    epoch k reproduces epoch k. Make one per epoch."""

    def __init__(
        self,
        ds: ArrayDataset,
        batch_size: int,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if augment and ds.x.dtype != np.uint8:
            raise DataError(
                f"{ds.name} holds features, not images: random crop + flip augmentation does "
                "not apply; set train.augment to false (or null for the dataset's default)"
            )
        self.ds, self.batch_size, self.shuffle, self.augment = ds, batch_size, shuffle, augment
        self.seed, self.epoch, self.drop_last = seed, epoch, drop_last
        self._x = torch.from_numpy(ds.x)
        self._y = torch.from_numpy(ds.y)

    def __len__(self) -> int:
        n = len(self.ds)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = _generator(self.seed, self.epoch)
        n = len(self.ds)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self._x[idx]
            if self.augment:
                x = augment_batch(x, gen)
            yield _as_nchw_float(x), self._y[idx]


def stratified_subset(ds_or_labels: ArrayDataset | np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` samples with the class proportions of the whole set (up to one
    sample per class).

    Depends only on (labels, n, seed), so every model is attacked on the same samples, and is
    nested: the k-sample subset is contained in the n-sample subset for k <= n (same seed). It is
    :func:`nested_stratified_order` sorted; use that one where the order matters (attack order)."""
    return np.sort(nested_stratified_order(ds_or_labels, n, seed))


def nested_stratified_order(ds_or_labels: ArrayDataset | np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` samples, stratified by class and *nested*: the first k of the n-sample
    order are exactly the k-sample order (same seed), so models attacked on 200 and on 500 images
    share their first 200 images for paired comparisons.

    Each class is shuffled with the seed; its j-th sample gets the key (j + 1/2) / class size, and
    all samples are taken in key order (ties: class order). Every prefix then holds each class in
    proportion to its size, up to one sample (a round-robin over classes weighted by class size)."""
    labels = np.asarray(ds_or_labels.y if isinstance(ds_or_labels, ArrayDataset) else ds_or_labels)
    total = len(labels)
    if not 0 < n <= total:
        raise DataError(f"cannot pick a subset of {n} samples from a set of {total}")
    rng = np.random.default_rng(seed)
    keys, order = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        keys.append((np.arange(len(members)) + 0.5) / len(members))
        order.append(members)
    keys, order = np.concatenate(keys), np.concatenate(order)
    return order[np.argsort(keys, kind="stable")][:n].astype(np.int64)
