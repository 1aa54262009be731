"""The validation split: images held out of a dataset's TRAINING split for every hyperparameter choice.

The test split is touched only for final numbers. The validation images are a stratified subset
(``stratified_subset``) of the training split drawn with ``data.val_seed``, which is apart from the run's
seed so that runs with different seeds share one validation set; the run trains on the rest. With
``val_size`` 0 nothing is held out and the training split is exactly what it was before the split
existed (same arrays, same order), so older runs keep their meaning.

Entry points: ``validation_indices`` (the indices), ``split_dataset`` (an ``ArrayDataset`` already
loaded -> its train part or val part), ``load_split`` (by dataset name) and ``config_split`` (what a
run's config means by "train", "val" or "test", ``train_subset``/``test_subset`` included).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Dict

import numpy as np

from ..errors import ConfigError
from .datasets import ArrayDataset, load_dataset
from .loader import stratified_subset

SPLITS = ("train", "val", "test")


def validation_indices(labels: np.ndarray, val_size: int, val_seed: int = 0) -> np.ndarray:
    """Sorted indices (into the training split) of the ``val_size`` validation samples; empty for 0.

    ConfigError naming ``data.val_size`` if it leaves no training data."""
    labels = np.asarray(labels)
    if val_size < 0:
        raise ConfigError(f"data.val_size: {val_size} is out of range; allowed [0, {len(labels) - 1}]")
    if val_size == 0:
        return np.zeros(0, dtype=np.int64)
    if val_size >= len(labels):
        raise ConfigError(
            f"data.val_size: {val_size} leaves no training data (the training split has "
            f"{len(labels)} examples); allowed [0, {len(labels) - 1}]"
        )
    return stratified_subset(labels, val_size, val_seed)


def indices_sha256(indices: np.ndarray) -> str:
    """sha256 of the indices as little-endian int64: names a split in env.json, compact and exact."""
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


def _take(ds: ArrayDataset, idx: np.ndarray, split: str) -> ArrayDataset:
    return dataclasses.replace(ds, split=split, x=ds.x[idx], y=ds.y[idx])  # keeps any other field


def split_dataset(train_ds: ArrayDataset, split: str, val_size: int, val_seed: int = 0) -> ArrayDataset:
    """The ``"train"`` part (training split minus validation, in the original order) or the ``"val"``
    part of a loaded training split. ``val_size`` 0: "train" returns ``train_ds`` itself, unchanged."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    val = validation_indices(train_ds.y, val_size, val_seed)
    if split == "val":
        return _take(train_ds, val, "val")
    if len(val) == 0:
        return train_ds
    keep = np.ones(len(train_ds), dtype=bool)
    keep[val] = False
    return _take(train_ds, np.flatnonzero(keep), "train")


def load_split(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    val_size: int = 0,
    val_seed: int = 0,
    download: bool = True,
) -> ArrayDataset:
    """Split ``"train"`` (without the validation images), ``"val"`` or ``"test"`` of dataset ``name``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "test":
        return load_dataset(name, "test", data_dir, download)
    return split_dataset(load_dataset(name, "train", data_dir, download), split, val_size, val_seed)


def config_split(
    cfg: Any, split: str, data_dir: str | os.PathLike | None = None, download: bool = True
) -> ArrayDataset:
    """What a run's config (``RunConfig``) trains, validates or tests on: ``"train"`` is the training
    split minus ``data.val_size`` validation images, then cut to ``data.train_subset`` (seeded by the
    run's seed); ``"val"`` is the validation images; ``"test"`` is the test split (``test_subset`` is
    left to the caller, which picks its own evaluation subset)."""
    d = cfg.data
    ddir = data_dir or d.data_dir
    ds = load_split(d.dataset, split, ddir, val_size=d.val_size, val_seed=d.val_seed, download=download)
    if split == "train" and d.train_subset and d.train_subset < len(ds):
        idx = stratified_subset(ds.y, d.train_subset, cfg.seed)
        ds = _take(ds, idx, ds.split)
    return ds


def split_record(train_labels: np.ndarray, val_size: int, val_seed: int) -> Dict[str, Any]:
    """The ``val_split`` entry of env.json: size, seed and the sha256 of the held-out indices."""
    idx = validation_indices(train_labels, val_size, val_seed)
    return {
        "size": int(len(idx)),
        "seed": int(val_seed),
        "of": int(len(train_labels)),
        "indices_sha256": indices_sha256(idx),
    }
