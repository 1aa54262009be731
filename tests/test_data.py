"""Datasets in their exact official formats (built tiny in tmp_path), the cache and the batch iterator."""

from __future__ import annotations

import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tinyrobust.data import (
    ArrayDataset,
    BatchIterator,
    archive,
    cifar10,
    dataset_info,
    load_dataset,
    read_image_folder,
    stratified_subset,
    to_tensors,
)
from tinyrobust.errors import DataError, UnknownNameError

CLASSES = cifar10.CLASSES


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TINYROBUST_CACHE", str(cache))
    monkeypatch.delenv("TINYROBUST_DATA", raising=False)
    return cache


# ---------------------------------------------------------------- official CIFAR-10 format


class _Global:
    def __init__(self, ref: bytes):
        self.ref = ref


def py2_pickle(obj) -> bytes:
    """Pickle the way the CIFAR-10 batches were written (Python 2 cPickle, protocol 2, numpy 1.x):
    byte strings as BINSTRING and arrays via numpy.core.multiarray._reconstruct."""
    out = bytearray(b"\x80\x02")

    def w(o):
        if o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, bytes):
            out.extend(b"T" + struct.pack("<I", len(o)) + o)
        elif isinstance(o, _Global):
            out.extend(b"c" + o.ref)
        elif isinstance(o, (tuple, list, dict)):
            out.extend({tuple: b"(", list: b"](", dict: b"}("}[type(o)])
            for v in o.items() if isinstance(o, dict) else o:
                for part in v if isinstance(o, dict) else (v,):
                    w(part)
            out.extend({tuple: b"t", list: b"e", dict: b"u"}[type(o)])
        elif isinstance(o, np.ndarray):
            w(_Global(b"numpy.core.multiarray\n_reconstruct\n"))
            w((_Global(b"numpy\nndarray\n"), (0,), b"b"))
            out.extend(b"R")
            w((1, o.shape, o.dtype, False, o.tobytes()))
            out.extend(b"b")
        elif isinstance(o, np.dtype):
            w(_Global(b"numpy\ndtype\n"))
            w((o.str[1:].encode(), 0, 1))
            out.extend(b"R")
            w((3, b"|", None, None, None, -1, -1, 0))
            out.extend(b"b")
        else:
            raise TypeError(type(o))

    w(obj)
    out.extend(b".")
    return bytes(out)


def write_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    path.write_bytes(
        py2_pickle(
            {
                b"batch_label": b"training batch",
                b"labels": labels,
                b"data": data,
                b"filenames": [b"img_%d.png" % i for i in range(len(labels))],
            }
        )
    )


def make_cifar_batches(data_dir: Path, n_per_batch: int = 3, n_test: int = 5, seed: int = 0):
    """Official ``cifar-10-batches-py`` layout; returns the expected (x NHWC, y) per split."""
    rng = np.random.default_rng(seed)
    folder = data_dir / cifar10.BATCHES_DIR
    folder.mkdir(parents=True)
    expected = {}
    for split, names in cifar10.BATCHES.items():
        xs, ys = [], []
        for name in names:
            n = n_per_batch if split == "train" else n_test
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, n)]
            write_batch(folder / name, data, labels)
            xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.extend(labels)
        expected[split] = (np.concatenate(xs), np.array(ys))
    (folder / "batches.meta").write_bytes(py2_pickle({b"label_names": [c.encode() for c in CLASSES]}))
    return expected


def tar_dir(src: Path, dest: Path, arcname: str) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(src, arcname=arcname)
    return dest


def official_archive(data_dir: Path, dest: Path) -> Path:
    """``cifar-10-python.tar.gz`` from the batches folder made in ``data_dir``."""
    return tar_dir(data_dir / "cifar-10-batches-py", dest, "cifar-10-batches-py")


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar_batches_folder(tmp_path, split):
    expected = make_cifar_batches(tmp_path)
    ds = load_dataset("cifar10", split, data_dir=tmp_path, download=False)
    x, y = expected[split]
    assert (ds.name, ds.split, ds.classes) == ("cifar10", split, CLASSES)
    assert ds.x.shape == (len(y), 32, 32, 3) and ds.x.dtype == np.uint8 and ds.y.dtype == np.int64
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, y)
    assert len(ds) == len(y) == (15 if split == "train" else 5)
    assert str(tmp_path / "cifar-10-batches-py") in ds.source and "official" in ds.source


