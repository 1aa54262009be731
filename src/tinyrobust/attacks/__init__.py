"""Adversarial evaluation: white- and black-box attacks over an L-inf eps grid, EOT for
stochastic models, and checks that flag gradient masking instead of reporting it as robustness."""

from .evaluate import attack_run, format_table, list_attacks
from .masking import check_masking
from .registry import ATTACKS, AttackSpec, expand_attack_names, get_attack
from .runner import run_attacks, validate_eps
from .target import Target

__all__ = [
    "ATTACKS",
    "AttackSpec",
    "Target",
    "attack_run",
    "check_masking",
    "expand_attack_names",
    "format_table",
    "get_attack",
    "list_attacks",
    "run_attacks",
    "validate_eps",
]
