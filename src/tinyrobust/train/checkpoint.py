"""Checkpoints written atomically and read without executing code.

- ``checkpoint.pt``: training state (model, optimizer, epoch); written to a temp file and renamed,
  so a kill leaves the previous checkpoint intact; read with ``torch.load(weights_only=True)``,
  which refuses pickled code.
- ``model.safetensors``: final weights, the file other commands read (safetensors holds only tensors).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..io_utils import atomic_write


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain containers "
            f"(a pickle could run code). Only load checkpoints you trust, re-saved as tensors. ({str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({str(exc).splitlines()[0]})") from None


def save_weights(path: Path, model: torch.nn.Module) -> None:
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def load_weights(path: Path, model: torch.nn.Module) -> None:
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found (is the run finished? resume it with `tinyrobust train --resume`)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or not a safetensors file ({exc})") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the run's model ({str(exc).splitlines()[0]})") from None
