"""MLCommons Tiny ResNet-8 (tinyMLPerf image classification reference), float or quantized.

Topology as in the reference Keras model: 3x3 conv(16) stem, three residual stacks of two 3x3
convs (16, 32, 64 filters; stacks 2 and 3 downsample by 2 and use a 1x1 conv shortcut without
BN), 8x8 average pool, dense classifier. 77,850 parameters (the reference's 78,666 less its 336 conv
biases and the 480 BatchNorm moving statistics PyTorch keeps as buffers).

Differences from the reference, kept because trained runs depend on them (docs/models.md lists each):
no conv biases; stride-2 3x3 convs pad 1 on every side (TensorFlow 'same' pads 0 before, 1 after, a
one-pixel shift); PyTorch BatchNorm defaults; logits out (no softmax); normalisation inside the model.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..quant import conv2d, linear, relu
from .base import TinyModel, plan_layers
from .blocks import ConvBNAct
from .registry import MODELS


class _Stack(nn.Module):
    def __init__(self, cin, cout, stride, plan, prefix):
        super().__init__()
        self.c1 = ConvBNAct(cin, cout, 3, stride, plan[f"{prefix}.c1"])
        self.c2 = conv2d(cout, cout, 3, 1, weight=plan[f"{prefix}.c2"].weight)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            conv2d(cin, cout, 1, stride, padding=0, weight=plan[f"{prefix}.shortcut"].weight) if stride != 1 else None
        )
        self.act_out = relu(plan[f"{prefix}.c2"].act)

    def forward(self, x):
        y = self.bn2(self.c2(self.c1(x)))
        s = x if self.shortcut is None else self.shortcut(x)
        return self.act_out(y + s)


class ResNet8(TinyModel):
    def __init__(self, num_classes, input_shape, mean, std, quant):
        super().__init__(mean, std)
        self.weight_layers = [
            "stem.conv",
            "stack1.c1.conv",
            "stack1.c2",
            "stack2.c1.conv",
            "stack2.c2",
            "stack2.shortcut",
            "stack3.c1.conv",
            "stack3.c2",
            "stack3.shortcut",
            "fc",
        ]
        keys = [
            "stem",
            "stack1.c1",
            "stack1.c2",
            "stack2.c1",
            "stack2.c2",
            "stack2.shortcut",
            "stack3.c1",
            "stack3.c2",
            "stack3.shortcut",
            "fc",
        ]
        plan = plan_layers(quant, keys, paths=self.weight_layers)
        self.plan = dict(zip(self.weight_layers, plan.values()))
        self.stem = ConvBNAct(input_shape[0], 16, 3, 1, plan["stem"])
        self.stack1 = _Stack(16, 16, 1, plan, "stack1")
        self.stack2 = _Stack(16, 32, 2, plan, "stack2")
        self.stack3 = _Stack(32, 64, 2, plan, "stack3")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = linear(64, num_classes, weight=plan["fc"].weight)

    def jr_blocks(self):
        return {"stem": self.stem, "stack1": self.stack1, "stack2": self.stack2, "stack3": self.stack3}

    def forward(self, x):
        x = self.stem(self.normalize(x))
        x = self.stack3(self.stack2(self.stack1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@MODELS.register("mlc_resnet8")
def mlc_resnet8(**kw) -> ResNet8:
    return ResNet8(**kw)
