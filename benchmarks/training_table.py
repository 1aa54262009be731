"""Clean test accuracy and weight memory of the trained runs of a reproduce folder, as JSON + Markdown.

Usage: python benchmarks/training_table.py [--results benchmarks/results/cifar10]
Writes <results>/training.json and <results>/training.md. Reads only finished runs' files
(summary.json, metrics.jsonl, env.json): it trains nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _jr(jr: dict) -> str:
    if not jr["weight"] and not any((jr.get("layers") or {}).values()):
        return "0"
    frac = jr.get("batch_fraction", 1.0)  # runs made before the option existed used the whole batch
    layers = "".join(f", {k} {v:g}" for k, v in (jr.get("layers") or {}).items() if v)
    return f"{jr['weight']:g}{layers} ({'whole batch' if frac >= 1 else f'{frac:g}'})"


def targets(rows: list, ref: dict | None) -> list:
    """Issue 2's two accuracy targets, checked on the measured rows."""
    if ref is None:
        return []
    acc = ref["test_accuracy"]
    res = [{"target": "mlc_resnet8 float >= 80% test accuracy", "met": acc >= 0.80,
            "detail": f"{100 * acc:.2f}%"}]
    ok = [r for r in rows if r["model"] == "qnn" and r["quant"]["weight"] != "float"
          and r["test_accuracy"] >= acc - 0.05 and r["weight_kb"] <= ref["weight_kb"] / 4]
    res.append({"target": "a quantized qnn within 5 points of it at <= 1/4 of its weight memory",
                "met": bool(ok),
                "detail": ", ".join(f"{r['run']} {100 * r['test_accuracy']:.2f}% at "
                                    f"{r['weight_kb'] / ref['weight_kb']:.2f}x" for r in ok) or "none"})
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default="benchmarks/results/cifar10")
    ap.add_argument("--note", default="", help="how the runs were made (load, threads), printed under the table")
    a = ap.parse_args()
    root = Path(a.results)
    rows = []
    for run in sorted((root / "runs").iterdir()):
        s, env = run / "summary.json", run / "env.json"
        if not s.is_file():
            continue
        summary = json.loads(s.read_text())
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        import yaml

        cfg = yaml.safe_load((run / "config.yaml").read_text())
        rows.append({
            "run": run.name, "model": cfg["model"]["name"], "quant": cfg["model"]["quant"],
            "jr": cfg["jr"], "epochs": summary["epochs"], "test_accuracy": summary["test_accuracy"],
            "test_examples": summary["test_examples"], "parameters": summary["parameters"],
            "weight_kb": summary["weight_kb"],
            "train_seconds": sum(m["epoch_time_s"] for m in metrics),
            "mean_images_per_s": sum(m["images_per_s"] for m in metrics) / max(1, len(metrics)),
            "data_source": summary.get("data_source"), "env": json.loads(env.read_text()) if env.is_file() else None,
        })
    ref = next((r for r in rows if r["run"] == "mlc_resnet8_float"), None)
    out = {"command": f"python benchmarks/training_table.py --results {a.results}", "note": a.note, "runs": rows}
    (root / "training.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["| run | model | weights | acts | JR lambda (share of batch) | epochs | test acc % | weight KB | vs ResNet-8 float KB | train s | img/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = r["quant"]
        frac = f"{r['weight_kb'] / ref['weight_kb']:.2f}x" if ref else "-"
        lines.append(f"| {r['run']} | {r['model']} | {q['weight']} (first {q['first_weight'] or q['weight']}, last "
                     f"{q['last_weight'] or q['weight']}) | {q['act']} | {_jr(r['jr'])} | {r['epochs']} | "
                     f"{100 * r['test_accuracy']:.2f} | {r['weight_kb']:.1f} | {frac} | {r['train_seconds']:.0f} | "
                     f"{r['mean_images_per_s']:.0f} |")
    out["targets"] = targets(rows, ref)
    lines += ["", "Targets (issue 2):"] + [f"- {t['target']}: **{'met' if t['met'] else 'not met'}** ({t['detail']})"
                                          for t in out["targets"]]
    (root / "training.json").write_text(json.dumps(out, indent=2) + "\n")
    env = rows[0]["env"] if rows else {}
    if a.note:
        lines += ["", a.note]
    lines += ["", f"Data: {rows[0]['data_source'] if rows else '-'}; test accuracy on all "
              f"{rows[0]['test_examples'] if rows else '-'} test images.",
              f"Machine: {env.get('platform')}, {env.get('cpu_count')} CPUs, "
              f"torch {env.get('torch')}, brevitas {env.get('brevitas')}.",
              f"Command: `tinyrobust reproduce --dataset cifar10 --budget full --out {a.results} --stages train` "
              f"then `{out['command']}`."]
    (root / "training.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
