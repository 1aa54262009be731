"""Adversarial training (issue 13): the config keys, the attacks inside the step (in the eps ball,
through the quantized forward pass, leaving statistics and parameter gradients alone), composition
with every quantizer and JR, the catastrophic-overfitting guard and exact resume."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tinyrobust.config import QuantConfig, config_from_dict
from tinyrobust.errors import ConfigError
from tinyrobust.models import build_model
from tinyrobust.train import adversarial, loop
from tinyrobust.train.adversarial import adversarial_generator, fgsm_rs, pgd, step_size_of, training_step
from tinyrobust.train.checkpoint import load_checkpoint
from tinyrobust.train.jacobian import frozen_statistics, training_forward

from conftest import (
    assert_one_line_error,
    assert_same_weights,
    batch,
    crash_after_epoch,
    deterministic,
    fake_checks,
    metrics,
    run_cli,
    same_statistics,
    statistics,
    tiny_config_dict,
)

pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # conftest: one torch thread

ADV = "train.adversarial"


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "adv, message",
    [
        ({"method": "free"}, f"{ADV}.method: 'free' is not allowed; choose one of: none, fgsm_rs, pgd, trades"),
        ({"eps": 0}, f"{ADV}.eps: 0.0 is out of range; allowed (0.0, 255.0]"),
        ({"eps": -2}, f"{ADV}.eps: -2.0 is out of range; allowed (0.0, 255.0]"),
        ({"eps": 256}, f"{ADV}.eps: 256.0 is out of range; allowed (0.0, 255.0]"),
        ({"steps": 0}, f"{ADV}.steps: 0 is out of range; allowed [1, 1000]"),
        ({"step_size": 0}, f"{ADV}.step_size: 0.0 is out of range; allowed (0.0, 255.0]"),
        ({"beta": -1}, f"{ADV}.beta: -1.0 is out of range; allowed [0.0, 1000000.0]"),
        ({"check_n": -1}, f"{ADV}.check_n: -1 is out of range"),
        ({"early_stop_drop": 0}, f"{ADV}.early_stop_drop: 0.0 is out of range; allowed (0.0, 1.0]"),
        ({"epss": 8}, f"{ADV}: unknown key 'epss'; allowed keys: method, eps, steps, step_size, beta"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(adv, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"train": {"adversarial": adv}})
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_defaults_and_step_sizes():
    cfg = config_from_dict({})
    adv = cfg.train.adversarial
    assert (adv.method, adv.eps, adv.steps, adv.step_size, adv.beta) == ("none", 8.0, 10, None, 6.0)
    fg = config_from_dict({"train": {"adversarial": {"method": "fgsm_rs"}}}).train.adversarial
    assert step_size_of(fg) == 10.0  # 1.25 eps (Wong et al. 2020)
    tr = config_from_dict({"train": {"adversarial": {"method": "trades", "steps": 10}}}).train.adversarial
    assert step_size_of(tr) == 2.0  # 2.5 eps / steps: TRADES' 2/255 at 8/255
    assert step_size_of(config_from_dict({"train": {"adversarial": {"step_size": 3}}}).train.adversarial) == 3.0


def test_bad_method_fails_before_training(fake_cifar, tmp_path, capsys, write_config, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(loop, "_train_run", boom)
    cfg = write_config(tiny_config_dict())
    code, out, err = run_cli(
        ["train", "--config", cfg, "--run-dir", tmp_path / "r", "--quiet", "--set", "train.adversarial.method=fgsm"],
        capsys,
    )
    assert_one_line_error(code, err, "tinyrobust train")
    assert "train.adversarial.method: 'fgsm' is not allowed; choose one of: none, fgsm_rs, pgd, trades" in err


# ---------------------------------------------------------------- the attacks inside the step


def qnn(weight="int4", act="int4"):
    torch.manual_seed(0)
    quant = QuantConfig(weight=weight, act=act, first_weight="int8", last_weight="int8")
    return build_model(
        "qnn", num_classes=10, input_shape=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3, quant=quant
    ).train()


@pytest.mark.parametrize("method", ["fgsm_rs", "pgd"])
def test_attacks_stay_in_the_ball_raise_the_loss_and_touch_nothing(method):
    model = qnn()
    model(batch(4, 9)[0])  # one statistics-collecting pass, as training would have done
    x, y = batch()
    before = statistics(model)
    eps, step = 8 / 255, 10 / 255
    gen = adversarial_generator(0, 0)
    with frozen_statistics(model):
        x_adv = fgsm_rs(model, x, y, eps, step, gen) if method == "fgsm_rs" else pgd(model, x, y, eps, 2 / 255, 5, gen)
        with torch.no_grad():
            loss_clean = F.cross_entropy(model(x), y)
            loss_adv = F.cross_entropy(model(x_adv), y)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > eps / 2  # it moved (gradients reach the input through the quantizers)
    assert loss_adv > loss_clean
    assert same_statistics(before, statistics(model))  # no BatchNorm / activation-scale statistics moved
    assert all(p.grad is None for p in model.parameters())  # no parameter gradient accumulated
    assert model.training  # never switched to eval mode


def test_same_generator_state_gives_the_same_examples():
    model = qnn()
    x, y = batch()
    with frozen_statistics(model):
        a = fgsm_rs(model, x, y, 8 / 255, 10 / 255, adversarial_generator(3, 1))
        b = fgsm_rs(model, x, y, 8 / 255, 10 / 255, adversarial_generator(3, 1))
        c = fgsm_rs(model, x, y, 8 / 255, 10 / 255, adversarial_generator(3, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_method_none_is_the_plain_step_bit_for_bit():
    cfg = config_from_dict({"jr": {"weight": 0.05, "batch_fraction": 0.5}})
    x, y = batch()
    m1, m2 = qnn(), qnn()
    torch.manual_seed(1)
    out = training_step(m1, x, y, adv=cfg.train.adversarial, jr=cfg.jr)
    torch.manual_seed(1)
    logits, penalty, _ = training_forward(m2, x, weight=0.05, batch_fraction=0.5)
    loss = F.cross_entropy(logits, y) + penalty
    assert torch.equal(out.loss, loss) and out.robust_correct is None
    assert out.clean_correct == int((logits.argmax(1) == y).sum())


QUANTS = [
    ("float", "float"),
    ("int8", "int8"),
    ("int4", "int4"),
    ("int2", "int4"),
    ("ternary", "int4"),
    ("stochastic_ternary", "int4"),
    ("binary", "int4"),
]
JRS = {
    "none": {},
    "network": {"weight": 0.01},
    "layers": {"layers": {"block2": 0.05}},
    "both_quarter": {"weight": 0.01, "layers": {"block2": 0.05}, "batch_fraction": 0.25},
}


# every quantizer without JR; every JR mode (whole network, per layer, both on a quarter batch) on two of them
COMBOS = [(q, "none") for q in QUANTS] + [
    (q, jr) for q in QUANTS if q[0] in ("int4", "ternary") for jr in JRS if jr != "none"
]


@pytest.mark.parametrize("method", ["fgsm_rs", "pgd", "trades"])
@pytest.mark.parametrize("quant, jr", COMBOS, ids=[f"w{q[0]}_a{q[1]}-jr_{j}" for q, j in COMBOS])
def test_composes_with_every_quantizer_and_jr(method, quant, jr):
    cfg = config_from_dict({"train": {"adversarial": {"method": method, "steps": 2}}, "jr": JRS[jr]})
    model = qnn(*quant)
    x, y = batch()
    buffers_before = {k: v.clone() for k, v in model.named_buffers() if "num_batches_tracked" in k}
    out = training_step(model, x, y, adv=cfg.train.adversarial, jr=cfg.jr, generator=adversarial_generator(0, 0))
    assert torch.isfinite(out.loss) and 0 <= out.robust_correct <= len(y)
    assert (out.penalty is not None) == (jr != "none")
    assert all(p.grad is None for p in model.parameters())  # the search accumulated nothing
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads) and any(g is not None for g in grads)
    # BatchNorm counted exactly one training pass: the step's main pass
    for k, v in model.named_buffers():
        if k in buffers_before:
            assert int(v) == int(buffers_before[k]) + 1, k


def test_step_moves_statistics_once():
    """An fgsm_rs step moves BatchNorm and activation-scale statistics exactly as a plain step on the
    same (adversarial) inputs would: the attack's passes add nothing."""
    cfg = config_from_dict({"train": {"adversarial": {"method": "fgsm_rs"}}})
    x, y = batch()
    a = qnn()
    gen = adversarial_generator(0, 0)
    with frozen_statistics(a):
        x_adv = fgsm_rs(a, x, y, 8 / 255, 10 / 255, gen)
    b = qnn()
    training_step(b, x, y, adv=cfg.train.adversarial, jr=cfg.jr, generator=adversarial_generator(0, 0))
    a(x_adv)  # the plain pass on the same inputs
    assert same_statistics(statistics(a), statistics(b))


