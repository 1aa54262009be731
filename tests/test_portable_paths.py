"""Committed results never hold absolute machine paths: what a run, eval and report write is portable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from tinyrobust.paths import portable_path, portable_record, portable_text

from conftest import tiny_config_dict, write_fake_cifar10

REPO = Path(__file__).resolve().parents[1]


def test_portable_text_rewrites_data_dir_cwd_and_home(tmp_path, monkeypatch):
    data = tmp_path / "data"
    work = tmp_path / "work"
    home = tmp_path / "home"
    for d in (data, work, home):
        d.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TINYROBUST_DATA", str(data))
    assert (
        portable_text(f"{data}/cifar10/test_batch (official batches)")
        == "$TINYROBUST_DATA/cifar10/test_batch (official batches)"
    )
    assert portable_path(work / "results" / "a.json") == "results/a.json"
    assert portable_path(work) == "."
    assert portable_path(home / ".cache" / "x") == "~/.cache/x"
    assert portable_path("results/x") == "results/x" and portable_path("--quiet") == "--quiet"
    assert portable_path("/elsewhere/out") == "/elsewhere/out"  # not ours to rewrite
    assert portable_text(f"{work}line/x") == f"{work}line/x"  # only at a path boundary
    # an explicit data dir (--data-dir) wins over the environment; both forms of a symlinked path
    other = tmp_path / "other"
    other.mkdir()
    (tmp_path / "link").symlink_to(other)
    assert portable_text(f"read {other}/svhn and {tmp_path}/link/svhn", data=tmp_path / "link") == (
        "read $TINYROBUST_DATA/svhn and $TINYROBUST_DATA/svhn"
    )
    rec = portable_record({"a": [f"{data}/x", 3, None], "b": {"c": f"{work}/r"}, "d": 1.5}, data)
    assert rec == {"a": ["$TINYROBUST_DATA/x", 3, None], "b": {"c": "r"}, "d": 1.5}


def _no_abs(folder: Path, needles: list[str]) -> list[str]:
    """Files under ``folder`` (text or binary) that contain any of ``needles``."""
    bad = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            blob = p.read_bytes()
            bad += [f"{p.name}: {n}" for n in needles if n.encode() in blob]
    return bad


def test_run_and_eval_files_hold_no_absolute_data_path(tmp_path, monkeypatch, one_thread):
    """Train and eval a run whose data dir lies under tmp_path, given by --data-dir (not the
    environment): no file of the run dir names tmp_path, and the data source is $TINYROBUST_DATA/..."""
    from tinyrobust.config import config_from_dict
    from tinyrobust.evaluate import eval_run
    from tinyrobust.train import train_run

    data = tmp_path / "data"
    write_fake_cifar10(data)
    monkeypatch.delenv("TINYROBUST_DATA", raising=False)
    monkeypatch.setenv("TINYROBUST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TINYROBUST_THREADS", "1")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    run_dir = work / "runs" / "tiny"
    cfg = config_from_dict(tiny_config_dict(train={"epochs": 1}))
    summary = train_run(cfg, run_dir, data_dir=str(data), progress=False)
    torch.set_num_threads(1)
    eval_run(run_dir, data_dir=str(data), threads=1)
    assert summary["data_source"].startswith("$TINYROBUST_DATA/cifar-10-batches-py")
    env = json.loads((run_dir / "env.json").read_text())
    assert env["data_source"] == summary["data_source"]
    assert json.loads((run_dir / "eval.json").read_text())["run"] == "runs/tiny"
    assert _no_abs(run_dir, [str(tmp_path), str(tmp_path.resolve())]) == []


def test_report_record_is_portable(tmp_path, monkeypatch):
    """reproduce.json and the report's files go through paths.portable_*: the command line keeps
    no absolute path of the data dir or of the working directory."""
    from tinyrobust.reproduce.pipeline import portable

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "elsewhere" / "datasets"
    assert portable(f"--data-dir={data}", data) == "--data-dir=$TINYROBUST_DATA"
    assert portable(tmp_path / "results" / "cifar10", data) == "results/cifar10"


def test_scrub_script_dry_run_lists_and_rewrites(tmp_path):
    results = tmp_path / "results"
    (results / "run").mkdir(parents=True)
    data = "/some/machine/datasets"
    (results / "run" / "env.json").write_text(json.dumps({"data_source": f"{data}/cifar10/x (batches)"}))
    (results / "run" / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (results / "report.md").write_text(f"read from {data}/cifar10 in /repo/root/benchmarks/results\n")
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "scrub_paths.py"),
        "--results",
        str(results),
        "--data-dir",
        data,
        "--repo",
        "/repo/root",
    ]
    out = subprocess.run(cmd + ["--dry-run"], capture_output=True, text=True, check=True).stdout
    assert "run/env.json" in out and "report.md" in out and "metrics.jsonl" not in out
    assert data in (results / "report.md").read_text()  # dry run: nothing written
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert json.loads((results / "run" / "env.json").read_text()) == {
        "data_source": "$TINYROBUST_DATA/cifar10/x (batches)"
    }
    assert (results / "report.md").read_text() == "read from $TINYROBUST_DATA/cifar10 in benchmarks/results\n"
