"""Speech Commands v0.02 in its exact official layout (generated tiny in tmp_path): splits by the
list files, MLC/T labels, MFCC features, padding, noise mixing, bad files, cache and archive."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyrobust.data import BatchIterator, dataset_info, load_dataset, to_tensors
from tinyrobust.data import speech_commands as sc
from tinyrobust.data.datasets import ArrayDataset
from tinyrobust.errors import DataError

from conftest import SPEECH_PER_WORD, SPEECH_UNKNOWN_WORDS, make_speech_folder, tone, write_wav

torch.set_num_threads(1)

UNKNOWN_WORDS, PER_WORD = SPEECH_UNKNOWN_WORDS, SPEECH_PER_WORD


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TINYROBUST_CACHE", str(cache))
    monkeypatch.delenv("TINYROBUST_DATA", raising=False)
    return cache


@pytest.fixture
def speech(tmp_path):
    return make_speech_folder(tmp_path / "data")


def clean_features(root: Path, rels) -> np.ndarray:
    clips = np.stack([sc.normalize_clip(sc.read_wav(root / r)) for r in rels])
    return sc.clip_features(clips)


# ---------------------------------------------------------------- features


def test_mfcc_matches_reference_definition():
    # an all-zero clip: every log-mel bin is log(1e-6); DCT-II * 1/sqrt(80) puts 80 log(1e-6)/sqrt(80)
    # in c0 and nothing elsewhere
    m = sc.mfcc(np.zeros((1, 16000)))
    assert m.shape == (1, 49, 10)
    np.testing.assert_allclose(m[0, :, 0], 80 * np.log(1e-6) / np.sqrt(80), rtol=1e-12)
    np.testing.assert_allclose(m[0, :, 1:], 0, atol=1e-9)
    # the tf.signal mel matrix: DC row zero, nothing above 4 kHz, triangles peaking at their centres
    w = sc.mel_matrix()
    assert w.shape == (257, 40) and not w[0].any() and w.max() <= 1
    freqs = np.linspace(0, 8000, 257)
    assert not w[freqs > 4000].any() and not w[freqs < 20].any()
    # a pure 1 kHz tone puts its log-mel peak in the filter whose centre is nearest 1 kHz
    centres = np.linspace(sc._hz_to_mel(20), sc._hz_to_mel(4000), 42)[1:-1]
    lm = sc.log_mel_spectrogram(np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)[None])
    assert lm.shape == (1, 49, 40)
    assert np.all(lm[0].argmax(1) == np.argmin(np.abs(centres - sc._hz_to_mel(1000))))
    # c0 is the scaled sum of the log-mel bins
    np.testing.assert_allclose(
        sc.mfcc(np.ones((1, 16000)) * 0.3)[0, :, 0],
        2 * sc.log_mel_spectrogram(np.ones((1, 16000)) * 0.3)[0].sum(1) / np.sqrt(80),
    )


def test_feature_range_holds_any_clip_in_unit_interval():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    clips = [np.sign(np.sin(2 * np.pi * f * t)) for f in (50, 440, 3000, 7900)]
    clips += [rng.uniform(-1, 1, 16000), np.zeros(16000), np.ones(16000)]
    feats, clipped = sc.to_unit_range(sc.mfcc(np.stack(clips)))
    assert clipped == 0 and feats.dtype == np.float32 and 0 <= feats.min() and feats.max() <= 1


def test_normalize_clip_pads_cuts_and_scales_by_max():
    x = sc.normalize_clip(np.array([100, -400, 200], dtype=np.int16))
    assert x.shape == (16000,) and x[:3].tolist() == [0.5, -2.0, 1.0] and not x[3:].any()
    assert sc.normalize_clip(np.arange(1, 20001)).shape == (16000,)  # longer: cut, not resampled
    assert sc.normalize_clip(np.arange(1, 20001))[-1] == 16000 / 20000
    assert not sc.normalize_clip(np.zeros(5, dtype=np.int16)).any()  # no NaN for digital silence
    np.testing.assert_allclose(sc.normalize_clip(np.array([-10, -5]))[:2], [-1.0, -0.5])


def test_mix_background_is_seeded_and_bounded():
    clip = 0.5 * np.sin(np.arange(16000) / 5.0)  # inside [-1, 1]: volume 0 leaves it unchanged
    noises = [np.random.default_rng(1).integers(-32768, 32767, 40000).astype(np.int16)]
    a, b = sc.mix_background(clip, "yes/a.wav", noises), sc.mix_background(clip, "yes/a.wav", noises)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - clip).max() <= sc.BACKGROUND_VOLUME + 1e-12
    ids = [f"w/{i}.wav" for i in range(400)]
    mixed = sum(not np.array_equal(sc.mix_background(clip, i, noises), clip) for i in ids)
    assert 0.7 * 400 < mixed < 0.9 * 400  # BACKGROUND_FREQUENCY = 0.8


# ---------------------------------------------------------------- the dataset


def test_info():
    info = dataset_info("speech_commands")
    assert info.kind == "audio" and info.input_shape == (1, 49, 10) and info.num_classes == 12
    assert info.splits == ("train", "validation", "test") and info.augment is False
    assert info.feature_range == (-128.0, 128.0)
    # Normalize inverts the [0, 1] storage map: the model sees raw MFCCs
    lo, hi = info.feature_range
    assert (0 - info.mean[0]) / info.std[0] == lo and (1 - info.mean[0]) / info.std[0] == hi
    assert dataset_info("cifar10").feature_range is None
    assert sc.CLASSES == [
        "down",
        "go",
        "left",
        "no",
        "off",
        "on",
        "right",
        "stop",
        "up",
        "yes",
        "_silence_",
        "_unknown_",
    ]


def test_splits_labels_and_features(speech):
    root = speech["root"]
    data_dir = root.parent
    sets = {s: load_dataset("speech_commands", s, data_dir=data_dir, download=False) for s in sc.INFO.splits}
    silence, unknown = sc.CLASSES.index("_silence_"), sc.CLASSES.index("_unknown_")
    for split, ds in sets.items():
        assert ds.x.dtype == np.float32 and ds.x.shape[1:] == (1, 49, 10) and ds.classes == sc.CLASSES
        assert ds.split == split and str(root) in ds.source
        ids = list(sc.iter_split_ids(root, split))
        np.testing.assert_array_equal(ds.y, [label for _, label in ids])
        assert [i for i, _ in ids if "@" not in i] == speech[split]  # membership from the list files
    n_words = {s: len(speech[s]) for s in speech if s in sets}
    # silence: 4 windows of white_noise.wav in train, 3 of running_tap.wav in validation, none in test
    assert len(sets["train"]) == n_words["train"] + 4 and (sets["train"].y == silence).sum() == 4
    assert len(sets["validation"]) == n_words["validation"] + 3 and (sets["validation"].y == silence).sum() == 3
    assert len(sets["test"]) == n_words["test"] and not (sets["test"].y == silence).any()
    # labels: keywords by name, every other word unknown
    val = sets["validation"]
    for (rel, _), label in zip(sc.iter_split_ids(root, "validation"), val.y):
        word = rel.split("/")[0]
        if word in sc.WORDS:
            assert sc.CLASSES[label] == word
        elif word in UNKNOWN_WORDS:
            assert label == unknown
    assert (sets["train"].y == unknown).sum() == 2 * len(UNKNOWN_WORDS)
    # validation and test are the clean features of exactly the listed files, in sorted order
    np.testing.assert_array_equal(val.x[: n_words["validation"]], clean_features(root, speech["validation"]))
    np.testing.assert_array_equal(sets["test"].x, clean_features(root, speech["test"]))
    # validation silence: 1 s windows of running_tap.wav at a 0.5 s hop
    tap = sc.read_wav(root / sc.BACKGROUND_DIR / sc.VALIDATION_NOISE)
    want = sc.clip_features(np.stack([sc.normalize_clip(tap[s : s + 16000]) for s in (0, 8000, 16000)]))
    np.testing.assert_array_equal(val.x[n_words["validation"] :], want)


def test_short_clip_is_zero_padded(speech):
    test = load_dataset("speech_commands", "test", data_dir=speech["root"].parent, download=False)
    i = speech["test"].index(speech["short"])
    raw = sc.read_wav(speech["root"] / speech["short"])
    assert len(raw) == 8000
    padded = np.concatenate([raw / raw.max(), np.zeros(8000)])
    np.testing.assert_array_equal(test.x[i], sc.clip_features(padded[None])[0])
    # frames wholly in the padding are digital silence: c0 at its floor, other coefficients 0
    floor = (80 * np.log(1e-6) / np.sqrt(80) + 128) / 256
    np.testing.assert_allclose(test.x[i, 0, -20:, 0], floor, rtol=1e-6)
    np.testing.assert_allclose(test.x[i, 0, -20:, 1:], 0.5, rtol=1e-6)


def test_training_clips_get_one_seeded_noisy_copy(speech, tmp_path, monkeypatch):
    root = speech["root"]
    train = load_dataset("speech_commands", "train", data_dir=root.parent, download=False)
    clean = clean_features(root, speech["train"])
    noisy = train.x[: len(clean)]
    differs = [not np.array_equal(a, b) for a, b in zip(noisy, clean)]
    assert any(differs)  # noise was mixed in ...
    noises = [sc.read_wav(f) for f in sorted((root / sc.BACKGROUND_DIR).glob("*.wav"))]
    want = sc.clip_features(
        np.stack([sc.mix_background(sc.normalize_clip(sc.read_wav(root / r)), r, noises) for r in speech["train"]])
    )
    np.testing.assert_array_equal(noisy, want)  # ... exactly as documented, from all background files
    monkeypatch.setenv("TINYROBUST_CACHE", str(tmp_path / "other-cache"))
    again = load_dataset("speech_commands", "train", data_dir=root.parent, download=False)
    np.testing.assert_array_equal(again.x, train.x)  # rebuilt from scratch: the same draws


def test_cache_round_trip_and_invalidation(speech, cache_dir, monkeypatch):
    root = speech["root"]
    first = load_dataset("speech_commands", "validation", data_dir=root.parent, download=False)
    assert len(list(cache_dir.glob("speech_commands-validation-*.npz"))) == 1

    def fail(*a, **k):
        raise AssertionError("features rebuilt although the cache is valid")

    monkeypatch.setattr(sc, "_build", fail)
    second = load_dataset("speech_commands", "validation", data_dir=root.parent, download=False)
    np.testing.assert_array_equal(first.x, second.x)
    np.testing.assert_array_equal(first.y, second.y)
    assert (second.split, second.classes, second.source) == ("validation", first.classes, first.source)
    monkeypatch.undo()
    monkeypatch.setenv("TINYROBUST_CACHE", str(cache_dir))
    rel = speech["validation"][0]
    write_wav(root / rel, tone(3000, seed=5))  # an edited source file is decoded again
    third = load_dataset("speech_commands", "validation", data_dir=root.parent, download=False)
    assert not np.array_equal(third.x[0], first.x[0])
    np.testing.assert_array_equal(third.x[1:], first.x[1:])


@pytest.mark.parametrize("arcname", [".", "speech_commands_v0.02"])  # official: no top folder
def test_official_archive_is_extracted_into_the_cache(speech, tmp_path, cache_dir, arcname):
    root = speech["root"]
    tar_dir = tmp_path / "archive"
    tar_dir.mkdir()
    with tarfile.open(tar_dir / sc.ARCHIVE, "w:gz") as tf:
        tf.add(root, arcname=arcname)
    from_dir = load_dataset("speech_commands", "test", data_dir=root.parent, download=False)
    from_tar = load_dataset("speech_commands", "test", data_dir=tar_dir, download=False)
    np.testing.assert_array_equal(from_tar.x, from_dir.x)
    np.testing.assert_array_equal(from_tar.y, from_dir.y)
    assert str(tar_dir / sc.ARCHIVE) in from_tar.source
    assert [p.name for p in cache_dir.glob(f"{sc.FOLDER}-*") if p.is_dir()]


def test_missing_dataset_names_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match="speech_commands_v0.02.tar.gz.*6b74f3901214cb2c2934e98196829835"):
        load_dataset("speech_commands", "train", data_dir=tmp_path, download=False)


def _bad_not_riff(p):
    p.write_bytes(b"this is not a wav file at all" * 10)


def _bad_truncated(p):
    write_wav(p, tone(440))
    p.write_bytes(p.read_bytes()[:5000])


def _bad_stereo(p):
    write_wav(p, np.repeat(tone(440), 2), channels=2)


def _bad_8bit(p):
    write_wav(p, np.full(16000, 128), width=1)


def _bad_rate(p):
    write_wav(p, tone(440, n=8000), rate=8000)


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (_bad_not_riff, "not a valid PCM wav"),
        (_bad_truncated, "truncated"),
        (_bad_stereo, "2 channels"),
        (_bad_8bit, "8-bit"),
        (_bad_rate, "8000 Hz, not 16000 Hz"),
    ],
)
@pytest.mark.parametrize("split", ["train", "test"])
def test_bad_wav_is_a_data_error_naming_it(speech, make_bad, message, split):
    root = speech["root"]
    bad = root / "no" / "badbad00_nohash_0.wav"
    make_bad(bad)
    if split == "test":
        with open(root / sc.TESTING_LIST, "a") as fh:
            fh.write("no/badbad00_nohash_0.wav\n")
    with pytest.raises(DataError, match=message) as err:
        load_dataset("speech_commands", split, data_dir=root.parent, download=False)
    assert str(bad) in str(err.value)


def test_bad_background_file_is_named(speech):
    bad = speech["root"] / sc.BACKGROUND_DIR / "dude_miaowing.wav"
    write_wav(bad, tone(300, n=40000), rate=44100)
    with pytest.raises(DataError, match="44100 Hz") as err:
        load_dataset("speech_commands", "validation", data_dir=speech["root"].parent, download=False)
    assert str(bad) in str(err.value)


def test_incomplete_copy_is_a_data_error(speech):
    root = speech["root"]
    (root / speech["test"][0]).unlink()
    with pytest.raises(DataError, match="incomplete"):
        load_dataset("speech_commands", "train", data_dir=root.parent, download=False)
    shutil.rmtree(root / sc.BACKGROUND_DIR)
    with pytest.raises(DataError, match="_background_noise_"):
        load_dataset("speech_commands", "train", data_dir=root.parent, download=False)


# ---------------------------------------------------------------- loader and training


def test_loader_passes_features_through(speech):
    ds = load_dataset("speech_commands", "validation", data_dir=speech["root"].parent, download=False)
    x, y = to_tensors(ds)
    assert x.dtype == torch.float32 and x.shape == (len(ds), 1, 49, 10)
    np.testing.assert_array_equal(x.numpy(), ds.x)
    x += 1  # a copy: attacks may write into it
    assert ds.x.max() <= 1
    batches = list(BatchIterator(ds, 4, shuffle=True, seed=3))
    assert batches[0][0].shape == (4, 1, 49, 10) and sum(len(b[1]) for b in batches) == len(ds)
    with pytest.raises(DataError, match="augment"):
        BatchIterator(ds, 4, augment=True)


def test_array_dataset_checks_feature_range():
    y = np.zeros(2, dtype=np.int64)
    ArrayDataset("s", "t", np.zeros((2, 1, 49, 10), np.float32), y, ["a"], "src")
    for bad in (np.full((2, 1, 49, 10), 1.5, np.float32), np.full((2, 1, 49, 10), np.nan, np.float32)):
        with pytest.raises(DataError, match=r"\[0, 1\]"):
            ArrayDataset("s", "t", bad, y, ["a"], "src")
    with pytest.raises(DataError, match="uint8 NHWC"):
        ArrayDataset("s", "t", np.zeros((2, 1, 49, 10), np.float64), y, ["a"], "src")


@pytest.mark.parametrize("model", ["mlc_dscnn", "qnn_kws"])
def test_train_smoke(speech, tmp_path, monkeypatch, model):
    from tinyrobust.config import config_from_dict
    from tinyrobust.train import train_run

    monkeypatch.setenv("TINYROBUST_DATA", str(speech["root"].parent))
    quant = (
        {}
        if model == "mlc_dscnn"
        else {"quant": {"weight": "int4", "act": "int4", "first_weight": "int8", "last_weight": "int8"}}
    )
    cfg = config_from_dict(
        {
            "name": f"kws-{model}",
            "data": {"dataset": "speech_commands"},
            "model": {"name": model, **quant},
            "train": {"epochs": 1, "max_batches_per_epoch": 2, "batch_size": 8, "threads": 1},
            **({"jr": {"weight": 1e-4, "layers": {"block2": 0.01}}} if model == "qnn_kws" else {}),
        }
    )
    summary = train_run(cfg, tmp_path / "run", progress=False)
    assert summary["dataset"] == "speech_commands" and summary["test_examples"] == len(speech["test"])
    assert 0 <= summary["test_accuracy"] <= 1 and "speech_commands_v0.02" in summary["data_source"]
    assert (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.parametrize("dataset", ["speech_commands", "svhn"])
def test_reproduce_grids_validate(dataset):
    from tinyrobust.report.grid import load_grid

    path = Path(__file__).resolve().parents[1] / "configs" / "reproduce" / f"{dataset}.yaml"
    grid = load_grid(path)
    assert grid.dataset == dataset
    cifar = load_grid(path.parent / "cifar10.yaml")
    assert (grid.white, grid.black) == (cifar.white, cifar.black)
    if dataset == "svhn":
        assert [(m.key, m.config) for m in grid.models] == [(m.key, m.config) for m in cifar.models]
    else:
        roles = {m.role: m.config["model"]["name"] for m in grid.models}
        assert roles["proposed"] == "qnn_kws" and roles["reference"] == "mlc_dscnn"
        assert any(m.config.get("jr") for m in grid.models if m.role == "proposed")
