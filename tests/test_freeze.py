"""The frozen inference path (models/freeze.py) computes the Brevitas model's function.

Logits must match bit for bit (we assert <= 1e-5 and identical top-1), input gradients must match
Brevitas' straight-through gradients to GRAD_RTOL of their largest magnitude (Brevitas multiplies
the incoming gradient by 1/scale and then by scale, which moves the last bits; the frozen path
passes it through unchanged), for every weight and activation quantizer and every registered model,
with BatchNorm running statistics and activation scales set to non-trivial values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from tinyrobust.config import ACT_QUANTS, WEIGHT_QUANTS, QuantConfig
from tinyrobust.errors import AttackError, ExportError
from tinyrobust.models import MODELS, build_model, freeze

GRAD_RTOL = 1e-5
SHAPES = {
    "qnn": (3, 32, 32),
    "qnn_wide": (3, 32, 32),
    "mlc_resnet8": (3, 32, 32),
    "mlc_dscnn": (1, 49, 10),
    "qnn_kws": (1, 49, 10),
}


pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # conftest: one torch thread


def make_model(name: str, weight: str, act: str, seed: int = 0, shape=None) -> nn.Module:
    """Random weights; a few train-mode passes set the activation scales from statistics; then
    BatchNorm gets random running statistics and affine parameters (so folding would matter)."""
    torch.manual_seed(seed)
    shape = shape or SHAPES[name]
    c = shape[0]
    model = build_model(
        name,
        num_classes=10,
        input_shape=shape,
        mean=[0.5] * c,
        std=[0.25] * c,
        quant=QuantConfig(weight=weight, act=act),
    )
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(8, *shape))
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n) * 0.3)
                mod.running_var.copy_(torch.rand(n) * 2 + 0.2)
                mod.weight.copy_(torch.rand(n) + 0.5)
                mod.bias.copy_(torch.randn(n) * 0.2)
    return model.eval()


def compare(model: nn.Module, frozen: nn.Module, x: torch.Tensor) -> None:
    xb = x.clone().requires_grad_(True)
    lb = model(xb)
    w = torch.randn_like(lb)
    (gb,) = torch.autograd.grad((lb * w).sum(), xb)
    xf = x.clone().requires_grad_(True)
    lf = frozen(xf)
    (gf,) = torch.autograd.grad((lf * w).sum(), xf)
    assert (lb - lf).abs().max().item() <= 1e-5
    assert torch.equal(lb.argmax(1), lf.argmax(1))
    assert (gb - gf).abs().max().item() <= GRAD_RTOL * gb.abs().max().item()
    assert gb.abs().max().item() > 0  # a gradient that can be compared


def test_every_registered_model_is_covered():
    assert set(MODELS.names() if hasattr(MODELS, "names") else MODELS) == set(SHAPES)


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize(
    "weight,act",
    [
        ("int4", "int4"),
        ("ternary", "int2"),
        ("ternary_stats", "int4"),
        ("binary", "int8"),
        ("stochastic_ternary", "float"),
        ("float", "int3"),
    ],
)
def test_models_match_brevitas(name, weight, act):
    model = make_model(name, weight, act)
    compare(model, freeze(model), torch.rand(6, *SHAPES[name]))


@pytest.mark.parametrize("weight", WEIGHT_QUANTS)
def test_every_weight_quantizer(weight):
    model = make_model("qnn", weight, "int4", shape=(3, 16, 16))
    compare(model, freeze(model), torch.rand(8, 3, 16, 16))


@pytest.mark.parametrize("act", ACT_QUANTS)
def test_every_activation_quantizer(act):
    model = make_model("qnn", "int4", act, shape=(3, 16, 16))
    frozen = freeze(model)
    compare(model, frozen, torch.rand(8, 3, 16, 16))
    if act != "float":  # the grid is really used: some values clamp at the top, some are zero
        from tinyrobust.models.freeze import FrozenQuantReLU

        acts = [m for m in frozen.modules() if isinstance(m, FrozenQuantReLU)]
        assert len(acts) == 5 and all(m.bit_width == int(act[3:]) for m in acts)


def test_frozen_model_keeps_attributes_and_is_inference_only():
    model = make_model("qnn", "stochastic_ternary", "int4", shape=(3, 16, 16))
    frozen = freeze(model)
    assert type(frozen) is type(model) and frozen.stochastic is False and frozen.frozen is True
    assert frozen.weight_layers == model.weight_layers and set(frozen.jr_blocks()) == set(model.jr_blocks())
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not any(type(m).__module__.startswith("brevitas") for m in frozen.modules())
    assert model.training is False and any(p.requires_grad for p in model.parameters())  # original untouched
    with pytest.raises(ExportError, match="inference-only"):
        frozen.train()
    frozen.eval()  # allowed


def test_bn_folding_flips():
    """Why BN is not folded: folding it into the conv weights changes the logits of a quantized model
    (rounding of the next activation quantizer flips), so the frozen path keeps eval BatchNorm."""
    model = make_model("qnn", "int4", "int8", shape=(3, 32, 32))
    frozen = freeze(model)
    x = torch.rand(128, 3, 32, 32)
    with torch.no_grad():
        ref = frozen(x)
        for block in frozen.blocks.values():
            conv, bn = block.conv, block.bn
            a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(a.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bn.bias - bn.running_mean * a, requires_grad=False)
            block.bn = nn.Identity()
        folded = frozen(x)
    assert torch.equal(ref, model(x).detach())
    assert not torch.equal(ref, folded)  # folding is not bit-faithful


def test_refuses_training_mode_and_unknown_quantizers():
    model = make_model("qnn", "int4", "int4", shape=(3, 16, 16))
    with pytest.raises(ExportError, match="training mode"):
        freeze(model.train())
    model.eval()

    from brevitas.nn import QuantIdentity, QuantReLU
    from brevitas.quant import Int8ActPerTensorFloat

    bad = make_model("qnn", "int4", "int4", shape=(3, 16, 16))
    bad.blocks.block2.act = QuantReLU(act_quant=Int8ActPerTensorFloat, bit_width=4).eval()
    with pytest.raises(ExportError, match=r"blocks\.block2\.act.*Int8ActPerTensorFloat") as err:
        freeze(bad)
    assert "\n" not in str(err.value)

    bad = make_model("qnn", "int4", "int4", shape=(3, 16, 16))
    bad.blocks.block3.extra = QuantIdentity().eval()
    with pytest.raises(ExportError, match=r"blocks\.block3\.extra.*QuantIdentity"):
        freeze(bad)

    from brevitas.nn import QuantConv2d
    from brevitas.quant import Int8WeightPerTensorFloat

    bad = make_model("qnn", "int4", "int4", shape=(3, 16, 16))
    bad.blocks.block1.conv = QuantConv2d(3, 32, 3, 1, 1, bias=False, weight_quant=Int8WeightPerTensorFloat).eval()
    with pytest.raises(ExportError, match=r"blocks\.block1\.conv.*Int8WeightPerTensorFloat"):
        freeze(bad)


def test_unknown_target_refused():
    from tinyrobust.attacks.target import attack_model

    with pytest.raises(AttackError, match="unknown attack target"):
        attack_model(nn.Linear(2, 2), "onnx")


def _robust_values(obj, path=""):
    """Every robust accuracy / per-image robust string in a run_attacks result, keyed by path."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("robust_accuracy", "robust", "clean_correct", "accuracy_after_attack", "clean_accuracy"):
                out[f"{path}/{k}"] = v
            else:
                out.update(_robust_values(v, f"{path}/{k}"))
    return out


