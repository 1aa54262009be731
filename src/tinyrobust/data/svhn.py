"""SVHN cropped digits (format 2): ``{train,test,extra}_32x32.mat`` read with scipy.io.loadmat.

The files store X as (32, 32, 3, N) and y in 1..10 where 10 means the digit 0; here x is NHWC and
y is the digit itself. ``augment`` is False: a mirrored digit is no digit a model will be shown,
and a 4-pixel shift can move the neighbouring digits of a house number into the centre.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from ..errors import DataError
from . import archive
from .datasets import ArrayDataset, DatasetInfo, cached, register_dataset

URL = "http://ufldl.stanford.edu/housenumbers/"
FILES = {
    "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    "extra": ("extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"),
}
CLASSES = [str(d) for d in range(10)]

INFO = DatasetInfo(
    name="svhn",
    num_classes=10,
    input_shape=(3, 32, 32),
    mean=(0.4377, 0.4438, 0.4728),  # training-set statistics
    std=(0.1980, 0.2010, 0.1970),
    kind="image",
    augment=False,
    splits=("train", "test", "extra"),
)


def read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN .mat file -> ``(x uint8 NHWC, y int64 digits)``."""
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except Exception as exc:  # noqa: BLE001 - parsing an untrusted file: any failure means a bad file
        raise DataError(f"{path} is not a valid SVHN .mat file ({type(exc).__name__}: {exc})") from None
    x, y = mat.get("X"), mat.get("y")
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 4 and x.shape[:3] == (32, 32, 3)):
        raise DataError(f"{path} is not a valid SVHN .mat file: X is not a uint8 (32, 32, 3, N) array")
    n = x.shape[3]
    if not (isinstance(y, np.ndarray) and y.size == n and np.issubdtype(y.dtype, np.number)):
        raise DataError(f"{path} is not a valid SVHN .mat file: y is not {n} numeric labels")
    y = y.reshape(-1)
    bad = np.flatnonzero((y < 1) | (y > 10) | (y != np.round(y)))
    if bad.size:
        raise DataError(f"{path}: label {y[bad[0]]} at index {bad[0]} is outside 1..10")
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), y.astype(np.int64) % 10


@register_dataset(INFO)
def load_svhn(split: str, data_dir: Path, download: bool) -> ArrayDataset:
    fname, md5 = FILES[split]
    path = data_dir / fname
    if not path.is_file():
        if not download:
            raise DataError(
                f"SVHN {split} split not found at {path} and downloading is disabled; put {fname} "
                f"({URL}{fname}, md5 {md5}) in a folder and point TINYROBUST_DATA or --data-dir at it"
            )
        archive.download(URL + fname, path, md5)

    def build() -> ArrayDataset:
        x, y = read_mat(path)
        return ArrayDataset("svhn", split, x, y, list(CLASSES), f"{path} (official SVHN cropped digits)")

    return cached("svhn", split, [path], build)
