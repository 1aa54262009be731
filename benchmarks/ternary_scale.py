"""Why the ternary qnn underfitted: a learned per-channel scale against a mean |w| statistic (issue 12).

Usage: python benchmarks/ternary_scale.py [--epochs 4] [--train-subset 12000] [--val-size 2000]
       [--out benchmarks/results/ternary_scale] [--work DIR]
Trains the qnn (4-bit activations, 8-bit first/last layers, the sweep's SGD recipe: lr 0.05, cosine,
half-epoch warm-up, weight decay 5e-4, batch 128, seed 0) once per weight variant:

- ``ternary``: per-channel scale a learned parameter (Brevitas PARAMETER_FROM_STATS);
- ``ternary, no decay on the scale``: the same, with the scale exempted from weight decay (its shape is
  (C, 1, 1, 1), so the optimiser's "no decay on 1-d parameters" rule does not exempt it);
- ``ternary_stats``: the scale recomputed from mean |w| every step (no parameter);
- ``int4``: for reference.

Validation accuracy after every epoch on ``--val-size`` images held out of the training split (the
test split is not used). One seed: a screening measurement; the sweep's 5-epoch twins on 45,000 images
(``benchmarks/results/sweeps/``) are the full-size comparison.
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

VARIANTS = [
    ("ternary", "ternary", False),
    ("ternary, no decay on the scale", "ternary", True),
    ("ternary_stats", "ternary_stats", False),
    ("int4", "int4", False),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-subset", type=int, default=12000)
    ap.add_argument("--val-size", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default="benchmarks/results/ternary_scale")
    a = ap.parse_args()
    os.environ["TINYROBUST_THREADS"] = str(a.threads)
    import torch

    import tinyrobust.train.loop as loop
    from tinyrobust.config import config_from_dict
    from tinyrobust.stats import wilson

    torch.set_num_threads(a.threads)
    work = Path(a.work or tempfile.mkdtemp(prefix="ternary_scale_"))
    library_optimizer = loop.make_optimizer

    def no_decay_on_scales(cfg, model):
        """The library's optimiser, with every quantizer scale (whatever its shape) in the no-decay group."""
        opt = library_optimizer(cfg, model)
        scales = {id(p) for n, p in model.named_parameters() if "scaling_impl" in n}
        decay, no_decay = opt.param_groups
        moved = [p for p in decay["params"] if id(p) in scales]
        decay["params"] = [p for p in decay["params"] if id(p) not in scales]
        no_decay["params"] = no_decay["params"] + moved
        return opt

    rows = []
    for label, weight, exempt in VARIANTS:
        raw = sweep_recipe_config(f"ternary_scale_{weight}{'_nodecay' if exempt else ''}", weight, a)
        loop.make_optimizer = no_decay_on_scales if exempt else library_optimizer
        try:
            summary = loop.train_run(config_from_dict(raw), work / raw["name"], progress=False)
        finally:
            loop.make_optimizer = library_optimizer
        per_epoch = [
            json.loads(x)["val_accuracy"] for x in (work / raw["name"] / "metrics.jsonl").read_text().splitlines()
        ]
        n = summary["val_split"]["size"]
        final = per_epoch[-1]
        rows.append(
            {
                "variant": label,
                "weight": weight,
                "scale_weight_decay": not exempt and weight == "ternary",
                "val_accuracy_per_epoch": per_epoch,
                "val_accuracy": final,
                "val_ci95": list(wilson(round(final * n), n)),
                "weight_kb": summary.get("weight_kb"),
                "train_s": summary.get("train_time_s_this_session"),
            }
        )
        print(f"{label}: val {100 * final:.2f}%", file=sys.stderr)
    machine = host(a.threads)
    cmd = recorded_command("ternary_scale.py")
    out = {
        "command": cmd,
        "machine": machine,
        "epochs": a.epochs,
        "train_subset": a.train_subset,
        "val_images": a.val_size,
        "rows": rows,
    }
    lines = [
        "# Ternary weights: learned scale against a mean |w| statistic",
        "",
        f"Command: `{cmd}`  ",
        recipe_sentence(machine, a),
        "",
        "| weights | val accuracy % by epoch | final val % [95% CI] |",
        "|---|---|---|",
    ]
    for r in rows:
        by_epoch = " / ".join(f"{100 * v:.1f}" for v in r["val_accuracy_per_epoch"])
        lo, hi = r["val_ci95"]
        lines.append(
            f"| {r['variant']} | {by_epoch} | {100 * r['val_accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] |"
        )
    write_result(a.out, out, lines)


if __name__ == "__main__":
    main()
