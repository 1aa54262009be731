"""The run-directory contract: what a run folder holds, how it is locked, and how its records are read.

One place for the file names and the helpers every stage shares (train writes a run; eval, attack,
export, footprint and report read it), so attacks/, export/ and report/ need nothing from train/.

A run folder (``tinyrobust train``; README "A training run"):

- ``config.yaml``: the resolved config;  ``env.json``: versions, platform, threads, seed, data file;
- ``metrics.jsonl``: one JSON line per epoch;  ``summary.json``: written last: the run is finished;
- ``checkpoint.pt``: training state for ``--resume`` (not needed once summary.json exists);
- ``model.safetensors``: final weights (tensors only, no code);
- ``.lock``: held (flock) by the one process writing the run.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Sequence

from .errors import CheckpointError, RunLocked

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "model.safetensors"
BEST_ROBUST_WEIGHTS_FILE = "model_best_robust.safetensors"  # adversarial training: best per-epoch PGD check
LAST_WEIGHTS_FILE = "model_last.safetensors"  # adversarial training with the check: the last epoch's weights
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ENV_FILE = "env.json"
LOCK_FILE = ".lock"
ROBUSTNESS_FILE = "robustness.json"  # written by `tinyrobust attack` beside (or for) a run
ROBUSTNESS_ONNX_FILE = "robustness_onnx.json"  # black-box attacks on the exported file of a run
ONNX_FILE = "model.onnx"  # the verified ONNX (QCDQ) export reproduce attacks
ONNX_VERIFY_FILE = "model.onnx.verify.json"  # its verification record (agreement with PyTorch)

# the packages whose versions a record names, when installed (optional extras included)
RECORDED_PACKAGES = (
    "torch",
    "brevitas",
    "numpy",
    "adversarial-robustness-toolbox",
    "torchattacks",
    "onnx",
    "onnxruntime",
    "onnxoptimizer",
    "qonnx",
)


def is_finished(run_dir: str | os.PathLike) -> bool:
    """A run is finished once its summary is written (the last thing ``train`` writes)."""
    return (Path(run_dir) / SUMMARY_FILE).is_file()


def read_summary(run_dir: str | os.PathLike) -> Dict[str, Any]:
    """``summary.json`` of a run, or ``{}`` when the run is not finished."""
    p = Path(run_dir) / SUMMARY_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


@contextmanager
def run_lock(run_dir: Path, name: str = LOCK_FILE, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` so two processes never write the same run. ``name``: another
    lock file in it (one part of the run, e.g. one eps of an attack stage); ``wait``: block until it is
    free instead of raising :class:`RunLocked`."""
    import fcntl

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / name, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            msg = f"{run_dir} is being written by another tinyrobust process; wait for it to finish"
            raise RunLocked(msg) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def versions(packages: Sequence[str] = RECORDED_PACKAGES) -> Dict[str, str]:
    """``{"python": ..., "tinyrobust": ..., package: version}`` for each of ``packages`` that is installed."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    out = {"python": platform.python_version(), "tinyrobust": __version__}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def machine() -> Dict[str, Any]:
    """Where a result was computed: platform, processor, CPU count."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def environment(threads: int, seed: int) -> Dict[str, Any]:
    """The environment record of a run (``env.json``): versions, machine, threads, seed, time."""
    import brevitas
    import numpy as np
    import torch

    from . import __version__

    return {
        "tinyrobust": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "brevitas": brevitas.__version__,
        "numpy": np.__version__,
        **machine(),
        "threads": threads,
        "seed": seed,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def save_weights(path: Path, model) -> None:
    """Final weights as safetensors (tensors only), written atomically."""
    from safetensors.torch import save_file

    from .io_utils import atomic_write

    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def load_weights(path: Path, model) -> None:
    """Load ``model.safetensors`` into ``model`` (strict); CheckpointError naming the file otherwise."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"weights file {path} not found (is the run finished? resume it with `tinyrobust train --resume`)"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or not a safetensors file ({exc})") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"{path}: weights do not match the run's model ({detail[:300]})") from None
