"""Google Speech Commands v0.02 as the MLCommons Tiny (MLC/T) 12-class keyword-spotting task.

Read from the official layout: a folder per word of 16 kHz mono 16-bit wav files, the long
``_background_noise_/*.wav`` recordings, and ``validation_list.txt`` / ``testing_list.txt`` (paths
``word/file.wav``; train is every other clip). Either that folder
(``<data dir>/speech_commands_v0.02/``) or the official archive ``speech_commands_v0.02.tar.gz``
(extracted once, safely, into the cache directory) is used, else the archive is downloaded.

What each clip becomes follows the MLC/T reference (``benchmark/training/keyword_spotting``:
``get_dataset.py`` on top of TensorFlow Datasets' ``speech_commands`` builder); docs/datasets.md
lists every choice and every difference:

- classes in the reference (TFDS) order: down go left no off on right stop up yes _silence_
  _unknown_; every other word is ``_unknown_`` (all of them, not subsampled, as in TFDS);
  ``_silence_`` clips are 1 s windows of the background recordings at a 0.5 s hop, those of
  ``running_tap.wav`` in validation and the rest in train, as in TFDS; the test split (from
  ``testing_list.txt``) therefore has no silence clips;
- a clip is divided by its maximum sample value (as the reference does: the maximum, not the
  maximum magnitude), zero-padded to 1 s, and cut to 1 s if longer (the original TensorFlow speech
  pipeline's ``decode_wav(desired_samples=16000)`` does that; the official clips are never longer);
- training clips get background noise as in the reference (with probability 0.8, a random 1 s
  window of a random background file at a volume uniform in [0, 0.1], then clipped to [-1, 1]),
  drawn once per clip from a generator seeded by the clip's path: the cached training set is one
  fixed noisy copy of each clip, not a fresh draw per epoch;
- features: the reference's ``tf.signal`` MFCC, re-implemented in numpy: 30 ms periodic Hann
  windows at a 20 ms stride (49 frames), 512-point FFT magnitude, 40 HTK-mel bins from 20 to 4000 Hz,
  ``log(mel + 1e-6)``, DCT-II scaled as ``tf.signal.mfccs_from_log_mel_spectrograms``, first 10
  coefficients -> 49 x 10;
- the MFCCs are stored mapped linearly from ``FEATURE_RANGE`` (-128, 128) to [0, 1] (the model
  input domain shared with images, where attacks clip), and the model's ``Normalize`` uses
  mean 0.5 and std 1/256, which maps them back exactly: the network sees the raw MFCCs, as the
  reference Keras model does (no data statistics). An L-inf eps of k/255 is k/255 of the range,
  i.e. about k MFCC units.

A wav that is not 16-bit mono PCM at 16 kHz, or is truncated or not a RIFF/WAVE file at all, is a
``DataError`` naming the file: the reference neither resamples nor mixes channels (TFDS decodes the
raw samples whatever the header says), so such a file is a damaged copy, not something to fix.
"""

from __future__ import annotations

import sys
import warnings
import wave
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Iterable

import numpy as np
import scipy.fft
from tqdm import tqdm

from .. import paths
from ..errors import DataError
from . import archive
from .datasets import ArrayDataset, DatasetInfo, cached, register_dataset

URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
MD5 = "6b74f3901214cb2c2934e98196829835"
ARCHIVE = "speech_commands_v0.02.tar.gz"
FOLDER = "speech_commands_v0.02"
VALIDATION_LIST = "validation_list.txt"
TESTING_LIST = "testing_list.txt"
BACKGROUND_DIR = "_background_noise_"
VALIDATION_NOISE = "running_tap.wav"  # TFDS puts this recording's silence windows in validation

WORDS = ["down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes"]
SILENCE, UNKNOWN = "_silence_", "_unknown_"
CLASSES = WORDS + [SILENCE, UNKNOWN]  # TFDS ClassLabel order, which the MLC/T reference uses

