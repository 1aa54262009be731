"""Training cost of every model of configs/reproduce/speech_commands_logmel.yaml on 98x40 log-mel inputs.

Usage: python benchmarks/logmel_frontend_training_cost.py [--threads 1] [--steps 6]
       [--out benchmarks/results/logmel_training_cost.json]

Per grid model: steady-state training images/s (median step time at the grid's batch size, its own
quantizers and JR setting; synthetic inputs, since speed does not depend on values), and the
projected seconds per epoch of the 42,473-image training split. This is what the full budget's
epoch count was chosen from (docs/datasets.md). Writes JSON and a Markdown table next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from tinyrobust.config import QuantConfig
from tinyrobust.models import build_model
from tinyrobust.train.jacobian import training_forward
from tinyrobust.train.loop import environment

TRAIN_IMAGES = 42473
GRID = Path(__file__).resolve().parents[1] / "configs" / "reproduce" / "speech_commands_logmel.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", default="benchmarks/results/logmel_training_cost.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    grid = yaml.safe_load(GRID.read_text())
    batch = grid["base"]["train"]["batch_size"]
    rows = []
    for m in grid["models"]:
        cfg = m["config"]
        q = QuantConfig(**{k: v for k, v in (cfg["model"].get("quant") or {}).items()})
        jr = cfg.get("jr") or {}
        torch.manual_seed(0)
        model = build_model(
            cfg["model"]["name"], num_classes=12, input_shape=(1, 98, 40), mean=(0.33,), std=(0.2,), quant=q
        ).train()
        if q.act != "float":  # past Brevitas' 300 statistics-collection batches: steady state
            with torch.no_grad():
                for _ in range(310):
                    model(torch.rand(2, 1, 98, 40))
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        x, y = torch.rand(batch, 1, 98, 40), torch.randint(0, 12, (batch,))
        times = []
        for _ in range(a.steps + 2):
            t0 = time.perf_counter()
            logits, pen, _ = training_forward(
                model,
                x,
                weight=jr.get("weight", 0.0),
                n_proj=jr.get("n_proj", 1),
                batch_fraction=jr.get("batch_fraction", 1.0),
            )
            loss = F.cross_entropy(logits, y) + (pen if pen is not None else 0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        ips = batch / statistics.median(times[2:])
        rows.append({"key": m["key"], "images_per_s": ips, "epoch_s": TRAIN_IMAGES / ips})
        print(f"{m['key']:24s} {ips:7.1f} images/s  {TRAIN_IMAGES / ips / 60:6.1f} min/epoch", file=sys.stderr)
    command = "python benchmarks/logmel_frontend_training_cost.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k != "out"
    )
    load = os.getloadavg()
    result = {
        "command": command,
        "load_average_1_5_15": list(load),
        "batch": batch,
        "train_images": TRAIN_IMAGES,
        "threads": a.threads,
        "models": rows,
        "machine": {**environment(a.threads, 0), "node": platform.node()},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# Training cost on 98x40 log-mel inputs ({a.threads} thread(s), batch {batch})",
        "",
        f"Command: `{command}`; machine: {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}. Synthetic inputs; median step time after 2 warm-up steps. The machine was "
        f"shared (load average {load[0]:.1f} on 2 cores at the end), so these are lower bounds of an idle "
        "core's speed.",
        "",
        "| model | images/s | min per epoch (42,473 images) |",
        "|---|---:|---:|",
    ]
    md += [f"| {r['key']} | {r['images_per_s']:.1f} | {r['epoch_s'] / 60:.1f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
