"""Weight oscillation of ternary and binary qnn weights, and what oscillation dampening does to it (issue 12,
item 5: "whatever else the field uses against weight oscillation").

Usage: python benchmarks/oscillation_dampening.py [--epochs 4] [--train-subset 12000] [--val-size 2000]
       [--weights ternary_stats,binary] [--dampen 0,0.01,0.1,1] [--out benchmarks/results/oscillation_dampening]
       [--work DIR]
Trains the qnn (4-bit activations, 8-bit first/last layers, the sweep's SGD recipe: lr 0.05, cosine,
half-epoch warm-up, weight decay 5e-4, batch 128, seed 0) once per weight quantizer and dampening weight
(``train.dampen``: Nagel et al. 2022's loss, its weight ramped from 0 to the value by a cosine), and records
per epoch the validation accuracy and the share of quantized weights changing level per step
(``weight_flip_rate``). Validation images only (held out of the training split); one seed: a screening
measurement. With dampening 0 the run is the same as ``ternary_scale.py``'s for the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from _common import machine as host
from _common import recipe_sentence, recorded_command, sweep_recipe_config, write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-subset", type=int, default=12000)
    ap.add_argument("--val-size", type=int, default=2000)
    ap.add_argument("--weights", default="ternary_stats,binary")
    ap.add_argument("--dampen", default="0,0.01,0.1,1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default="benchmarks/results/oscillation_dampening")
    a = ap.parse_args()
    os.environ["TINYROBUST_THREADS"] = str(a.threads)
    import torch

    from tinyrobust.config import config_from_dict
    from tinyrobust.stats import wilson
    from tinyrobust.train import train_run

    torch.set_num_threads(a.threads)
    work = Path(a.work or tempfile.mkdtemp(prefix="dampen_"))
    rows = []
    for weight in a.weights.split(","):
        for dampen in (float(d) for d in a.dampen.split(",")):
            name = f"dampen_{weight}_{dampen:g}"
            raw = sweep_recipe_config(name, weight, a, dampen=dampen)
            summary = train_run(config_from_dict(raw), work / name, resume=True, progress=False)
            per_epoch = [json.loads(x) for x in (work / name / "metrics.jsonl").read_text().splitlines()]
            n = summary["val_split"]["size"]
            final = per_epoch[-1]["val_accuracy"]
            rows.append(
                {
                    "weight": weight,
                    "dampen": dampen,
                    "val_accuracy_per_epoch": [r["val_accuracy"] for r in per_epoch],
                    "flip_rate_per_epoch": [r["weight_flip_rate"] for r in per_epoch],
                    "dampen_penalty_per_epoch": [r.get("train_dampen_penalty") for r in per_epoch],
                    "val_accuracy": final,
                    "val_ci95": list(wilson(round(final * n), n)),
                    "train_s": summary.get("train_time_s_this_session"),
                }
            )
            print(f"{weight} dampen {dampen:g}: val {100 * final:.2f}%", file=sys.stderr)
    machine = host(a.threads)
    cmd = recorded_command("oscillation_dampening.py")
    out = {
        "command": cmd,
        "machine": machine,
        "epochs": a.epochs,
        "train_subset": a.train_subset,
        "val_images": a.val_size,
        "rows": rows,
    }
    lines = [
        "# Weight oscillation and oscillation dampening (ternary and binary qnn weights)",
        "",
        f"Command: `{cmd}`  ",
        recipe_sentence(machine, a) + " Flip rate: share of "
        "quantized weights (all quantized layers) whose integer level changes in an optimizer step, mean over "
        "the epoch. Dampening: final weight of the cosine-ramped loss (0: off).",
        "",
        "| weights | dampening | val accuracy % by epoch | flips per step (x1e-3) by epoch | final val % [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        acc = " / ".join(f"{100 * v:.1f}" for v in r["val_accuracy_per_epoch"])
        flips = " / ".join(f"{1000 * v:.2f}" for v in r["flip_rate_per_epoch"])
        lo, hi = r["val_ci95"]
        lines.append(
            f"| {r['weight']} | {r['dampen']:g} | {acc} | {flips} | "
            f"{100 * r['val_accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] |"
        )
    write_result(a.out, out, lines)


if __name__ == "__main__":
    main()
