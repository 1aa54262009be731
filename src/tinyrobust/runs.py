"""A finished run directory, loaded back: config, model with its weights, dataset facts.

Every later stage (eval, attack, export, footprint, report) starts from ``load_run``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

import torch

from .config import RunConfig, config_to_dict, load_config
from .errors import TinyRobustError
from .rundir import CONFIG_FILE, WEIGHTS_FILE, load_weights, read_summary


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: RunConfig
    config: Dict[str, Any]
    model: torch.nn.Module
    dataset_info: Any
    summary: Dict[str, Any]


def model_for_config(cfg: RunConfig) -> tuple[torch.nn.Module, Any]:
    """A fresh (untrained) model as a run config describes it, and its dataset's facts: the one place
    that turns a config into a model (training, loading a run, the report's KB count, sweeps)."""
    from .data import dataset_info
    from .models import build_model

    info = dataset_info(cfg.data.dataset)
    model = build_model(
        cfg.model.name,
        num_classes=info.num_classes,
        input_shape=info.input_shape,
        mean=info.mean,
        std=info.std,
        quant=cfg.model.quant,
    )
    return model, info


def load_run(run_dir: str | Path) -> LoadedRun:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TinyRobustError(f"run directory {run_dir} does not exist")
    if not (run_dir / CONFIG_FILE).is_file():
        raise TinyRobustError(f"{run_dir} is not a run directory: no {CONFIG_FILE} (make one with `tinyrobust train`)")
    if not (run_dir / WEIGHTS_FILE).is_file():
        raise TinyRobustError(
            f"{run_dir} has no weights ({WEIGHTS_FILE}): the run did not finish; continue it with "
            f"`tinyrobust train --config {run_dir / CONFIG_FILE} --run-dir {run_dir} --resume`"
        )
    cfg = load_config(run_dir / CONFIG_FILE)
    model, info = model_for_config(cfg)
    load_weights(run_dir / WEIGHTS_FILE, model)
    model.eval()
    return LoadedRun(run_dir, cfg, config_to_dict(cfg), model, info, read_summary(run_dir))
