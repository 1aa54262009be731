"""Weight oscillation: the per-step flip counter (measures, never changes a run) and oscillation
dampening (Nagel et al. 2022): what it penalizes, its ramp, that it pulls latent weights to their levels,
and its bad input."""

from __future__ import annotations

import pytest
import torch

from tinyrobust.config import config_from_dict
from tinyrobust.quant.quantizers import conv2d
from tinyrobust.train import loop
from tinyrobust.train.oscillation import (
    FlipCounter,
    dampen_weight_at,
    dampening_penalty,
    quantized_weight_layers,
    weight_codes,
)

from conftest import assert_one_line_error, assert_same_weights, metrics, run_cli, tiny_config_dict

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

QUANT = {"act": "int4", "first_weight": "int8", "last_weight": "int8"}


def _model(weight: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(conv2d(3, 4, 3, weight=weight), conv2d(4, 4, 3, weight="float"))


@pytest.mark.parametrize("weight", ["int4", "ternary", "ternary_stats", "binary"])
def test_codes_are_integer_levels_of_the_grid(weight):
    ((name, layer),) = quantized_weight_layers(_model(weight))  # the float layer is left out
    codes = weight_codes(layer)
    top = {"int4": 7, "ternary": 1, "ternary_stats": 1, "binary": 1}[weight]
    assert codes.abs().max() <= top and codes.shape == layer.weight.shape
    qt = layer.quant_weight()
    assert torch.allclose(codes.float() * qt.scale, qt.value, atol=1e-6)


def test_stochastic_quantizers_are_not_tracked():
    assert quantized_weight_layers(_model("stochastic_ternary")) == []


def test_flip_counter_counts_level_changes_between_steps():
    model = _model("int4")
    counter = FlipCounter(model)
    layer = counter.layers[0][1]
    counter.step()
    assert counter.flips == 0 and counter.rate() == 0.0  # nothing moved
    with torch.no_grad():
        qt = layer.quant_weight()
        scale = qt.scale[0].item()  # per-channel scale of output channel 0
        codes = weight_codes(layer)
        # move one weight of channel 0 by one level, away from the grid's edge
        idx = (0, 0, 0, 0)
        layer.weight[idx] += scale if codes[idx] < 7 else -scale
    counter.step()
    assert counter.flips == 1 and counter.rate() == pytest.approx(1 / (2 * layer.weight.numel()))


def test_dampening_penalty_is_the_distance_to_the_level_inside_the_clip_range():
    model = _model("int4")
    layers = quantized_weight_layers(model)
    layer = layers[0][1]
    qt = layer.quant_weight()
    bound = qt.scale * 7
    w = layer.weight
    expected = ((qt.value - torch.maximum(torch.minimum(w, bound), -bound)) ** 2).sum()
    penalty = dampening_penalty(layers)
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-5) and penalty.item() > 0
    penalty.backward()
    # the gradient pulls each latent weight towards its level: w - lr * grad moves closer to q(w)
    with torch.no_grad():
        moved = w - 0.1 * w.grad
        assert (moved - qt.value).abs().sum() < (w - qt.value).abs().sum()
    with torch.no_grad():  # weights sitting on their levels cost nothing
        layer.weight.copy_(layer.quant_weight().value)
    assert dampening_penalty(layers).item() == pytest.approx(0.0, abs=1e-10)
    assert dampening_penalty([]).item() == 0.0


def test_dampening_weight_ramps_from_zero_to_its_final_value():
    ws = [dampen_weight_at(0.5, s, 11) for s in range(11)]
    assert ws[0] == 0.0 and ws[-1] == pytest.approx(0.5) and ws[5] == pytest.approx(0.25)
    assert all(a <= b for a, b in zip(ws, ws[1:]))


def _train(tmp_path, name, weight, **train):
    raw = tiny_config_dict(
        name=name,
        model={"name": "qnn", "quant": QUANT | {"weight": weight}},
        train={"epochs": 2, "max_batches_per_epoch": 3, **train},
    )
    run_dir = tmp_path / name
    loop.train_run(config_from_dict(raw), run_dir, progress=False)
    return run_dir


def test_flip_tracking_changes_nothing_in_a_run(fake_cifar, tmp_path, monkeypatch):
    """The counter reads quantized weights during training: the learned-scale ternary (whose scale
    initializes from statistics) and binary runs must come out bit-identical without it."""
    for weight in ("ternary", "binary"):
        tracked = _train(tmp_path, f"tracked_{weight}", weight)
        rows = metrics(tracked)
        assert all(0.0 <= r["weight_flip_rate"] <= 1.0 for r in rows) and rows[0]["weight_flip_rate"] > 0
        with monkeypatch.context() as m:

            class NoCounter:
                def __init__(self, model):
                    self.layers = quantized_weight_layers(model)

                def step(self):
                    pass

                def rate(self):
                    return None

            m.setattr(loop, "FlipCounter", NoCounter)
            plain = _train(tmp_path, f"plain_{weight}", weight)
        assert_same_weights(tracked, plain)


def test_dampening_pulls_latent_weights_onto_their_levels(fake_cifar, tmp_path):
    def distance(run_dir):
        from tinyrobust.runs import load_run

        model = load_run(run_dir).model
        d = n = 0.0
        for _, layer in quantized_weight_layers(model):
            qt = layer.quant_weight()
            d += ((layer.weight - qt.value).abs() / qt.scale).sum().item()
            n += layer.weight.numel()
        return d / n  # mean distance to the level, in units of the layer's scale

    plain = _train(tmp_path, "plain", "ternary_stats", lr=0.2)
    damped = _train(tmp_path, "damped", "ternary_stats", lr=0.2, dampen=50.0)
    rows = metrics(damped)
    assert all(r["train_dampen_penalty"] > 0 for r in rows) and "train_dampen_penalty" not in metrics(plain)[0]
    assert distance(damped) < 0.9 * distance(plain)


def test_bad_dampen_weight_is_one_line(fake_cifar, tmp_path, capsys):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(train={"dampen": -1})))
    code, _, err = run_cli(["train", "--config", path, "--run-dir", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "tinyrobust train")
    assert "train.dampen" in err
