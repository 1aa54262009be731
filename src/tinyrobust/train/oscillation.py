"""Weight oscillation in quantization-aware training (Nagel et al. 2022, "Overcoming Oscillations in
Quantization-Aware Training"): a latent weight near a rounding threshold flips its quantized level back
and forth from step to step, which moves BatchNorm statistics and the loss under the optimizer's feet.

- ``FlipCounter`` measures it: the share of quantized weights whose integer level changes in a step,
  averaged over an epoch (``weight_flip_rate`` in metrics.jsonl). It reads the weights under no_grad and
  changes nothing, so a run is bit-identical with or without it.
- ``dampening_penalty`` is the paper's oscillation dampening: sum over quantized weights of
  (q(w) - clip(w))^2 with q(w) detached, which pulls each latent weight towards the centre of its level
  (``train.dampen``: its final weight, reached by a cosine ramp from 0, as the paper anneals it).

Stochastic quantizers are left out of both: their levels are random by design.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
from torch import nn


def quantized_weight_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The layers whose weights are quantized deterministically (float and stochastic ones left out)."""
    from ..quant.quantizers import StochasticTernaryWeight

    out = []
    for name, m in model.named_modules():
        proxy = getattr(m, "weight_quant", None)
        if proxy is None or not getattr(proxy, "is_quant_enabled", False) or not hasattr(m, "quant_weight"):
            continue
        inj = getattr(proxy, "quant_injector", None)
        if isinstance(inj, type) and issubclass(inj, StochasticTernaryWeight):
            continue
        out.append((name, m))
    return out


def _max_level(bit_width: float) -> int:
    """Largest integer level of our symmetric weight grids: binary {-1, +1}, narrow int-b and ternary
    {-(2^(b-1) - 1), ..., 2^(b-1) - 1}."""
    b = int(round(bit_width))
    return 1 if b <= 2 else 2 ** (b - 1) - 1


def weight_codes(layer: nn.Module) -> torch.Tensor:
    """The layer's weights as integer levels (round(q(w) / scale))."""
    with torch.no_grad():
        qt = layer.quant_weight()
        return torch.round(qt.value / qt.scale).to(torch.int8)


class FlipCounter:
    """Counts level changes of the quantized weights between consecutive optimizer steps."""

    def __init__(self, model: nn.Module):
        self.layers = quantized_weight_layers(model)
        self.prev: Dict[str, torch.Tensor] = {n: weight_codes(m) for n, m in self.layers}
        self.flips = 0
        self.weights_seen = 0

    def step(self) -> None:
        for n, m in self.layers:
            codes = weight_codes(m)
            self.flips += int((codes != self.prev[n]).sum())
            self.weights_seen += codes.numel()
            self.prev[n] = codes

    def rate(self):
        """Share of weights changing level per step (None: no quantized weights or no step)."""
        return self.flips / self.weights_seen if self.weights_seen else None


def dampening_penalty(layers: List[Tuple[str, nn.Module]]) -> torch.Tensor:
    """sum over layers of ||q(w).detach() - clip(w, -s * max_level, s * max_level)||^2."""
    total = None
    for _, m in layers:
        qt = m.quant_weight()
        bound = (qt.scale * _max_level(float(qt.bit_width))).detach()
        w = m.weight
        term = ((qt.value.detach() - torch.maximum(torch.minimum(w, bound), -bound)) ** 2).sum()
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


def dampen_weight_at(final: float, step: int, total_steps: int) -> float:
    """Cosine ramp from 0 at the first step to ``final`` at the last."""
    if total_steps <= 1:
        return final
    return final * 0.5 * (1.0 - math.cos(math.pi * min(step, total_steps - 1) / (total_steps - 1)))
