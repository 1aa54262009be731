"""``speech_commands_logmel``: Speech Commands v0.02 as 98x40 log-mel images, MLC/T's 12 classes.

Training material is the shared log-mel JPEG set (no audio exists here; see docs/datasets.md):
``speech_commands_v0.02_logmel_jpeg/`` (folder, or the ``.tar.gz`` read member by member without
extracting) with ``<word>/<speaker>_nohash_<n>.<word>.jpg`` for the ten keywords,
``unknown/<speaker>_nohash_<n>.<word>.jpg`` (other words, subsampled by the source) and
``_background_noise_/<N>_background.jpg`` (1 s background windows), plus ``validation_list.txt`` and
``testing_list.txt`` (made with the dataset's speaker-hash rule). Splits:

- ``train``: every image in neither list; ``validation``: ``validation_list.txt``;
- ``test``: the official 12-class **test WAVs** (``speech_commands_test_set_v0.02``, 4,890 clips,
  408 ``_silence_``; MLC/T's test set), each recording centered in its 1 s window as the JPEG set's
  clips were (``center_clip``), through ``logmel_frontend`` -- the number to compare with MLC/T, and
  what training curves, attacks and reports use;
- ``test_jpeg``: ``testing_list.txt`` of the JPEG set (5,461 images, no ``_silence_``: every
  background image is in train).

Labels: ``CLASSES`` of ``speech_commands`` (down go left no off on right stop up yes _silence_
_unknown_); ``unknown/`` -> ``_unknown_``, ``_background_noise_/`` -> ``_silence_``; a test WAV's
label is ``CLASSES.index(<its folder>)``. Inputs are float32 (N, 1, 98, 40) = pixel / 255.

The loader refuses, with one line naming the file: an image that is not 8-bit grayscale 40 wide x
98 high, a list entry naming a missing image, a speaker in two splits (that would leak test
speakers into training), and a WAV that is not 16-bit mono 16 kHz (``read_wav``).
"""

from __future__ import annotations

import io
import sys
import zlib
from dataclasses import replace
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from tqdm import tqdm

from .. import paths
from ..errors import DataError
from . import archive
from .datasets import ArrayDataset, DatasetInfo, cached, register_dataset
from .logmel_frontend import CLIP_SAMPLES, NUM_FRAMES, NUM_MEL, logmel_images
from .speech_commands import CLASSES, SILENCE, UNKNOWN, WORDS, read_wav

FOLDER = "speech_commands_v0.02_logmel_jpeg"
ARCHIVE = f"{FOLDER}.tar.gz"
VALIDATION_LIST, TESTING_LIST = "validation_list.txt", "testing_list.txt"
UNKNOWN_DIR, BACKGROUND_DIR = "unknown", "_background_noise_"
TEST_FOLDER = "speech_commands_test_set_v0.02"
TEST_ARCHIVES = (f"{TEST_FOLDER}.tar.xz", f"{TEST_FOLDER}.tar.gz")
IMAGE_SIZE = (NUM_MEL, NUM_FRAMES)  # PIL (width, height): 40 mel bins wide, 98 frames high
# Bump when JPEG decoding (VERSION) or the test WAVs' processing (TEST_VERSION: alignment, front end,
# source text) changes; they are part of the cache keys.
VERSION = 2
TEST_VERSION = 3

INFO = DatasetInfo(
    name="speech_commands_logmel",
    num_classes=len(CLASSES),
    input_shape=(1, NUM_FRAMES, NUM_MEL),
    # training-split pixel statistics /255 (measured on the shared JPEG set's 42,473 train images)
    mean=(0.3320,),
    std=(0.1971,),
    kind="audio",
    augment=False,
    splits=("train", "validation", "test", "test_jpeg"),
    # the stored [0, 1] values are pixel levels / 255: eps k/255 = k levels = k/20 neper = 0.43k dB
    feature_range=(0.0, 255.0),
)


