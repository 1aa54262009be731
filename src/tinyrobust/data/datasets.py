"""Dataset registry, the in-memory dataset type and the decoded-array cache.

Every dataset is small enough (CIFAR-10: 180 MB as uint8) to live in memory as one array, which
keeps loading, shuffling and subset selection simple and fast. Decoding (JPEG, pickles, .mat) is
done once per source file and cached as ``.npz``, which loads in well under a second.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import paths
from ..errors import DataError
from ..io_utils import atomic_write
from ..registry import Registry

# Bump when the decoded layout changes, so old caches are ignored instead of misread.
_CACHE_VERSION = 1


@dataclass
class ArrayDataset:
    name: str
    split: str
    x: np.ndarray  # uint8 NHWC RGB images, or float32 NCHW features already scaled to [0, 1]
    y: np.ndarray  # int64 class indices
    classes: list[str]
    source: str  # the file or folder actually read; results must name it

    def __post_init__(self) -> None:
        what = f"{self.name}/{self.split} from {self.source}"
        if self.x.ndim == 4 and self.x.dtype == np.float32:  # features (audio): NCHW, in [0, 1]
            if len(self.x) and not (self.x.min() >= 0 and self.x.max() <= 1):  # also catches NaN
                raise DataError(f"{what}: float32 features must lie in [0, 1]")
        elif self.x.dtype != np.uint8 or self.x.ndim != 4 or self.x.shape[-1] != 3:
            raise DataError(f"{what}: images must be uint8 NHWC RGB, got {self.x.dtype} {self.x.shape}")
        if self.y.dtype != np.int64 or self.y.shape != (len(self.x),):
            raise DataError(f"{what}: need int64 labels ({len(self.x)},), got {self.y.dtype} {self.y.shape}")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= len(self.classes)):
            raise DataError(f"{what}: labels outside 0..{len(self.classes) - 1}")

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset before any data is loaded."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W) as the model sees it
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units; normalisation lives inside the model
    std: tuple[float, ...]
    kind: str  # "image" or "audio"
    augment: bool  # whether random crop + horizontal flip suits the data
    splits: tuple[str, ...] = ("train", "test")
    # Feature data (kind "audio"): the raw feature interval that the stored [0, 1] values map onto
    # linearly, so an L-inf eps of k/255 is k/255 of this range; None for images (pixels, [0, 1]).
    feature_range: tuple[float, float] | None = None


Loader = Callable[[str, Path, bool], ArrayDataset]
DATASETS: Registry[Loader] = Registry("dataset")
_INFO: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> Callable[[Loader], Loader]:
    """Register ``loader(split, data_dir, download)`` under ``info.name`` together with its info."""

    def deco(fn: Loader) -> Loader:
        DATASETS.register(info.name)(fn)
        _INFO[info.name] = info
        return fn

    return deco


def dataset_info(name: str) -> DatasetInfo:
    DATASETS.get(name)  # raises UnknownNameError listing the choices
    return _INFO[name]


def load_dataset(
    name: str, split: str, data_dir: str | os.PathLike | None = None, download: bool = True
) -> ArrayDataset:
    """Load ``split`` of dataset ``name`` from ``data_dir`` (``--data-dir`` > ``$TINYROBUST_DATA`` >
    ``~/.cache/tinyrobust/data``), downloading the official archive there if allowed and missing."""
    loader = DATASETS.get(name)
    splits = _INFO[name].splits
    if split not in splits:
        raise DataError(f"dataset {name!r} has no split {split!r}; choose one of: {', '.join(splits)}")
    return loader(split, paths.data_dir(data_dir), download)


def cached(name: str, split: str, files: Sequence[Path], build: Callable[[], ArrayDataset]) -> ArrayDataset:
    """Return ``build()``, decoded once and then read from ``paths.cache_dir()``.

    The key is the dataset, split and the identity (path, size, mtime) of every source file, so a
    replaced or edited source is decoded again; a damaged cache file is deleted and rebuilt."""
    h = hashlib.sha256(f"v{_CACHE_VERSION}|{name}|{split}".encode())
    for f in files:
        st = f.stat()
        h.update(f"|{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    path = paths.cache_dir() / f"{name}-{split}-{h.hexdigest()[:16]}.npz"
    if path.exists():
        try:
            return _read_cache(path, name, split)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, DataError):
            path.unlink(missing_ok=True)
    ds = build()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, x=ds.x, y=ds.y, classes=np.array(ds.classes, dtype=str), source=np.array(ds.source))

    try:
        atomic_write(path, write)
    except OSError as exc:
        raise DataError(f"cannot write cache {path} ({exc}); point TINYROBUST_CACHE at a writable folder") from None
    return ds


def _read_cache(path: Path, name: str, split: str) -> ArrayDataset:
    with np.load(path, allow_pickle=False) as z:
        return ArrayDataset(
            name=name,
            split=split,
            x=z["x"],
            y=z["y"],
            classes=[str(c) for c in z["classes"]],
            source=str(z["source"]),
        )