# ---------------------------------------------------------------- training runs


def test_fgsm_run_logs_robust_metrics_and_keeps_the_best_robust_weights(train_tiny, tmp_path):
    run_dir, summary = train_tiny(
        data={"dataset": "cifar10", "val_size": 30},
        train={
            "epochs": 2,
            "max_batches_per_epoch": 3,
            "adversarial": {"method": "fgsm_rs", "eps": 8, "check_n": 20, "check_steps": 3, "keep": "best_robust"},
        },
    )
    rows = metrics(run_dir)
    for r in rows:
        assert 0 <= r["train_robust_accuracy"] <= 1 and r["train_accuracy"] is None
        rc = r["robust_check"]
        assert rc["source"] == "val" and rc["n"] == 20 and rc["steps"] == 3 and rc["eps"] == 8
        assert rc["robust_accuracy"] <= rc["clean_accuracy"]
        assert rc["robust_ci95"][0] <= rc["robust_accuracy"] <= rc["robust_ci95"][1]
    best = max(range(2), key=lambda i: (rows[i]["robust_check"]["robust_accuracy"], -i))
    assert summary["best_robust_epoch"] == best + 1
    assert summary["best_robust_check_accuracy"] == rows[best]["robust_check"]["robust_accuracy"]
    assert summary["adversarial"] == {"method": "fgsm_rs", "eps": 8.0, "step_size": 10.0}
    assert summary["epochs_trained"] == 2 and summary["stopped_early_at_epoch"] is None
    # model.safetensors (what eval/attack/export read) holds the best-robust epoch (train.adversarial.keep);
    # the last epoch's weights are kept beside it
    assert summary["weights"]["kept"] == "best_robust" and summary["weights"]["epoch"] == best + 1
    assert summary["weights"]["rule"] == "best_robust"
    assert "robust_flags" not in rows[0]["robust_check"]  # per-image outcomes live in the checkpoint's guard
    guard = load_checkpoint(run_dir / "checkpoint.pt")["guard"]
    assert guard["last_flags"].count("1") == round(rows[-1]["robust_check"]["robust_accuracy"] * 20)
    assert guard["best_flags"].count("1") == round(rows[best]["robust_check"]["robust_accuracy"] * 20)
    assert_same_weights_files(run_dir / "model_best_robust.safetensors", run_dir / "model.safetensors")
    from tinyrobust.runs import load_run

    run = load_run(run_dir)
    last = build_model(
        "qnn",
        num_classes=10,
        input_shape=(3, 32, 32),
        mean=run.dataset_info.mean,
        std=run.dataset_info.std,
        quant=run.cfg.model.quant,
    )
    from tinyrobust.train.checkpoint import load_weights

    load_weights(run_dir / "model_last.safetensors", last)
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")["model"]
    assert all(torch.equal(ckpt[k], v) for k, v in last.state_dict().items())  # model_last: the last epoch
    x = torch.from_numpy(load_dataset_test()[0]).permute(0, 3, 1, 2).float() / 255
    assert loop.evaluate_accuracy(run.model, x, torch.from_numpy(load_dataset_test()[1])) == summary["test_accuracy"]