def _folder_label(folder: str) -> int | None:
    if folder in WORDS:
        return CLASSES.index(folder)
    if folder == UNKNOWN_DIR:
        return CLASSES.index(UNKNOWN)
    if folder == BACKGROUND_DIR:
        return CLASSES.index(SILENCE)
    return None


def speaker_of(rel: str) -> str | None:
    """Speaker id of ``<class>/<speaker>_nohash_<n>.<word>.jpg`` (or ``<speaker>_nohash_<n>.wav``);
    None for background windows, which have no speaker."""
    name = rel.rsplit("/", 1)[-1]
    return name.split("_nohash_", 1)[0] if "_nohash_" in name else None


def _image_rel(name: str) -> str | None:
    """``<class>/<file>.jpg`` of a member or file path (with or without the top folder), else None."""
    parts = PurePosixPath(name).parts
    if parts and parts[0] == FOLDER:
        parts = parts[1:]
    if len(parts) != 2 or _folder_label(parts[0]) is None:
        return None
    if parts[1].startswith(".") or not parts[1].lower().endswith(".jpg"):
        return None
    return "/".join(parts)


def _list_rel(name: str) -> str | None:
    parts = PurePosixPath(name).parts
    if parts and parts[0] == FOLDER:
        parts = parts[1:]
    return parts[0] if len(parts) == 1 and parts[0] in (VALIDATION_LIST, TESTING_LIST) else None


def _parse_list(data: bytes, where: str) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {where} ({exc})") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def split_members(images: list[str], lists: dict[str, list[str]], where: str) -> dict[str, list[str]]:
    """Relative image paths of train / validation / test_jpeg, checked: every list entry exists and
    no speaker falls in two splits."""
    for name in (VALIDATION_LIST, TESTING_LIST):
        if name not in lists:
            raise DataError(f"{where} is not the log-mel JPEG layout: {name} is missing")
    have = set(images)
    for name, listed in lists.items():
        missing = [p for p in listed if p not in have]
        if missing:
            raise DataError(
                f"{where}: {name} names {len(missing)} image(s) that are not there, e.g. "
                f"{missing[0]}: the copy is incomplete, get it again"
            )
    val, test = set(lists[VALIDATION_LIST]), set(lists[TESTING_LIST])
    both = sorted(val & test)
    if both:
        raise DataError(f"{where}: {both[0]} is in both {VALIDATION_LIST} and {TESTING_LIST}")
    splits = {"train": sorted(have - val - test), "validation": sorted(val), "test_jpeg": sorted(test)}
    owner: dict[str, str] = {}
    for split, rels in splits.items():
        for rel in rels:
            spk = speaker_of(rel)
            if spk is None:
                continue
            if owner.setdefault(spk, split) != split:
                raise DataError(
                    f"{where}: speaker {spk} is in both {owner[spk]} and {split} (e.g. {rel}): the "
                    "split lists leak speakers across splits; use lists made by speaker hash"
                )
    return splits


