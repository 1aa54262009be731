"""Safe archive reading/extraction, checksums and downloads (no network: file:// URLs)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import urllib.error
import urllib.request

import pytest

from tinyrobust.data import archive
from tinyrobust.errors import DataError


def add_file(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def add_special(tf: tarfile.TarFile, name: str, type_: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    tf.addfile(info)


@pytest.fixture
def good_tar(tmp_path):
    path = tmp_path / "good.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("./data")
        info.type = tarfile.DIRTYPE
        tf.addfile(info)
        add_file(tf, "./data/a.txt", b"alpha")
        add_file(tf, "data/sub/b.bin", bytes(range(256)))
        add_file(tf, "data/skip.md", b"ignored")
    return path


def test_iter_tar_yields_selected_files_in_archive_order(good_tar):
    got = list(archive.iter_tar(good_tar, lambda n: not n.endswith(".md")))
    assert got == [("./data/a.txt", b"alpha"), ("data/sub/b.bin", bytes(range(256)))]


def test_extract_tar(good_tar, tmp_path):
    dest = archive.extract_tar(good_tar, tmp_path / "out")
    assert (dest / "data" / "a.txt").read_bytes() == b"alpha"
    assert (dest / "data" / "sub" / "b.bin").read_bytes() == bytes(range(256))
    with pytest.raises(DataError, match="already exists"):
        archive.extract_tar(good_tar, dest)


MALICIOUS = [
    ("../escape", tarfile.REGTYPE, "", "leaves the archive"),
    ("data/../../escape", tarfile.REGTYPE, "", "leaves the archive"),
    ("/tmp/abs-escape", tarfile.REGTYPE, "", "leaves the archive"),
    ("data/link", tarfile.SYMTYPE, "/etc/passwd", "symlink"),
    ("data/hard", tarfile.LNKTYPE, "data/ok.txt", "hardlink"),
    ("data/tty", tarfile.CHRTYPE, "", "device"),
    ("data/disk", tarfile.BLKTYPE, "", "device"),
    ("data/pipe", tarfile.FIFOTYPE, "", "fifo"),
]


@pytest.mark.parametrize("name,type_,linkname,why", MALICIOUS, ids=[m[0] for m in MALICIOUS])
def test_malicious_members_are_refused(tmp_path, name, type_, linkname, why):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tf:
        add_file(tf, "data/ok.txt", b"fine")
        if type_ == tarfile.REGTYPE:
            add_file(tf, name, b"payload")
        else:
            add_special(tf, name, type_, linkname)

    got = []
    with pytest.raises(DataError, match=why) as err:
        for item in archive.iter_tar(path, lambda n: True):
            got.append(item)
    assert str(path) in str(err.value) and repr(name) in str(err.value)
    assert got == []  # every member is checked before any is handed out

    with pytest.raises(DataError, match=why):
        archive.extract_tar(path, tmp_path / "work" / "out")
    assert not (tmp_path / "work" / "out").exists()
    assert list((tmp_path / "work").iterdir()) == []  # no temporary folder left behind
    assert not (tmp_path / "escape").exists() and not (tmp_path / "work" / "escape").exists()


def test_truncated_archive(tmp_path):
    path = tmp_path / "cut.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        add_file(tf, "big.bin", os.urandom(200_000))
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(DataError, match="corrupt or truncated") as err:
        list(archive.iter_tar(path, lambda n: True))
    assert str(path) in str(err.value)
    with pytest.raises(DataError, match=str(path)):
        archive.extract_tar(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_an_archive(tmp_path):
    path = tmp_path / "junk.tar.gz"
    path.write_bytes(b"this is not a tar file at all" * 40)
    with pytest.raises(DataError, match=str(path)):
        list(archive.iter_tar(path, lambda n: True))


def test_checksums(tmp_path):
    data = os.urandom(3 * 2**20 + 17)  # spans several read chunks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert archive.md5_file(path) == hashlib.md5(data).hexdigest()
    assert archive.sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_download_verifies_md5(tmp_path):
    src = tmp_path / "remote.bin"
    src.write_bytes(b"payload" * 1000)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    dest = tmp_path / "dl" / "file.bin"
    assert archive.download(src.as_uri(), dest, md5) == dest
    assert dest.read_bytes() == src.read_bytes()


def test_download_md5_mismatch_deletes(tmp_path):
    src = tmp_path / "remote.bin"
    src.write_bytes(b"tampered")
    actual = hashlib.md5(b"tampered").hexdigest()
    dest = tmp_path / "dl" / "file.bin"
    with pytest.raises(DataError) as err:
        archive.download(src.as_uri(), dest, "0" * 32)
    msg = str(err.value)
    assert str(dest) in msg and "0" * 32 in msg and actual in msg
    assert list((tmp_path / "dl").iterdir()) == []


def test_download_without_network_says_where_to_put_the_file(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    dest = tmp_path / "file.bin"
    with pytest.raises(DataError, match="by hand") as err:
        archive.download("https://example.invalid/file.bin", dest, "0" * 32)
    assert str(dest) in str(err.value) and "Name or service not known" in str(err.value)
    assert not dest.exists()
