"""Jacobian regularization: the random-projection estimator, per-block penalties, and the effect."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tinyrobust.config import QuantConfig
from tinyrobust.errors import ConfigError
from tinyrobust.models import build_model
from tinyrobust.train.jacobian import (
    exact_frobenius,
    frobenius_estimate,
    frozen_statistics,
    jacobian_penalty,
    sub_batch_size,
    training_forward,
)

CIFAR = dict(num_classes=10, input_shape=(3, 32, 32), mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))


@pytest.fixture(autouse=True)
def _threads(one_thread):
    torch.manual_seed(0)


def test_exact_frobenius_of_a_linear_map():
    lin = nn.Linear(12, 5)
    x = torch.rand(3, 12)
    assert torch.allclose(exact_frobenius(lin, x), lin.weight.detach().pow(2).sum().expand(3))


@pytest.mark.parametrize("weight, act", [("float", "float"), ("int4", "int4")])
def test_estimator_is_unbiased(tiny_net, weight, act):
    """Mean of D * ||v^T J||^2 over 2000 unit projections is within 4% of the exact ||J||_F^2."""
    net = tiny_net(weight, act, classes=10).eval()
    x = torch.rand(3, 3, 8, 8)
    exact = exact_frobenius(net, x)
    assert (exact > 0).all()
    xr = x.clone().requires_grad_(True)
    est = frobenius_estimate(net(xr), xr, n_proj=2000, create_graph=False)
    assert est.shape == (3,)
    assert torch.allclose(est, exact, rtol=0.04), (est, exact)
    # one projection is a noisy but positive, correctly scaled draw
    one = torch.stack([frobenius_estimate(net(xr), xr, n_proj=1, create_graph=False) for _ in range(20)])
    assert (one >= 0).all() and not torch.allclose(one[0], one[1])
    assert 0.3 < float(one.mean() / exact.mean()) < 3
    with pytest.raises(ValueError, match="n_proj"):
        frobenius_estimate(net(xr), xr, n_proj=0)


def test_network_penalty_is_half_lambda_times_estimate(tiny_net):
    net = tiny_net().train()
    x = torch.rand(4, 3, 8, 8)
    torch.manual_seed(5)
    logits, pen, parts = jacobian_penalty(net, x, weight=0.2, n_proj=3)
    assert logits.shape == (4, 4) and set(parts) == {"network"}
    assert torch.isclose(pen, torch.tensor(0.1 * parts["network"]), rtol=1e-5)
    torch.manual_seed(5)  # same projections -> same estimate
    assert jacobian_penalty(net, x, weight=0.2, n_proj=3)[2]["network"] == parts["network"]
    # no JR: no penalty, the input is left alone
    logits0, pen0, parts0 = jacobian_penalty(net, x)
    assert float(pen0) == 0.0 and parts0 == {} and not x.requires_grad
    assert torch.allclose(logits0, logits)


@pytest.mark.parametrize("weight, act", [("float", "float"), ("int4", "int4"), ("ternary", "int4")])
def test_per_block_penalty_is_differentiable(tiny_net, weight, act):
    net = tiny_net(weight, act).train()
    x = torch.rand(6, 3, 8, 8)
    logits, pen, parts = jacobian_penalty(net, x, layers={"block2": 1.0, "block1": 0.0})
    assert set(parts) == {"block2"}  # a zero lambda is skipped
    assert torch.isfinite(pen) and pen > 0
    assert torch.isclose(pen, torch.tensor(0.5 * parts["block2"]), rtol=1e-5)
    pen.backward()  # double backward through the vector-Jacobian product
    g = net.block2[0].weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_block_estimate_is_exact_norm_over_output_size(tiny_net):
    """A block's estimate is ||d block(h) / d h||_F^2 / (block output size), batch-averaged."""
    net = tiny_net().eval()
    x = torch.rand(2, 3, 8, 8)
    h = net.block1(x).detach()
    exact = exact_frobenius(lambda z: net.block2(z).flatten(1), h).detach().mean() / (8 * 4 * 4)
    _, pen, parts = jacobian_penalty(net, x, layers={"block2": 2.0}, n_proj=1000)
    assert parts["block2"] == pytest.approx(exact.item(), rel=0.06)
    assert pen.detach().item() == pytest.approx(parts["block2"], rel=1e-5)


def test_per_block_penalty_on_qnn(one_thread):
    q = QuantConfig(weight="int4", act="int4", first_weight="int8", last_weight="int8")
    m = build_model("qnn", **CIFAR, quant=q).train()
    x = torch.rand(2, 3, 32, 32)
    logits, pen, parts = jacobian_penalty(m, x, weight=0.01, layers={"block3": 0.1})
    assert set(parts) == {"network", "block3"} and all(v > 0 for v in parts.values())
    assert torch.isfinite(pen) and pen > 0
    (F.cross_entropy(logits, torch.tensor([1, 2])) + pen).backward()
    for name in ("blocks.block3.conv.weight", "blocks.block1.conv.weight", "fc.weight"):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name


def test_unknown_block_lists_the_blocks(tiny_net):
    with pytest.raises(ConfigError) as err:
        jacobian_penalty(tiny_net(), torch.rand(2, 3, 8, 8), layers={"block7": 0.1})
    assert str(err.value) == "jr.layers.block7: no such block; blocks are: block1, block2"
    m = build_model("mlc_resnet8", **CIFAR)
    with pytest.raises(ConfigError, match="blocks are: stem, stack1, stack2, stack3"):
        jacobian_penalty(m, torch.rand(2, 3, 32, 32), layers={"block1": 0.1})


