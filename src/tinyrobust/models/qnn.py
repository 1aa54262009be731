"""``qnn``: our proposed tiny deeply quantized CNN for 32x32 inputs.

Why this shape (docs/models.md has the longer story):
- plain feed-forward conv stack, no residual adds: streaming dataflow accelerators (FINN, hls4ml)
  and MCU kernels handle it without buffering a skip path, and each block is one JR unit;
- about the compute of ResNet-8 (~15 M MACs) but ~1.8x its parameters, because deep quantization
  makes parameters cheap: at 4-bit weights it needs under a quarter of float ResNet-8's weight
  memory, at ternary about an eighth (scales and folded BN biases counted);
- strided convs instead of pooling (no extra op to quantize), global average pool, one dense layer;
- first and last layers default to 8 bits (standard practice: they are small and most sensitive).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..quant import linear
from .base import TinyModel, plan_layers
from .blocks import ConvBNAct
from .registry import MODELS

# (out channels, stride) per block
QNN_BLOCKS = [(32, 1), (32, 2), (64, 1), (64, 2), (128, 1)]
# 1.25x the channels (1.56x the weights and MACs): what 2-bit weights buy inside 70 KB, for adversarial
# training, which needs capacity more than clean training does (Madry et al. 2018)
QNN_WIDE_BLOCKS = [(c * 5 // 4, s) for c, s in QNN_BLOCKS]


class QNN(TinyModel):
    """Plain conv -> BN -> ReLU blocks, global average pool, dense; subclasses change ``BLOCKS``."""

    BLOCKS = QNN_BLOCKS

    def __init__(self, num_classes, input_shape, mean, std, quant):
        super().__init__(mean, std)
        names = [f"block{i + 1}" for i in range(len(self.BLOCKS))]
        plan = plan_layers(quant, names + ["fc"], paths=[f"blocks.{n}.conv" for n in names] + ["fc"])
        blocks, cin = [], input_shape[0]
        for name, (cout, stride) in zip(names, self.BLOCKS):
            blocks.append((name, ConvBNAct(cin, cout, 3, stride, plan[name])))
            cin = cout
        self.blocks = nn.ModuleDict(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = linear(cin, num_classes, weight=plan["fc"].weight)
        self.weight_layers = [f"blocks.{n}.conv" for n in names] + ["fc"]
        self.plan = dict(zip(self.weight_layers, plan.values()))

    def jr_blocks(self):
        return dict(self.blocks.items())

    def forward(self, x):
        x = self.normalize(x)
        for block in self.blocks.values():
            x = block(x)
        return self.fc(torch.flatten(self.pool(x), 1))


@MODELS.register("qnn")
def qnn(**kw) -> QNN:
    return QNN(**kw)


class QNNWide(QNN):
    BLOCKS = QNN_WIDE_BLOCKS


@MODELS.register("qnn_wide")
def qnn_wide(**kw) -> QNNWide:
    return QNNWide(**kw)
