"""Jacobian regularization (Hoffman, Roberts & Yaida 2019, arXiv 1908.02729).

||J||_F^2 is estimated without building J: for v drawn uniformly from the unit sphere of the
output space (dimension D), E[D * ||v^T J||^2] = ||J||_F^2, and v^T J is one vector-Jacobian
product. Training back-propagates through that product (double backward), so the penalty costs
about one extra backward pass per projection.

Sub-batch estimate (``batch_fraction`` < 1, our choice for speed): the penalty is the batch mean
of a per-sample estimate, so its mean over a random share of the (shuffled) batch is an unbiased
estimate of the same quantity, with more variance, as one projection already is. It runs in its own
forward pass on that share, which must not move running statistics (``frozen_statistics``); the
double backward, which dominates the cost, then scales with the share instead of the batch.

"Per layer" (Ayaz et al.): the same estimator is applied to chosen blocks, the Jacobian of a
block's output with respect to its own input, each with its own lambda. For a block the estimate
is divided by the block's output dimension (the mean squared row norm), so one lambda scale works
for blocks of any size; for the whole network (input -> logits) it is the plain ||J||_F^2, as in
Hoffman et al.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, List, Tuple

import torch
import torch.nn as nn


def frobenius_estimate(
    outputs: torch.Tensor, inputs: torch.Tensor, n_proj: int = 1, create_graph: bool = True
) -> torch.Tensor:
    """Per-sample estimate of ||d outputs_i / d inputs_i||_F^2, shape (B,).

    ``outputs[i]`` must depend on ``inputs[i]`` only (true for a model in eval mode; in training,
    BatchNorm couples samples through batch statistics, a small effect that Hoffman et al. also
    ignore)."""
    if n_proj < 1:
        raise ValueError("n_proj must be >= 1")
    b = outputs.shape[0]
    dim = outputs[0].numel()
    total = outputs.new_zeros(b)
    for _ in range(n_proj):
        v = torch.randn_like(outputs)
        v = v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(b, *([1] * (outputs.dim() - 1)))
        (g,) = torch.autograd.grad(outputs, inputs, grad_outputs=v, create_graph=create_graph, retain_graph=True)
        total = total + dim * g.flatten(1).pow(2).sum(1)
    return total / n_proj


def exact_frobenius(fn, x: torch.Tensor) -> torch.Tensor:
    """Exact per-sample ||J||_F^2 by building the Jacobian (tests and small models only)."""
    vals = []
    for xi in x:
        j = torch.autograd.functional.jacobian(lambda z: fn(z.unsqueeze(0)).squeeze(0), xi)
        vals.append(j.pow(2).sum())
    return torch.stack(vals)


@contextmanager
def capture_blocks(blocks: Dict[str, nn.Module]) -> Iterator[Dict[str, Tuple[torch.Tensor, torch.Tensor]]]:
    """Record (input, output) of each named block during the forward pass."""
    seen: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
    hooks: List = []
    for name, mod in blocks.items():
        hooks.append(mod.register_forward_hook(lambda m, inp, out, name=name: seen.__setitem__(name, (inp[0], out))))
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def sub_batch_size(batch: int, fraction: float) -> int:
    """Samples the penalty is estimated on: ``fraction`` of the batch, at least 2 (BatchNorm in
    training needs two) and at most the batch."""
    return min(batch, max(2, int(round(batch * fraction))))


@contextmanager
def frozen_statistics(model: nn.Module) -> Iterator[None]:
    """Training-mode forward passes inside leave every running statistic as it was.

    BatchNorm normalises with the pass's own batch statistics but does not update its running mean,
    variance or counter; Brevitas' activation scales, in their statistics-collection phase, use the
    pass's statistics without adding them to the buffer or advancing the counter (Brevitas'
    ``local_loss_mode``). For the penalty's side pass, so that the main pass alone trains them."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    stats = [m for m in model.modules() if hasattr(m, "local_loss_mode")]
    old_modes = [m.local_loss_mode for m in stats]
    try:
        for m in bns:
            m.track_running_stats = False
        for m in stats:
            m.local_loss_mode = True
        yield
    finally:
        for m in bns:
            m.track_running_stats = True
        for m, mode in zip(stats, old_modes):
            m.local_loss_mode = mode


def check_jr_layers(model: nn.Module, layers: Dict[str, float] | None) -> Dict[str, nn.Module]:
    """The model's JR blocks; ConfigError naming the key if ``layers`` (with a lambda > 0) names
    a block the model does not have. The training loop calls it before any work."""
    active = [k for k, v in (layers or {}).items() if v > 0]
    if not active:
        return {}
    blocks_all = model.jr_blocks()
    unknown = [k for k in active if k not in blocks_all]
    if unknown:
        from ..errors import ConfigError

        raise ConfigError(f"jr.layers.{unknown[0]}: no such block; blocks are: {', '.join(blocks_all)}")
    return blocks_all


def jacobian_penalty(
    model: nn.Module,
    x: torch.Tensor,
    logits_fn=None,
    *,
    weight: float = 0.0,
    layers: Dict[str, float] | None = None,
    n_proj: int = 1,
):
    """Forward ``x`` through ``model`` and return (logits, penalty, parts).

    penalty = sum_k lambda_k / 2 * mean_batch(estimate_k); ``parts`` maps "network" and each block
    name to its (unweighted) batch-mean estimate, detached, for logging."""
    layers = {k: v for k, v in (layers or {}).items() if v > 0}
    blocks_all = check_jr_layers(model, layers)
    if (weight > 0 or layers) and not x.requires_grad:
        x = x.detach().requires_grad_(True)
    with capture_blocks({k: blocks_all[k] for k in layers}) as seen:
        logits = model(x)
    penalty = logits.new_zeros(())
    parts: Dict[str, float] = {}
    if weight > 0:
        est = frobenius_estimate(logits, x, n_proj).mean()
        penalty = penalty + weight / 2 * est
        parts["network"] = float(est.detach())
    for name, lam in layers.items():
        inp, out = seen[name]
        if not inp.requires_grad:
            raise RuntimeError(f"block {name!r}: its input does not require grad; cannot regularize it")
        est = frobenius_estimate(out, inp, n_proj).mean() / out[0].numel()
        penalty = penalty + lam / 2 * est
        parts[name] = float(est.detach())
    return logits, penalty, parts


def training_forward(
    model: nn.Module,
    x: torch.Tensor,
    *,
    weight: float = 0.0,
    layers: Dict[str, float] | None = None,
    n_proj: int = 1,
    batch_fraction: float = 1.0,
):
    """(logits, penalty or None, parts) for one training step.

    With ``batch_fraction`` 1 the penalty shares the batch's forward pass (Hoffman et al.); below 1
    the batch goes through once without a graph to its input, and the penalty is estimated on its
    first ``sub_batch_size`` samples (the batch is shuffled) in a side pass under
    ``frozen_statistics``."""
    active = weight > 0 or any(v > 0 for v in (layers or {}).values())
    if not active:
        return model(x), None, {}
    if batch_fraction >= 1.0:
        return jacobian_penalty(model, x, weight=weight, layers=layers, n_proj=n_proj)
    logits = model(x)
    k = sub_batch_size(x.shape[0], batch_fraction)
    with frozen_statistics(model):
        _, penalty, parts = jacobian_penalty(model, x[:k], weight=weight, layers=layers, n_proj=n_proj)
    return logits, penalty, parts
