"""Building blocks shared by the models."""

from __future__ import annotations

import torch.nn as nn

from ..quant import conv2d, relu
from .base import LayerPlan


class ConvBNAct(nn.Module):
    """conv -> BatchNorm -> (quantized) ReLU; BN stays float and folds into the conv at deployment."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, plan: LayerPlan):
        super().__init__()
        self.conv = conv2d(cin, cout, k, stride, weight=plan.weight)
        self.bn = nn.BatchNorm2d(cout)
        self.act = relu(plan.act)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))