def test_cifar_python_archive_matches_folder(tmp_path):
    expected = make_cifar_batches(tmp_path / "src")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    tar = official_archive(tmp_path / "src", data_dir / "cifar-10-python.tar.gz")
    ds = load_dataset("cifar10", "train", data_dir=data_dir, download=False)
    np.testing.assert_array_equal(ds.x, expected["train"][0])
    np.testing.assert_array_equal(ds.y, expected["train"][1])
    assert ds.source.startswith(str(tar))


def test_cifar_archive_missing_batch(tmp_path):
    make_cifar_batches(tmp_path / "src")
    (tmp_path / "src" / "cifar-10-batches-py" / "data_batch_3").unlink()
    tar = official_archive(tmp_path / "src", tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(DataError, match="data_batch_3") as err:
        load_dataset("cifar10", "train", data_dir=tmp_path, download=False)
    assert str(tar) in str(err.value)
    assert load_dataset("cifar10", "test", data_dir=tmp_path, download=False).x.shape == (5, 32, 32, 3)


def test_cifar_truncated_archive(tmp_path):
    make_cifar_batches(tmp_path / "src", n_per_batch=200)
    tar = official_archive(tmp_path / "src", tmp_path / "cifar-10-python.tar.gz")
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated") as err:
        load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert str(tar) in str(err.value)


class _Exploit:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("func", [os.system, eval, np.load], ids=["os.system", "eval", "numpy.load"])
def test_malicious_pickle_is_refused(tmp_path, func):
    make_cifar_batches(tmp_path)
    marker = tmp_path / "pwned"
    arg = {os.system: f"touch {marker}", eval: f"open({str(marker)!r}, 'w')", np.load: str(marker)}[func]
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({b"data": _Exploit(func, arg), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="refusing to load global") as err:
        load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert str(batch) in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content,match",
    [
        ({b"data": np.zeros((2, 3072), np.int32), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "3072"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "list of 2 ints"),
        ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 10, 1]}, "label 10 at index 1"),
        ([1, 2, 3], "not a valid CIFAR-10 batch"),
    ],
)
def test_invalid_batch_content(tmp_path, content, match):
    make_cifar_batches(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(py2_pickle(content))
    with pytest.raises(DataError, match=match) as err:
        load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert str(batch) in str(err.value)


def test_truncated_batch_file(tmp_path):
    make_cifar_batches(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DataError, match="not a valid CIFAR-10 batch") as err:
        load_dataset("cifar10", "train", data_dir=tmp_path, download=False)
    assert str(batch) in str(err.value)


# ---------------------------------------------------------------- image folders


def save_image(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def make_image_folder(root: Path, classes, per_class: int = 2, ext: str = ".png", seed: int = 0):
    """``root/{train,test}/<class>/NNNN<ext>``; returns {(split, class, index): image}."""
    rng = np.random.default_rng(seed)
    images = {}
    for split in ("train", "test"):
        for c in classes:
            for i in range(per_class):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                save_image(root / split / c / f"{i:04d}{ext}", img)
                images[split, c, i] = img
    return images


def make_cifar_jpeg_copy(data_dir: Path, as_tar: bool) -> dict:
    """Like the shared ``cifar10-jpeg.tar.gz`` (with a top-level prefix), but lossless PNGs so the
    pixels can be compared exactly."""
    images = make_image_folder(data_dir / "staging" / "cifar10", list(reversed(CLASSES)))
    if as_tar:
        tar_dir(data_dir / "staging" / "cifar10", data_dir / "cifar10-jpeg.tar.gz", "cifar10")
    else:
        (data_dir / "staging").rename(data_dir / "cifar10-jpeg")
    return images


@pytest.mark.parametrize("as_tar", [True, False], ids=["tar.gz", "folder"])
def test_cifar_jpeg_copy_fallback(tmp_path, as_tar):
    images = make_cifar_jpeg_copy(tmp_path, as_tar)
    ds = load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert "JPEG image-folder copy" in ds.source
    assert str(tmp_path / ("cifar10-jpeg.tar.gz" if as_tar else "cifar10-jpeg")) in ds.source
    assert ds.classes == CLASSES and ds.x.shape == (20, 32, 32, 3)
    np.testing.assert_array_equal(ds.y, np.repeat(np.arange(10), 2))  # sorted class names = official order
    for k, (label, img) in enumerate(zip(ds.y, ds.x)):
        np.testing.assert_array_equal(img, images["test", CLASSES[label], k % 2])


def test_cifar_prefers_official_batches_over_jpeg_copy(tmp_path):
    make_cifar_jpeg_copy(tmp_path, as_tar=True)
    make_cifar_batches(tmp_path)
    assert "official" in load_dataset("cifar10", "test", data_dir=tmp_path, download=False).source


def test_cifar_jpeg_copy_with_wrong_classes(tmp_path):
    make_image_folder(tmp_path / "cifar10-jpeg", ["cat", "dog"])
    with pytest.raises(DataError, match="not the CIFAR-10 classes"):
        load_dataset("cifar10", "train", data_dir=tmp_path, download=False)


def test_cifar_missing_says_where_it_looked(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", "train", data_dir=tmp_path, download=False)
    msg = str(err.value)
    for name in ("cifar-10-batches-py", "cifar-10-python.tar.gz", "cifar10-jpeg.tar.gz", "cifar10-jpeg"):
        assert str(tmp_path / name) in msg
    assert "TINYROBUST_DATA" in msg and "--data-dir" in msg and "downloading is disabled" in msg


def test_cifar_downloads_official_archive(tmp_path, monkeypatch):
    expected = make_cifar_batches(tmp_path / "remote")
    remote = official_archive(tmp_path / "remote", tmp_path / "remote.tar.gz")
    calls = []

    def fake_download(url, dest, md5):
        calls.append((url, dest, md5))
        Path(dest).parent.mkdir(parents=True)
        Path(dest).write_bytes(remote.read_bytes())
        return dest

    monkeypatch.setattr(archive, "download", fake_download)
    data_dir = tmp_path / "data"
    ds = load_dataset("cifar10", "test", data_dir=data_dir)
    assert calls == [(cifar10.URL, data_dir / "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")]
    np.testing.assert_array_equal(ds.y, expected["test"][1])


def test_cifar_failed_download_is_reported(tmp_path, monkeypatch):
    def offline(url, dest, md5):
        raise DataError("could not download (no network)")

    monkeypatch.setattr(archive, "download", offline)
    with pytest.raises(DataError, match="no network") as err:
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value)


@pytest.mark.parametrize("as_tar", [True, False], ids=["tar.gz", "folder"])
def test_image_folder_reader(tmp_path, as_tar):
    root = tmp_path / "imgs"
    images = make_image_folder(root, ["zebra", "ant", "cow"], per_class=2)
    save_image(root / "train" / "ant" / "extra.JPEG", np.full((32, 32, 3), 128, np.uint8))
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    (root / "train" / "ant" / "._0000.png").write_bytes(b"macOS resource fork")
    path = tar_dir(root, tmp_path / "imgs.tar", "prefix") if as_tar else root
    x, y, classes = read_image_folder(path, "train")
    assert classes == ["ant", "cow", "zebra"]
    np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 2, 2])
    assert x.shape == (7, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x[0], images["train", "ant", 0])
    np.testing.assert_array_equal(x[6], images["train", "zebra", 1])
    assert np.abs(x[2].astype(int) - 128).max() <= 2  # JPEG of a flat grey is (nearly) exact


