"""Batched inference over a dataset: the one loop every stage uses to run a model on many inputs."""

from __future__ import annotations

import torch


@torch.no_grad()
def batched_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``model`` (in eval mode, no gradients) on ``x``, ``batch_size`` inputs at a time, as a
    float32 CPU tensor; the model's training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        outs = [model(x[i : i + batch_size]).float().cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def batched_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` (0.0 for no inputs)."""
    if len(x) == 0:
        return 0.0
    return int((batched_logits(model, x, batch_size).argmax(1) == y.cpu()).sum()) / len(x)
