"""Image-folder datasets: ``[prefix/]<split>/<class>/*.{png,jpg,jpeg}`` in a folder or a tar(.gz).

Tars are read member by member without extracting (no second copy on disk, no path tricks); class
index = position of the class folder name in sorted order, as torchvision's ImageFolder does.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import DataError
from .archive import iter_tar
from .datasets import ArrayDataset, cached

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _class_of(parts: Sequence[str], split: str) -> str | None:
    """Class folder of an image at ``[prefix/]split/class/file`` (one optional prefix), else None."""
    if len(parts) not in (3, 4) or parts[-3] != split:
        return None
    fname = parts[-1]
    if fname.startswith(".") or not fname.lower().endswith(IMAGE_EXTENSIONS):
        return None
    return parts[-2]


def image_files(root: Path, split: str) -> list[Path]:
    """The image files of ``split`` under folder ``root``, sorted."""
    found = (p for pattern in (f"{split}/*/*", f"*/{split}/*/*") for p in root.glob(pattern))
    return sorted(p for p in found if _class_of(p.relative_to(root).parts, split) and p.is_file())


def _decode(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except _DECODE_ERRORS as exc:
        raise DataError(f"cannot decode image {where} ({exc}); the file is corrupt, replace it") from None


def read_image_folder(
    path: Path, split: str, image_size: tuple[int, int] | None = None, desc: str | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode every image of ``split`` to RGB uint8: ``(x NHWC, y int64, classes)``.

    All images must have the same size (``image_size`` as (H, W) if given). ``desc`` shows a
    progress bar on stderr when it is a terminal (decoding CIFAR-10 takes several seconds; logs of
    background runs stay free of it)."""
    items: list[tuple[str, str, str, np.ndarray]] = []  # (class, file name, where, image)
    if path.is_dir():
        for f in tqdm(
            image_files(path, split), desc=desc, unit="img", file=sys.stderr, disable=True if desc is None else None
        ):
            try:
                data = f.read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read image {f} ({exc.strerror or exc})") from None
            items.append((f.parent.name, f.name, str(f), _decode(data, str(f))))
    else:

        def wanted(name: str) -> bool:
            return _class_of(PurePosixPath(name).parts, split) is not None

        for name, data in iter_tar(path, wanted, desc):
            parts = PurePosixPath(name).parts
            where = f"{path} member {name!r}"
            items.append((parts[-2], parts[-1], where, _decode(data, where)))
    if not items:
        raise DataError(f"no images for split {split!r} in {path}; expected {split}/<class>/*.png|jpg|jpeg")
    items.sort(key=lambda it: it[:2])
    shape = (*image_size, 3) if image_size else items[0][3].shape
    for _, _, where, img in items:
        if img.shape != shape:
            raise DataError(f"image {where} is {img.shape[1]}x{img.shape[0]}, expected {shape[1]}x{shape[0]}")
    classes = sorted({c for c, *_ in items})
    index = {c: i for i, c in enumerate(classes)}
    x = np.stack([img for *_, img in items])
    y = np.array([index[c] for c, *_ in items], dtype=np.int64)
    return x, y, classes


def load_image_folder(
    name: str, path: Path, split: str, image_size: tuple[int, int] | None = None, note: str = "image folder"
) -> ArrayDataset:
    """``read_image_folder`` as an ``ArrayDataset``, decoded once and cached; ``note`` goes into
    ``source`` (e.g. "JPEG image-folder copy", so results say which copy they came from)."""
    files = image_files(path, split) if path.is_dir() else [path]

    def build() -> ArrayDataset:
        x, y, classes = read_image_folder(path, split, image_size, desc=f"decoding {name}/{split}")
        return ArrayDataset(name, split, x, y, classes, source=f"{path} ({note})")

    return cached(name, split, files, build)
