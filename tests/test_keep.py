"""train.adversarial.keep: which epoch's weights an adversarial run keeps (train/keep.py), in the loop and
after the fact (``rekeep_run``, ``tinyrobust rekeep``)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tinyrobust import cli
from tinyrobust.config import load_config
from tinyrobust.errors import ConfigError, TinyRobustError
from tinyrobust.train import loop
from tinyrobust.train.keep import choose_kept, rekeep_run

from conftest import fake_checks


def flags(k: int, n: int, offset: int = 0) -> str:
    """n outcomes with k robust ones starting at ``offset`` (wrapping)."""
    out = ["0"] * n
    for i in range(k):
        out[(offset + i) % n] = "1"
    return "".join(out)


def guard(best_flags, last_flags, best_epoch=2, stopped_at=None):
    return {"best_epoch": best_epoch, "stopped_at": stopped_at, "best_flags": best_flags, "last_flags": last_flags}


def test_noise_keeps_the_last_epoch():
    # the screening case: 138 of 500 against 126 of 500 on the same images, epochs disagreeing on many
    g = guard(flags(138, 500), flags(126, 500, offset=40))
    d = choose_kept("best_if_significant", g, last_epoch=5)
    assert d["kept"] == "last" and d["epoch"] == 5 and d["rule"] == "best_if_significant"
    assert d["best_minus_last"]["delta"] == pytest.approx(12 / 500) and d["best_minus_last"]["ci95"][0] <= 0
    # the raw best check would have taken epoch 2
    assert choose_kept("best_robust", g, last_epoch=5)["epoch"] == 2


def test_a_real_decline_keeps_the_best_epoch():
    # robust overfitting: 40% -> 30% on the same 500 images
    d = choose_kept("best_if_significant", guard(flags(200, 500), flags(150, 500)), last_epoch=20)
    assert d["kept"] == "best_robust" and d["epoch"] == 2 and d["best_minus_last"]["ci95"][0] > 0


def test_early_stop_best_last_and_missing_outcomes():
    # an early stop keeps the best even where 10 images cannot show the drop beyond noise
    d = choose_kept("best_if_significant", guard(flags(5, 10), flags(3, 10), stopped_at=3), last_epoch=3)
    assert d["kept"] == "best_robust" and "early stop" in d["reason"]
    d = choose_kept("best_if_significant", guard(flags(5, 10), flags(5, 10), best_epoch=4), last_epoch=4)
    assert d["kept"] == "last" and d["epoch"] == 4
    d = choose_kept("best_if_significant", guard(None, None), last_epoch=4)  # a checkpoint of an older version
    assert d["kept"] == "best_robust" and "not recorded" in d["reason"]
    assert choose_kept("last", guard(flags(9, 10), flags(0, 10)), last_epoch=4)["kept"] == "last"
    assert choose_kept("best_if_significant", {"best_epoch": None}, last_epoch=4)["kept"] == "last"
    with pytest.raises(ConfigError, match="keep: 'best' is not allowed; choose one of: best_if_significant"):
        choose_kept("best", guard(None, None), last_epoch=4)


@pytest.mark.parametrize("accs, kept_epoch", [([0.6, 0.5], 2), ([1.0, 0.0], 1)])
def test_the_default_rule_in_a_run(train_tiny, monkeypatch, accs, kept_epoch):
    """6/10 against 5/10 is noise: the last epoch is kept; 10/10 against 0/10 is not: the best."""
    monkeypatch.setattr(loop, "robust_check", fake_checks(accs))
    run_dir, summary = train_tiny(
        train={
            "epochs": 2,
            "max_batches_per_epoch": 1,
            "adversarial": {"method": "fgsm_rs", "check_n": 10, "early_stop_drop": None},
        }
    )
    assert summary["best_robust_epoch"] == 1 and summary["weights"]["epoch"] == kept_epoch
    assert summary["weights"]["rule"] == "best_if_significant" and "best_minus_last" in summary["weights"]
    kept_file = "model_best_robust.safetensors" if kept_epoch == 1 else "model_last.safetensors"
    a, b = load_file(str(run_dir / kept_file)), load_file(str(run_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rekeep_reproduces_the_recorded_checks(train_tiny, capsys):
    run_dir, summary = train_tiny(
        data={"dataset": "cifar10", "val_size": 30},
        train={
            "epochs": 2,
            "max_batches_per_epoch": 2,
            "adversarial": {"method": "fgsm_rs", "check_n": 20, "check_steps": 2, "keep": "best_robust"},
        },
    )
    out = rekeep_run(run_dir, "last")
    # the two checks run again from the weight files give what training recorded (same images, same generators)
    assert set(out["check_reproduced"]) == {summary["best_robust_epoch"], 2}
    for epoch, r in out["check_reproduced"].items():
        assert r["now"] == r["recorded"], epoch
    assert out["weights"]["kept"] == "last" and out["weights"]["epoch"] == 2
    assert out["test_accuracy"] == json.loads((run_dir / "summary.json").read_text())["test_accuracy"]
    # the command: one line per run; the rule from the run's config when --keep is left out
    assert cli.main(["rekeep", "--run", str(run_dir)]) == 0
    line = capsys.readouterr().out
    assert str(run_dir) in line and "rule last" in line and "epoch 2" in line


def test_rekeep_rewrites_the_run_and_drops_stale_scores(train_tiny, monkeypatch):
    monkeypatch.setattr(loop, "robust_check", fake_checks([0.9, 0.1]))
    run_dir, summary = train_tiny(
        train={
            "epochs": 2,
            "max_batches_per_epoch": 1,
            "adversarial": {"method": "fgsm_rs", "check_n": 10, "early_stop_drop": None, "keep": "best_robust"},
        },
    )
    assert summary["weights"]["epoch"] == 1
    (run_dir / "sweep_trial.json").write_text(json.dumps({"status": "done"}))  # a sweep's score of epoch 1
    (run_dir / "sweep_attacks").mkdir()
    monkeypatch.setattr(loop, "robust_check", fake_checks([0.9, 0.1]))  # the same two checks, run again
    out = rekeep_run(run_dir, "last")
    assert out["previous"]["epoch"] == 1 and out["weights"]["epoch"] == 2
    assert sorted(out["removed_stale"]) == ["sweep_attacks", "sweep_trial.json"]
    assert not (run_dir / "sweep_trial.json").exists() and not (run_dir / "sweep_attacks").exists()
    after = json.loads((run_dir / "summary.json").read_text())
    assert after["weights"] == out["weights"] and after["weights"]["rule"] == "last"
    assert load_config(run_dir / "config.yaml").train.adversarial.keep == "last"
    a, b = load_file(str(run_dir / "model_last.safetensors")), load_file(str(run_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rekeep_bad_input(train_tiny, tmp_path, capsys):
    run_dir, _ = train_tiny(train={"epochs": 1, "max_batches_per_epoch": 1})
    with pytest.raises(TinyRobustError, match="not an adversarial run"):
        rekeep_run(run_dir, "last")
    assert cli.main(["rekeep", "--run", str(tmp_path / "nowhere")]) == 2
    assert "holds no finished run" in capsys.readouterr().err
    assert cli.main(["rekeep", "--run", str(run_dir), "--keep", "best"]) == 2
    assert "choose one of: best_if_significant, best_robust, last" in capsys.readouterr().err


def test_an_inert_adversarial_section_is_no_config_drift(tmp_path):
    """Runs saved before keep's default changed are still the grid's runs when adversarial training is off;
    with it on, the rule is part of the run."""
    from tinyrobust.config import config_from_dict, dump_config
    from tinyrobust.reproduce.pipeline import check_run_matches

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    old = config_from_dict({"name": "r", "train": {"adversarial": {"keep": "best_robust", "check_n": 7}}})
    (run_dir / "config.yaml").write_text(dump_config(old))
    check_run_matches(run_dir, config_from_dict({"name": "r"}), "r")  # method none: nothing differs
    on = {"method": "fgsm_rs", "keep": "best_robust"}
    (run_dir / "config.yaml").write_text(dump_config(config_from_dict({"name": "r", "train": {"adversarial": on}})))
    with pytest.raises(TinyRobustError, match="train.adversarial.keep: 'best_robust' -> 'best_if_significant'"):
        check_run_matches(
            run_dir, config_from_dict({"name": "r", "train": {"adversarial": {"method": "fgsm_rs"}}}), "r"
        )
    with pytest.raises(TinyRobustError, match="train.epochs: 10 -> 3"):  # any other setting still counts
        check_run_matches(run_dir, config_from_dict({"name": "r", "train": {"epochs": 3, "adversarial": on}}), "r")
