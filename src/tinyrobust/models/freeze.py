"""A frozen inference form of a trained model: the same function as the Brevitas model, faster.

Brevitas' eager mode re-quantizes every weight and re-derives every scale on every call, and wraps
each activation in a ``QuantTensor``; attacks call the model thousands of times on fixed weights.
:func:`freeze` returns a copy of the model in which

- each ``QuantConv2d`` / ``QuantLinear`` is a plain ``nn.Conv2d`` / ``nn.Linear`` holding the weights
  Brevitas produces (``layer.quant_weight().value``, taken once, so the values are exactly Brevitas');
- each ``QuantReLU`` is :class:`FrozenQuantReLU`: ``relu``, then ``clamp(round(x / scale), 0, 2^b - 1)
  * scale`` computed with the same float operations in the same order as Brevitas' ``IntQuant`` (so
  the output is bit-identical), and Brevitas' straight-through backward: the gradient passes where
  ``x > 0`` and the rounded value is inside the grid, unchanged (round is an STE, clamp is not).
  ``torch.fake_quantize_per_tensor_affine`` is not used: it multiplies by a rounded ``1 / scale``
  instead of dividing, which can put a value on the other side of a rounding boundary;
- BatchNorm is NOT folded into the convolution weights: BN sits between the conv and the
  activation quantizer, and folding changes the float rounding of the pre-activation, which flips
  some roundings of the next quantizer (measured on qnn w4, 256 random 32x32 images, random BN
  statistics: 1-57 of up to 8.4 M activations flip per block at a4, 19-1140 at a8, logits move by
  up to 1.3e-2 at a2; ``tests/test_freeze.py::test_bn_folding_flips`` keeps checking it); a
  precomputed per-channel affine ``x * a + b`` can differ from ``F.batch_norm`` in the last bit for
  the same reason. Eval-mode ``BatchNorm2d`` is one
  fused kernel, so keeping it costs little;
- every parameter has ``requires_grad=False`` (attacks need input gradients only).

The frozen model is a deep copy of the original (same class), so everything attacks and reports
read off a model (``stochastic``, ``plan``, ``weight_layers``, ``jr_blocks``) is still there. It is
pinned to eval mode: ``.train()`` on it raises.
"""

from __future__ import annotations

import copy
from typing import Dict

import torch
import torch.nn as nn

from ..errors import ExportError


class _QuantReLUFn(torch.autograd.Function):
    """Forward exactly as Brevitas' QuantReLU + IntQuant; backward: Brevitas' STE mask."""

    @staticmethod
    def forward(ctx, x, scale, qmax):
        q = torch.relu(x).div_(scale).round_()  # IntQuant: x / scale (+ zero point 0.0: exact), RoundSte
        mask = (x > 0) & (q <= qmax)  # relu grad; TensorClamp passes where min <= q <= max
        ctx.save_for_backward(mask)
        return q.clamp_(0.0, qmax).mul_(scale)  # (y_int - 0.0) * scale

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None


class FrozenQuantReLU(nn.Module):
    """Unsigned per-tensor activation quantizer with a fixed scale (a frozen Brevitas QuantReLU)."""

    def __init__(self, scale: torch.Tensor, bit_width: int):
        super().__init__()
        self.register_buffer("scale", scale.detach().clone().reshape(()))
        self.bit_width = int(bit_width)
        self.qmax = float(2**self.bit_width - 1)

    def forward(self, x):
        if torch.is_grad_enabled() and x.requires_grad:
            return _QuantReLUFn.apply(x, self.scale, self.qmax)
        # no gradient wanted (queries): the same values, in place on one fresh tensor, no mask
        return torch.relu(x).div_(self.scale).round_().clamp_(0.0, self.qmax).mul_(self.scale)

    def extra_repr(self):
        return f"bit_width={self.bit_width}, scale={float(self.scale):.6g}"


def _known_weight_quants():
    from brevitas.quant import Int8WeightPerChannelFloat

    from ..quant.quantizers import BinaryWeight, StochasticTernaryWeight, TernaryWeight

    return (Int8WeightPerChannelFloat, TernaryWeight, StochasticTernaryWeight, BinaryWeight)


def _injector_name(proxy) -> str:
    inj = getattr(proxy, "quant_injector", None)
    return getattr(inj, "__name__", type(proxy).__name__)


def _check_disabled(name: str, layer: nn.Module, attrs) -> None:
    for attr in attrs:
        proxy = getattr(layer, attr, None)
        if proxy is not None and getattr(proxy, "is_quant_enabled", False):
            raise ExportError(
                f"cannot freeze layer {name!r} ({type(layer).__name__}): its {attr} "
                f"{_injector_name(proxy)} is not supported by the frozen path"
            )


