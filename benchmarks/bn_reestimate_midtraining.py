"""BatchNorm re-estimation in the middle of training, where ternary weights still flip (issue 12, item 5).

Usage: python benchmarks/bn_reestimate_midtraining.py [--epochs 4] [--train-subset 10000] [--val-size 2000]
       [--weight ternary] [--batches 50] [--out benchmarks/results/bn_reestimate_midtraining] [--work DIR]
Trains one qnn (``--weight`` weights, 4-bit activations, 8-bit first/last layer) at a constant learning
rate of 0.05 (no decay: the regime where the 20-epoch runs' test accuracy swung), one epoch at a time
(each stage resumes the run from its checkpoint, which with a constant schedule is the same training as
one uninterrupted run), and after every epoch measures validation accuracy with the BatchNorm statistics
as trained and, on a copy, re-estimated over ``--batches`` training batches (augmented as in training).
Validation images only (``data.val_size`` held out of the training split); the test split is not used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from _common import machine as host
from _common import recorded_command


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-subset", type=int, default=10000)
    ap.add_argument("--val-size", type=int, default=2000)
    ap.add_argument("--weight", default="ternary")
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default="benchmarks/results/bn_reestimate_midtraining")
    a = ap.parse_args()
    os.environ["TINYROBUST_THREADS"] = str(a.threads)
    import torch
    import yaml

    from tinyrobust.config import config_from_dict, load_config
    from tinyrobust.data.loader import to_tensors
    from tinyrobust.data.splits import config_split
    from tinyrobust.runs import load_run
    from tinyrobust.stats import wilson
    from tinyrobust.train import train_run
    from tinyrobust.train.bn_reestimate import reestimate_bn
    from tinyrobust.train.loop import evaluate_accuracy

    torch.set_num_threads(a.threads)
    work = Path(a.work or tempfile.mkdtemp(prefix="bn_mid_"))
    run = work / "run"
    raw = {
        "name": f"bn_mid_{a.weight}",
        "seed": 0,
        "data": {"dataset": "cifar10", "val_size": a.val_size, "train_subset": a.train_subset},
        "model": {
            "name": "qnn",
            "quant": {"weight": a.weight, "act": "int4", "first_weight": "int8", "last_weight": "int8"},
        },
        "train": {"epochs": 1, "batch_size": 128, "lr": 0.05, "schedule": "constant", "threads": a.threads},
    }
    cfg = config_from_dict(raw)
    val = config_split(cfg, "val")
    vx, vy = to_tensors(val)
    train_ds = config_split(cfg, "train")
    rows = []
    for epoch in range(1, a.epochs + 1):
        if epoch > 1:  # continue the same run for one more epoch
            saved = yaml.safe_load((run / "config.yaml").read_text())
            saved["train"]["epochs"] = epoch
            (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
            for f in ("summary.json", "model.safetensors"):
                (run / f).unlink(missing_ok=True)
            cfg = load_config(run / "config.yaml")
        train_run(cfg, run, resume=epoch > 1, progress=False)
        model = load_run(run).model
        as_trained = evaluate_accuracy(model, vx, vy)
        reestimate_bn(model, train_ds, a.batches, 128, seed=0, augment=True)
        re = evaluate_accuracy(model, vx, vy)
        n = len(vy)
        rows.append(
            {
                "epoch": epoch,
                "val_as_trained": as_trained,
                "val_as_trained_ci95": list(wilson(round(as_trained * n), n)),
                "val_reestimated": re,
                "val_reestimated_ci95": list(wilson(round(re * n), n)),
            }
        )
        print(f"epoch {epoch}: val as trained {100 * as_trained:.2f}%, re-estimated {100 * re:.2f}%", file=sys.stderr)
    machine = host(a.threads)
    # the scratch folder (--work) changes no number and is a machine path: left out of the record
    cmd = recorded_command("bn_reestimate_midtraining.py")
    out = {"command": cmd, "machine": machine, "config": raw, "batches": a.batches, "val_images": len(vy), "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# BatchNorm re-estimation in the middle of training",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs (shared), {a.threads} thread(s). qnn, "
        f"{a.weight} weights / 4-bit activations, constant lr 0.05, {a.train_subset} training images, "
        f"accuracy on {len(vy)} validation images held out of the training split (test split not used); "
        f"re-estimation over {a.batches} augmented training batches of 128.",
        "",
        "| epoch | val acc as trained % | val acc, BN re-estimated % |",
        "|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['epoch']} | {100 * r['val_as_trained']:.2f} | {100 * r['val_reestimated']:.2f} |")
    Path(a.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
