"""BatchNorm re-estimation after training (Nagel et al. 2022, "Overcoming Oscillations in
Quantization-Aware Training").

Why: with ternary or binary weights, latent weights near a rounding threshold flip between grid
points from step to step. BatchNorm's running mean and variance are exponential averages over past
steps, so they describe a mix of recent weight states rather than the final one, and a model can test
far below its training accuracy (issue 12: test accuracy swinging 27-57% between epochs). Recomputing
the statistics with the final quantized weights frozen fixes the mismatch at the cost of a few
forward passes.

How: every BatchNorm layer's running statistics are reset and recomputed as the plain (cumulative,
``momentum=None``) average over ``batches`` training batches, with everything else in eval mode (so
activation quantizers and stochastic rounding do not move or draw), without gradients. The training
loop re-estimates on images augmented as in training: BatchNorm's affine parameters (and the
activation quantizers' ranges after it) were learned under the statistics of augmented batches, and
the zero padding of random crops shifts the first layers' statistics. The batches and their
augmentation come from their own seeded generator (``BatchIterator``), and the global torch RNG state
is saved and restored around the pass: enabling re-estimation changes no random draw of the run.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

BN_EPOCH = 1_000_003  # the BatchIterator "epoch" of the re-estimation pass: a stream no training epoch uses


def batchnorms(model: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def reestimate_bn(
    model: nn.Module, train_ds, batches: int, batch_size: int = 128, seed: int = 0, augment: bool = False
) -> int:
    """Recompute every BatchNorm's running mean/var over ``batches`` batches of ``train_ds`` (shuffled
    with ``seed``; random crop + flip if ``augment``) with the model's current weights; returns the
    images used."""
    from ..data.loader import BatchIterator

    bns = batchnorms(model)
    if not bns or batches <= 0:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in bns]
    seen = 0
    with torch.random.fork_rng(devices=[]):
        try:
            model.eval()
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative moving average: every batch counts equally
                m.train()
            it = BatchIterator(
                train_ds,
                min(batch_size, len(train_ds)),
                shuffle=True,
                augment=augment,
                seed=seed,
                epoch=BN_EPOCH,
                drop_last=True,
            )
            for i, (x, _) in enumerate(it):
                if i >= batches:
                    break
                model(x)
                seen += len(x)
        finally:
            for m, mom in zip(bns, momenta):
                m.momentum = mom
            model.train(was_training)
    return seen
