"""BPDA for quantized models (Athalye et al. 2018): forward through the real model, backward
through a smooth stand-in of its activation quantizers.

Straight-through gradients differentiate the quantized network at its quantized activations;
on a JR-trained low-bit model they point the wrong way (the issue measured PGD/APGD 16-20
points above Square). Here the gradient comes from a copy of the model whose activation
quantizers ``q(x) = clamp(round(x/s), 0, 2^b-1) * s`` are replaced by

* ``soft``: a soft staircase: within each level step ``[k, k+1)`` of ``u = x/s`` a sigmoid of
  temperature ``T`` rescaled to rise from k to k+1, clamped to the b-bit range; it tends to ``q``
  as T grows but keeps a non-zero derivative, largest where the real model flips a level, or
* ``float``: the clipped ReLU ``clamp(x, 0, (2^b-1) s)`` (the quantizer without rounding).

The attacked logits are the real model's (``stand_in(x) + (real(x) - stand_in(x)).detach()``),
so APGD's step-size control and "any misclassified iterate" rule use the real model, and the
runner scores the result on the real model. A float model has no quantizer: BPDA is plain APGD.

Quantizers are found by :func:`act_quantizer_info`: Brevitas ``QuantReLU`` / ``QuantIdentity``,
the frozen model's ``FrozenQuantReLU`` (:mod:`tinyrobust.models.freeze`), and any module that
exposes ``act_bit_width`` and ``act_scale`` (optionally ``act_signed``) attributes.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..errors import AttackError
from .target import Target
from .torch_attacks import AutoAttackAPGD

SURROGATES = ("soft", "float")


def act_quantizer_info(module: nn.Module) -> dict | None:
    """``{"bits", "scale", "signed"}`` of an activation quantizer module, else None."""
    if hasattr(module, "act_bit_width") and hasattr(module, "act_scale"):
        return {
            "bits": int(module.act_bit_width),
            "scale": torch.as_tensor(module.act_scale).detach(),
            "signed": bool(getattr(module, "act_signed", False)),
        }
    try:
        from ..models.freeze import FrozenQuantReLU
    except ImportError:  # pragma: no cover - the frozen path is optional
        FrozenQuantReLU = ()
    if FrozenQuantReLU and isinstance(module, FrozenQuantReLU):  # relu, then unsigned b-bit with a fixed scale
        return {"bits": int(module.bit_width), "scale": module.scale.detach(), "signed": False}
    try:
        from brevitas.nn import QuantIdentity, QuantReLU
    except ImportError:  # pragma: no cover - brevitas is a dependency
        return None
    if isinstance(module, (QuantReLU, QuantIdentity)) and getattr(module, "act_quant", None) is not None:
        return {"brevitas": True}
    return None


class SmoothQuantAct(nn.Module):
    """Differentiable stand-in of one activation quantizer (scale and bit width read off the real one)."""

    def __init__(self, real: nn.Module, info: dict, surrogate: str, temperature: float):
        super().__init__()
        self.real, self.info, self.surrogate, self.temperature = real, info, surrogate, float(temperature)

    def _params(self, x: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
        if not self.info.get("brevitas"):
            return self.info["scale"].to(x), self.info["bits"], self.info["signed"]
        was = self.real.return_quant_tensor
        self.real.return_quant_tensor = True
        try:
            with torch.no_grad():
                qt = self.real(x)
        finally:
            self.real.return_quant_tensor = was
        return qt.scale.detach().to(x), int(qt.bit_width), bool(qt.signed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, bits, signed = self._params(x)
        lo = -(2 ** (bits - 1)) if signed else 0
        hi = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
        if isinstance(self.real, _relu_types()) and signed:  # a QuantReLU applies ReLU before quantizing
            x = torch.relu(x)
        u = x / s
        if self.surrogate == "float":
            return torch.clamp(u, lo, hi) * s
        # Soft staircase: within each step [k, k+1) a sigmoid rescaled to go from k to k+1, so it is
        # continuous, tends to q as T grows, and costs O(1) per value.
        u = torch.clamp(u, lo, hi)
        k = torch.floor(u).detach()
        t = self.temperature
        a, b = torch.sigmoid(torch.tensor(-t / 2)), torch.sigmoid(torch.tensor(t / 2))
        return (k + (torch.sigmoid(t * (u - k - 0.5)) - a) / (b - a)) * s


def _relu_types() -> tuple:
    try:
        from brevitas.nn import QuantReLU

        return (QuantReLU,)
    except ImportError:  # pragma: no cover
        return ()


def smooth_stand_in(model: nn.Module, surrogate: str = "soft", temperature: float = 4.0) -> tuple[nn.Module, int]:
    """A copy of ``model`` with every activation quantizer replaced by :class:`SmoothQuantAct`;
    returns (copy, number replaced). Works on any module tree (Brevitas or frozen)."""
    if surrogate not in SURROGATES:
        raise AttackError(f"bpda.surrogate must be one of {', '.join(SURROGATES)}; got {surrogate!r}")
    stand_in = copy.deepcopy(model).eval()
    replaced = 0

    def swap(parent: nn.Module) -> None:
        nonlocal replaced
        for name, child in list(parent.named_children()):
            info = act_quantizer_info(child)
            if info is not None:
                setattr(parent, name, SmoothQuantAct(child, info, surrogate, temperature))
                replaced += 1
            else:
                swap(child)

    swap(stand_in)
    return stand_in, replaced


class BPDAModel(nn.Module):
    """Real model's logits in the forward pass, stand-in's gradient in the backward pass."""

    def __init__(self, real: nn.Module, stand_in: nn.Module):
        super().__init__()
        self.real, self.stand_in = real, stand_in
        self.stochastic = bool(getattr(real, "stochastic", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        smooth = self.stand_in(x)
        with torch.no_grad():
            real = self.real(x)
        return smooth + (real - smooth).detach()


class BPDA:
    """APGD-CE then APGD-DLR on the survivors, with BPDA gradients (see the module docstring)."""

    def __init__(
        self,
        target: Target,
        eps: float,
        steps: int = 100,
        restarts: int = 1,
        surrogate: str = "soft",
        temperature: float = 4.0,
    ):
        stand_in, self.replaced = smooth_stand_in(target.model, surrogate, temperature)
        model = BPDAModel(target.model, stand_in) if self.replaced else target.model
        self.bpda_target = Target(
            model, target.input_shape, target.num_classes, eot_samples=target.eot_samples, batch_size=target.batch_size
        )
        self.apgd = AutoAttackAPGD(self.bpda_target, eps, steps=steps, restarts=restarts)

    def generate(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.apgd.generate(x, y)