def test_attacks_give_identical_robust_accuracy_on_both_paths():
    from tinyrobust.attacks import run_attacks
    from tinyrobust.attacks.target import attack_model

    torch.manual_seed(0)
    shape = (3, 8, 8)
    model = make_model("qnn", "int4", "int4", shape=shape)
    # a few steps of training so that some images are classified correctly and survive small budgets
    rng = np.random.default_rng(0)
    templates = rng.uniform(0.3, 0.7, (10, *shape)).astype(np.float32)
    y = np.arange(64) % 10
    x = np.clip(templates[y] + rng.normal(0, 0.05, (64, *shape)), 0, 1).astype(np.float32)
    model.train()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(25):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    model.eval()
    xs, ys = x[:20], y[:20].astype(np.int64)
    params = {"pgd": {"steps": 5}, "square": {"queries": 40}}
    res = {
        t: run_attacks(
            attack_model(model, t),
            xs,
            ys,
            ["fgsm", "pgd", "square"],
            [2, 8],
            seed=3,
            params=params,
            progress=False,
            masking_checks=False,
        )
        for t in ("brevitas", "frozen")
    }
    vb, vf = _robust_values(res["brevitas"]), _robust_values(res["frozen"])
    assert vb and vb == vf


def test_cli_target_option():
    import argparse

    from tinyrobust.attacks import cli_command

    parser = argparse.ArgumentParser()
    cli_command.add_parser(parser.add_subparsers())
    assert parser.parse_args(["attack", "--run", "r"]).target == "frozen"
    assert parser.parse_args(["attack", "--run", "r", "--target", "brevitas"]).target == "brevitas"
    with pytest.raises(SystemExit):
        parser.parse_args(["attack", "--run", "r", "--target", "onnx"])
