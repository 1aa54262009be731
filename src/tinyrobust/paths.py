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
