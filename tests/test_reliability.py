"""Never lose work, never run untrusted code: hostile and broken files, full or unwritable disks,
diverging training."""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tinyrobust.config import config_from_dict, dump_config
from tinyrobust.errors import CheckpointError, ConfigError, TinyRobustError, TrainingDiverged
from tinyrobust.io_utils import atomic_write, atomic_write_text, check_writable
from tinyrobust.models import build_model
from tinyrobust.runs import load_run
from tinyrobust.train import loop
from tinyrobust.train.checkpoint import load_checkpoint, save_checkpoint, save_weights

from conftest import assert_one_line_error, run_cli, tiny_config_dict

CIFAR = dict(num_classes=10, input_shape=(3, 32, 32), mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))


class Exploit:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def float_run(tmp_path):
    """A finished-looking run folder (config + weights of a float qnn), made without training."""
    run_dir = tmp_path / "run"
    raw = tiny_config_dict(name="float_run", model={"name": "qnn", "quant": {"weight": "float", "act": "float"}})
    atomic_write_text(run_dir / "config.yaml", dump_config(config_from_dict(raw)))
    save_weights(run_dir / "model.safetensors", build_model("qnn", **CIFAR))
    return run_dir


# ---------------------------------------------------------------- untrusted checkpoints


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "legacy torch.save", "raw pickle"])
def test_pickled_code_in_checkpoint_is_refused(tmp_path, writer):
    marker = tmp_path / "PWNED"
    path = tmp_path / "checkpoint.pt"
    state = {"model": {"w": torch.zeros(2)}, "optimizer": Exploit(marker), "epoch": 1}
    if writer == "torch.save":
        torch.save(state, path)
    elif writer == "legacy torch.save":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(state))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"{path}: refused to load: it holds objects other than tensors")
    assert not marker.exists()


def test_resume_from_a_malicious_checkpoint_fails_cleanly(fake_cifar, one_thread, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    run_dir = tmp_path / "run"
    atomic_write_text(run_dir / "config.yaml", dump_config(config_from_dict(tiny_config_dict())))
    torch.save({"model": {}, "optimizer": {}, "epoch": Exploit(marker)}, run_dir / "checkpoint.pt")
    code, out, err = run_cli(["train", "--run-dir", run_dir, "--resume", "--quiet"], capsys)
    assert_one_line_error(code, err, "tinyrobust train")
    assert "refused to load" in err and str(run_dir / "checkpoint.pt") in err
    assert not marker.exists() and not (run_dir / "model.safetensors").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "corrupt or truncated checkpoint"),  # truncated real checkpoint
        (b"", "corrupt or truncated checkpoint (EOFError)"),
        (b"PK\x03\x04" + b"\x00" * 100, "corrupt or truncated checkpoint"),
        ("tensor", "not a tinyrobust checkpoint (holds a Tensor, not a mapping)"),
    ],
)
def test_corrupt_checkpoint_is_a_checkpoint_error(tmp_path, content, message):
    path = tmp_path / "checkpoint.pt"
    if content is None:
        save_checkpoint(path, {"model": {"w": torch.zeros(1000)}, "epoch": 1})
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_of_another_model_is_a_checkpoint_error(fake_cifar, one_thread, tmp_path, capsys):
    run_dir = tmp_path / "run"
    atomic_write_text(run_dir / "config.yaml", dump_config(config_from_dict(tiny_config_dict())))
    other = build_model("mlc_resnet8", **CIFAR)
    save_checkpoint(run_dir / "checkpoint.pt", {"model": other.state_dict(), "optimizer": {}, "epoch": 1})
    code, out, err = run_cli(["train", "--run-dir", run_dir, "--resume", "--quiet"], capsys)
    assert_one_line_error(code, err, "tinyrobust train")
    assert f"{run_dir / 'checkpoint.pt'} does not match this run's model and optimizer" in err


# ---------------------------------------------------------------- broken weights and run folders


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "pickle", "wrong shapes", "missing tensor"])
def test_corrupt_weights_name_the_file(float_run, capsys, damage):
    path = float_run / "model.safetensors"
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "pickle":
        path.write_bytes(pickle.dumps(Exploit(float_run / "PWNED")))
    elif damage == "wrong shapes":
        save_weights(path, build_model("qnn", **{**CIFAR, "num_classes": 7}))
    else:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(path))
        tensors.pop("fc.weight")
        save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as err:
        load_run(float_run)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ")
    if damage in ("wrong shapes", "missing tensor"):
        assert "weights do not match the run's model" in msg and ("fc.weight" in msg)
    else:
        assert "corrupt or not a safetensors file" in msg
    code, out, err = run_cli(["eval", "--run", float_run], capsys)
    assert_one_line_error(code, err, "tinyrobust eval")
    assert str(path) in err
    assert not (float_run / "PWNED").exists()


def test_load_run_needs_a_finished_run(float_run, tmp_path):
    run = load_run(float_run)  # the fixture itself is fine
    assert run.cfg.name == "float_run" and not run.model.training
    (float_run / "model.safetensors").unlink()
    with pytest.raises(TinyRobustError) as err:
        load_run(float_run)
    assert str(err.value) == (
        f"{float_run} has no weights (model.safetensors): the run did not finish; continue it with "
        f"`tinyrobust train --config {float_run / 'config.yaml'} --run-dir {float_run} --resume`"
    )
    with pytest.raises(TinyRobustError, match="is not a run directory: no config.yaml"):
        load_run(tmp_path)
    with pytest.raises(TinyRobustError, match="does not exist"):
        load_run(tmp_path / "nope")


