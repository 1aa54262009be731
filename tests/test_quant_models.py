"""Quantizers (levels, scales, stochastic rounding, straight-through gradients) and the models."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tinyrobust.config import ACT_QUANTS, WEIGHT_QUANTS, LayerQuant, QuantConfig, config_from_dict
from tinyrobust.errors import ConfigError, UnknownNameError
from tinyrobust.models import MODELS, build_model, plan_layers
from tinyrobust.quant import act_bits, conv2d, is_stochastic, linear, relu, weight_bits, weight_quant_kwargs

CIFAR = dict(num_classes=10, input_shape=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _seed_stochastic(module: nn.Module, seed: int) -> None:
    from brevitas.core.function_wrapper.stochastic_round import StochasticRoundSte

    for m in module.modules():
        if isinstance(m, StochasticRoundSte):
            m.generator.manual_seed(seed)


# ---------------------------------------------------------------- weight quantizers


@pytest.mark.parametrize("bits", range(2, 9))
def test_int_weights_use_a_narrow_signed_grid_per_channel(bits):
    c = conv2d(16, 8, 3, weight=f"int{bits}").train()
    q = c.quant_weight()
    ints = q.int()
    top = 2 ** (bits - 1) - 1  # narrow range: -top..top, 2**bits - 1 levels (int4: 15)
    assert q.scale.shape == (8, 1, 1, 1)  # one scale per output channel
    assert torch.allclose(q.value, ints.float() * q.scale)
    for ch in range(8):
        levels = torch.unique(ints[ch])
        assert len(levels) <= 2**bits - 1
        assert levels.abs().max() == top  # max |w| maps onto the top level
    assert len(torch.unique(ints)) == 2**bits - 1 if bits <= 4 else len(torch.unique(ints)) > 2 ** (bits - 2)
    assert weight_bits(f"int{bits}") == bits


def test_int4_has_at_most_15_levels_per_channel():
    q = conv2d(64, 4, 3, weight="int4").train().quant_weight()
    for ch in range(4):
        assert len(torch.unique(q.value[ch])) <= 15


@pytest.mark.parametrize("name", ["ternary", "ternary_stats", "stochastic_ternary"])
def test_ternary_is_minus_one_zero_one_times_mean_abs_scale(name):
    c = conv2d(16, 8, 3, weight=name).train()
    w = c.weight.detach()
    q = c.quant_weight()
    assert torch.unique(q.int()).tolist() == [-1, 0, 1]
    for ch in range(8):
        assert set(torch.unique(q.value[ch] / q.scale[ch]).round().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.allclose(q.value, q.int().float() * q.scale)
    assert torch.allclose(q.scale.flatten(), w.abs().mean((1, 2, 3)), rtol=1e-5)  # TWN-style mean |w|
    if name != "stochastic_ternary":
        assert torch.equal(q.int() == 0, w.abs() < 0.5 * q.scale)  # threshold at half the scale
    assert weight_bits(name) == 2


def test_binary_is_plus_minus_mean_abs_scale():
    c = conv2d(16, 8, 3, weight="binary").train()
    w = c.weight.detach()
    q = c.quant_weight()
    assert torch.unique(q.int()).tolist() == [-1, 1]
    assert torch.equal(q.int() > 0, w > 0)
    assert torch.allclose(q.scale.flatten(), w.abs().mean((1, 2, 3)), rtol=1e-5)
    assert torch.allclose(q.value, torch.sign(w) * q.scale)
    assert weight_bits("binary") == 1


def test_stochastic_ternary_is_random_in_training_and_deterministic_in_eval():
    c = conv2d(16, 8, 3, weight="stochastic_ternary").train()
    scale = c.quant_weight().scale.detach()
    a, b = c.quant_weight().value.detach(), c.quant_weight().value.detach()
    assert not torch.equal(a, b)
    # unbiased rounding: the mean over many draws approaches clamp(w / scale) on the grid
    target = (c.weight.detach() / scale).clamp(-1, 1)
    mean = torch.stack([c.quant_weight().int().float() for _ in range(300)]).mean(0)
    assert (mean - target).abs().max() < 0.25
    assert (mean - target).abs().mean() < 0.05
    c.eval()
    e1, e2 = c.quant_weight().value.detach(), c.quant_weight().value.detach()
    assert torch.equal(e1, e2)
    assert torch.equal(c.quant_weight().int(), torch.round(c.weight.detach() / scale).clamp(-1, 1).to(torch.int8))
    x = torch.rand(2, 16, 6, 6)
    assert torch.equal(c(x), c(x))
    assert is_stochastic("stochastic_ternary") and not is_stochastic("ternary")


@pytest.mark.parametrize("name", WEIGHT_QUANTS)
def test_weight_gradients_pass_straight_through(name):
    lin = linear(64, 16, weight=name, bias=False).train()
    x = torch.randn(32, 64, requires_grad=True)
    g = torch.randn(32, 16)
    _seed_stochastic(lin, 1)
    (lin(x) * g).sum().backward()
    _seed_stochastic(lin, 1)
    wq = lin.quant_weight().value.detach() if name != "float" else lin.weight.detach()
    # the input gradient goes through the quantized weights ...
    assert torch.allclose(x.grad, g @ wq, atol=1e-4)
    # ... and the weight gradient is the float layer's (straight-through estimator)
    float_grad = g.T @ x.detach()
    wg = lin.weight.grad
    live = wg != 0
    # ternary learns its scale (LSQ style): weights beyond 1.5 scales are clamped and get none
    assert live.float().mean() >= (0.6 if "ternary" in name else 0.99)
    assert F.cosine_similarity(wg[live], float_grad[live], dim=0) > 0.95
    if name in ("ternary", "stochastic_ternary"):  # learned scale: exactly the float gradient where live
        assert torch.allclose(wg[live], float_grad[live], atol=1e-5)
    # ternary_stats and binary: their scale is mean |w|, so its gradient adds a per-channel multiple of sign(w)


@pytest.mark.parametrize("name", [a for a in ACT_QUANTS if a != "float"])
def test_activation_quantizer_levels_and_gradient(name):
    bits = int(name[3:])
    act = relu(name).train()
    x = (torch.randn(4000) * 2).requires_grad_(True)
    y = act(x)
    levels = torch.unique(y.detach())
    assert (levels >= 0).all() and len(levels) <= 2**bits
    step = levels[1] - levels[0]
    assert torch.allclose(levels / step, (levels / step).round(), atol=1e-3)  # a uniform grid from 0
    y.sum().backward()
    top = levels.max()
    inside = (x.detach() > 0) & (x.detach() < top * 0.99)
    assert torch.all(x.grad[inside] == 1)  # straight through inside the range
    assert torch.all(x.grad[x.detach() < 0] == 0)  # ReLU
    assert act_bits(name) == bits


def test_unknown_quantizers_list_the_choices():
    with pytest.raises(ConfigError) as err:
        weight_quant_kwargs("int9")
    assert str(err.value) == f"unknown weight quantizer 'int9'; choose one of: {', '.join(WEIGHT_QUANTS)}"
    with pytest.raises(ConfigError, match="unknown activation quantizer 'ternary'; choose one of: float, int2"):
        relu("ternary")
    with pytest.raises(ConfigError, match="choose one of: float, int2, int3"):
        conv2d(3, 4, 3, weight="int1")
    with pytest.raises(ConfigError, match="unknown weight quantizer 'float32'"):
        linear(3, 4, weight="float32")
    with pytest.raises(ConfigError, match="unknown activation quantizer 'int16'"):
        act_bits("int16")
    with pytest.raises(ConfigError, match="model.quant.weight: 'int16' is not allowed"):
        config_from_dict({"model": {"quant": {"weight": "int16"}}})


# ---------------------------------------------------------------- layer plans


def test_plan_layers_first_last_and_overrides():
    q = QuantConfig(
        weight="int4",
        act="int4",
        first_weight="int8",
        last_weight="float",
        overrides={"b": LayerQuant(weight="ternary"), "c": LayerQuant(act="int2"), "a": LayerQuant(weight="binary")},
    )
    plan = plan_layers(q, ["a", "b", "c", "d"])
    assert {k: (p.weight, p.act) for k, p in plan.items()} == {
        "a": ("binary", "int4"),  # an override beats first_weight
        "b": ("ternary", "int4"),
        "c": ("int4", "int2"),
        "d": ("float", "int4"),  # last_weight
    }
    plain = plan_layers(QuantConfig(weight="int3", act="int5"), ["x", "y"])
    assert {k: (p.weight, p.act) for k, p in plain.items()} == {"x": ("int3", "int5"), "y": ("int3", "int5")}


def test_unknown_override_layer_lists_the_layers():
    with pytest.raises(ConfigError) as err:
        plan_layers(QuantConfig(overrides={"e": LayerQuant(weight="int4")}), ["a", "b"])
    assert str(err.value) == "model.quant.overrides.e: no such layer; layers are: a, b"
    with pytest.raises(ConfigError) as err:
        build_model("qnn", **CIFAR, quant=QuantConfig(overrides={"block9": LayerQuant(weight="int4")}))
    assert str(err.value) == (
        "model.quant.overrides.block9: no such layer; layers are: blocks.block1.conv, "
        "blocks.block2.conv, blocks.block3.conv, blocks.block4.conv, blocks.block5.conv, fc"
    )
    with pytest.raises(ConfigError, match="layers are: stem.conv, stack1.c1.conv, stack1.c2, stack2.c1.conv"):
        build_model("mlc_resnet8", **CIFAR, quant=QuantConfig(overrides={"stack9": LayerQuant()}))


def test_plan_reaches_the_modules():
    from brevitas.nn import QuantConv2d, QuantLinear, QuantReLU

    q = QuantConfig(
        weight="int4",
        act="int4",
        first_weight="int8",
        last_weight="int8",
        overrides={"block3": LayerQuant(weight="binary", act="int2"), "block5": LayerQuant(weight="float")},
    )
    m = build_model("qnn", **CIFAR, quant=q)
    assert m.plan["blocks.block1.conv"].weight == "int8" and m.plan["fc"].weight == "int8"
    assert m.plan["blocks.block3.conv"] == m.plan["blocks.block3.conv"].__class__("binary", "int2")
    assert isinstance(m.blocks.block2.conv, QuantConv2d) and isinstance(m.fc, QuantLinear)
    assert type(m.blocks.block5.conv) is nn.Conv2d
    assert m.blocks.block2.conv.quant_weight().bit_width.item() == 4
    assert m.blocks.block1.conv.quant_weight().bit_width.item() == 8
    assert torch.unique(m.blocks.block3.conv.quant_weight().int()).tolist() == [-1, 1]
    assert isinstance(m.blocks.block3.act, QuantReLU) and m.blocks.block3.act.act_quant.bit_width().item() == 2
    assert m.blocks.block4.act.act_quant.bit_width().item() == 4
    rows = {r["layer"]: r for r in m.layer_table((3, 32, 32))}
    assert (rows["blocks.block3.conv"]["weight_bits"], rows["blocks.block5.conv"]["weight_bits"]) == (1, 32)
    assert rows["blocks.block3.conv"]["act_bits"] == 2 and rows["fc"]["act_quant"] == "float"


# ---------------------------------------------------------------- models


def test_mlc_resnet8_matches_the_reference():
    m = build_model("mlc_resnet8", **CIFAR).eval()
    # The reference Keras model's summary (mlcommons/tiny benchmark/training/image_classification/Logs/
    # training_log.txt): "Total params: 78,666", "Trainable params: 78,186". Ours differs by exactly what
    # docs/models.md lists: no conv biases (one per output channel of each of the 9 convs), and BatchNorm's
    # moving mean/variance are buffers in PyTorch (Keras counts them as non-trainable params).
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 9 and all(c.bias is None for c in convs)
    conv_biases = sum(c.out_channels for c in convs)
    bn_stats = sum(b.numel() for n, b in m.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert m.num_parameters() + conv_biases == 78_186  # trainable
    assert m.num_parameters() + conv_biases + bn_stats == 78_666  # total
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    table = m.layer_table((3, 32, 32))
    assert [r["layer"] for r in table] == m.weight_layers and len(table) == 10
    assert [r["output_shape"] for r in table][-1] == [10]
    assert table[0]["output_shape"] == [16, 32, 32] and table[-2]["output_shape"] == [64, 8, 8]
    bn = sum(p.numel() for n, p in m.named_parameters() if ".bn" in n)
    assert sum(r["weights"] + r["biases"] for r in table) + bn == 77_850
    assert sum(r["weight_bytes_bare"] for r in table) == 4 * sum(r["weights"] + r["biases"] for r in table)
    assert sum(r["weight_bytes"] for r in table) == 4 * (sum(r["weights"] + r["biases"] for r in table) + bn // 2)
    assert set(m.jr_blocks()) == {"stem", "stack1", "stack2", "stack3"}


def test_qnn_memory_against_float_resnet8():
    rn = build_model("mlc_resnet8", **CIFAR)
    rn_bytes = sum(r["weight_bytes"] for r in rn.layer_table((3, 32, 32)))

    def qnn_bytes(weight):
        q = QuantConfig(weight=weight, act="int4", first_weight="int8", last_weight="int8")
        m = build_model("qnn", **CIFAR, quant=q)
        assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
        return m, sum(r["weight_bytes"] for r in m.layer_table((3, 32, 32)))

    m4, b4 = qnn_bytes("int4")
    assert b4 < rn_bytes / 4
    _, bt = qnn_bytes("ternary")
    assert bt < 0.13 * rn_bytes  # about an eighth once per-channel scales and folded BN biases count
    assert 1.7 < m4.num_parameters() / rn.num_parameters() < 1.9  # "~1.8x its parameters"
    assert set(m4.jr_blocks()) == {f"block{i}" for i in range(1, 6)}


def test_qnn_wide_is_qnn_at_five_quarters_width_and_fits_70_kb_with_ternary_weights():
    q = QuantConfig(weight="ternary_stats", act="int4", first_weight="int8", last_weight="int8")
    base, wide = build_model("qnn", **CIFAR, quant=q), build_model("qnn_wide", **CIFAR, quant=q)
    assert wide(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    chans = [b.conv.out_channels for b in base.blocks.values()]
    assert [b.conv.out_channels for b in wide.blocks.values()] == [c * 5 // 4 for c in chans]
    assert 1.5 < wide.num_parameters() / base.num_parameters() < 1.6
    kb = sum(r["weight_bytes"] for r in wide.layer_table((3, 32, 32))) / 1024
    assert 55 < kb <= 70  # issue 13's target: at most 70 KB of weights, scales and folded BN counted


def test_models_work_in_pixel_space():
    m = build_model("qnn", **CIFAR).eval()
    assert torch.allclose(m.normalize.mean.flatten(), torch.tensor(CIFAR["mean"]))
    assert torch.allclose(m.normalize.std.flatten(), torch.tensor(CIFAR["std"]))
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(m.normalize(x), (x - m.normalize.mean) / m.normalize.std)
    assert m.stochastic is False


def test_unknown_model_lists_the_models():
    with pytest.raises(UnknownNameError) as err:
        build_model("resnet9000", **CIFAR)
    assert str(err.value) == f"unknown model 'resnet9000'; choose one of: {', '.join(MODELS.names())}"
    assert "qnn" in MODELS.names() and "mlc_resnet8" in MODELS.names()
