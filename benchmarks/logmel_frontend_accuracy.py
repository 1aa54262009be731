"""Accuracy of a speech_commands_logmel run on every split: the official test WAVs through our front end
(``test``, MLC/T's test set) against the JPEG set's own test list (``test_jpeg``) and validation list.

Usage: TINYROBUST_DATA=<datasets> python benchmarks/logmel_frontend_accuracy.py --run RUN_DIR
       [--out benchmarks/results/logmel_frontend_accuracy.json]

The gap between ``test_jpeg`` and ``test`` on the ten keywords + ``_unknown_`` (the classes both sets
share) is what the front end's mismatch (no JPEG loss, measured mapping) costs the model; per-class
accuracy on the test WAVs and 95% Wilson intervals are reported. A run still training is read from its
last checkpoint (the epoch is recorded).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from tinyrobust.config import load_config
from tinyrobust.data import load_dataset, to_tensors
from tinyrobust.data.speech_commands import CLASSES, SILENCE
from tinyrobust.rundir import CHECKPOINT_FILE, CONFIG_FILE, WEIGHTS_FILE
from tinyrobust.runs import model_for_config
from tinyrobust.train.checkpoint import load_checkpoint, load_weights


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [max(0.0, c - h), min(1.0, c + h)]


@torch.no_grad()
def predict(model, ds) -> np.ndarray:
    x, _ = to_tensors(ds)
    return np.concatenate([model(x[i : i + 500]).argmax(1).numpy() for i in range(0, len(x), 500)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", default="benchmarks/results/logmel_frontend_accuracy.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    run = Path(a.run)
    cfg = load_config(run / CONFIG_FILE)
    model, info = model_for_config(cfg)
    if (run / WEIGHTS_FILE).is_file():
        load_weights(run / WEIGHTS_FILE, model)
        state = f"finished ({cfg.train.epochs} epochs)"
    else:
        ck = load_checkpoint(run / CHECKPOINT_FILE)
        model.load_state_dict(ck["model"])
        state = f"checkpoint after epoch {ck['epoch']} of {cfg.train.epochs}"
    model.eval()
    shared = [i for i, c in enumerate(CLASSES) if c != SILENCE]
    rows = {}
    for split in ("test", "test_jpeg", "validation"):
        ds = load_dataset(cfg.data.dataset, split)
        pred = predict(model, ds)
        ok = pred == ds.y
        m = np.isin(ds.y, shared)
        rows[split] = {
            "n": len(ok),
            "accuracy": float(ok.mean()),
            "ci95": wilson(int(ok.sum()), len(ok)),
            "n_without_silence": int(m.sum()),
            "accuracy_without_silence": float(ok[m].mean()),
            "per_class": {CLASSES[c]: float(ok[ds.y == c].mean()) for c in range(12) if (ds.y == c).any()},
        }
    command = f"python benchmarks/logmel_frontend_accuracy.py --run {a.run}"
    result = {
        "command": command,
        "run": run.name,
        "model": cfg.model.name,
        "state": state,
        "splits": rows,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": 1},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# {run.name} on the official test WAVs vs the JPEG set ({state})",
        "",
        f"Command: `TINYROBUST_DATA=<datasets> {command}`; {platform.platform()}, torch {torch.__version__}.",
        "",
        "| split | n | accuracy (95% CI) | without _silence_ (n) |",
        "|---|---:|---:|---:|",
    ]
    for s, r in rows.items():
        md.append(
            f"| {s} | {r['n']} | {100 * r['accuracy']:.2f}% ({100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}) "
            f"| {100 * r['accuracy_without_silence']:.2f}% ({r['n_without_silence']}) |"
        )
    pc_w, pc_j = rows["test"]["per_class"], rows["test_jpeg"]["per_class"]
    both = [c for c in pc_w if c in pc_j]
    result["mean_class_accuracy_shared_classes"] = {
        "test": float(np.mean([pc_w[c] for c in both])),
        "test_jpeg": float(np.mean([pc_j[c] for c in both])),
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    md += [
        "",
        "The two test sets mix the classes differently (`_unknown_` is 25% of test_jpeg, 8% of the WAVs), so "
        "compare per class:",
        "",
        "| class | test WAVs | test_jpeg |",
        "|---|---:|---:|",
    ]
    md += [f"| {c} | {100 * pc_w[c]:.1f}% | " + (f"{100 * pc_j[c]:.1f}% |" if c in pc_j else "- |") for c in pc_w]
    md.append(
        f"| mean over the {len(both)} shared classes | "
        f"{100 * result['mean_class_accuracy_shared_classes']['test']:.2f}% | "
        f"{100 * result['mean_class_accuracy_shared_classes']['test_jpeg']:.2f}% |"
    )
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md), file=sys.stderr)


if __name__ == "__main__":
    main()
