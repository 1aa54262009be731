"""Sweep engine throughput: two trials at once (Ray, one thread each) against one run alone (issue 12 target:
no loss in training images/s per trial on a 2-core machine). Run it on an otherwise idle machine.

Usage: python benchmarks/sweep_throughput.py [--epochs 2] [--train-subset 10000] [--val-size 1000]
       [--out benchmarks/results/sweep_throughput] [--work DIR] [--address HOST:PORT]
       python benchmarks/sweep_throughput.py --smoke      # seconds-scale check of the script itself
Writes <out>.json and <out>.md. Both sides train the same config (qnn w4a4 + whole-network JR,
quarter-batch penalty, the sweep's trial recipe) with TINYROBUST_THREADS=1: the single run through
`tinyrobust train` alone, the pair through `tinyrobust sweep` (seeds 0 and 1, two at a time); images/s
are the training loop's own per-epoch numbers (metrics.jsonl), epoch 1 included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def base_config(a) -> dict:
    return {
        "name": "throughput",
        "seed": 0,
        "data": {"dataset": "cifar10", "val_size": a.val_size, "train_subset": a.train_subset},
        "model": {
            "name": "qnn",
            "quant": {"weight": "int4", "act": "int4", "first_weight": "int8", "last_weight": "int8"},
        },
        "train": {"epochs": a.epochs, "batch_size": a.batch_size, "lr": 0.05, "warmup_epochs": 0.0, "threads": 1},
        "jr": {"weight": 0.01, "batch_fraction": 0.25},
    }


def images_per_s(run_dir: Path) -> list:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["images_per_s"] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-subset", type=int, default=10000)
    ap.add_argument("--val-size", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--address", default=None, help="an existing Ray cluster (default: local Ray, 2 CPUs)")
    ap.add_argument("--work", default=None, help="scratch folder for the runs (default: a temporary one)")
    ap.add_argument("--out", default="benchmarks/results/sweep_throughput")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, measures nothing")
    a = ap.parse_args()
    if a.smoke:
        a.epochs, a.train_subset, a.val_size, a.batch_size = 1, 600, 100, 32
    work = Path(a.work or tempfile.mkdtemp(prefix="sweep_throughput_"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TINYROBUST_THREADS": "1", "OMP_NUM_THREADS": "1"}
    if a.data_dir:
        env["TINYROBUST_DATA"] = a.data_dir
    exe = [sys.executable, "-m", "tinyrobust.cli"]

    cfg = base_config(a)
    (work / "single.yaml").write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    subprocess.run(
        exe + ["train", "--config", str(work / "single.yaml"), "--run-dir", str(work / "single"), "--quiet"],
        check=True,
        env=env,
    )
    single_s = time.perf_counter() - t0
    single = images_per_s(work / "single")

    # Control: the same two seeds as two plain `tinyrobust train` processes at once (no Ray): what two
    # one-thread runs lose to each other on this machine (shared caches and memory bandwidth).
    procs = []
    for seed in (0, 1):
        (work / f"plain{seed}.yaml").write_text(yaml.safe_dump({**cfg, "seed": seed}))
        procs.append(
            subprocess.Popen(
                exe
                + [
                    "train",
                    "--config",
                    str(work / f"plain{seed}.yaml"),
                    "--run-dir",
                    str(work / f"plain{seed}"),
                    "--quiet",
                ],
                env=env,
            )
        )
    if any(p.wait() for p in procs):
        raise SystemExit("a control run failed")
    plain = {f"plain{seed}": images_per_s(work / f"plain{seed}") for seed in (0, 1)}

    sweep = {
        "name": "throughput",
        "base": cfg,
        "grid": {"seed": [0, 1]},
        "evaluation": {"attacks": [], "n": 1, "jacobian_n": 0},
        "resources": {"concurrent": 2, "threads_per_trial": 1},
    }
    (work / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    cmd = exe + ["sweep", "--config", str(work / "sweep.yaml"), "--out", str(work / "sweep"), "--quiet"]
    if a.address:
        cmd += ["--address", a.address]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    pair_s = time.perf_counter() - t0
    pair = {p.name: images_per_s(p) for p in sorted((work / "sweep" / "runs").iterdir())}

    mean = lambda v: sum(v) / len(v)  # noqa: E731
    ratios = {k: mean(v) / mean(single) for k, v in pair.items()}
    plain_ratios = {k: mean(v) / mean(single) for k, v in plain.items()}
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
    }
    command = "python benchmarks/sweep_throughput.py " + " ".join(sys.argv[1:])
    res = {
        "command": command.strip(),
        "machine": machine,
        "smoke": a.smoke,
        "config": cfg,
        "single_images_per_s": single,
        "single_wall_s": round(single_s, 1),
        "pair_images_per_s": pair,
        "pair_wall_s": round(pair_s, 1),
        "per_trial_ratio": ratios,
        "plain_pair_images_per_s": plain,
        "plain_pair_ratio": plain_ratios,
        "target": "every per-trial ratio >= 0.95 (no loss per trial); the control shows the loss of two plain runs",
        "met": all(r >= 0.95 for r in ratios.values()),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(out) + ".json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        "# Sweep throughput: two trials at once vs one run alone",
        "",
        f"Command: `{res['command']}`{' (SMOKE: tiny sizes, not a measurement)' if a.smoke else ''}  ",
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs; load average at the end "
        f"{machine['load_avg_at_end'][0]:.2f}. Config: qnn w4a4 + JR 0.01 (quarter batch), "
        f"{a.epochs} epoch(s) on {a.train_subset} training images, batch {a.batch_size}, one thread per run.",
        "",
        "| | images/s per epoch (mean) | vs single |",
        "|---|---|---|",
        f"| single run (`tinyrobust train`) | {mean(single):.0f} | 1.00 |",
    ]
    for k, v in pair.items():
        lines.append(f"| sweep trial {k} (2 at once) | {mean(v):.0f} | {ratios[k]:.2f} |")
    for k, v in plain.items():
        lines.append(
            f"| control: plain `tinyrobust train` {k} (2 at once, no Ray) | {mean(v):.0f} | {plain_ratios[k]:.2f} |"
        )
    lines += [
        "",
        f"Target: no loss per trial (ratio >= 0.95): {'met' if res['met'] else 'NOT met'}. "
        f"Wall: single {single_s:.0f} s; pair {pair_s:.0f} s (Ray start-up and scoring included).",
    ]
    Path(str(out) + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
