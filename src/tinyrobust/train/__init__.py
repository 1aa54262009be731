"""Training: the QAT loop, Jacobian regularization and checkpoints."""

from .jacobian import exact_frobenius, frobenius_estimate, jacobian_penalty
from .loop import train_run

__all__ = ["exact_frobenius", "frobenius_estimate", "jacobian_penalty", "train_run"]
