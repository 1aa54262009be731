"""The quantizer table: every weight and activation quantizer, one row each.

A row says what a quantizer is called in configs, which Brevitas quantizer builds it, how many bits
a device stores per value, and how the ONNX (QCDQ) and QONNX exports express it (None: they cannot,
with the reason). The config's allowed names (``config.WEIGHT_QUANTS``/``ACT_QUANTS``), the layer
builders (``quantizers.py``), the footprint's bit counts and the exporter's support table
(``export/onnx_export.py``) all read this table, so adding a quantizer is adding a row here (and, for
a new Brevitas quantizer class, the class in ``quantizers.py``).

This module imports nothing heavy (no torch, no Brevitas): ``config.py`` and ``tinyrobust list`` use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

BITS = range(2, 9)  # the integer grids offered: int2 ... int8


@dataclass(frozen=True)
class Quantizer:
    name: str  # as written in configs: model.quant.weight / act / overrides
    kind: str  # "weight" or "act"
    bits: int  # storage bits per value (float: 32)
    brevitas: Optional[str]  # "module:Class" of the Brevitas quantizer; None: a plain float layer
    layer_kwargs: Dict[str, Any] = field(default_factory=dict)  # extra QuantConv2d/QuantLinear/QuantReLU kwargs
    onnx: Optional[str] = None  # how standard ONNX (QCDQ) expresses it; None: it cannot
    qonnx: Optional[str] = None  # how QONNX expresses it; None: it cannot
    why_not: Dict[str, str] = field(default_factory=dict)  # format -> why it cannot be exported there
    stochastic: bool = False  # random in training (deterministic at inference)

    def support(self, fmt: str) -> Optional[str]:
        """How export format ``fmt`` ("onnx" or "qonnx") expresses this quantizer; None if it cannot."""
        return {"onnx": self.onnx, "qonnx": self.qonnx}[fmt]


_INT8_WEIGHT = "brevitas.quant:Int8WeightPerChannelFloat"
_OURS = "tinyrobust.quant.quantizers:"
_TERNARY_ONNX = "int8 weight tensor -> Clip[-1, 1] -> DequantizeLinear (per-channel scale)"
_TERNARY_QONNX = "Quant(bit_width=2, signed, narrow, per-channel scale): {-s, 0, +s}"
_FLOAT_LAYER = "plain Conv/Gemm, float32 weights"

WEIGHT_TABLE: List[Quantizer] = [
    Quantizer("float", "weight", 32, None, onnx=_FLOAT_LAYER, qonnx=_FLOAT_LAYER),
    *[
        Quantizer(
            f"int{b}",
            "weight",
            b,
            _INT8_WEIGHT,
            {"weight_bit_width": b},
            onnx="int8 weight tensor -> Clip[-(2^(N-1)-1), 2^(N-1)-1] -> DequantizeLinear (per-channel scale)",
            qonnx="Quant(bit_width=N, signed, narrow, per-channel scale)",
        )
        for b in BITS
    ],
    Quantizer("ternary", "weight", 2, _OURS + "TernaryWeight", onnx=_TERNARY_ONNX, qonnx=_TERNARY_QONNX),
    Quantizer("ternary_stats", "weight", 2, _OURS + "TernaryStatsWeight", onnx=_TERNARY_ONNX, qonnx=_TERNARY_QONNX),
    Quantizer(
        "stochastic_ternary",
        "weight",
        2,
        _OURS + "StochasticTernaryWeight",
        onnx="as ternary (rounding is deterministic at inference)",
        qonnx="as ternary (rounding is deterministic at inference)",
        stochastic=True,
    ),
    Quantizer(
        "binary",
        "weight",
        1,
        _OURS + "BinaryWeight",
        onnx=None,
        qonnx="BipolarQuant (per-channel scale): {-s, +s}",
        why_not={
            "onnx": "standard ONNX QuantizeLinear/DequantizeLinear have no 1-bit bipolar {-s, +s} type and Brevitas "
            "refuses to export it to QCDQ ('Binary quant not supported'); use --format qonnx (BipolarQuant) "
            "for FINN/hls4ml, or train this layer with int2/ternary weights for standard ONNX runtimes"
        },
    ),
]

ACT_TABLE: List[Quantizer] = [
    Quantizer("float", "act", 32, None, onnx="Relu", qonnx="Relu"),
    *[
        Quantizer(
            f"int{b}",
            "act",
            b,
            "brevitas.quant:Uint8ActPerTensorFloat",
            {"bit_width": b},
            onnx="Relu -> QuantizeLinear(uint8, per-tensor scale) -> Clip[0, 2^N-1] -> DequantizeLinear",
            qonnx="Relu -> Quant(bit_width=N, unsigned, per-tensor scale)",
        )
        for b in BITS
    ],
]

WEIGHTS: Dict[str, Quantizer] = {q.name: q for q in WEIGHT_TABLE}
ACTS: Dict[str, Quantizer] = {q.name: q for q in ACT_TABLE}


def weight_names() -> List[str]:
    """Allowed weight quantizer names, in table order (config.WEIGHT_QUANTS)."""
    return list(WEIGHTS)


def act_names() -> List[str]:
    """Allowed activation quantizer names, in table order (config.ACT_QUANTS)."""
    return list(ACTS)


def resolve(spec: str):
    """The class a row's ``brevitas`` field names ("module:Class"), imported on first use."""
    import importlib

    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)
