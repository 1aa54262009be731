"""Where an attack stage stands, read from its resume parts: per model, attack and eps, the images
attacked and broken, the robust accuracy after that attack (the cascade so far) with its Wilson 95%
interval, and the seconds it took. For a stage still running (or stopped by the end of a session):
the report needs every attack of every model, this table shows what is finished and what it cost.

Usage: python benchmarks/attack_progress.py [--results benchmarks/results/cifar10] [--order fgsm,pgd,...]
    [--grid NAME] [--workers 2]
Attacks found in the parts but not in --order (e.g. a grid's other transfer surrogates) follow it.
eps are labelled as the grid labels them (k/255, or samples for the waveform grid): the grid named in
<results>/reproduce.json, or --grid. Per model and in all: the summed attack seconds, with the masking
probes where their part records their time (parts written before that count without them), and the
stage's work units list-scheduled on --workers workers as ``reproduce --jobs`` shares them (one eps of one
model at a time, in grid order, taken by the worker free first; then each model's masking probes): an
estimate of the stage's wall time, derived from parts timed on cores shared with other processes, not a
timed end-to-end run.
Writes <results>/attack_progress.json and .md. Trains and attacks nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
from pathlib import Path

from tinyrobust.stats import wilson

ORDER = ["fgsm", "pgd", "apgd", "bpda", "autoattack", "square", "transfer@qnn_float", "transfer@mlc_resnet8_float"]


def _part_name(attack: str, eps: str) -> str:
    return f"{attack.replace('@', '_at_')}_at_eps{eps}.json"


def attacks_in_parts(parts: Path) -> set[str]:
    """Attack names whose parts are in the folder (``transfer_at_x`` files belong to ``transfer@x``)."""
    names = set()
    for f in parts.glob("*.json"):
        if f.name.startswith("_"):
            continue
        stem = re.sub(r"_at_eps[^/]*$", "", f.stem)
        names.add(re.sub(r"^transfer_at_", "transfer@", stem))
    return names


def model_progress(folder: Path, order: list[str]) -> dict:
    """Per attack and eps, from the per-eps parts (an attack is only listed where its part exists)."""
    parts = folder / "robustness_parts"
    rows, alive_by_eps, n_total = [], {}, None
    found_names = attacks_in_parts(parts) if parts.is_dir() else set()
    for attack in order + sorted(found_names - set(order)):
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
    probes = parts / "_masking_probes.json"
    probe_seconds = json.loads(probes.read_text())["entry"].get("wall_time_s") if probes.is_file() else None
    done = (folder / "robustness.json").is_file()
    seconds = sum(r["seconds"] or 0 for r in rows) + (probe_seconds or 0)
    return {
        "finished": done,
        "n": n_total,
        "rows": rows,
        "masking_probe_seconds": probe_seconds,  # None: not run yet, or run before they were timed
        "attack_seconds": round(seconds, 1),
    }


def _grid(root: Path, grid_name: str | None):
    """The grid these results were made with (--grid, else the one reproduce.json names), or None."""
    if not grid_name and (root / "reproduce.json").is_file():
        grid_name = Path(json.loads((root / "reproduce.json").read_text()).get("grid") or "").stem or None
    if not grid_name:
        return None
    from tinyrobust.report.grid import load_grid
    from tinyrobust.reproduce.pipeline import grid_path

    return load_grid(grid_path(grid_name))


def _labeller(grid):
    return grid.eps_label if grid is not None else (lambda e: f"{e:g}/255")


def eps_labeller(root: Path, grid_name: str | None):
    """How the grid of these results writes one eps (``2/255`` or ``4 samples``)."""
    return _labeller(_grid(root, grid_name))


def list_schedule(seconds: dict[str, float], workers: int) -> dict:
    """Models in the given order, each taken by the worker that is free first (as ``--jobs`` workers take
    the next unlocked model): the finishing time of the last one, and which worker ran what."""
    free = [0.0] * workers
    runs: list[list[str]] = [[] for _ in range(workers)]
    for key, secs in seconds.items():
        w = min(range(workers), key=lambda i: (free[i], i))
        free[w] += secs
        runs[w].append(key)
    return {"workers": workers, "makespan_s": round(max(free, default=0.0), 1), "per_worker": runs}


def work_units(models: dict) -> dict[str, float]:
    """The attack stage's units as ``reproduce --jobs`` workers take them: every eps of every model (grid
    order, eps ascending; its seconds = all attacks at that eps), then each model's masking probes (the
    pass that writes robustness.json)."""
    units: dict[str, float] = {}
    for key, m in models.items():
        per_eps: dict[float, float] = {}
        for r in m["rows"]:
            per_eps[r["eps"]] = per_eps.get(r["eps"], 0.0) + (r["seconds"] or 0.0)
        units.update({f"{key} eps {e:g}": secs for e, secs in sorted(per_eps.items())})
    units.update({f"{key} probes": m["masking_probe_seconds"] or 0.0 for key, m in models.items()})
    return units


def _schedule_line(sch: dict) -> str:
    h = sch["makespan_s"] / 3600
    what = "" if sch["all_finished"] else " (a lower bound: some models are not finished)"
    runs = "; ".join(f"worker {i + 1}: {len(r)} units" for i, r in enumerate(sch["per_worker"]))
    return (
        f"List-scheduled on {sch['workers']} workers as `reproduce --jobs {sch['workers']}` shares the stage (one "
        f"eps of one model at a time, then each model's masking probes): {sch['makespan_s']:.0f} s = {h:.2f} h"
        f"{what}, derived from the parts' seconds, not timed end to end ({runs})."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="benchmarks/results/cifar10")
    ap.add_argument("--order", default=",".join(ORDER), help="attack order of the grid's cascade")
    ap.add_argument("--grid", help="grid whose eps labels to use (default: the one reproduce.json names)")
    ap.add_argument("--workers", type=int, default=2, help="reproduce --jobs workers to list-schedule on")
    a = ap.parse_args()
    root = Path(a.results)
    order = [s for s in a.order.split(",") if s]
    found = {
        d.name: d
        for d in sorted((root / "attacks").iterdir())
        if (d / "robustness_parts").is_dir() or (d / "robustness.json").is_file()
    }
    grid = _grid(root, a.grid)
    grid_order = [m.key for m in grid.models] if grid is not None else []
    keys = [k for k in grid_order if k in found] + [k for k in found if k not in grid_order]
    models = {k: model_progress(found[k], order) for k in keys}
    out = {
        "command": f"python benchmarks/attack_progress.py --results {a.results}",
        "machine": {"platform": platform.platform(), "arch": platform.machine()},
        "models": models,
    }
    out["attack_seconds_total"] = round(sum(m["attack_seconds"] for m in models.values()), 1)
    out["list_schedule"] = list_schedule(work_units(models), max(1, a.workers))
    out["list_schedule"]["all_finished"] = all(m["finished"] for m in models.values())
    (root / "attack_progress.json").write_text(json.dumps(out, indent=2) + "\n")
    label = _labeller(grid)
    md = [
        f"# Attack stage progress ({root.as_posix()})",
        "",
        f"Command: `{out['command']}` (reads the resume parts; attacks nothing). Each row: one attack at one eps,",
        "run on the images every earlier attack of the cascade left correct (the leading white-box attacks on",
        "every clean-correct image); 'robust after' = correct and unbroken by every attack up to this one, with",
        "its Wilson 95% interval. Seconds are wall time of that attack on one thread of the 2-core machine,",
        "shared with a second attack process (and, at times, other jobs).",
        "",
        f"Summed attack seconds, all models: {out['attack_seconds_total']:.0f} "
        f"({out['attack_seconds_total'] / 3600:.2f} h of one thread).",
        "",
        _schedule_line(out["list_schedule"]),
        "",
    ]
    for key, m in models.items():
        md += [f"## {key} ({'finished' if m['finished'] else 'not finished'}; n = {m['n']})", ""]
        probe = m["masking_probe_seconds"]
        md += [
            f"Attack seconds: {m['attack_seconds']:.0f} (masking probes: "
            + (f"{probe:.0f})." if probe is not None else "not timed)."),
            "",
        ]
        md += [
            "| attack | eps | attacked | broken | robust after % [95% CI] | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for r in m["rows"]:
            lo, hi = r["ci95"]
            secs = "-" if r["seconds"] is None else f"{r['seconds']:.0f}"
            md.append(
                f"| {r['attack']} | {label(r['eps'])} | {r['n_attacked']} | {r['n_broken']} | "
                f"{100 * r['robust_after_this_attack']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | {secs} |"
            )
        md.append("")
    (root / "attack_progress.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
