"""Where data and caches live: one setting each, so `make demo` can point at ../shared/datasets.

Data directory: ``--data-dir`` > ``$TINYROBUST_DATA`` > ``~/.cache/tinyrobust/data``.
Cache directory (decoded arrays): ``$TINYROBUST_CACHE`` > ``~/.cache/tinyrobust/cache``.
The data directory may be read-only (../shared is); caches never go there.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("TINYROBUST_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "tinyrobust" / "data"


def cache_dir() -> Path:
    env = os.environ.get("TINYROBUST_CACHE")
    p = Path(env).expanduser() if env else Path.home() / ".cache" / "tinyrobust" / "cache"
    p.mkdir(parents=True, exist_ok=True)
    return p


def _prefixes(data: str | os.PathLike | None, root: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """(absolute prefix, portable replacement) pairs, longest prefix first; each path both as given
    and resolved (a symlinked tmp or home folder shows up either way)."""
    pairs: list[tuple[str, str]] = []

    def add(p: Path, repl: str) -> None:
        for form in {str(p), str(p.resolve())}:
            form = form.rstrip("/")
            if len(form) > 1 and form not in {q for q, _ in pairs}:
                pairs.append((form, repl))

    add(data_dir(data).absolute(), "$TINYROBUST_DATA")
    env_cache = os.environ.get("TINYROBUST_CACHE")  # cache_dir() without creating it
    add(
        Path(env_cache).expanduser().absolute() if env_cache else Path.home() / ".cache" / "tinyrobust" / "cache",
        "$TINYROBUST_CACHE",
    )
    add(Path(root).absolute() if root else Path.cwd(), ".")
    add(Path.home(), "~")
    return sorted(pairs, key=lambda qr: len(qr[0]), reverse=True)


def portable_text(text: str, data: str | os.PathLike | None = None, root: str | os.PathLike | None = None) -> str:
    """``text`` with every absolute data-dir, working-dir, cache and home prefix written portably:
    ``<data dir>/cifar10/x`` -> ``$TINYROBUST_DATA/cifar10/x``, ``<cwd>/runs/a`` -> ``runs/a``,
    ``<cache>/x`` -> ``$TINYROBUST_CACHE/x``, ``<home>/x`` -> ``~/x``. Committed results must not
    carry machine paths. ``data``: the data directory the run used (``--data-dir``), the same default
    as :func:`data_dir` otherwise; ``root``: the folder paths are made relative to (default: the
    working directory). Only what is written is rewritten: cache keys and files opened keep their
    absolute paths."""
    import re

    if not isinstance(text, str) or "/" not in text:
        return text
    for prefix, repl in _prefixes(data, root):
        # the prefix only where a path component ends: /work/main must not match /work/mainline
        pattern = re.compile(r"(?<![\w.~$/-])" + re.escape(prefix) + r"(?=/|[^\w.-]|$)")
        if repl == ".":  # under the working directory: a relative path ("." for the folder itself)
            text = pattern.sub("\x00CWD\x00", text)
            text = text.replace("\x00CWD\x00/", "").replace("\x00CWD\x00", ".")
        else:
            text = pattern.sub(lambda m, r=repl: r, text)
    return text


def portable_path(path: str | os.PathLike, data: str | os.PathLike | None = None) -> str:
    """One path, written portably (see :func:`portable_text`); relative paths are kept as they are."""
    return portable_text(str(path), data)


def portable_record(obj, data: str | os.PathLike | None = None):
    """``obj`` (JSON-like: dicts, lists, strings) with :func:`portable_text` applied to every string."""
    if isinstance(obj, str):
        return portable_text(obj, data)
    if isinstance(obj, dict):
        return {k: portable_record(v, data) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(portable_record(v, data) for v in obj)
    return obj
