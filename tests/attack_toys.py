"""Toy models and data for the attack tests: tiny CNNs trained in a second on separable synthetic
images (shared by test_attacks*.py; not a test file)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

K, SHAPE = 4, (3, 8, 8)


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four low-contrast class templates plus noise: separable, but breakable at 8/255."""
    templates = np.random.default_rng(0).uniform(0.45, 0.55, (K, *SHAPE)).astype(np.float32)
    y = np.arange(n) % K
    x = np.clip(templates[y] + np.random.default_rng(seed).normal(0, 0.1, (n, *SHAPE)), 0, 1)
    return x.astype(np.float32), y.astype(np.int64)


def train(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, K))
    x, y = map(torch.from_numpy, make_data(512, 1 + seed))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


class RoundedInput(nn.Module):
    """Gradient masking by construction: rounding the input has zero gradient everywhere."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 16) / 16)