# ---------------------------------------------------------------- disks


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if training gets as far as loading data."""

    def boom(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(loop, "prepare", boom)


def test_unwritable_run_dir_fails_before_training(fake_cifar, tmp_path, capsys, no_training, write_config):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # root ignores chmod, but nobody can create a folder inside a file
    cfg = config_from_dict(tiny_config_dict())
    with pytest.raises(TinyRobustError) as err:
        loop.train_run(cfg, blocker / "run", progress=False)
    assert str(err.value).startswith(f"output folder {blocker / 'run'} is not writable")
    assert "--run-dir" in str(err.value)
    code, out, err = run_cli(["train", "--config", write_config(cfg), "--run-dir", blocker / "run"], capsys)
    assert_one_line_error(code, err, "tinyrobust train")
    assert "is not writable" in err


def test_full_disk_fails_before_training(fake_cifar, tmp_path, monkeypatch, no_training):
    real = os.statvfs

    class Full:
        def __init__(self, st):
            self.f_frsize, self.f_bavail = st.f_frsize, 10

    monkeypatch.setattr(os, "statvfs", lambda p: Full(real(p)))
    with pytest.raises(TinyRobustError, match=r"only 0\.0 MiB free on the disk of .*; at least 50 MiB needed"):
        loop.train_run(config_from_dict(tiny_config_dict()), tmp_path / "run", progress=False)
    with pytest.raises(TinyRobustError, match="MiB free"):
        check_writable(tmp_path)


def test_atomic_write_keeps_the_old_file_when_the_writer_dies(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})

    def half_then_crash(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_crash)
    assert load_checkpoint(path) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # the temp file is gone


def test_stale_temp_files_of_a_killed_write_are_removed_on_resume(train_tiny, tmp_path):
    run_dir, _ = train_tiny(train={"epochs": 1, "max_batches_per_epoch": 1})
    (run_dir / "summary.json").unlink()  # as if killed before the end
    stale = [run_dir / ".checkpoint.pt.abc123.tmp", run_dir / ".model.safetensors.x.tmp"]
    for s in stale:
        s.write_bytes(b"half")
    train_tiny(run_dir, resume=True, train={"epochs": 1, "max_batches_per_epoch": 1})
    assert not any(s.exists() for s in stale)
    assert (run_dir / "summary.json").is_file()


def test_batch_larger_than_the_training_set(fake_cifar, tmp_path):
    with pytest.raises(ConfigError, match=r"train.batch_size: 500 is larger than the training set \(150 examples\)"):
        loop.train_run(config_from_dict(tiny_config_dict(train={"batch_size": 500})), tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


# ---------------------------------------------------------------- divergence


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(train_tiny, tmp_path, monkeypatch):
    real_ce = F.cross_entropy
    calls = {"n": 0}

    def ce_nan_in_epoch_2(*a, **k):
        calls["n"] += 1
        loss = real_ce(*a, **k)
        return loss * math.nan if calls["n"] == 4 else loss  # epoch 2, step 2

    monkeypatch.setattr(loop.F, "cross_entropy", ce_nan_in_epoch_2)
    sections = dict(train={"epochs": 3, "max_batches_per_epoch": 2})
    with pytest.raises(TrainingDiverged) as err:
        train_tiny(**sections)
    run_dir = tmp_path / "run"
    assert str(err.value) == (
        f"loss became nan at epoch 2, step 2; the last good checkpoint (after epoch 1) is kept "
        f"in {run_dir}. Lower train.lr or jr weights and start again."
    )
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert [json.loads(x)["epoch"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not (run_dir / "model.safetensors").exists() and not (run_dir / "summary.json").exists()
    # the kept checkpoint is good: resuming finishes the run
    monkeypatch.setattr(loop.F, "cross_entropy", real_ce)
    _, summary = train_tiny(run_dir, resume=True, **sections)
    assert summary["epochs"] == 3 and math.isfinite(summary["test_accuracy"])


def test_weights_that_turn_nan_are_never_checkpointed(train_tiny, tmp_path, monkeypatch):
    """A finite loss can still step into NaN weights on the last step of an epoch."""
    real_make = loop.make_optimizer

    def poisoned_optimizer(cfg, model):
        opt = real_make(cfg, model)
        step, calls = opt.step, {"n": 0}

        def poisoned_step(*a, **k):
            out = step(*a, **k)
            calls["n"] += 1
            if calls["n"] == 4:  # the last step of epoch 2
                with torch.no_grad():
                    model.fc.weight.fill_(math.inf)
            return out

        opt.step = poisoned_step
        return opt

    monkeypatch.setattr(loop, "make_optimizer", poisoned_optimizer)
    with pytest.raises(
        TrainingDiverged,
        match=r"^fc.weight became NaN/inf in epoch 2; the last good checkpoint "
        r"\(after epoch 1\) is kept",
    ):
        train_tiny(train={"epochs": 3, "max_batches_per_epoch": 2})
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 1 and torch.isfinite(state["model"]["fc.weight"]).all()


def test_absurd_settings_diverge_with_one_clear_line(fake_cifar, one_thread, tmp_path, capsys, write_config):
    cfg = write_config(
        tiny_config_dict(
            train={"lr": 10.0, "max_batches_per_epoch": 3},
            jr={"weight": 1e6},
            model={"name": "qnn", "quant": {"weight": "float", "act": "float"}},
        )
    )
    code, out, err = run_cli(["train", "--config", cfg, "--run-dir", tmp_path / "r", "--quiet"], capsys)
    assert_one_line_error(code, err, "tinyrobust train")
    assert "loss became nan at epoch 1" in err and "no checkpoint was written yet" in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
