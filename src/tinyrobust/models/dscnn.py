"""``mlc_dscnn``: the MLCommons Tiny keyword-spotting DS-CNN (reference Keras model), float or quantized.

Topology as in ``benchmark/training/keyword_spotting/keras_model.py`` (``ds_cnn``) for a 49x10x1
MFCC input:

- stem: conv 64 filters 10x4, stride 2, TensorFlow 'same' padding (asymmetric: 4 rows above and 5
  below, 1 column each side, so 49x10 -> 25x5), BN, ReLU, dropout 0.2;
- four depthwise-separable blocks: depthwise 3x3 'same' + BN + ReLU, pointwise 1x1 conv 64 + BN +
  ReLU;
- dropout 0.4, average pool of size (H // 2, W // 2) of the *input* (24x5 on the 25x5 map, stride =
  pool size, 'valid': the pool covers rows 0..23 and drops the last one, exactly like the
  reference), flatten, dense 12.

On the 98x40 log-mel images of ``speech_commands_logmel`` (98 frames at a 10 ms hop, 40 mel bins)
the stem's stride is 4 in time and 2 in frequency (``stem_stride``; padding 4 above and below,
1 column each side, so 98x40 -> 25x20), and the pool is (98 // 4, 40 // 2) = 24x20, the same rule
(input size // stem stride, i.e. the reference's (H // 2, W // 2)) that drops the last row. Why 4 in
time: each output row then covers 40 ms as in the reference (49 MFCC frames at 20 ms, stride 2),
and the stem and blocks run on 25x20 = 500 positions instead of 49x20 = 980 with stride 2, which
halves the CPU training time (measured 157 vs 63 images/s on one thread; the reference's own map
is 25x5). Weights are the same shapes (23,756 trainable parameters); only the compute grows
(about 10.6 M MACs vs 2.7 M on 49x10).

Every conv has a bias, as in Keras (``use_bias`` defaults to True even before BN), so the counts
match the reference: 23,756 trainable parameters, 24,908 with the BatchNorm moving statistics.
Quantized variants use the same per-layer plan as the other models (``model.quant``); the depthwise
convs are grouped convs (``groups=channels``) with per-channel weight scales.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..quant import conv2d, linear, relu
from .base import LayerPlan, TinyModel, plan_layers
from .registry import MODELS

FILTERS = 64
STEM_KERNEL = (10, 4)
STEM_STRIDE = 2


def stem_stride(h: int, w: int) -> tuple[int, int]:
    """The reference's stride 2 on its 49x10 MFCCs; on 98x40 log-mel images (10 ms frames) the time
    stride is TIME_STRIDE_LOGMEL, see the module docstring."""
    if (h, w) == LOGMEL_HW:
        return (TIME_STRIDE_LOGMEL, STEM_STRIDE)
    return (STEM_STRIDE, STEM_STRIDE)


LOGMEL_HW = (98, 40)
TIME_STRIDE_LOGMEL = 4
NUM_DS_BLOCKS = 4


def tf_same_padding(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after) for one dimension: the extra pixel goes after."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class _Stem(nn.Module):
    def __init__(self, cin: int, in_hw: tuple[int, int], stride: tuple[int, int], plan: LayerPlan):
        super().__init__()
        (top, bottom), (left, right) = (tf_same_padding(n, k, s) for n, k, s in zip(in_hw, STEM_KERNEL, stride))
        self.pad = nn.ZeroPad2d((left, right, top, bottom))
        self.conv = conv2d(cin, FILTERS, STEM_KERNEL, stride, padding=0, weight=plan.weight, bias=True)
        self.bn = nn.BatchNorm2d(FILTERS)
        self.act = relu(plan.act)
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        return self.drop(self.act(self.bn(self.conv(self.pad(x)))))


class _DSBlock(nn.Module):
    """Depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU (one JR unit)."""

    def __init__(self, c: int, dw: LayerPlan, pw: LayerPlan):
        super().__init__()
        self.dw = conv2d(c, c, 3, 1, weight=dw.weight, bias=True, groups=c)
        self.bn1 = nn.BatchNorm2d(c)
        self.act1 = relu(dw.act)
        self.pw = conv2d(c, c, 1, 1, padding=0, weight=pw.weight, bias=True)
        self.bn2 = nn.BatchNorm2d(c)
        self.act2 = relu(pw.act)

    def forward(self, x):
        return self.act2(self.bn2(self.pw(self.act1(self.bn1(self.dw(x))))))


class DSCNN(TinyModel):
    def __init__(self, num_classes, input_shape, mean, std, quant):
        super().__init__(mean, std)
        cin, h, w = input_shape
        blocks = [f"ds{i + 1}" for i in range(NUM_DS_BLOCKS)]
        keys = ["stem"] + [f"{b}.{part}" for b in blocks for part in ("dw", "pw")] + ["fc"]
        plan = plan_layers(quant, keys, paths=["stem.conv"] + keys[1:])
        self.weight_layers = ["stem.conv"] + keys[1:]
        self.plan = dict(zip(self.weight_layers, plan.values()))
        stride = stem_stride(h, w)
        self.stem = _Stem(cin, (h, w), stride, plan["stem"])
        for b in blocks:
            setattr(self, b, _DSBlock(FILTERS, plan[f"{b}.dw"], plan[f"{b}.pw"]))
        self._blocks = blocks
        self.drop = nn.Dropout(0.4)
        # Keras: (int(H/2), int(W/2)) of the input, i.e. input size // stem stride
        pool = (max(1, h // stride[0]), max(1, w // stride[1]))
        self.pool = nn.AvgPool2d(pool)
        oh, ow = -(-h // stride[0]), -(-w // stride[1])
        if oh < pool[0] or ow < pool[1]:
            raise ValueError(f"mlc_dscnn: input {h}x{w} too small for its {pool[0]}x{pool[1]} pool")
        flat = FILTERS * (oh // pool[0]) * (ow // pool[1])
        self.fc = linear(flat, num_classes, weight=plan["fc"].weight)

    def jr_blocks(self):
        return {"stem": self.stem, **{b: getattr(self, b) for b in self._blocks}}

    def forward(self, x):
        # channels-last: PyTorch's CPU depthwise-conv backward is ~4x faster in it (same numbers)
        x = self.stem(self.normalize(x).contiguous(memory_format=torch.channels_last))
        for b in self._blocks:
            x = getattr(self, b)(x)
        return self.fc(torch.flatten(self.pool(self.drop(x)), 1))


@MODELS.register("mlc_dscnn")
def mlc_dscnn(**kw) -> DSCNN:
    return DSCNN(**kw)