def _frozen_weight_layer(name: str, layer: nn.Module) -> nn.Module:
    from brevitas.nn import QuantConv2d, QuantLinear

    inj = getattr(layer.weight_quant, "quant_injector", None)
    if not (isinstance(inj, type) and issubclass(inj, _known_weight_quants())):
        raise ExportError(
            f"cannot freeze layer {name!r} ({type(layer).__name__}): unknown weight quantizer "
            f"{_injector_name(layer.weight_quant)}"
        )
    _check_disabled(name, layer, ("input_quant", "output_quant", "bias_quant"))
    with torch.no_grad():
        w = layer.quant_weight().value.detach().clone()
    bias = layer.bias is not None
    if isinstance(layer, QuantConv2d):
        if layer.padding_mode != "zeros":
            raise ExportError(f"cannot freeze layer {name!r}: padding_mode {layer.padding_mode!r} not supported")
        new = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            bias=bias,
        )
    elif isinstance(layer, QuantLinear):
        new = nn.Linear(layer.in_features, layer.out_features, bias=bias)
    else:
        raise ExportError(f"cannot freeze layer {name!r}: unknown quantized layer {type(layer).__name__}")
    with torch.no_grad():
        new.weight.copy_(w)
        if bias:
            new.bias.copy_(layer.bias.detach())
    return new


def _frozen_act(name: str, layer: nn.Module) -> nn.Module:
    from brevitas.core.function_wrapper import TensorClamp
    from brevitas.quant import Uint8ActPerTensorFloat

    aq = layer.act_quant
    inj = getattr(aq, "quant_injector", None)
    if not (isinstance(inj, type) and issubclass(inj, Uint8ActPerTensorFloat)):
        raise ExportError(
            f"cannot freeze layer {name!r} ({type(layer).__name__}): unknown activation quantizer {_injector_name(aq)}"
        )
    _check_disabled(name, layer, ("input_quant",))
    fused = aq.fused_activation_quant_proxy
    int_quant = getattr(fused.tensor_quant, "int_quant", None)
    if (
        not isinstance(fused.activation_impl, nn.ReLU)
        or int_quant is None
        or type(int_quant.tensor_clamp_impl) is not TensorClamp
        or type(int_quant.float_to_int_impl).__name__ != "RoundSte"
    ):
        raise ExportError(
            f"cannot freeze layer {name!r} ({type(layer).__name__}): activation quantizer "
            f"{_injector_name(aq)} is configured in a way the frozen path does not know"
        )
    with torch.no_grad():
        scale, bit_width = aq.scale().detach(), int(aq.bit_width())
    if scale.numel() != 1 or bool(int_quant.signed) or bool(int_quant.narrow_range):
        raise ExportError(
            f"cannot freeze layer {name!r}: activation quantizer {_injector_name(aq)} is not an "
            "unsigned per-tensor quantizer"
        )
    return FrozenQuantReLU(scale, bit_width)


def _refuse_train(self, mode: bool = True):
    if mode:
        raise ExportError("a frozen model is inference-only; train the original model and freeze it again")
    return nn.Module.train(self, False)


def freeze(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` (in eval mode) with the same logits as the Brevitas model.

    Raises ExportError, one line, when the model is in training mode or holds a layer or quantizer
    the frozen path does not know (the message names both)."""
    if model.training:
        raise ExportError(
            "cannot freeze a model in training mode; call model.eval() first (BatchNorm statistics "
            "and stochastic quantizers differ between modes)"
        )
    frozen = frozen_copy(model, frozen_replacements(model))
    frozen.frozen = True
    return frozen


def frozen_replacements(model: nn.Module) -> Dict[str, nn.Module]:
    """Module path -> its plain replacement, for every Brevitas layer of ``model`` (ExportError, one
    line, for a layer or quantizer the frozen path does not know)."""
    from brevitas.nn import QuantConv2d, QuantLinear, QuantReLU

    replacements: Dict[str, nn.Module] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (QuantConv2d, QuantLinear)):
            replacements[name] = _frozen_weight_layer(name, mod)
        elif isinstance(mod, QuantReLU):
            replacements[name] = _frozen_act(name, mod)
        elif type(mod).__module__.startswith("brevitas.nn") and not any(name.startswith(r + ".") for r in replacements):
            raise ExportError(f"cannot freeze layer {name!r}: unknown quantized layer {type(mod).__name__}")
    return replacements


def frozen_copy(model: nn.Module, replacements: Dict[str, nn.Module]) -> nn.Module:
    frozen = copy.deepcopy(model)
    for name, new in replacements.items():
        parent_name, _, child = name.rpartition(".")
        parent = frozen.get_submodule(parent_name) if parent_name else frozen
        setattr(parent, child, new)
    frozen.eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    frozen.train = _refuse_train.__get__(frozen)
    return frozen
