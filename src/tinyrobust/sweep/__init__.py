"""Sweeps: a grid or random search over run-config keys, every trial a normal run directory, on Ray
(optional extra ``tinyrobust[sweep]``), scored on the validation split."""

from .engine import LocalExecutor, RayExecutor, SweepError, choose, run_sweep
from .spec import SweepSpec, Trial, load_sweep, parse_sweep
from .trial import execute_trial, score_run

__all__ = [
    "LocalExecutor",
    "RayExecutor",
    "SweepError",
    "SweepSpec",
    "Trial",
    "choose",
    "execute_trial",
    "load_sweep",
    "parse_sweep",
    "run_sweep",
    "score_run",
]