def _decode(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            mode, size = im.mode, im.size
            arr = np.asarray(im) if mode == "L" and size == IMAGE_SIZE else None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {where} ({exc}); the file is corrupt, replace it") from None
    if size != IMAGE_SIZE:
        raise DataError(
            f"image {where} is {size[0]}x{size[1]}, expected {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} "
            f"({NUM_MEL} mel bins wide, {NUM_FRAMES} frames high)"
        )
    if mode != "L":
        raise DataError(f"image {where} is mode {mode}, expected 8-bit grayscale (L)")
    return arr


class _JpegSource:
    """The JPEG set as a folder or a tar: image names, list files and image bytes."""

    def __init__(self, path: Path):
        self.path = path
        if path.is_dir():
            files = [p for p in path.rglob("*.jpg") if p.is_file()]
            self._files = {rel: p for p in files if (rel := _image_rel(p.relative_to(path).as_posix()))}
            self.lists = {}
            for name in (VALIDATION_LIST, TESTING_LIST):
                for f in (path / name, path / FOLDER / name):
                    if f.is_file():
                        try:
                            self.lists[name] = _parse_list(f.read_bytes(), str(f))
                        except OSError as exc:
                            raise DataError(f"cannot read {f} ({exc.strerror or exc})") from None
                        break
            self.images = sorted(self._files)
        else:  # one checked pass over the tar: every member's name, and the two list files' bytes
            names: list[str] = []

            def select(name: str) -> bool:
                if _image_rel(name):
                    names.append(name)
                    return False
                return _list_rel(name) is not None

            self.lists = {
                _list_rel(n): _parse_list(d, f"{path} member {n!r}") for n, d in archive.iter_tar(path, select)
            }
            self.images = sorted({_image_rel(n) for n in names})
        if not self.images:
            raise DataError(f"{path} holds no <class>/*.jpg images: not the log-mel JPEG layout")

    def read(self, rels: list[str], desc: str) -> np.ndarray:
        """Decoded images of ``rels`` in that order: uint8 (N, 98, 40)."""
        want = set(rels)
        out: dict[str, np.ndarray] = {}
        if self.path.is_dir():
            for rel in tqdm(rels, desc=desc, unit="img", file=sys.stderr, disable=None, leave=False):
                f = self._files[rel]
                try:
                    data = f.read_bytes()
                except OSError as exc:
                    raise DataError(f"cannot read image {f} ({exc.strerror or exc})") from None
                out[rel] = _decode(data, str(f))
        else:
            for name, data in archive.iter_tar(self.path, lambda n: _image_rel(n) in want, desc):
                out[_image_rel(name)] = _decode(data, f"{self.path} member {name!r}")
        return np.stack([out[r] for r in rels])


def _load_jpeg(split: str, path: Path) -> ArrayDataset:
    src = None

    def build() -> ArrayDataset:
        nonlocal src
        src = src or _JpegSource(path)
        rels = split_members(src.images, src.lists, str(path))[split]
        if not rels:
            raise DataError(f"split {split!r} of {path} is empty")
        x = src.read(rels, f"decoding speech_commands_logmel/{split}")
        y = np.array([_folder_label(r.split("/", 1)[0]) for r in rels], dtype=np.int64)
        x = (x.astype(np.float32) / 255.0)[:, None]
        return ArrayDataset(
            INFO.name,
            split,
            x,
            y,
            list(CLASSES),
            f"{path} (shared log-mel JPEG copy of Speech Commands v0.02, 98x40, MLC/T 12 classes)",
        )

    files = (
        [path]
        if path.is_file()
        else sorted(
            [p for p in path.rglob("*") if p.is_file() and (p.suffix == ".jpg" or p.name.endswith("_list.txt"))]
        )
    )
    ds = cached(INFO.name, f"{split}-jpeg-v{VERSION}", files, build)
    return replace(ds, split=split)


# ---------------------------------------------------------------- the official test WAVs


def test_wav_files(root: Path) -> list[tuple[Path, int]]:
    """``(wav, label)`` of the official test folder (``<class>/*.wav``, ``.wav.wav`` included), sorted;
    label = ``CLASSES.index(folder)``. Every one of the 12 class folders must hold clips."""
    out = []
    for c in CLASSES:
        d = root / c
        files = sorted(f for f in d.glob("*.wav") if f.is_file()) if d.is_dir() else []
        if not files:
            raise DataError(f"{root} is not the official Speech Commands test set: {c}/ holds no wav files")
        out += [(f, CLASSES.index(c)) for f in files]
    return out


def _test_root(data_dir: Path) -> tuple[Path, str]:
    """The extracted official test folder: ``<data_dir>/speech_commands_test_set_v0.02/``, else its
    archive extracted once into the cache (members with or without the top folder)."""
    folder = data_dir / TEST_FOLDER
    if folder.is_dir():
        return folder, str(folder)
    for name in TEST_ARCHIVES:
        tar = data_dir / name
        if tar.is_file():
            st = tar.stat()
            key = zlib.crc32(f"{tar.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()) & 0xFFFFFFFF
            dest = paths.cache_dir() / f"{TEST_FOLDER}-{key:08x}"
            if not dest.is_dir():
                print(f"extracting {tar} to {dest} (once)", file=sys.stderr)
                archive.extract_tar(tar, dest)
            root = dest / TEST_FOLDER if (dest / TEST_FOLDER).is_dir() else dest
            return root, f"{tar} extracted to {root}"
    raise DataError(
        f"the official Speech Commands test WAVs are not at {folder} or {data_dir / TEST_ARCHIVES[0]}; "
        f"put {TEST_ARCHIVES[0]} there (or use split test_jpeg, the JPEG set's own test list)"
    )


def center_clip(samples: np.ndarray) -> np.ndarray:
    """int16 1 s clip with the recording centered: the official test clips are the recordings
    zero-padded at the end to 1 s, while the JPEG set's images were made from the recordings centered
    in the 1 s window (measured: ``benchmarks/logmel_frontend.py``; for the ~10% of clips shorter than
    1 s, correlation with the JPEG rises from ~0.2-0.8 to ~0.95). So the trailing zero padding is
    removed and the recording placed at offset (16000 - length) // 2; a longer one is cut to 1 s."""
    s = np.asarray(samples, dtype=np.int16)
    nz = np.flatnonzero(s)
    s = s[: nz[-1] + 1] if nz.size else s[:0]
    s = s[:CLIP_SAMPLES]
    out = np.zeros(CLIP_SAMPLES, np.int16)
    left = (CLIP_SAMPLES - len(s)) // 2
    out[left : left + len(s)] = s
    return out


def read_test_wavs(data_dir: Path) -> tuple[np.ndarray, np.ndarray, list[Path], str]:
    """All official test clips as int16 (N, 16000) (``center_clip``), labels, files, source."""
    root, origin = _test_root(data_dir)
    items = test_wav_files(root)
    clips = np.zeros((len(items), CLIP_SAMPLES), np.int16)
    for i, (f, _) in enumerate(
        tqdm(items, desc="reading test WAVs", unit="clip", file=sys.stderr, disable=None, leave=False)
    ):
        clips[i] = center_clip(read_wav(f))
    y = np.array([lab for _, lab in items], dtype=np.int64)
    return clips, y, [f for f, _ in items], origin


def _load_test_wav(data_dir: Path) -> ArrayDataset:
    root, origin = _test_root(data_dir)
    files = [f for f, _ in test_wav_files(root)]

    def build() -> ArrayDataset:
        clips, y, _, _ = read_test_wavs(data_dir)
        return ArrayDataset(
            INFO.name,
            "test",
            logmel_images(clips),
            y,
            list(CLASSES),
            f"{origin} (official Speech Commands v0.02 12-class test WAVs, MLC/T's test set, "
            f"through the log-mel front end; trained on the shared log-mel JPEG copy {ARCHIVE})",
        )

    ds = cached(INFO.name, f"test-wav-v{TEST_VERSION}", files, build)
    return replace(ds, split="test")


@register_dataset(INFO)
def load_speech_commands_logmel(split: str, data_dir: Path, download: bool) -> ArrayDataset:
    """``test`` from the official test WAVs; the other splits from the JPEG set, as the folder
    ``<data_dir>/speech_commands_v0.02_logmel_jpeg`` or its archive (never downloaded: no official URL)."""
    if split == "test":
        return _load_test_wav(data_dir)
    folder, tar = data_dir / FOLDER, data_dir / ARCHIVE
    if folder.is_dir():
        return _load_jpeg(split, folder)
    if tar.is_file():
        return _load_jpeg(split, tar)
    raise DataError(
        f"the log-mel JPEG set is not at {folder} or {tar} (it has no download URL); put {ARCHIVE} "
        "there, or point TINYROBUST_DATA or --data-dir at the folder holding it"
    )