def _quadrant_data(n: int, seed: int):
    """4 classes: which 4x4 quadrant of an 8x8 noisy image is brighter."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = 0.5 * torch.rand(n, 3, 8, 8, generator=g)
    for i, c in enumerate(y.tolist()):
        r, k = divmod(c, 2)
        x[i, :, 4 * r : 4 * r + 4, 4 * k : 4 * k + 4] += 0.5
    return x, y


def _train(net_cls, weight, act, lam, steps=40):
    torch.manual_seed(0)
    net = net_cls(weight, act)
    x, y = _quadrant_data(256, 0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for i in range(steps):
        idx = torch.arange(32) + 32 * (i % 8)
        logits, pen, _ = jacobian_penalty(net, x[idx], weight=lam)
        loss = F.cross_entropy(logits, y[idx]) + pen
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    xt, yt = _quadrant_data(64, 1)
    return exact_frobenius(net, xt[:8]).mean().item(), (net(xt).argmax(1) == yt).float().mean().item()


@pytest.mark.parametrize("weight, act", [("float", "float"), ("int4", "int4")])
def test_jr_lowers_the_jacobian_norm(tiny_net, weight, act):
    norm_plain, acc_plain = _train(tiny_net, weight, act, 0.0)
    norm_jr, acc_jr = _train(tiny_net, weight, act, 0.3)
    assert acc_plain >= 0.9 and acc_jr >= 0.9  # both learn the task: JR did not just kill the net
    assert norm_jr < 0.2 * norm_plain, (norm_jr, norm_plain)


def _stats_state(model):
    """Every running statistic of a model: buffers (BatchNorm, Brevitas stats) and Brevitas' counters."""
    bufs = {k: v.clone() for k, v in model.named_buffers()}
    counters = {k: m.counter for k, m in model.named_modules() if hasattr(m, "counter")}
    return bufs, counters


def _same_stats(a, b):
    return a[1] == b[1] and a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])


def test_sub_batch_size():
    assert sub_batch_size(128, 0.25) == 32 and sub_batch_size(128, 1.0) == 128
    assert sub_batch_size(5, 0.01) == 2 and sub_batch_size(1, 0.5) == 1


@pytest.mark.parametrize("weight, act", [("float", "float"), ("int4", "int4")])
def test_frozen_statistics_leaves_running_stats_alone(weight, act):
    """A training-mode pass inside ``frozen_statistics`` moves no BatchNorm buffer and no Brevitas
    activation statistic or counter (also in the statistics-collection phase); outside it they move."""
    q = QuantConfig(weight=weight, act=act, first_weight="int8", last_weight="int8")
    m = build_model("qnn", **CIFAR, quant=q).train()
    m(torch.rand(4, 3, 32, 32))  # past the first step: buffers hold something
    before = _stats_state(m)
    with frozen_statistics(m):
        out = m(torch.rand(4, 3, 32, 32) * 3)
    assert out.shape == (4, 10)
    assert _same_stats(before, _stats_state(m))
    assert all(b.track_running_stats for b in m.modules() if isinstance(b, nn.BatchNorm2d))
    m(torch.rand(4, 3, 32, 32) * 3)  # a normal pass does update them (the check above can fail)
    assert not _same_stats(before, _stats_state(m))


def test_training_forward_sub_batch():
    """batch_fraction < 1: logits of the whole batch from a pass that trains the statistics as a plain
    pass would; the penalty is the one of the first samples, computed without moving statistics."""
    q = QuantConfig(weight="int4", act="int4", first_weight="int8", last_weight="int8")
    torch.manual_seed(1)
    a = build_model("qnn", **CIFAR, quant=q).train()
    b = copy.deepcopy(a)
    x = torch.rand(8, 3, 32, 32)
    torch.manual_seed(3)
    logits, pen, parts = training_forward(a, x, weight=0.02, n_proj=1, batch_fraction=0.25)
    ref_logits = b(x)
    assert torch.allclose(logits, ref_logits, atol=1e-6)
    assert _same_stats(_stats_state(a), _stats_state(b))  # the side pass left no trace
    # the penalty: same projections on the first 2 samples
    torch.manual_seed(3)
    with frozen_statistics(b):
        _, ref_pen, ref_parts = jacobian_penalty(b, x[:2], weight=0.02, n_proj=1)
    assert torch.isclose(pen, ref_pen, rtol=1e-4) and parts["network"] == pytest.approx(ref_parts["network"], rel=1e-4)
    (F.cross_entropy(logits, torch.arange(8) % 10) + pen).backward()
    assert a.fc.weight.grad is not None and torch.isfinite(a.fc.weight.grad).all()
    # no JR: a plain forward; full fraction: the shared pass of ``jacobian_penalty``
    logits0, pen0, parts0 = training_forward(a, x, batch_fraction=0.25)
    assert pen0 is None and parts0 == {}
    torch.manual_seed(4)
    full = training_forward(a, x, weight=0.02, batch_fraction=1.0)
    assert full[1] is not None and full[0].shape == (8, 10)


def test_sub_batch_jr_lowers_the_jacobian_norm(tiny_net):
    """Trained with the penalty on a quarter of each batch, JR still does its job."""
    torch.manual_seed(0)
    norms = {}
    for lam in (0.0, 0.3):
        torch.manual_seed(0)
        net = tiny_net("float", "float")
        x, y = _quadrant_data(256, 0)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        for i in range(40):
            idx = torch.arange(32) + 32 * (i % 8)
            logits, pen, _ = training_forward(net, x[idx], weight=lam, batch_fraction=0.25)
            loss = F.cross_entropy(logits, y[idx]) + (pen if pen is not None else 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        xt, yt = _quadrant_data(64, 1)
        assert (net(xt).argmax(1) == yt).float().mean() >= 0.9
        norms[lam] = exact_frobenius(net, xt[:8]).mean().item()
    assert norms[0.3] < 0.2 * norms[0.0], norms
