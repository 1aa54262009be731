"""Shipped configs and reproduce grids: package data, found with importlib.resources.

They live in ``src/tinyrobust/configs/`` (``configs/`` at the top of a checkout points there), so an
installed wheel carries them and ``tinyrobust reproduce`` works outside the repository."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import List, Optional

from .errors import ConfigError


def configs_dir(sub: str = "") -> Path:
    """The shipped configs folder (``sub``: a subfolder such as ``reproduce``), as a real path.

    Wheels and editable installs keep package data as plain files, so the path is usable with
    ``open``/``glob`` (a zipped install would need ``resources.as_file``; pip never makes one)."""
    base = Path(str(resources.files("tinyrobust") / "configs"))
    return base / sub if sub else base


def shipped_configs(sub: str = "") -> List[str]:
    """Names (relative to the configs folder, with ``.yaml``) of the shipped config files under ``sub``."""
    base = configs_dir()
    folder = base / sub if sub else base
    if not folder.is_dir():
        return []
    return sorted(p.relative_to(base).as_posix() for p in folder.rglob("*.yaml"))


def resolve_config(arg: str | Path) -> Path:
    """``--config`` value -> file: a path that exists, else a shipped config by its relative name
    (``qnn_int4_jr``, ``qnn_int4_jr.yaml`` or ``configs/qnn_int4_jr.yaml``: the README's paths work from
    any folder and from an installed package)."""
    p = Path(arg).expanduser()
    if p.is_file():
        return p
    rel = p.as_posix()
    for prefix in ("./", "configs/"):
        rel = rel[len(prefix) :] if rel.startswith(prefix) else rel
    shipped: Optional[Path] = None
    for name in (rel, rel + ".yaml"):
        cand = configs_dir() / name
        if not p.is_absolute() and ".." not in Path(name).parts and cand.is_file():
            shipped = cand
            break
    if shipped is None:
        avail = ", ".join(n[:-5] for n in shipped_configs() if "/" not in n)
        raise ConfigError(f"config file {arg} not found (shipped configs: {avail or 'none'})")
    return shipped