@pytest.mark.parametrize("as_tar", [True, False], ids=["tar.gz", "folder"])
@pytest.mark.parametrize("corrupt", [b"not an image", "truncated"])
def test_corrupt_image_is_named(tmp_path, as_tar, corrupt):
    root = tmp_path / "imgs"
    make_image_folder(root, ["a", "b"], ext=".jpg")
    bad = root / "train" / "b" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:200] if corrupt == "truncated" else corrupt)
    path = tar_dir(root, tmp_path / "imgs.tar.gz", "imgs") if as_tar else root
    with pytest.raises(DataError, match="cannot decode image") as err:
        read_image_folder(path, "train")
    assert ("imgs/train/b/0001.jpg" if as_tar else str(bad)) in str(err.value)


def test_image_folder_size_mismatch_and_empty(tmp_path):
    root = tmp_path / "imgs"
    make_image_folder(root, ["a"])
    save_image(root / "train" / "a" / "big.png", np.zeros((40, 32, 3), np.uint8))
    with pytest.raises(DataError, match="big.png"):
        read_image_folder(root, "train")
    with pytest.raises(DataError, match="expected 16x16"):
        read_image_folder(root, "test", image_size=(16, 16))
    with pytest.raises(DataError, match="no images for split 'extra'"):
        read_image_folder(root, "extra")


