"""Quantizers as composable parts: a name ("int4", "ternary", ...) maps to a Brevitas layer setup."""

from .quantizers import act_bits, conv2d, is_stochastic, linear, relu, weight_bits, weight_quant_kwargs

__all__ = ["act_bits", "conv2d", "is_stochastic", "linear", "relu", "weight_bits", "weight_quant_kwargs"]
