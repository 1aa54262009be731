"""Quantizers as composable parts: a name ("int4", "ternary", ...) maps to a Brevitas layer setup.

The names, bits and export support live in one table (:mod:`.table`, light to import: config.py
reads it); the layer builders (:mod:`.quantizers`, which imports Brevitas) are loaded on first use.
"""

from .table import ACT_TABLE, ACTS, WEIGHT_TABLE, WEIGHTS, Quantizer, act_names, weight_names

_BUILDERS = ("act_bits", "conv2d", "is_stochastic", "linear", "relu", "weight_bits", "weight_quant_kwargs")

__all__ = [
    "ACTS",
    "ACT_TABLE",
    "Quantizer",
    "WEIGHTS",
    "WEIGHT_TABLE",
    "act_names",
    "weight_names",
    *_BUILDERS,
]


def __getattr__(name: str):
    if name in _BUILDERS:
        from . import quantizers

        return getattr(quantizers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
