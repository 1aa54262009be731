"""What every tinyrobust model shares: pixel-space input, per-layer quantizer choice, JR blocks
and a weight-memory account."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from ..config import LayerQuant, QuantConfig
from ..errors import ConfigError
from ..quant import act_bits, weight_bits


class Normalize(nn.Module):
    """Per-channel (x - mean) / std inside the model, so attacks and epsilons live in pixel space."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class LayerPlan:
    """The quantizers chosen for one layer: weight for conv/linear layers, act for activations."""

    weight: str
    act: str


def plan_layers(q: QuantConfig, layers: List[str]) -> Dict[str, LayerPlan]:
    """Resolve defaults, first/last-layer choices and per-layer overrides into one plan.

    ``layers`` are the weight layers in order; a layer's ``act`` is the quantizer of the activation
    that follows it (after BN, and after the residual add where there is one)."""
    for name in q.overrides:
        if name not in layers:
            raise ConfigError(f"model.quant.overrides.{name}: no such layer; layers are: {', '.join(layers)}")
    plan = {}
    for name in layers:
        ov = q.overrides.get(name, LayerQuant())
        w = q.weight
        if name == layers[0] and q.first_weight:
            w = q.first_weight
        if name == layers[-1] and q.last_weight:
            w = q.last_weight
        plan[name] = LayerPlan(weight=ov.weight or w, act=ov.act or q.act)
    return plan


class TinyModel(nn.Module):
    """Base class. Subclasses set ``self.plan`` and ``self.weight_layers`` (ordered conv/linear
    module paths, the plan's keys) and implement ``forward`` and ``jr_blocks``."""

    plan: Dict[str, LayerPlan]
    weight_layers: List[str]

    def __init__(self, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)

    @property
    def stochastic(self) -> bool:
        """True when a quantizer is random at inference (then attacks must use EOT)."""
        return False  # our stochastic ternary rounds deterministically at inference

    def jr_blocks(self) -> Dict[str, nn.Module]:
        raise NotImplementedError

    def layer_modules(self) -> Dict[str, nn.Module]:
        mods = dict(self.named_modules())
        return {n: mods[n] for n in self.weight_layers}

    def layer_table(self, input_shape: Tuple[int, int, int]) -> List[dict]:
        """Per weight layer: parameters, weight bits, weight memory (bytes), output activation size."""
        outs: Dict[str, Tuple[int, ...]] = {}
        hooks = [m.register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, tuple(o.shape[1:])))
                 for n, m in self.layer_modules().items()]
        was_training = self.training
        self.eval()
        with torch.no_grad():
            self(torch.zeros(1, *input_shape))
        self.train(was_training)
        for h in hooks:
            h.remove()
        rows = []
        for n, m in self.layer_modules().items():
            wbits = weight_bits(self.plan[n].weight)
            n_w = m.weight.numel()
            n_b = m.bias.numel() if getattr(m, "bias", None) is not None else 0
            abits = act_bits(self.plan[n].act) if n != self.weight_layers[-1] else 32
            out_numel = int(torch.tensor(outs[n]).prod())
            rows.append({
                "layer": n,
                "kind": type(m).__name__,
                "weights": n_w,
                "biases": n_b,
                "weight_quant": self.plan[n].weight,
                "weight_bits": wbits,
                # weights at their bit width; biases (and folded BN shifts) as 32-bit words
                "weight_bytes": (n_w * wbits + n_b * 32) / 8,
                "act_quant": self.plan[n].act if n != self.weight_layers[-1] else "float",
                "act_bits": abits,
                "output_shape": list(outs[n]),
                "act_bytes": out_numel * abits / 8,
            })
        return rows

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