SAMPLE_RATE = 16000
CLIP_SAMPLES = 16000  # 1 s
SILENCE_HOP = SAMPLE_RATE // 2
WINDOW = 480  # 30 ms
STRIDE = 320  # 20 ms
FFT_LENGTH = 512  # tf.signal.stft default: the next power of two >= WINDOW
NUM_MEL = 40
MEL_LOW_HZ, MEL_HIGH_HZ = 20.0, 4000.0
NUM_MFCC = 10
LOG_OFFSET = 1e-6
NUM_FRAMES = 1 + (CLIP_SAMPLES - WINDOW) // STRIDE  # 49

BACKGROUND_FREQUENCY = 0.8  # reference defaults (kws_util.py)
BACKGROUND_VOLUME = 0.1
NOISE_SEED = 20180409  # fixed: the cached training set is one reproducible noisy copy

FEATURE_RANGE = (-128.0, 128.0)  # MFCC units mapped to [0, 1]; see the module docstring
# Bump when anything above that changes the features; it is part of the cache key.
FEATURE_VERSION = 1

INFO = DatasetInfo(
    name="speech_commands",
    num_classes=len(CLASSES),
    input_shape=(1, NUM_FRAMES, NUM_MFCC),
    # not data statistics: the exact inverse of the [0, 1] storage map, so models see raw MFCCs
    mean=(-FEATURE_RANGE[0] / (FEATURE_RANGE[1] - FEATURE_RANGE[0]),),
    std=(1.0 / (FEATURE_RANGE[1] - FEATURE_RANGE[0]),),
    kind="audio",
    augment=False,  # crop/flip of an MFCC map is no augmentation; noise is mixed in at cache time
    splits=("train", "validation", "test"),
    feature_range=FEATURE_RANGE,
)


# ---------------------------------------------------------------- wav files


