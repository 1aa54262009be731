"""Named weight and activation quantizers, built from Brevitas parts.

The paper used QKeras; QKeras is unmaintained, so each of its quantizers is mapped onto a Brevitas
quantizer (see docs/quantization.md for the table):

- ``intN`` (N = 2..8) weights: QKeras ``quantized_bits(N, 0, alpha=1)`` ~ Brevitas narrow-range
  signed integer, per-output-channel float scale from the max |w| statistic.
- ``ternary``: QKeras ``ternary()`` ~ 2-bit narrow integer {-1, 0, +1} times a per-channel scale
  learned from the mean |w| statistic (TWN-style threshold at half the scale).
- ``ternary_stats``: the same grid with the scale recomputed from mean |w| every step (not learned),
  as QKeras ``ternary(alpha="auto")`` computes it; the better-training ternary (docs/quantization.md).
- ``stochastic_ternary``: QKeras ``stochastic_ternary()`` ~ the same grid, with stochastic rounding
  during training and deterministic rounding at inference (so attacks face a deterministic model).
- ``binary``: QKeras ``binary(alpha=...)`` ~ Brevitas clamped binary {-1, +1} with a per-channel
  mean-|w| scale (XNOR-Net style).
- activations ``intN``: QKeras ``quantized_relu(N)`` ~ Brevitas ``QuantReLU`` with an unsigned
  N-bit grid and a learned per-tensor scale.

All of them pass gradients with straight-through estimators, which is what white-box attacks use.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import brevitas
import torch.nn as nn
from brevitas.core.function_wrapper import TensorClamp
from brevitas.core.quant import BinaryQuant
from brevitas.core.scaling import ScalingPerOutputType
from brevitas.function.ops_ste import binary_sign_ste
from brevitas.inject.enum import FloatToIntImplType, ScalingImplType, StatsOp
from brevitas.quant import Int8WeightPerChannelFloat
from brevitas.quant.binary import SignedBinaryWeightPerTensorConst
from torch import Tensor

from ..errors import ConfigError
from .table import ACTS, WEIGHTS, Quantizer, resolve


class TernaryWeight(Int8WeightPerChannelFloat):
    bit_width = 2
    scaling_impl_type = ScalingImplType.PARAMETER_FROM_STATS
    scaling_stats_op = StatsOp.AVE


class StochasticTernaryWeight(TernaryWeight):
    float_to_int_impl_type = FloatToIntImplType.STOCHASTIC_ROUND
    deterministic_inference = True


class TernaryStatsWeight(TernaryWeight):
    """Ternary whose per-channel scale is the mean |w| statistic recomputed every step, not a learned
    parameter (as QKeras ``ternary(alpha="auto")`` and our binary). The learned scale of ``ternary``
    gets the summed gradient of every weight in its channel (no LSQ gradient scaling) and weight decay,
    and on the qnn it trained 8 points worse in 4- and 5-epoch screening (docs/quantization.md)."""

    scaling_impl_type = ScalingImplType.STATS
    scaling_min_val = 1e-8


class ScaledSignQuant(BinaryQuant):
    """``sign(w / scale) * scale`` with a straight-through sign: d(output)/dw = 1, as for the integer
    quantizers' ``round(w / scale) * scale``. Brevitas' BinaryQuant computes ``sign(w) * scale``, whose
    straight-through gradient is ``scale`` (~mean |w|, a few hundredths), so the weights barely
    learned and the scale statistic's gradient swamped theirs. The forward values are the same."""

    @brevitas.jit.script_method
    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        scale = self.scaling_impl(x)
        y = binary_sign_ste(x / scale) * scale
        y = self.delay_wrapper(x, y)
        return y, scale, self.zero_point(), self.bit_width()


class BinaryWeight(SignedBinaryWeightPerTensorConst):
    # plain sign with a straight-through gradient; Brevitas' default clamps the weights in place
    # to +-scale, which zeroes most gradients once the scale is a mean-|w| statistic
    tensor_quant = ScaledSignQuant
    tensor_clamp_impl = TensorClamp
    scaling_impl_type = ScalingImplType.STATS
    scaling_stats_op = StatsOp.AVE
    scaling_per_output_type = ScalingPerOutputType.CHANNEL
    scaling_min_val = 1e-8


def weight_bits(name: str) -> int:
    """Storage bits per weight for a quantizer name (float is stored as 32-bit)."""
    return _row(name, WEIGHTS, "weight quantizer").bits


def act_bits(name: str) -> int:
    return _row(name, ACTS, "activation quantizer").bits


def _row(name: str, table: Dict[str, Quantizer], what: str) -> Quantizer:
    if name not in table:
        raise ConfigError(f"unknown {what} {name!r}; choose one of: {', '.join(table)}")
    return table[name]


def weight_quant_kwargs(name: str) -> dict:
    """Keyword arguments for a Brevitas QuantConv2d/QuantLinear (empty dict: use a float layer)."""
    q = _row(name, WEIGHTS, "weight quantizer")
    if q.brevitas is None:
        return {}
    return {"weight_quant": resolve(q.brevitas), **q.layer_kwargs}


def conv2d(
    cin: int,
    cout: int,
    k: int,
    stride: int = 1,
    padding: Optional[int] = None,
    *,
    weight: str = "float",
    bias: bool = False,
    groups: int = 1,
) -> nn.Module:
    padding = k // 2 if padding is None else padding
    kw = weight_quant_kwargs(weight)
    if not kw:
        return nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=bias)
    from brevitas.nn import QuantConv2d

    return QuantConv2d(cin, cout, k, stride, padding, groups=groups, bias=bias, **kw)


def linear(cin: int, cout: int, *, weight: str = "float", bias: bool = True) -> nn.Module:
    kw = weight_quant_kwargs(weight)
    if not kw:
        return nn.Linear(cin, cout, bias=bias)
    from brevitas.nn import QuantLinear

    return QuantLinear(cin, cout, bias=bias, **kw)


def relu(act: str = "float") -> nn.Module:
    q = _row(act, ACTS, "activation quantizer")
    if q.brevitas is None:
        return nn.ReLU(inplace=False)
    from brevitas.nn import QuantReLU

    return QuantReLU(act_quant=resolve(q.brevitas), **q.layer_kwargs)


def is_stochastic(weight: str) -> bool:
    return weight in WEIGHTS and WEIGHTS[weight].stochastic
