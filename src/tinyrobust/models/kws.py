"""``qnn_kws``: our proposed tiny deeply quantized CNN for keyword spotting (49x10x1 MFCC input).

The same design rules as ``qnn`` (the 32x32 image model), scaled to the reference DS-CNN's budget:

| block  | conv                | output  | params |
| ------ | ------------------- | ------- | ------ |
| block1 | 3x3, 32, stride 2   | 25x5x32 | 288    |
| block2 | 3x3, 32, stride 1   | 25x5x32 | 9,216  |
| block3 | 3x3, 48, stride 2   | 13x3x48 | 13,824 |
| block4 | 3x3, 64, stride 1   | 13x3x64 | 27,648 |
| fc     | global avg pool, dense 12 | 12 | 780 |

Each block is conv -> BatchNorm -> (quantized) ReLU. Why this shape:
- plain feed-forward conv stack, no depthwise/pointwise split and no residual adds: a dataflow
  accelerator (FINN, hls4ml) or an MCU kernel streams it without a skip buffer, full 3x3 convs keep
  enough weights per output for 4-bit/ternary grids (a 9-weight depthwise filter quantizes badly),
  and each block is one JR unit;
- about the DS-CNN's compute (2.8 M vs 2.7 M MACs) with ~2.2x its parameters (51.8 k vs 23.8 k),
  because deep quantization makes parameters cheap: at 4-bit weights (8-bit first and last layer)
  its weights take ~26 KB, about the DS-CNN's at 8 bits, and ~14 KB with ternary weights;
- stride 2 in the first block halves time and cepstral axes at once, like the DS-CNN's stem; the
  receptive field after block4 is 27 frames (~0.54 s, a whole word) before the global pool;
- on the 98x40 log-mel images of ``speech_commands_logmel`` it runs unchanged (49x20 after block1,
  25x10 after block3, global pool): about 19.7 M MACs, twice the 98x40 DS-CNN's 10.6 M;
- the bit widths come from the config (``model.quant``): the shipped KWS grid uses 4-bit weights and
  activations with 8-bit first and last layers, and ternary variants; the default is float.
"""

from __future__ import annotations

from .qnn import QNN
from .registry import MODELS

# (out channels, stride) per block
KWS_BLOCKS = [(32, 2), (32, 1), (48, 2), (64, 1)]


class QNNKWS(QNN):
    BLOCKS = KWS_BLOCKS


@MODELS.register("qnn_kws")
def qnn_kws(**kw) -> QNNKWS:
    return QNNKWS(**kw)
