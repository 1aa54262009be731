"""CIFAR-10 from the official python batches, or from the JPEG image-folder copy when offline.

The official batches are Python pickles, and unpickling runs whatever code the file names. They are
read with an unpickler that resolves only the three numpy names a pickled array needs and refuses
every other global, so a tampered file fails with DataError instead of running code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DataError
from . import archive
from .datasets import ArrayDataset, DatasetInfo, cached, register_dataset
from .imagefolder import load_image_folder

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
JPEG_ARCHIVE = "cifar10-jpeg.tar.gz"
JPEG_DIR = "cifar10-jpeg"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

INFO = DatasetInfo(
    name="cifar10",
    num_classes=10,
    input_shape=(3, 32, 32),
    mean=(0.4914, 0.4822, 0.4465),  # training-set statistics of the original pixels
    std=(0.2470, 0.2435, 0.2616),
    kind="image",
    augment=True,
)

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]


class _BatchUnpickler(pickle.Unpickler):
    """Resolves only what a pickled numpy array needs; the batches (written by Python 2 numpy) name
    ``numpy.core.multiarray``, newer pickles ``numpy._core.multiarray``."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def read_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> ``(x uint8 NHWC, y int64)``; ``where`` names the file in errors."""
    try:
        batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - no code can run here, so any failure means a bad file
        raise DataError(f"{where} is not a valid CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
    x = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 3 * 32 * 32):
        raise DataError(f"{where} is not a valid CIFAR-10 batch: b'data' is not a uint8 (N, 3072) array")
    if not (isinstance(labels, list) and len(labels) == len(x) and all(type(v) is int for v in labels)):
        raise DataError(f"{where} is not a valid CIFAR-10 batch: b'labels' is not a list of {len(x)} ints")
    y = np.array(labels, dtype=np.int64)
    bad = np.flatnonzero((y < 0) | (y >= len(CLASSES)))
    if bad.size:
        raise DataError(f"{where}: label {y[bad[0]]} at index {bad[0]} is outside 0..{len(CLASSES) - 1}")
    return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), y


def _from_batches(split: str, batches: list[tuple[str, bytes]], source: Path) -> ArrayDataset:
    parts = [read_batch(data, where) for where, data in batches]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return ArrayDataset("cifar10", split, x, y, list(CLASSES), f"{source} (official CIFAR-10 python batches)")


def _load_batches_dir(split: str, folder: Path) -> ArrayDataset:
    files = [folder / b for b in BATCHES[split]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"incomplete CIFAR-10 folder {folder}: missing {', '.join(missing)}")

    def build() -> ArrayDataset:
        return _from_batches(split, [(str(f), f.read_bytes()) for f in files], folder)

    return cached("cifar10", split, files, build)


def _load_batches_archive(split: str, tar: Path) -> ArrayDataset:
    def build() -> ArrayDataset:
        wanted = [f"{BATCHES_DIR}/{b}" for b in BATCHES[split]]
        found = {
            PurePosixPath(name).as_posix(): data
            for name, data in archive.iter_tar(tar, lambda name: PurePosixPath(name).as_posix() in wanted)
        }
        missing = [n for n in wanted if n not in found]
        if missing:
            raise DataError(f"archive {tar} lacks {', '.join(missing)}: not the CIFAR-10 python archive")
        return _from_batches(split, [(f"{tar} member {n}", found[n]) for n in wanted], tar)

    return cached("cifar10", split, [tar], build)


def _load_jpeg_copy(split: str, path: Path) -> ArrayDataset:
    ds = load_image_folder("cifar10", path, split, (32, 32), note="JPEG image-folder copy")
    if ds.classes != CLASSES:
        raise DataError(f"{path}: class folders {ds.classes} are not the CIFAR-10 classes {CLASSES}")
    return ds


@register_dataset(INFO)
def load_cifar10(split: str, data_dir: Path, download: bool) -> ArrayDataset:
    """Use, in order: the official batches folder, the official archive, the JPEG image-folder copy
    (lossy: results must say so, hence ``source``), else download the official archive."""
    batches_dir, tar = data_dir / BATCHES_DIR, data_dir / ARCHIVE
    jpeg_tar, jpeg_dir = data_dir / JPEG_ARCHIVE, data_dir / JPEG_DIR
    if batches_dir.is_dir():
        return _load_batches_dir(split, batches_dir)
    if tar.is_file():
        return _load_batches_archive(split, tar)
    if jpeg_tar.is_file():
        return _load_jpeg_copy(split, jpeg_tar)
    if jpeg_dir.is_dir():
        return _load_jpeg_copy(split, jpeg_dir)
    if not download:
        why = "downloading is disabled"
    else:
        try:
            archive.download(URL, tar, MD5)
        except DataError as exc:
            why = f"the download failed: {exc}"
        else:
            return _load_batches_archive(split, tar)
    looked = ", ".join(str(p) for p in (batches_dir, tar, jpeg_tar, jpeg_dir))
    raise DataError(
        f"CIFAR-10 not found; looked at {looked}, and {why}. Put {ARCHIVE} ({URL}, md5 {MD5}) in a folder "
        "and point TINYROBUST_DATA or --data-dir at it"
    )
