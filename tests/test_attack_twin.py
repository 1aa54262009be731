"""The frozen copy that adversarial training searches perturbations on (train/adversarial.py
AttackTwin): the same training-mode function as the model (bit-identical logits, input gradients
equal up to rounding), refreshed from the model every step, idle while Brevitas collects activation
statistics, refused for stochastic and float models, switched off when its logits differ, and used
by the training loop without breaking exact resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinyrobust.config import QuantConfig
from tinyrobust.models import build_model
from tinyrobust.train import loop
from tinyrobust.train.adversarial import AttackTwin, _input_grad, adversarial_generator, pgd
from tinyrobust.train.checkpoint import runtime_stats_scalers
from tinyrobust.train.jacobian import frozen_statistics

from conftest import (
    assert_same_weights,
    batch,
    crash_after_epoch,
    deterministic,
    metrics,
    same_statistics,
    statistics,
)

pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # conftest: one torch thread


def model_of(name="qnn", weight="int4", act="int4"):
    torch.manual_seed(0)
    edge = None if weight == "float" else "int8"
    quant = QuantConfig(weight=weight, act=act, first_weight=edge, last_weight=edge)
    return build_model(name, num_classes=10, input_shape=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3, quant=quant)


def past_statistics_phase(model):
    """One statistics-collecting pass, then Brevitas' switch to the learned scales (what its first
    ``collect_stats_steps`` training steps end with)."""
    model.train()
    model(batch(16, 5)[0])
    for m in runtime_stats_scalers(model).values():
        m.init_scale()


def sgd_step(model, seed=3):
    x, y = batch(16, seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    "name, weight, act",
    [
        ("qnn", "int4", "int4"),
        ("qnn", "ternary_stats", "int8"),
        ("qnn", "binary", "int4"),
        ("mlc_resnet8", "int8", "int8"),
    ],
)
def test_twin_is_the_model_s_training_function_after_every_update(name, weight, act):
    model = model_of(name, weight, act)
    twin = AttackTwin.build(model)
    assert twin is not None
    past_statistics_phase(model)
    x, y = batch(12, 1)
    for update in range(2):  # the copy follows the model's weights (and BatchNorm affine) step by step
        sgd_step(model, seed=update)
        before = statistics(model)
        copy = twin.current(x)
        assert copy is not None and twin.disabled is None
        with frozen_statistics(model):
            with torch.no_grad():
                assert torch.equal(model(x), copy(x))
            g_model = _input_grad(model, x, lambda out: F.cross_entropy(out, y))
            g_copy = _input_grad(copy, x, lambda out: F.cross_entropy(out, y))
        assert (g_model - g_copy).abs().max() <= 1e-5 * g_model.abs().max()
        assert (g_model.sign() == g_copy.sign()).float().mean() >= 0.999
        assert same_statistics(before, statistics(model))  # refresh and check moved no statistic
        assert all(p.grad is None for p in model.parameters())
        assert model.training


def test_pgd_on_the_twin_finds_the_model_s_examples():
    model = model_of()
    past_statistics_phase(model)
    x, y = batch(8, 2)
    copy = AttackTwin.build(model).current(x)
    with frozen_statistics(model):
        on_model = pgd(model, x, y, 8 / 255, 2 / 255, 3, adversarial_generator(0, 0))
        on_copy = pgd(copy, x, y, 8 / 255, 2 / 255, 3, adversarial_generator(0, 0))
    assert (on_model != on_copy).float().mean() <= 0.001  # signs of near-zero gradients may differ


def test_twin_waits_while_activation_statistics_are_collected():
    model = model_of().train()
    twin = AttackTwin.build(model)
    model(batch(8, 4)[0])  # statistics phase: the scales come from each batch
    before = statistics(model)
    assert twin.current(batch()[0]) is None
    assert same_statistics(before, statistics(model))  # asking did not advance Brevitas' counter


@pytest.mark.parametrize("weight, act", [("stochastic_ternary", "int4"), ("float", "float")])
def test_no_twin_for_stochastic_rounding_or_a_float_model(weight, act):
    assert AttackTwin.build(model_of(weight=weight, act=act)) is None


def test_twin_switches_itself_off_when_its_logits_differ(monkeypatch):
    model = model_of()
    past_statistics_phase(model)
    twin = AttackTwin.build(model)
    copy = twin.twin
    monkeypatch.setattr(twin, "twin", lambda x: copy(x) + 1e-3)
    assert twin.current(batch()[0]) is None
    assert "differ" in twin.disabled
    twin.recheck()
    assert twin.current(batch()[0]) is None  # off for the rest of the run


def short_statistics_phase(monkeypatch, steps=1):
    """Brevitas collects activation statistics for 300 training steps; a tiny run never gets past
    them. Shorten the phase on the prepared model so that the twin takes over inside the run."""
    real_prepare, real_restore = loop.prepare, loop.restore_quant_runtime_state

    def shorten(model):
        for m in runtime_stats_scalers(model).values():
            m.collect_stats_steps = steps

    def prepare(*a, **kw):
        prep = real_prepare(*a, **kw)
        shorten(prep.model)
        return prep

    def restore(model, state):  # a resume's load_state_dict re-creates the quantizer modules
        shorten(model)
        real_restore(model, state)

    monkeypatch.setattr(loop, "prepare", prepare)
    monkeypatch.setattr(loop, "restore_quant_runtime_state", restore)


ADV_RUN = dict(
    data={"dataset": "cifar10", "val_size": 20},
    train={
        "epochs": 2,
        "max_batches_per_epoch": 4,
        "adversarial": {"method": "pgd", "steps": 2, "eps": 8, "check_n": 20, "check_steps": 2},
    },
)


# Brevitas ends the statistics phase at the first training-mode pass after it (its counter then equals
# collect_stats_steps): the search of step 2 for fgsm_rs and pgd, the search of step 1 for trades (whose
# clean main pass comes first); the twin takes over from the next step
@pytest.mark.parametrize("method, per_epoch", [("fgsm_rs", [2, 4]), ("pgd", [2, 4]), ("trades", [3, 4])])
def test_training_searches_on_the_twin_once_statistics_are_in(train_tiny, monkeypatch, method, per_epoch):
    short_statistics_phase(monkeypatch)
    run = {
        **ADV_RUN,
        "train": {**ADV_RUN["train"], "adversarial": {**ADV_RUN["train"]["adversarial"], "method": method}},
    }
    run_dir, _ = train_tiny(**run)
    assert [r["attack_twin_steps"] for r in metrics(run_dir)] == per_epoch
    assert all("attack_twin_disabled" not in r for r in metrics(run_dir))


def test_training_falls_back_to_the_model_without_a_twin(train_tiny, monkeypatch, tmp_path):
    short_statistics_phase(monkeypatch)
    monkeypatch.setattr(AttackTwin, "build", classmethod(lambda cls, model: None))
    run_dir, _ = train_tiny(tmp_path / "eager", **ADV_RUN)
    assert [r["attack_twin_steps"] for r in metrics(run_dir)] == [0, 0]


def test_resume_with_the_twin_is_exact(train_tiny, tmp_path, monkeypatch):
    short_statistics_phase(monkeypatch)
    ref_dir, _ = train_tiny(tmp_path / "ref", **ADV_RUN)
    crash_after_epoch(monkeypatch, train_tiny, tmp_path / "crashed", **ADV_RUN)
    train_tiny(tmp_path / "crashed", resume=True, **ADV_RUN)
    assert [r["attack_twin_steps"] for r in metrics(tmp_path / "crashed")] == [2, 4]
    assert_same_weights(ref_dir, tmp_path / "crashed")
    assert deterministic(metrics(tmp_path / "crashed")) == deterministic(metrics(ref_dir))
