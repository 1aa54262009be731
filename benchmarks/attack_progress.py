"""Where an attack stage stands, read from its resume parts: per model, attack and eps, the images
attacked and broken, the robust accuracy after that attack (the cascade so far) with its Wilson 95%
interval, and the seconds it took. For a stage still running (or stopped by the end of a session):
the report needs every attack of every model, this table shows what is finished and what it cost.

Usage: python benchmarks/attack_progress.py [--results benchmarks/results/cifar10] [--order fgsm,pgd,...]
Writes <results>/attack_progress.json and .md. Trains and attacks nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from tinyrobust.stats import wilson

ORDER = ["fgsm", "pgd", "apgd", "bpda", "autoattack", "square", "transfer@qnn_float", "transfer@mlc_resnet8_float"]


def _part_name(attack: str, eps: str) -> str:
    return f"{attack.replace('@', '_at_')}_at_eps{eps}.json"


def model_progress(folder: Path, order: list[str]) -> dict:
    """Per attack and eps, from the per-eps parts (an attack is only listed where its part exists)."""
    parts = folder / "robustness_parts"
    rows, alive_by_eps, n_total = [], {}, None
    for attack in order:
        found = {}
        for f in sorted(parts.glob(_part_name(attack, "*"))):  # per-eps parts
            found[f.name[len(_part_name(attack, "")) - len(".json") : -len(".json")]] = json.loads(f.read_text())[
                "entry"
            ]
        whole = parts / f"{attack.replace('@', '_at_')}.json"  # a finished attack (all eps in one part)
        if whole.is_file():
            found.update(json.loads(whole.read_text())["entry"]["results"])
        for eps, entry in sorted(found.items(), key=lambda kv: float(kv[0])):
            robust = entry["robust"]
            n_total = len(robust)
            # survived everything so far: '1' in every finished attack's string at this eps
            alive = alive_by_eps.get(eps, [True] * n_total)
            alive = [a and c == "1" for a, c in zip(alive, robust)]
            alive_by_eps[eps] = alive
            k = sum(alive)
            lo, hi = wilson(k, n_total)
            rows.append(
                {
                    "attack": attack,
                    "eps": float(eps),
                    "n": n_total,
                    "n_attacked": entry["n_attacked"],
                    "n_broken": entry["n_broken"],
                    "robust_after_this_attack": k / n_total,
                    "ci95": [lo, hi],
                    "seconds": entry.get("wall_time_s"),
                    "queries_per_image": entry.get("queries_per_image"),
                }
            )
    done = (folder / "robustness.json").is_file()
    return {"finished": done, "n": n_total, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="benchmarks/results/cifar10")
    ap.add_argument("--order", default=",".join(ORDER), help="attack order of the grid's cascade")
    a = ap.parse_args()
    root = Path(a.results)
    order = [s for s in a.order.split(",") if s]
    models = {
        d.name: model_progress(d, order)
        for d in sorted((root / "attacks").iterdir())
        if (d / "robustness_parts").is_dir() or (d / "robustness.json").is_file()
    }
    out = {
        "command": f"python benchmarks/attack_progress.py --results {a.results}",
        "machine": {"platform": platform.platform(), "arch": platform.machine()},
        "models": models,
    }
    (root / "attack_progress.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [
        f"# Attack stage progress ({root.as_posix()})",
        "",
        f"Command: `{out['command']}` (reads the resume parts; attacks nothing). Each row: one attack at one eps,",
        "run on the images every earlier attack of the cascade left correct (the leading white-box attacks on",
        "every clean-correct image); 'robust after' = correct and unbroken by every attack up to this one, with",
        "its Wilson 95% interval. Seconds are wall time of that attack on one thread of the 2-core machine,",
        "shared with a second attack process (and, at times, other jobs).",
        "",
    ]
    for key, m in models.items():
        md += [f"## {key} ({'finished' if m['finished'] else 'not finished'}; n = {m['n']})", ""]
        md += [
            "| attack | eps /255 | attacked | broken | robust after % [95% CI] | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for r in m["rows"]:
            lo, hi = r["ci95"]
            secs = "-" if r["seconds"] is None else f"{r['seconds']:.0f}"
            md.append(
                f"| {r['attack']} | {r['eps']:g} | {r['n_attacked']} | {r['n_broken']} | "
                f"{100 * r['robust_after_this_attack']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | {secs} |"
            )
        md.append("")
    (root / "attack_progress.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
