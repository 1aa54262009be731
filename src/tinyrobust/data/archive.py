"""Safe reading of downloaded archives and files.

Dataset archives come from the network or from a user's disk, so they are untrusted: a tar member
may try to write outside the target (``../x``, ``/etc/x``), or be a link or device that turns a
later write or read into one elsewhere. Every member is checked before anything is read or written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from tqdm import tqdm

from ..errors import DataError
from ..io_utils import atomic_write, hash_file, sha256_file  # noqa: F401  (sha256_file re-exported)

# What a damaged or truncated archive raises while being read.
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def check_member(archive: str | os.PathLike, member: tarfile.TarInfo, target: Path | None = None) -> None:
    """Refuse a member that is not a plain file or directory, or whose path leaves the archive root
    (or ``target`` when extracting)."""
    kind = _member_kind(member)
    if kind:
        raise DataError(f"archive {archive}: refusing member {member.name!r}: it is a {kind}")
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"archive {archive}: refusing member {member.name!r}: its path leaves the archive")
    if target is not None:
        root = target.resolve()
        if not (root / member.name).resolve().is_relative_to(root):
            raise DataError(f"archive {archive}: refusing member {member.name!r}: it resolves outside {target}")


def _member_kind(member: tarfile.TarInfo) -> str | None:
    if member.isfile() or member.isdir():
        return None
    if member.issym():
        return f"symlink to {member.linkname!r}"
    if member.islnk():
        return f"hardlink to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "fifo"
    return "special file"


def _checked_members(tf: tarfile.TarFile, archive: Path, target: Path | None = None) -> list[tarfile.TarInfo]:
    members = tf.getmembers()
    for m in members:
        check_member(archive, m, target)
    return members


def iter_tar(
    archive: str | os.PathLike, select: Callable[[str], bool], desc: str | None = None
) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name, bytes)`` for the regular files that ``select`` accepts, in archive order,
    without extracting. All members are checked first, so a bad archive fails before any is used.
    ``desc`` shows a progress bar on stderr when it is a terminal."""
    archive = Path(archive)
    try:
        with tarfile.open(archive, "r:*") as tf:
            wanted = [m for m in _checked_members(tf, archive) if m.isfile() and select(m.name)]
            for m in tqdm(wanted, desc=desc, unit="member", file=sys.stderr, disable=True if desc is None else None):
                fh = tf.extractfile(m)
                assert fh is not None  # regular files always have data
                yield m.name, fh.read()
    except _READ_ERRORS as exc:
        raise DataError(
            f"could not read archive {archive} ({exc}): it is corrupt or truncated; delete it, get it again"
        ) from None


def extract_tar(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract ``archive`` into ``dest`` (which must not exist yet) after checking every member.

    Extraction goes to a temporary sibling that is renamed at the end, so an interrupted run never
    leaves a half-extracted ``dest`` that would later look complete."""
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise DataError(f"cannot extract {archive}: {dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = _checked_members(tf, archive, tmp)
            # the stdlib's own "data" filter (Python >= 3.10.12) as a second line of defence
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(tmp, members=members, **extra)
        os.replace(tmp, dest)
    except _READ_ERRORS as exc:
        raise DataError(
            f"could not extract {archive} to {dest} ({exc}); if it is truncated, delete it and get it again"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def md5_file(path: str | os.PathLike) -> str:
    """Hex md5 of a file: the checksum the official dataset pages publish."""
    return hash_file(path, "md5")


def download(url: str, dest: str | os.PathLike, md5: str, timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` and verify its md5; ``dest`` only appears once it is complete and
    verified (a mismatching download is deleted)."""
    dest = Path(dest)

    def fetch(tmp: str) -> None:
        h = hashlib.md5()
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as fh:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr) as bar:
                while chunk := resp.read(1 << 20):
                    fh.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
        if h.hexdigest() != md5:
            raise DataError(
                f"downloaded {dest} from {url} has md5 {h.hexdigest()}, expected {md5}; "
                "it was deleted: try again, or download it by hand and put it there"
            )

    try:
        atomic_write(dest, fetch)
    except OSError as exc:  # URLError, timeouts, unwritable folder
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise DataError(
            f"could not download {url} to {dest} ({reason}); download it by hand and put it at {dest}"
        ) from None
    return dest
