"""Checkpoints written atomically and read without executing code.

- ``checkpoint.pt``: training state (model, optimizer, epoch, the Brevitas quantizer state that
  ``state_dict`` leaves out, torch thread count); written to a temp file and renamed, so a kill
  leaves the previous checkpoint intact; read with ``torch.load(weights_only=True)``, which
  refuses pickled code.
- ``model.safetensors``: final weights, the file other commands read (safetensors holds only tensors);
  written and read by :mod:`tinyrobust.rundir` (``save_weights``/``load_weights``, re-exported here).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict

import torch

from ..errors import CheckpointError
from ..io_utils import atomic_write
from ..rundir import load_weights, save_weights  # noqa: F401  (the weights file is rundir's; re-exported)


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain containers "
            f"(a pickle could run code). Only load checkpoints you trust, re-saved as tensors. ({_first_line(exc)})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - weights_only loading runs no code: any failure means a bad file
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({_describe(exc)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a tinyrobust checkpoint (holds a {type(state).__name__}, not a mapping)")
    return state


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def _describe(exc: BaseException) -> str:
    first = _first_line(exc)
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def runtime_stats_scalers(model: torch.nn.Module) -> Dict[str, torch.nn.Module]:
    """Module path -> every Brevitas runtime-statistics scale of ``model``
    (``ParameterFromRuntimeStatsScaling``: a running average of its input range for its first
    ``collect_stats_steps`` training forwards, a learned parameter after)."""
    from brevitas.core.scaling.standalone import ParameterFromRuntimeStatsScaling

    return {name: m for name, m in model.named_modules() if isinstance(m, ParameterFromRuntimeStatsScaling)}


def quant_runtime_state(model: torch.nn.Module) -> Dict[str, Dict[str, Any]]:
    """Training state of Brevitas quantizers that ``state_dict`` leaves out.

    An activation quantizer with a runtime-statistics scale (``ParameterFromRuntimeStatsScaling``)
    collects a running average of its input range for its first ``collect_stats_steps`` training
    forwards and only then becomes a learned parameter. Its state dict omits the step counter and
    saves the running average in place of the parameter, and loading it ends the collection phase
    at once; a run resumed from such a state dict would follow a different path. This records the
    counter, the running average and the raw parameter per module name."""
    return {
        name: {"counter": int(m.counter), "buffer": m.buffer.detach().clone(), "value": m.value.detach().clone()}
        for name, m in runtime_stats_scalers(model).items()
    }


def restore_quant_runtime_state(model: torch.nn.Module, state: Dict[str, Dict[str, Any]]) -> None:
    """Undo what ``load_state_dict`` does to runtime-statistics scales (see quant_runtime_state);
    call after ``model.load_state_dict``."""
    mods = dict(model.named_modules())
    for name, s in state.items():
        m = mods.get(name)
        if m is None or not hasattr(m, "counter"):
            raise CheckpointError(f"checkpoint names quantizer {name!r}, which the model does not have")
        with torch.no_grad():
            m.buffer.copy_(s["buffer"])
            m.value.copy_(s["value"])
        m.counter = int(s["counter"])
