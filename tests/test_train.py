"""Training end to end: the run folder, accuracy, eval, refusing to overwrite, and exact resume
after a crash or a SIGKILL at random points."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tinyrobust.config import config_from_dict, load_config
from tinyrobust.runs import load_run
from tinyrobust.train import loop
from tinyrobust.train.checkpoint import load_checkpoint

from conftest import (  # noqa: F401
    DETERMINISTIC,
    _Crash,
    assert_same_weights,
    crash_after_epoch,
    deterministic,
    metrics,
    run_cli,
    tiny_config_dict,
)

RUN_FILES = {"config.yaml", "env.json", "metrics.jsonl", "checkpoint.pt", "model.safetensors", "summary.json"}


# ---------------------------------------------------------------- the run folder


def test_train_eval_and_refuse_to_overwrite(fake_cifar, one_thread, tmp_path, capsys, write_config):
    cfg_path = write_config(tiny_config_dict(name="e2e", train={"epochs": 2}))
    run_dir = tmp_path / "runs" / "e2e"
    code, out, err = run_cli(["train", "--config", cfg_path, "--run-dir", run_dir, "--quiet"], capsys)
    assert code == 0, err
    assert set(os.listdir(run_dir)) - {".lock"} == RUN_FILES  # .lock: held while training
    assert load_config(run_dir / "config.yaml") == load_config(cfg_path)
    env = json.loads((run_dir / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["seed"] == 0 and env["threads"] == 1
    # the data file, written portably (no machine path: tests/test_portable_paths.py)
    assert env["data_source"].startswith("$TINYROBUST_DATA/cifar-10-batches-py") and "brevitas" in env

    rows = metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2]  # one JSON line per epoch
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert rows[0]["jr_estimates"] == {} and rows[0]["train_jr_penalty"] == 0.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_examples"] == 50 and summary["epochs"] == 2
    assert summary["test_accuracy"] >= 0.5  # chance is 0.1 on the class-coloured blobs
    assert summary["test_accuracy"] == rows[-1]["test_accuracy"]
    assert summary["parameters"] == 141_039
    assert f"test accuracy {100 * summary['test_accuracy']:.2f}%" in out and str(run_dir) in out

    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["epoch"] == 2 and set(state) >= {"model", "optimizer", "epoch"}
    run = load_run(run_dir)
    assert not run.model.training and run.summary == summary
    x, y = fake_cifar_arrays(fake_cifar)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(y)
    assert loop.evaluate_accuracy(run.model, x, y) == summary["test_accuracy"]

    # eval prints accuracy, parameters and weight memory
    code, out, err = run_cli(["eval", "--run", run_dir], capsys)
    assert code == 0, err
    assert f"clean accuracy: {100 * summary['test_accuracy']:.2f}% on 50 test images" in out
    assert "parameters:     141,039" in out and f"weight memory:  {summary['weight_kb']:.1f} KB" in out
    assert "blocks.block1.conv" in out and "int8" in out
    code, out, err = run_cli(["eval", "--run", run_dir, "--json"], capsys)
    result = json.loads(out)
    assert result["clean_accuracy"] == summary["test_accuracy"] and result["weight_kb"] == summary["weight_kb"]
    assert json.loads((run_dir / "eval.json").read_text())["clean_accuracy"] == summary["test_accuracy"]

    # a second train into the same folder without --resume is refused; nothing is touched
    before = {p: (run_dir / p).stat().st_mtime_ns for p in RUN_FILES}
    code, out, err = run_cli(["train", "--config", cfg_path, "--run-dir", run_dir, "--quiet"], capsys)
    assert code == 2 and out == ""
    assert err == (
        f"tinyrobust train: error: {run_dir} already holds a run; pass --resume to continue it, "
        "or choose another --run-dir\n"
    )
    # --resume on a finished run trains nothing and reports the same result
    code, out, err = run_cli(["train", "--run-dir", run_dir, "--resume", "--quiet"], capsys)
    assert code == 0 and f"{100 * summary['test_accuracy']:.2f}%" in out
    assert before == {p: (run_dir / p).stat().st_mtime_ns for p in RUN_FILES}


def fake_cifar_arrays(data_dir: Path):
    from tinyrobust.data import load_dataset

    ds = load_dataset("cifar10", "test", data_dir, download=False)
    return ds.x, ds.y


def test_jr_run_logs_its_penalty_and_lowers_the_penalized_norm(train_tiny, tmp_path):
    """JR wiring in train_run: loss = CE + penalty, estimates logged per term, and the quantity JR
    penalizes (the training-mode input->logits Jacobian, BatchNorm on batch statistics) ends lower.
    (The eval-mode norm after 8 steps is dominated by BatchNorm running statistics that have not
    converged yet; test_jacobian.py shows the eval-mode reduction on models trained to fit.)"""
    from tinyrobust.train.jacobian import jacobian_penalty

    common = dict(train={"epochs": 2, "max_batches_per_epoch": 4})
    plain_dir, _ = train_tiny(tmp_path / "plain", **common)
    jr_dir, jr_summary = train_tiny(tmp_path / "jr", jr={"weight": 1.0, "layers": {"block4": 0.5}}, **common)
    rows = metrics(jr_dir)
    assert set(rows[0]["jr_estimates"]) == {"network", "block4"}
    for r in rows:
        assert r["train_jr_penalty"] > 0
        assert r["train_loss"] == pytest.approx(r["train_ce"] + r["train_jr_penalty"], rel=1e-6)
    assert rows[-1]["jr_estimates"]["network"] < rows[0]["jr_estimates"]["network"]
    x = torch.from_numpy(fake_cifar_arrays(None)[0][:25]).permute(0, 3, 1, 2).float() / 255
    norm = {}
    for d in (plain_dir, jr_dir):
        model = load_run(d).model.train()
        torch.manual_seed(0)
        norm[d.name] = jacobian_penalty(model, x, weight=1.0, n_proj=20)[2]["network"]
    assert norm["jr"] < 0.5 * norm["plain"], norm
    assert jr_summary["test_accuracy"] >= 0.2  # still learns (chance: 0.1)


# ---------------------------------------------------------------- resume is exact


EXACT_CASES = {
    # runtime-statistics activation scales (Brevitas keeps their step counter outside the state dict)
    # and whole-network JR (random projections)
    "int4_act_jr": dict(jr={"weight": 0.05}),
    # the penalty on half of each batch, in a side pass that must not touch the statistics
    "int4_act_jr_half_batch": dict(jr={"weight": 0.05, "batch_fraction": 0.5}),
    # learned ternary scales (re-created by Brevitas on load), stochastic rounding, augmentation,
    # Adam, warm-up and a per-block JR term
    "stochastic_ternary_adam": dict(
        model={
            "name": "qnn",
            "quant": {"weight": "stochastic_ternary", "act": "int4", "first_weight": "int8", "last_weight": "int8"},
        },
        train={"optimizer": "adam", "lr": 0.003, "augment": True, "warmup_epochs": 0.5},
        jr={"layers": {"block2": 0.05}},
    ),
}


@pytest.mark.parametrize("case", EXACT_CASES)
def test_resume_after_a_crash_is_exact(train_tiny, tmp_path, monkeypatch, case):
    sections = dict(EXACT_CASES[case])
    sections["train"] = {"epochs": 3, "max_batches_per_epoch": 2, **sections.get("train", {})}
    ref_dir, ref_summary = train_tiny(tmp_path / "ref", **sections)

    crash_after_epoch(monkeypatch, train_tiny, tmp_path / "crashed", **sections)
    assert not (tmp_path / "crashed" / "model.safetensors").exists()
    _, summary = train_tiny(tmp_path / "crashed", resume=True, **sections)

    assert_same_weights(ref_dir, tmp_path / "crashed")
    assert deterministic(metrics(tmp_path / "crashed")) == deterministic(metrics(ref_dir))
    assert summary["test_accuracy"] == ref_summary["test_accuracy"]
    a, b = load_checkpoint(ref_dir / "checkpoint.pt"), load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["quant_state"].keys() == b["quant_state"].keys()


def test_resume_with_another_thread_count_says_so(train_tiny, tmp_path, monkeypatch, capsys):
    sections = dict(train={"epochs": 1, "max_batches_per_epoch": 1})
    real_save = loop.save_checkpoint

    def save_then_crash(path, state):
        real_save(path, state)
        raise _Crash

    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    with pytest.raises(_Crash):
        train_tiny(**sections)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    assert state["threads"] == 1
    real_save(ckpt, {**state, "threads": 3})  # as if written on a machine with 3 threads
    capsys.readouterr()
    train_tiny(tmp_path / "run", resume=True, **sections)
    assert (
        "note: the checkpoint was written with 3 torch threads, this run uses 1: float sums change order"
        in capsys.readouterr().err
    )


# ---------------------------------------------------------------- kill -9 at random points


# run as `python -c`: `python -m tinyrobust.cli`, except that a checkpoint write stops half-way
PAUSE_CHECKPOINT_WRITE = """
import io, os, runpy, time, torch
real_save = torch.save
def save(obj, f, *args, **kwargs):
    if not os.path.basename(str(f)).startswith(".checkpoint.pt."):
        return real_save(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    with open(f, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        os.fsync(fh.fileno())
        open(os.environ["PAUSE_FLAG"], "w").close()
        time.sleep(60)
        fh.write(data[len(data) // 2 :])
torch.save = save
runpy.run_module("tinyrobust.cli", run_name="__main__", alter_sys=True)
"""


class Trainer:
    """``python -m tinyrobust.cli train`` as a real process, killed with SIGKILL on cue."""

    def __init__(self, cfg_path: Path, run_dir: Path, log_dir: Path):
        self.cfg_path, self.run_dir, self.log_dir = cfg_path, run_dir, log_dir
        self.launches = 0
        self.procs: list[subprocess.Popen] = []

    def start(self, resume: bool, pause_checkpoint_write: Path | None = None) -> subprocess.Popen:
        """``python -m tinyrobust.cli train ...``; with ``pause_checkpoint_write``, the process first
        patches torch.save so that its next checkpoint stops half-written (creating that file then)."""
        self.launches += 1
        self.err_path = self.log_dir / f"stderr{self.launches}.txt"
        args = ["train", "--config", str(self.cfg_path), "--run-dir", str(self.run_dir), "--quiet"]
        args += ["--resume"] if resume else []
        env = os.environ.copy()
        if pause_checkpoint_write is None:
            argv = [sys.executable, "-m", "tinyrobust.cli", *args]
        else:
            env["PAUSE_FLAG"] = str(pause_checkpoint_write)
            argv = [sys.executable, "-c", PAUSE_CHECKPOINT_WRITE, *args]
        with open(self.log_dir / f"stdout{self.launches}.txt", "w") as out, open(self.err_path, "w") as err:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        """Kill what a failed test left running (only the processes this object started)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)

    def stderr(self) -> str:
        return self.err_path.read_text()

    def metric_lines(self) -> int:
        p = self.run_dir / "metrics.jsonl"
        return p.read_text().count("\n") if p.exists() else 0

    def wait_for(self, proc: subprocess.Popen, cond, timeout: float = 120.0, poll: float = 0.01) -> None:
        t0 = time.monotonic()
        while not cond():
            assert proc.poll() is None, f"trainer exited early ({proc.returncode}): {self.stderr()}"
            assert time.monotonic() - t0 < timeout, "trainer made no progress"
            time.sleep(poll)

    def kill(self, proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL, f"trainer finished before the kill: {self.stderr()}"

    def check_consistent(self) -> int:
        """After a kill: the checkpoint is absent or loads; metrics hold whole lines up to it."""
        ckpt = self.run_dir / "checkpoint.pt"
        if not ckpt.exists():
            return 0
        state = load_checkpoint(ckpt)  # never half-written
        assert set(state) >= {"model", "optimizer", "epoch", "quant_state"}
        lines = (self.run_dir / "metrics.jsonl").read_text().splitlines()
        assert len(lines) >= state["epoch"]
        assert [json.loads(line)["epoch"] for line in lines[: state["epoch"]]] == list(range(1, state["epoch"] + 1))
        return state["epoch"]


def test_sigkill_and_resume_reproduces_the_uninterrupted_run(fake_cifar, one_thread, tmp_path, write_config):
    raw = tiny_config_dict(
        name="killed",
        model={
            "name": "qnn",
            "quant": {"weight": "stochastic_ternary", "act": "int4", "first_weight": "int8", "last_weight": "int8"},
        },
        train={"epochs": 4, "max_batches_per_epoch": 3, "augment": True},
        jr={"weight": 0.02},
    )
    cfg_path = write_config(raw)
    ref_dir = tmp_path / "reference"
    loop.train_run(config_from_dict(raw), ref_dir, progress=False)
    torch.set_num_threads(1)
    epoch_s = sum(r["epoch_time_s"] for r in metrics(ref_dir)) / 4

    rng = random.Random(1234)
    run_dir = tmp_path / "run"
    t = Trainer(cfg_path, run_dir, tmp_path)
    try:
        _kill_and_resume(t, run_dir, rng, epoch_s, tmp_path)
    finally:
        t.cleanup()

    assert_same_weights(ref_dir, run_dir)
    assert deterministic(metrics(run_dir)) == deterministic(metrics(ref_dir))
    assert (
        json.loads((run_dir / "summary.json").read_text())["test_accuracy"]
        == json.loads((ref_dir / "summary.json").read_text())["test_accuracy"]
    )
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]  # no temp files left
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["name"] == "killed"


def _kill_and_resume(t: Trainer, run_dir: Path, rng: random.Random, epoch_s: float, tmp_path: Path) -> None:
    epochs_done = []

    # 1. right after the first checkpoint appears (the process is starting epoch 2)
    p = t.start(resume=False)
    t.wait_for(p, lambda: (run_dir / "checkpoint.pt").exists())
    t.kill(p)
    epochs_done.append(t.check_consistent())

    # 2. mid-epoch, a random moment after the resumed process starts training
    p = t.start(resume=True)
    t.wait_for(p, lambda: "resuming" in t.stderr())
    time.sleep(rng.uniform(0.2, 0.8) * epoch_s)
    t.kill(p)
    epochs_done.append(t.check_consistent())

    # 3. in the middle of writing a checkpoint: this process writes half of the temp file, then waits
    flag = tmp_path / "half_written"
    p = t.start(resume=True, pause_checkpoint_write=flag)
    t.wait_for(p, flag.exists)
    t.kill(p)
    temps = [q for q in run_dir.iterdir() if q.name.startswith(".checkpoint.pt.") and q.name.endswith(".tmp")]
    assert len(temps) == 1
    with pytest.raises(Exception):  # noqa: B017 - any load error: it really is half a checkpoint
        torch.load(temps[0], weights_only=True)
    epochs_done.append(t.check_consistent())  # ... and checkpoint.pt is the previous, whole one
    assert epochs_done[-1] == epochs_done[-2]

    # 4. mid-epoch, after at least one more epoch was saved
    p = t.start(resume=True)
    t.wait_for(p, lambda: "resuming" in t.stderr())
    saved = (run_dir / "checkpoint.pt").stat().st_mtime_ns
    t.wait_for(p, lambda: (run_dir / "checkpoint.pt").stat().st_mtime_ns != saved)
    time.sleep(rng.uniform(0.2, 0.8) * epoch_s)
    t.kill(p)
    epochs_done.append(t.check_consistent())
    assert epochs_done[0] >= 1 and epochs_done == sorted(epochs_done) and 2 <= epochs_done[-1] < 4, epochs_done

    # 5. resume to the end
    p = t.start(resume=True)
    assert p.wait(120) == 0, t.stderr()
    assert f"resuming {run_dir} after epoch {epochs_done[-1]}" in t.stderr()