def test_image_tar_with_symlink_is_refused(tmp_path):
    root = tmp_path / "imgs"
    make_image_folder(root, ["a"])
    (root / "train" / "a" / "link.png").symlink_to("/etc/passwd")
    path = tar_dir(root, tmp_path / "imgs.tar.gz", "imgs")
    with pytest.raises(DataError, match="symlink"):
        read_image_folder(path, "train")


# ---------------------------------------------------------------- SVHN


def make_svhn(data_dir: Path, split: str, labels, seed: int = 0) -> np.ndarray:
    """Official format: X uint8 (32, 32, 3, N), y uint8 (N, 1) with 10 for the digit 0."""
    X = np.random.default_rng(seed).integers(0, 256, (32, 32, 3, len(labels)), dtype=np.uint8)
    data_dir.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(data_dir / f"{split}_32x32.mat", {"X": X, "y": np.array(labels, np.uint8)[:, None]})
    return X


@pytest.mark.parametrize("split", ["train", "test", "extra"])
def test_svhn(tmp_path, split):
    labels = [10, 1, 5, 9, 10, 3]
    X = make_svhn(tmp_path, split, labels)
    ds = load_dataset("svhn", split, data_dir=tmp_path, download=False)
    assert ds.x.shape == (6, 32, 32, 3) and ds.x.dtype == np.uint8 and ds.x.flags.c_contiguous
    np.testing.assert_array_equal(ds.y, [0, 1, 5, 9, 0, 3])
    for i in range(6):
        np.testing.assert_array_equal(ds.x[i], X[:, :, :, i])
    assert ds.classes == [str(d) for d in range(10)]
    assert str(tmp_path / f"{split}_32x32.mat") in ds.source