def read_wav(path: Path, sample_rate: int | None = SAMPLE_RATE) -> np.ndarray:
    """A 16-bit mono PCM wav as int16 samples; anything else is a ``DataError`` naming the file."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            data = w.readframes(n)
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - parsing an untrusted file (the stdlib raises wave.Error,
        # EOFError, RuntimeError, struct.error...): any failure means a bad file
        raise DataError(f"{path} is not a valid PCM wav file ({type(exc).__name__}: {exc})") from None
    if channels != 1:
        raise DataError(f"{path} has {channels} channels; Speech Commands clips are mono")
    if width != 2:
        raise DataError(f"{path} has {8 * width}-bit samples; Speech Commands clips are 16-bit PCM")
    if sample_rate is not None and rate != sample_rate:
        raise DataError(
            f"{path} is sampled at {rate} Hz, not {sample_rate} Hz; the reference pipeline does not resample, "
            "so this is not a file of the official dataset: replace it with the original"
        )
    if len(data) != 2 * n:
        raise DataError(f"{path} is truncated: its header announces {n} samples, it holds {len(data) // 2}")
    if n == 0:
        raise DataError(f"{path} holds no samples")
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def normalize_clip(samples: np.ndarray) -> np.ndarray:
    """float64 clip of exactly ``CLIP_SAMPLES``: divided by its maximum sample (the reference's
    ``wav / reduce_max(wav)``), then zero-padded or cut to 1 s. Where the reference would divide by
    zero or a negative number (a clip with no positive sample), the maximum magnitude is used, and
    an all-zero clip stays zero."""
    x = np.asarray(samples, dtype=np.float64)
    peak = x.max() if x.size else 0.0
    if peak <= 0:
        peak = np.abs(x).max() if x.size else 0.0
    if peak > 0:
        x = x / peak
    if len(x) >= CLIP_SAMPLES:
        return x[:CLIP_SAMPLES].copy()
    return np.pad(x, (0, CLIP_SAMPLES - len(x)))


def _noise_rng(clip_id: str) -> np.random.Generator:
    return np.random.default_rng([NOISE_SEED, zlib.crc32(clip_id.encode("utf-8"))])


def mix_background(clip: np.ndarray, clip_id: str, noises: list[np.ndarray]) -> np.ndarray:
    """The reference's training-time noise mixing, with draws seeded by ``clip_id``: with probability
    ``BACKGROUND_FREQUENCY`` add a random 1 s window of a random ``noises`` recording (int16 scaled
    to [-1, 1), as ``tf.audio.decode_wav`` gives) at a volume uniform in [0, ``BACKGROUND_VOLUME``),
    then clip to [-1, 1]. The clip is clipped even at volume 0, as in the reference."""
    if not noises:
        return clip
    rng = _noise_rng(clip_id)
    noise = noises[int(rng.integers(len(noises)))]
    offset = int(rng.integers(0, len(noise) - CLIP_SAMPLES))
    volume = rng.uniform(0, BACKGROUND_VOLUME) if rng.uniform(0, 1) < BACKGROUND_FREQUENCY else 0.0
    window = noise[offset : offset + CLIP_SAMPLES].astype(np.float64) / 32768.0
    return np.clip(clip + volume * window, -1.0, 1.0)


# ---------------------------------------------------------------- features


def _hz_to_mel(f):
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def mel_matrix() -> np.ndarray:
    """(FFT_LENGTH // 2 + 1, NUM_MEL) weights, as ``tf.signal.linear_to_mel_weight_matrix``: HTK mel
    scale, triangles between equally spaced mel edges, the DC bin zeroed."""
    freqs = np.linspace(0.0, SAMPLE_RATE / 2, FFT_LENGTH // 2 + 1)[1:]
    mel = _hz_to_mel(freqs)[:, None]
    edges = np.linspace(_hz_to_mel(MEL_LOW_HZ), _hz_to_mel(MEL_HIGH_HZ), NUM_MEL + 2)
    lower, center, upper = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    weights = np.maximum(0.0, np.minimum((mel - lower) / (center - lower), (upper - mel) / (upper - center)))
    return np.pad(weights, ((1, 0), (0, 0)))


_MEL = mel_matrix()
_WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)  # tf.signal.hann_window(periodic)


def log_mel_spectrogram(clips: np.ndarray) -> np.ndarray:
    """(N, CLIP_SAMPLES) -> (N, NUM_FRAMES, NUM_MEL) ``log(mel(|STFT|) + 1e-6)`` (no padding at the
    ends, as ``tf.signal.stft(pad_end=False)``)."""
    clips = np.asarray(clips, dtype=np.float64)
    if clips.ndim != 2 or clips.shape[1] != CLIP_SAMPLES:
        raise ValueError(f"expected clips of shape (N, {CLIP_SAMPLES}), got {clips.shape}")
    frames = np.lib.stride_tricks.sliding_window_view(clips, WINDOW, axis=1)[:, ::STRIDE]
    spectrum = np.abs(np.fft.rfft(frames * _WINDOW, n=FFT_LENGTH, axis=-1))
    return np.log(spectrum @ _MEL + LOG_OFFSET)


def mfcc(clips: np.ndarray) -> np.ndarray:
    """(N, CLIP_SAMPLES) -> (N, NUM_FRAMES, NUM_MFCC) MFCCs in the reference's units:
    ``tf.signal.mfccs_from_log_mel_spectrograms`` is the unnormalised DCT-II times 1/sqrt(2 * bins)."""
    dct = scipy.fft.dct(log_mel_spectrogram(clips), type=2, axis=-1)
    return dct[..., :NUM_MFCC] / np.sqrt(2.0 * NUM_MEL)


def to_unit_range(features: np.ndarray) -> tuple[np.ndarray, int]:
    """MFCCs -> float32 in [0, 1] via ``FEATURE_RANGE``, and how many values had to be clipped
    (none for any clip whose samples lie in [-1, 1]; see docs/datasets.md)."""
    lo, hi = FEATURE_RANGE
    scaled = (features - lo) / (hi - lo)
    clipped = int(np.count_nonzero((scaled < 0) | (scaled > 1)))
    return np.clip(scaled, 0.0, 1.0).astype(np.float32), clipped


def clip_features(clips: np.ndarray) -> np.ndarray:
    """Normalised 1 s clips (N, CLIP_SAMPLES) -> float32 (N, 1, NUM_FRAMES, NUM_MFCC) in [0, 1]."""
    x, _ = to_unit_range(mfcc(clips))
    return x[:, None]


# ---------------------------------------------------------------- the official layout


def _read_list(root: Path, name: str) -> list[str]:
    path = root / name
    if not path.is_file():
        raise DataError(f"{root} is not the official Speech Commands v0.02 layout: {name} is missing")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} ({exc})") from None
    return [ln.strip() for ln in lines if ln.strip()]


def _background_files(root: Path) -> list[Path]:
    folder = root / BACKGROUND_DIR
    files = sorted(folder.glob("*.wav")) if folder.is_dir() else []
    if not files:
        raise DataError(f"{root} is not the official Speech Commands v0.02 layout: no {BACKGROUND_DIR}/*.wav")
    return files


def _clip_files(root: Path) -> list[str]:
    """Every ``word/file.wav`` outside the background folder, sorted."""
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name != BACKGROUND_DIR):
        out.extend(f"{d.name}/{f.name}" for f in sorted(d.glob("*.wav")) if f.is_file())
    return out


def split_members(root: Path) -> dict[str, list[str]]:
    """Relative clip paths of each split: the two list files, train is everything else."""
    clips = _clip_files(root)
    if not clips:
        raise DataError(f"{root} holds no word folders of wav files: not the Speech Commands layout")
    have = set(clips)
    val, test = _read_list(root, VALIDATION_LIST), _read_list(root, TESTING_LIST)
    for name, listed in ((VALIDATION_LIST, val), (TESTING_LIST, test)):
        missing = [p for p in listed if p not in have]
        if missing:
            raise DataError(
                f"{root / name} names {len(missing)} clip(s) that are not there, e.g. {missing[0]}: "
                "the copy is incomplete; extract the official archive again"
            )
    held_out = set(val) | set(test)
    return {
        "train": [p for p in clips if p not in held_out],
        "validation": sorted(set(val)),
        "test": sorted(set(test)),
    }


def label_of(rel: str) -> int:
    word = rel.split("/", 1)[0]
    return CLASSES.index(word) if word in WORDS else CLASSES.index(UNKNOWN)


def silence_windows(noise: np.ndarray) -> list[np.ndarray]:
    """TFDS's silence clips: 1 s windows at a 0.5 s hop (``range(0, len - 16000, 8000)``)."""
    return [noise[s : s + CLIP_SAMPLES] for s in range(0, len(noise) - CLIP_SAMPLES, SILENCE_HOP)]


def _build(split: str, root: Path, source: str, chunk: int = 512) -> ArrayDataset:
    members = split_members(root)[split]
    noise_files = _background_files(root)
    noises = [read_wav(f) for f in noise_files]
    for f, n in zip(noise_files, noises):
        if len(n) <= CLIP_SAMPLES:
            raise DataError(f"background recording {f} is {len(n)} samples long; it must exceed 1 s")
    # (clip id, label, loader) in output order: the split's word clips, then its silence windows
    items: list[tuple[str, int, object]] = [(rel, label_of(rel), root / rel) for rel in members]
    if split != "test":
        for f, n in zip(noise_files, noises):
            if (f.name == VALIDATION_NOISE) == (split == "validation"):
                items += [
                    (f"{BACKGROUND_DIR}/{f.name}@{i * SILENCE_HOP}", CLASSES.index(SILENCE), w)
                    for i, w in enumerate(silence_windows(n))
                ]
    if not items:
        raise DataError(f"split {split!r} of {root} is empty")
    train = split == "train"
    xs, clipped = [], 0
    bar = tqdm(
        total=len(items),
        desc=f"speech_commands {split} features",
        unit="clip",
        file=sys.stderr,
        disable=None,
        leave=False,
    )
    for start in range(0, len(items), chunk):
        batch = []
        for clip_id, _, what in items[start : start + chunk]:
            clip = normalize_clip(read_wav(what) if isinstance(what, Path) else what)
            batch.append(mix_background(clip, clip_id, noises) if train else clip)
        feats, n_clipped = to_unit_range(mfcc(np.stack(batch)))
        xs.append(feats[:, None])
        clipped += n_clipped
        bar.update(len(batch))
    bar.close()
    if clipped:
        warnings.warn(
            f"speech_commands {split}: {clipped} MFCC values outside {FEATURE_RANGE} were clipped "
            "(clips with a large negative DC offset); see docs/datasets.md",
            stacklevel=2,
        )
    y = np.array([label for _, label, _ in items], dtype=np.int64)
    return ArrayDataset("speech_commands", split, np.concatenate(xs), y, list(CLASSES), source)


def _source(root: Path, split: str, origin: str) -> str:
    noise = "; one seeded background-noise copy per clip" if split == "train" else ""
    return f"{origin} (official Speech Commands v0.02, MLC/T 12 classes, MFCC 49x10{noise})"


def _load_folder(split: str, root: Path, origin: str) -> ArrayDataset:
    files = [root / VALIDATION_LIST, root / TESTING_LIST, *_background_files(root)]
    files += [root / rel for rel in _clip_files(root)]
    # the feature version is part of the key (via the split name), so changed features are rebuilt
    ds = cached(
        "speech_commands",
        f"{split}-mfcc-v{FEATURE_VERSION}",
        [f for f in files if f.is_file()],
        lambda: _build(split, root, _source(root, split, origin)),
    )
    return replace(ds, split=split)


def _extracted(tar: Path) -> Path:
    """Extract the official archive once into the cache directory (keyed by the archive's identity)."""
    st = tar.stat()
    key = zlib.crc32(f"{tar.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()) & 0xFFFFFFFF
    dest = paths.cache_dir() / f"{FOLDER}-{key:08x}"
    if not dest.is_dir():  # extract_tar renames into place only when complete
        print(f"extracting {tar} to {dest} (once)", file=sys.stderr)
        archive.extract_tar(tar, dest)
    if not (dest / VALIDATION_LIST).is_file():  # a repacked archive with one top-level folder
        inner = [d for d in dest.iterdir() if d.is_dir() and (d / VALIDATION_LIST).is_file()]
        if len(inner) == 1:
            return inner[0]
    return dest


@register_dataset(INFO)
def load_speech_commands(split: str, data_dir: Path, download: bool) -> ArrayDataset:
    """Use, in order: the official folder ``<data_dir>/speech_commands_v0.02``, the official archive
    in ``data_dir`` (extracted into the cache), else download the archive (2.3 GB)."""
    folder, tar = data_dir / FOLDER, data_dir / ARCHIVE
    if folder.is_dir():
        return _load_folder(split, folder, str(folder))
    if not tar.is_file():
        if not download:
            raise DataError(
                f"Speech Commands not found at {folder} or {tar}, and downloading is disabled; put {ARCHIVE} "
                f"({URL}, md5 {MD5}) or its extracted folder {FOLDER}/ there, or point TINYROBUST_DATA or "
                "--data-dir at the folder holding it"
            )
        archive.download(URL, tar, MD5)
    root = _extracted(tar)
    return _load_folder(split, root, f"{tar} extracted to {root}")


def iter_split_ids(root: Path, split: str) -> Iterable[tuple[str, int]]:
    """``(clip id, label)`` of a split in the order of its samples (word clips, then silence windows
    named ``_background_noise_/file.wav@start``), without decoding any audio."""
    for rel in split_members(root)[split]:
        yield rel, label_of(rel)
    if split != "test":
        for f in _background_files(root):
            if (f.name == VALIDATION_NOISE) == (split == "validation"):
                for s in range(0, len(read_wav(f)) - CLIP_SAMPLES, SILENCE_HOP):
                    yield f"{BACKGROUND_DIR}/{f.name}@{s}", CLASSES.index(SILENCE)
