"""Keyword models on the official Speech Commands test WAVs: accuracy, weight memory, and the gap to the
float DS-CNN with a paired interval (issue 14's target: a quantized keyword model within 3 points of the
DS-CNN at no more than a quarter of its weight memory).

Usage: python benchmarks/kws_accuracy.py [--runs benchmarks/results/speech_commands_logmel/runs]
       [--reference mlc_dscnn_float] [--out benchmarks/results/speech_commands_logmel/accuracy.json]

Every finished run of the folder is evaluated on all 4,890 official test clips (split ``test`` of
``speech_commands_logmel``: WAV -> our log-mel front end -> model; the frozen inference path, whose logits
equal the Brevitas model's), one thread. Accuracy carries a Wilson 95% interval; the gap to the reference
is paired on the same clips (Newcombe's interval); weight KB is the run's ``summary.json`` count (weights
at their bit widths, per-channel scales and folded BatchNorm biases included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="benchmarks/results/speech_commands_logmel/runs")
    ap.add_argument("--reference", default="mlc_dscnn_float")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="benchmarks/results/speech_commands_logmel/accuracy.json")
    a = ap.parse_args()
    torch.set_num_threads(1)

    from tinyrobust.data import load_dataset
    from tinyrobust.data.loader import to_tensors
    from tinyrobust.models import freeze
    from tinyrobust.rundir import SUMMARY_FILE, WEIGHTS_FILE
    from tinyrobust.runs import load_run
    from tinyrobust.stats import paired_difference, wilson

    ds = load_dataset("speech_commands_logmel", "test", a.data_dir)
    x, y = to_tensors(ds, None)
    x, y = x.float(), y.long().numpy()
    runs = sorted(p for p in Path(a.runs).iterdir() if (p / SUMMARY_FILE).is_file() and (p / WEIGHTS_FILE).is_file())
    correct, kb = {}, {}
    for run_dir in runs:
        run = load_run(run_dir)
        model = freeze(run.model.eval())
        with torch.no_grad():
            pred = torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)]).numpy()
        correct[run_dir.name] = pred == y
        kb[run_dir.name] = float(json.loads((run_dir / SUMMARY_FILE).read_text())["weight_kb"])
        print(run_dir.name, f"{correct[run_dir.name].mean():.4f}", file=sys.stderr)
    ref = correct.get(a.reference)
    rows = []
    for k, c in correct.items():
        n, hits = len(c), int(c.sum())
        row = {
            "run": k,
            "accuracy": hits / n,
            "ci95": list(wilson(hits, n)),
            "n": n,
            "weight_kb": round(kb[k], 1),
            "kb_vs_reference": round(kb[k] / kb[a.reference], 3) if a.reference in kb else None,
        }
        if ref is not None and k != a.reference:
            d = paired_difference(list(ref), list(c))  # reference minus this model
            row["gap_to_reference_points"] = round(100 * d["delta"], 2)
            row["gap_ci95_points"] = [round(100 * v, 2) for v in d["ci95"]]
            row["meets_target"] = bool(d["delta"] <= 0.03 and kb[k] <= 0.25 * kb[a.reference])
        rows.append(row)
    out = {
        "command": "python " + " ".join(shlex.quote(s) for s in [sys.argv[0], *sys.argv[1:]]),
        "machine": {"arch": platform.machine(), "nproc": os.cpu_count(), "torch": torch.__version__, "threads": 1},
        "test_set": "official Speech Commands v0.02 12-class test WAVs (4,890 clips, 408 _silence_) through the "
        "log-mel front end",
        "reference": a.reference,
        "target": "gap to the reference <= 3 points at <= 0.25x its weight KB",
        "rows": rows,
    }
    path = Path(a.out)
    path.write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# Keyword models on the official test WAVs",
        "",
        f"Command: `{out['command']}`; machine: {out['machine']['arch']}, {out['machine']['nproc']} cores, "
        f"torch {out['machine']['torch']}, 1 thread. Test set: {out['test_set']}. Gap = {a.reference} minus the "
        "model, paired on the same clips (Newcombe 95% interval). Target: gap <= 3 points at <= 0.25x the "
        "reference's weight KB.",
        "",
        "| run | accuracy % [95% CI] | weight KB | x reference KB | gap (points) [paired 95% CI] | target |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -r["weight_kb"]):
        gap = (
            f"{r['gap_to_reference_points']:+.2f} [{r['gap_ci95_points'][0]:+.2f}, {r['gap_ci95_points'][1]:+.2f}]"
            if "gap_to_reference_points" in r
            else "reference"
        )
        target = "" if "meets_target" not in r else ("met" if r["meets_target"] else "not met")
        lines.append(
            f"| {r['run']} | {100 * r['accuracy']:.2f} [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}] | "
            f"{r['weight_kb']:.1f} | {r['kb_vs_reference']:.3f} | {gap} | {target} |"
        )
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
