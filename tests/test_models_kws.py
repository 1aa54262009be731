"""The keyword-spotting models: MLC/T DS-CNN (against the reference Keras model's numbers) and qnn_kws."""

from __future__ import annotations

import pytest
import torch

from tinyrobust.config import QuantConfig, config_from_dict
from tinyrobust.data import dataset_info
from tinyrobust.errors import ConfigError
from tinyrobust.models import MODELS, build_model
from tinyrobust.models.dscnn import tf_same_padding
from tinyrobust.train.jacobian import jacobian_penalty

torch.set_num_threads(1)

INFO = dataset_info("speech_commands")
W4 = dict(weight="int4", act="int4", first_weight="int8", last_weight="int8")
VARIANTS = [
    ("mlc_dscnn", {}),
    ("mlc_dscnn", dict(weight="int8", act="int8")),
    ("qnn_kws", {}),
    ("qnn_kws", W4),
    ("qnn_kws", dict(W4, weight="ternary")),
]


def build(name, **quant):
    return build_model(
        name,
        num_classes=INFO.num_classes,
        input_shape=INFO.input_shape,
        mean=INFO.mean,
        std=INFO.std,
        quant=QuantConfig(**quant),
    )


def test_registered():
    assert {"mlc_dscnn", "qnn_kws"} <= set(MODELS.names())


@pytest.mark.parametrize("name, quant", VARIANTS)
def test_forward_and_layer_table(name, quant):
    torch.manual_seed(0)
    m = build(name, **quant)
    x = torch.rand(4, *INFO.input_shape)
    out = m(x)
    assert out.shape == (4, 12) and torch.isfinite(out).all()
    m.eval()
    assert torch.equal(m(x), m(x))  # deterministic at inference (dropout off)
    table = m.layer_table(INFO.input_shape)
    assert [r["layer"] for r in table] == m.weight_layers == list(m.plan)
    assert table[-1]["output_shape"] == [12]
    for r in table:
        expect = quant.get("weight", "float")
        if r["layer"] == m.weight_layers[0] and quant.get("first_weight"):
            expect = quant["first_weight"]
        if r["layer"] == m.weight_layers[-1] and quant.get("last_weight"):
            expect = quant["last_weight"]
        assert r["weight_quant"] == expect
    if quant:
        assert any(type(mod).__name__.startswith("Quant") for mod in m.modules())


def test_dscnn_matches_the_reference_keras_model():
    m = build("mlc_dscnn")
    # keras_model.py ds_cnn: 23,756 trainable parameters, 24,908 with BN moving mean/variance
    assert m.num_parameters() == 23_756
    running = sum(b.numel() for n, b in m.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert m.num_parameters() + running == 24_908
    table = {r["layer"]: r for r in m.layer_table(INFO.input_shape)}
    assert table["stem.conv"]["output_shape"] == [64, 25, 5]  # 10x4 stride 2 'same' on 49x10
    assert table["stem.conv"]["weights"] == 64 * 10 * 4 and table["stem.conv"]["biases"] == 64
    for i in range(1, 5):
        assert table[f"ds{i}.dw"]["weights"] == 64 * 9 and table[f"ds{i}.pw"]["weights"] == 64 * 64
        assert m.get_submodule(f"ds{i}.dw").groups == 64
    assert table["fc"]["weights"] == 64 * 12
    assert list(m.jr_blocks()) == ["stem", "ds1", "ds2", "ds3", "ds4"]
    # TensorFlow 'same': extra padding goes after (bottom/right)
    assert tf_same_padding(49, 10, 2) == (4, 5) and tf_same_padding(10, 4, 2) == (1, 1)
    assert tf_same_padding(25, 3, 1) == (1, 1)


def test_dscnn_pool_drops_the_last_row_like_keras():
    """AveragePooling2D((24, 5)) on the 25x5 map averages rows 0..23 only."""
    m = build("mlc_dscnn").eval()
    captured = {}
    m.ds4.register_forward_hook(lambda mod, i, o: captured.__setitem__("h", o))
    x = torch.rand(2, *INFO.input_shape)
    logits = m(x)
    h = captured["h"]
    assert h.shape[-2:] == (25, 5)
    want = m.fc(h[:, :, :24, :].mean((2, 3)))
    torch.testing.assert_close(logits, want)


def test_qnn_kws_shape_and_budget():
    m = build("qnn_kws")
    table = m.layer_table(INFO.input_shape)
    assert [r["output_shape"] for r in table] == [[32, 25, 5], [32, 25, 5], [48, 13, 3], [64, 13, 3], [12]]
    assert sum(r["weights"] + r["biases"] for r in table) == 51_756
    kb4 = sum(r["weight_bytes"] for r in build("qnn_kws", **W4).layer_table(INFO.input_shape)) / 1024
    kb8_ref = (
        sum(r["weight_bytes"] for r in build("mlc_dscnn", weight="int8", act="int8").layer_table(INFO.input_shape))
        / 1024
    )
    assert kb4 < 1.15 * kb8_ref  # 4-bit qnn_kws ~ the 8-bit DS-CNN's weight memory
    assert list(m.jr_blocks()) == ["block1", "block2", "block3", "block4"]


def test_overrides_use_layer_names():
    from tinyrobust.config import LayerQuant

    m = build("mlc_dscnn", weight="int8", act="int8", overrides={"ds2.dw": LayerQuant(weight="ternary")})
    assert m.plan["ds2.dw"].weight == "ternary" and m.plan["ds2.pw"].weight == "int8"
    assert type(m.ds2.dw).__name__ == "QuantConv2d" and m.ds2.dw.groups == 64
    with pytest.raises(ConfigError, match="ds2.dw"):
        build("mlc_dscnn", overrides={"nope": LayerQuant(weight="int4")})


@pytest.mark.parametrize("name, block", [("mlc_dscnn", "ds2"), ("qnn_kws", "block3")])
def test_jacobian_penalty_on_blocks(name, block):
    torch.manual_seed(0)
    m = build(name, **W4)
    x = torch.rand(3, *INFO.input_shape)
    logits, penalty, parts = jacobian_penalty(m, x, weight=1e-4, layers={block: 0.01})
    assert set(parts) == {"network", block} and torch.isfinite(penalty) and penalty > 0
    penalty.backward()
    assert m.fc.weight.grad is not None


def test_config_builds_quantized_dscnn():
    cfg = config_from_dict(
        {
            "data": {"dataset": "speech_commands"},
            "model": {"name": "mlc_dscnn", "quant": {"weight": "int8", "act": "int8"}},
        }
    )
    m = build_model(
        cfg.model.name,
        num_classes=12,
        input_shape=INFO.input_shape,
        mean=INFO.mean,
        std=INFO.std,
        quant=cfg.model.quant,
    )
    assert type(m.ds1.dw).__name__ == "QuantConv2d" and m.ds1.dw.groups == 64