@pytest.mark.parametrize("bad", [0, 11])
def test_svhn_label_out_of_range(tmp_path, bad):
    make_svhn(tmp_path, "test", [1, 2, bad, 4])
    with pytest.raises(DataError, match=f"label {bad} at index 2") as err:
        load_dataset("svhn", "test", data_dir=tmp_path, download=False)
    assert str(tmp_path / "test_32x32.mat") in str(err.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_svhn_corrupt_mat(tmp_path, damage):
    make_svhn(tmp_path, "train", [1] * 50)
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(b"\x00garbage" * 100 if damage == "garbage" else path.read_bytes()[:40_000])
    with pytest.raises(DataError, match="not a valid SVHN .mat file") as err:
        load_dataset("svhn", "train", data_dir=tmp_path, download=False)
    assert str(path) in str(err.value)


def test_svhn_missing_and_download(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="downloading is disabled") as err:
        load_dataset("svhn", "test", data_dir=tmp_path, download=False)
    assert str(tmp_path / "test_32x32.mat") in str(err.value)

    calls = []

    def fake_download(url, dest, md5):
        calls.append((url, md5))
        make_svhn(Path(dest).parent, "test", [2, 10])

    monkeypatch.setattr(archive, "download", fake_download)
    ds = load_dataset("svhn", "test", data_dir=tmp_path)
    url = "http://ufldl.stanford.edu/housenumbers/test_32x32.mat"
    assert calls == [(url, "eb5a983be6a315427106f1b164d9cef3")]
    np.testing.assert_array_equal(ds.y, [2, 0])


# ---------------------------------------------------------------- registry, info, cache


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(
        UnknownNameError, match="cifar10, speech_commands, speech_commands_logmel, speech_commands_wav, svhn"
    ):
        load_dataset("mnist", "train", data_dir=tmp_path)
    with pytest.raises(UnknownNameError):
        dataset_info("mnist")
    with pytest.raises(DataError, match="choose one of: train, test"):
        load_dataset("cifar10", "extra", data_dir=tmp_path)


def test_dataset_info():
    c = dataset_info("cifar10")
    assert (c.num_classes, c.input_shape, c.kind, c.augment) == (10, (3, 32, 32), "image", True)
    assert len(c.mean) == len(c.std) == 3 and all(0 < m < 1 for m in c.mean + c.std)
    s = dataset_info("svhn")
    assert (s.num_classes, s.augment, s.splits) == (10, False, ("train", "test", "extra"))


def test_cache_is_used_then_rebuilt_when_corrupt(tmp_path, cache_dir, monkeypatch):
    expected = make_cifar_batches(tmp_path / "data")
    first = load_dataset("cifar10", "train", data_dir=tmp_path / "data", download=False)
    (cache_file,) = cache_dir.glob("cifar10-train-*.npz")

    def no_decoding(*args):
        raise AssertionError("decoded again although cached")

    with monkeypatch.context() as m:
        m.setattr(cifar10, "read_batch", no_decoding)
        again = load_dataset("cifar10", "train", data_dir=tmp_path / "data", download=False)
    np.testing.assert_array_equal(again.x, expected["train"][0])
    np.testing.assert_array_equal(again.y, first.y)
    assert (again.classes, again.source) == (first.classes, first.source)

    cache_file.write_bytes(cache_file.read_bytes()[:1000])  # truncated by a crash or full disk
    rebuilt = load_dataset("cifar10", "train", data_dir=tmp_path / "data", download=False)
    np.testing.assert_array_equal(rebuilt.x, expected["train"][0])
    with np.load(cache_file, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["y"], expected["train"][1])


def test_cache_follows_source_changes(tmp_path, cache_dir):
    make_cifar_batches(tmp_path)
    load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    write_batch(tmp_path / "cifar-10-batches-py" / "test_batch", np.full((2, 3072), 7, np.uint8), [4, 2])
    ds = load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(ds.y, [4, 2])
    assert (ds.x == 7).all()
    assert len(list(cache_dir.glob("cifar10-test-*.npz"))) == 2


# ---------------------------------------------------------------- batches and subsets


def toy(n: int = 10, num_classes: int = 3, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    classes = [str(c) for c in range(num_classes)]
    return ArrayDataset("toy", "train", x, np.arange(n) % num_classes, classes, "mem")


def test_to_tensors():
    ds = toy()
    x, y = to_tensors(ds)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    np.testing.assert_allclose(x.numpy(), ds.x.transpose(0, 3, 1, 2) / 255.0, rtol=0, atol=1e-7)
    xs, ys = to_tensors(ds, np.array([7, 2]))
    assert torch.equal(xs, x[[7, 2]]) and ys.tolist() == [ds.y[7], ds.y[2]]


def collect(it):
    xs, ys = zip(*it)
    return torch.cat(xs), torch.cat(ys)


def test_batches_in_order():
    ds = toy()
    assert [len(yb) for _, yb in BatchIterator(ds, 4)] == [4, 4, 2]
    assert len(BatchIterator(ds, 4)) == 3 and len(BatchIterator(ds, 4, drop_last=True)) == 2
    assert [len(yb) for _, yb in BatchIterator(ds, 4, drop_last=True)] == [4, 4]
    x, y = collect(BatchIterator(ds, 4))
    x_all, y_all = to_tensors(ds)
    assert torch.equal(x, x_all) and torch.equal(y, y_all)


def test_shuffle_is_a_function_of_seed_and_epoch():
    x = np.zeros((50, 32, 32, 3), np.uint8)
    ds = ArrayDataset("toy", "train", x, np.arange(50), [str(i) for i in range(50)], "mem")

    def order(seed, epoch):
        return collect(BatchIterator(ds, 8, shuffle=True, seed=seed, epoch=epoch))[1]

    first = order(0, 0)
    assert sorted(first.tolist()) == list(range(50)) and first.tolist() != list(range(50))
    assert torch.equal(first, order(0, 0))
    it = BatchIterator(ds, 8, shuffle=True, seed=0, epoch=0)
    assert torch.equal(collect(it)[1], collect(it)[1])  # iterating twice replays the epoch
    assert not torch.equal(first, order(0, 1)) and not torch.equal(first, order(1, 0))


def is_crop_flip(aug: np.ndarray, img: np.ndarray) -> bool:
    padded = np.pad(img, ((4, 4), (4, 4), (0, 0)))
    crops = (padded[t : t + 32, s : s + 32] for t in range(9) for s in range(9))
    return any(np.array_equal(aug, c) or np.array_equal(aug, c[:, ::-1]) for c in crops)


def test_augmentation():
    ds = toy(n=16)

    def run(seed, epoch):
        return collect(BatchIterator(ds, 6, augment=True, seed=seed, epoch=epoch))[0]

    a = run(3, 0)
    assert a.shape == (16, 3, 32, 32) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, run(3, 0))
    assert not torch.equal(a, run(3, 1))
    plain = to_tensors(ds)[0]
    assert not torch.equal(a, plain)
    aug = (a * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert all(is_crop_flip(aug[i], ds.x[i]) for i in range(16))


def test_augmentation_uses_both_flips_and_many_offsets():
    ds = toy(n=200)
    x = collect(BatchIterator(ds, 64, augment=True, seed=1))[0]
    aug = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    padded = np.pad(ds.x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    seen = set()
    for i in range(len(ds)):
        for t in range(9):
            for s in range(9):
                crop = padded[i, t : t + 32, s : s + 32]
                for f in (0, 1):
                    if np.array_equal(aug[i], crop[:, ::-1] if f else crop):
                        seen.add((t, s, f))
    assert {f for *_, f in seen} == {0, 1} and len({(t, s) for t, s, _ in seen}) > 40


def test_stratified_subset():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    idx = stratified_subset(labels, 10, seed=0)
    assert idx.dtype == np.int64 and len(idx) == 10 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx]).tolist() == [5, 3, 2]
    np.testing.assert_array_equal(idx, stratified_subset(labels, 10, seed=0))
    assert not np.array_equal(idx, stratified_subset(labels, 10, seed=1))
    ds = toy(n=30)
    np.testing.assert_array_equal(stratified_subset(ds, 9, seed=4), stratified_subset(ds.y, 9, seed=4))
    np.testing.assert_array_equal(stratified_subset(labels, 100), np.arange(100))
    with pytest.raises(DataError, match="101"):
        stratified_subset(labels, 101)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=60), st.data())
def test_stratified_subset_proportions(labels, data):
    labels = np.array(labels)
    n = data.draw(st.integers(1, len(labels)))
    idx = stratified_subset(labels, n, seed=data.draw(st.integers(0, 2**32)))
    assert len(np.unique(idx)) == n and idx.min() >= 0 and idx.max() < len(labels)
    counts, picked = np.bincount(labels, minlength=5), np.bincount(labels[idx], minlength=5)
    share = counts * n / len(labels)
    assert np.all(picked >= np.floor(share)) and np.all(picked <= np.ceil(share))