def load_dataset_test():
    from tinyrobust.data import load_dataset

    ds = load_dataset("cifar10", "test")
    return ds.x, ds.y


def assert_same_weights_files(a, b):
    wa, wb = load_file(str(a)), load_file(str(b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_without_a_validation_split_the_check_uses_training_images_and_says_so(train_tiny):
    run_dir, summary = train_tiny(
        train={
            "epochs": 1,
            "max_batches_per_epoch": 1,
            "adversarial": {"method": "trades", "steps": 2, "check_n": 10, "check_steps": 2},
        }
    )
    row = metrics(run_dir)[0]
    assert row["robust_check"]["source"] == "train" and "no validation split" in row["robust_check"]["note"]
    assert row["train_trades_kl"] >= 0 and 0 <= row["train_accuracy"] <= 1
    assert summary["robust_check"]["source"] == "train"


def test_early_stop_on_catastrophic_overfitting(train_tiny, tmp_path, monkeypatch):
    # epoch 3 falls 0.25 below the best: stop there
    monkeypatch.setattr(loop, "robust_check", fake_checks([0.4, 0.5, 0.25, 0.6]))
    sections = dict(
        train={
            "epochs": 4,
            "max_batches_per_epoch": 1,
            "adversarial": {"method": "fgsm_rs", "check_n": 10, "early_stop_drop": 0.2},
        }
    )
    run_dir, summary = train_tiny(**sections)
    assert [r["epoch"] for r in metrics(run_dir)] == [1, 2, 3]
    assert metrics(run_dir)[-1]["robust_check"]["early_stop"] is True
    assert summary["stopped_early_at_epoch"] == 3 and summary["epochs_trained"] == 3
    assert summary["best_robust_epoch"] == 2 and summary["best_robust_check_accuracy"] == 0.5
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["guard"] == {
        "best_robust": 0.5,
        "best_epoch": 2,
        "stopped_at": 3,
        "best_flags": "1" * 5 + "0" * 5,
        "last_flags": "1" * 2 + "0" * 8,  # round(2.5)
    }
    # the default rule keeps the best check after an early stop, whatever the interval says
    assert summary["weights"]["kept"] == "best_robust" and summary["weights"]["epoch"] == 2
    assert summary["weights"]["rule"] == "best_if_significant" and "early stop" in summary["weights"]["reason"]
    # a run killed after the stop's checkpoint, before its summary, finishes without training more
    (run_dir / "summary.json").unlink()
    (run_dir / "model.safetensors").unlink()
    _, again = train_tiny(run_dir, resume=True, **sections)
    assert again["stopped_early_at_epoch"] == 3 and len(metrics(run_dir)) == 3


@pytest.mark.parametrize(
    "jr, epochs",
    [
        ({}, 2),
        pytest.param({"weight": 0.05, "layers": {"block2": 0.05}, "batch_fraction": 0.5}, 3, marks=pytest.mark.slow),
    ],
    ids=["no_jr", "jr_both_half"],
)
def test_resume_after_a_crash_is_exact(train_tiny, tmp_path, monkeypatch, jr, epochs):
    sections = dict(
        data={"dataset": "cifar10", "val_size": 20},
        train={
            "epochs": epochs,
            "max_batches_per_epoch": 2,
            "augment": True,
            "adversarial": {"method": "fgsm_rs", "eps": 8, "check_n": 20, "check_steps": 2},
        },
        jr=jr,
    )
    ref_dir, ref_summary = train_tiny(tmp_path / "ref", **sections)
    crash_after_epoch(monkeypatch, train_tiny, tmp_path / "crashed", **sections)
    assert load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")["guard"]["best_epoch"] == 1
    _, summary = train_tiny(tmp_path / "crashed", resume=True, **sections)

    assert_same_weights(ref_dir, tmp_path / "crashed")
    assert_same_weights_files(
        ref_dir / "model_best_robust.safetensors", tmp_path / "crashed" / "model_best_robust.safetensors"
    )
    keys = ("train_robust_accuracy", "robust_check", "val_accuracy")
    ref_rows, rows = metrics(ref_dir), metrics(tmp_path / "crashed")
    assert deterministic(rows) == deterministic(ref_rows)
    assert [{k: r[k] for k in keys} for r in rows] == [{k: r[k] for k in keys} for r in ref_rows]
    for k in ("test_accuracy", "best_robust_epoch", "best_robust_check_accuracy", "val_accuracy"):
        assert summary[k] == ref_summary[k]


def test_guard_check_leaves_the_model_as_it_was():
    model = qnn()
    x, y = batch(12)
    before = statistics(model)
    out = adversarial.robust_check(model, x, y, eps=8, steps=2, gen=adversarial_generator(0, 0, 1), batch_size=5)
    assert out["n"] == 12 and 0 <= out["robust_accuracy"] <= out["clean_accuracy"] <= 1
    assert model.training and same_statistics(before, statistics(model))
    assert all(p.grad is None for p in model.parameters())
    assert json.dumps(out)  # goes straight into metrics.jsonl


def test_keep_last_leaves_the_last_epoch_in_model_safetensors(train_tiny, monkeypatch):
    monkeypatch.setattr(loop, "robust_check", fake_checks([0.5, 0.1]))
    run_dir, summary = train_tiny(
        train={
            "epochs": 2,
            "max_batches_per_epoch": 1,
            "adversarial": {"method": "pgd", "steps": 1, "check_n": 10, "early_stop_drop": None, "keep": "last"},
        }
    )
    assert summary["weights"]["kept"] == "last" and summary["weights"]["epoch"] == 2
    assert summary["best_robust_epoch"] == 1
    assert summary["stopped_early_at_epoch"] is None
    assert_same_weights_files(run_dir / "model_last.safetensors", run_dir / "model.safetensors")
    a, b = load_file(str(run_dir / "model_best_robust.safetensors")), load_file(str(run_dir / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def _separable_data(n: int, seed: int):
    """4 classes of 3x8x8 images: a fixed template per class (contrast 0.3) plus noise (sd 0.1)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    templates = 0.4 + 0.3 * torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(123))
    return (templates[y] + 0.1 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1), y


@pytest.mark.slow
def test_adversarial_training_buys_robustness(tiny_net, one_thread):
    """The point of it all: on data where a plainly trained net is clean-perfect but not robust at
    4/255 (about 90% under PGD-10), fgsm_rs and pgd training reach clearly higher PGD-10 accuracy."""
    xtr, ytr = _separable_data(512, 0)
    xte, yte = _separable_data(200, 1)
    result = {}
    for method in ("none", "fgsm_rs", "pgd"):
        torch.manual_seed(0)
        model = tiny_net()
        cfg = config_from_dict({"train": {"adversarial": {"method": method, "eps": 4, "steps": 3}}})
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        gen = adversarial_generator(0, 0)
        for _ in range(25):
            perm = torch.randperm(512)
            for i in range(0, 512, 64):
                idx = perm[i : i + 64]
                out = training_step(model, xtr[idx], ytr[idx], adv=cfg.train.adversarial, jr=cfg.jr, generator=gen)
                opt.zero_grad()
                out.loss.backward()
                opt.step()
        result[method] = adversarial.robust_check(model, xte, yte, eps=4, steps=10, gen=adversarial_generator(0, 0, 1))
    assert all(r["clean_accuracy"] >= 0.95 for r in result.values()), result
    assert result["none"]["robust_accuracy"] <= 0.95, result  # the plain net is breakable here
    for method in ("fgsm_rs", "pgd"):
        assert result[method]["robust_accuracy"] >= result["none"]["robust_accuracy"] + 0.05, result


@pytest.mark.slow
def test_sigkill_mid_run_and_resume_reproduces_the_uninterrupted_run(fake_cifar, one_thread, tmp_path, write_config):
    """A real ``tinyrobust train`` process with fgsm_rs + JR, killed with SIGKILL in the middle of an
    epoch, resumed: the same weights, best-robust weights and metrics as a run never interrupted."""
    import time

    from test_train import Trainer

    raw = tiny_config_dict(
        name="adv_killed",
        data={"dataset": "cifar10", "val_size": 20},
        train={
            "epochs": 3,
            "max_batches_per_epoch": 3,
            "augment": True,
            "adversarial": {"method": "fgsm_rs", "check_n": 20, "check_steps": 2},
        },
        jr={"weight": 0.02, "batch_fraction": 0.5},
    )
    cfg_path = write_config(raw)
    ref_dir = tmp_path / "reference"
    loop.train_run(config_from_dict(raw), ref_dir, progress=False)
    torch.set_num_threads(1)
    epoch_s = sum(r["epoch_time_s"] for r in metrics(ref_dir)) / 3

    run_dir = tmp_path / "run"
    t = Trainer(cfg_path, run_dir, tmp_path)
    try:
        p = t.start(resume=False)
        t.wait_for(p, lambda: (run_dir / "checkpoint.pt").exists())
        time.sleep(0.5 * epoch_s)  # into epoch 2
        t.kill(p)
        assert t.check_consistent() >= 1
        p = t.start(resume=True)
        assert p.wait(120) == 0, t.stderr()
        assert "resuming" in t.stderr()
    finally:
        t.cleanup()
    assert_same_weights(ref_dir, run_dir)
    assert_same_weights_files(ref_dir / "model_best_robust.safetensors", run_dir / "model_best_robust.safetensors")
    assert_same_weights_files(ref_dir / "model_last.safetensors", run_dir / "model_last.safetensors")
    keys = ("train_robust_accuracy", "robust_check", "val_accuracy")
    assert [{k: r[k] for k in keys} for r in metrics(run_dir)] == [{k: r[k] for k in keys} for r in metrics(ref_dir)]
    assert deterministic(metrics(run_dir)) == deterministic(metrics(ref_dir))
