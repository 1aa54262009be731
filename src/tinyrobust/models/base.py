"""What every tinyrobust model shares: pixel-space input, per-layer quantizer choice, JR blocks
and a weight-memory account."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

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


def plan_layers(q: QuantConfig, layers: List[str], paths: Optional[Sequence[str]] = None) -> Dict[str, LayerPlan]:
    """Resolve defaults, first/last-layer choices and per-layer overrides into one plan (keyed by ``layers``).

    ``layers`` are the weight layers in order; ``paths`` their module paths in the built model (what
    ``tinyrobust eval`` prints; default: the same names). ``quant.overrides`` names a layer by its
    module path (``blocks.block3.conv``) or by its short name (``block3``). A layer's ``act`` is the
    quantizer of the activation that follows it (after BN, and after the residual add where there is one)."""
    paths = list(paths) if paths is not None else list(layers)
    if len(paths) != len(layers):
        raise ValueError("plan_layers: one module path per layer")
    by_name = {**dict(zip(layers, layers)), **dict(zip(paths, layers))}
    overrides: Dict[str, LayerQuant] = {}
    for name, ov in q.overrides.items():
        if name not in by_name:
            raise ConfigError(f"model.quant.overrides.{name}: no such layer; layers are: {', '.join(paths)}")
        key = by_name[name]
        if key in overrides:
            raise ConfigError(f"model.quant.overrides.{name}: names the same layer as another override")
        overrides[key] = ov
    plan = {}
    for name in layers:
        ov = overrides.get(name, LayerQuant())
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
        """Per weight layer: parameters, weight bits, weight memory (bytes), output activation size.

        ``weight_bytes`` is what a device stores for the layer: weights at their bit width, biases as
        32-bit words, the 32-bit bias that a following BatchNorm folds into (when the layer has no bias
        of its own; BN's scale folds into the weights or their quantizer scale) and the layer's 32-bit
        weight scales (one per output channel for our quantizers, none for float layers).
        ``weight_bytes_bare`` leaves out the last two (weights and own biases only: the figure published
        before the footprint counted them)."""
        outs: Dict[str, Tuple[int, ...]] = {}
        order: List[str] = []  # execution order of weight layers and BatchNorms: a BN right after a layer folds into it
        layers = self.layer_modules()
        bns = {n: m for n, m in self.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}

        def record(name, shape_too):
            def hook(m, i, o):
                order.append(name)
                if shape_too:
                    outs[name] = tuple(o.shape[1:])

            return hook

        hooks = [m.register_forward_hook(record(n, True)) for n, m in layers.items()]
        hooks += [m.register_forward_hook(record(n, False)) for n, m in bns.items()]
        was_training = self.training
        self.eval()
        with torch.no_grad():
            self(torch.zeros(1, *input_shape))
        self.train(was_training)
        for h in hooks:
            h.remove()
        folded = {a: bns[b] for a, b in zip(order, order[1:]) if a in layers and b in bns}
        rows = []
        for n, m in layers.items():
            wbits = weight_bits(self.plan[n].weight)
            n_w = m.weight.numel()
            n_b = m.bias.numel() if getattr(m, "bias", None) is not None else 0
            bn = folded.get(n)
            n_bn_bias = bn.num_features if bn is not None and n_b == 0 else 0
            with torch.no_grad():
                n_scales = int(m.quant_weight().scale.numel()) if hasattr(m, "quant_weight") else 0
            abits = act_bits(self.plan[n].act) if n != self.weight_layers[-1] else 32
            out_numel = int(torch.tensor(outs[n]).prod())
            bare = (n_w * wbits + n_b * 32) / 8
            rows.append(
                {
                    "layer": n,
                    "kind": type(m).__name__,
                    "weights": n_w,
                    "biases": n_b,
                    "weight_quant": self.plan[n].weight,
                    "weight_bits": wbits,
                    "weight_scales": n_scales,
                    "bn_folded_biases": n_bn_bias,
                    "weight_bytes": bare + (n_scales + n_bn_bias) * 4,
                    "weight_bytes_bare": bare,
                    "act_quant": self.plan[n].act if n != self.weight_layers[-1] else "float",
                    "act_bits": abits,
                    "output_shape": list(outs[n]),
                    "act_bytes": out_numel * abits / 8,
                }
            )
        return rows

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
