"""BatchNorm re-estimation on finished runs: accuracy before and after (issue 12, item 5).

Usage: python benchmarks/bn_reestimate.py [--runs benchmarks/results/cifar10/runs/qnn_ternary ...]
       [--batches 10,50,200] [--threads 1] [--out benchmarks/results/bn_reestimate]
Writes <out>.json and <out>.md. For each run: accuracy with the weights and BatchNorm statistics as
trained, then, for each N and for re-estimation on augmented (random crop + flip, as in training) and on
un-augmented training images, the same weights with BatchNorm statistics recomputed over N training
batches of 128 (seed 0; tinyrobust.train.bn_reestimate). Two accuracies each: on 5,000 fixed training
images without augmentation (the runs have no validation split; this is the number a choice may look
at) and on every test image (final numbers only: nothing is chosen on it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

DEFAULT_RUNS = ["benchmarks/results/cifar10/runs/qnn_ternary", "benchmarks/results/cifar10/runs/qnn_ternary_jr"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", default=DEFAULT_RUNS)
    ap.add_argument("--batches", default="10,50,200", help="comma list of N (training batches of --batch-size)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--train-check", type=int, default=5000, help="training images for the non-test accuracy")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None, help="where datasets live (default $TINYROBUST_DATA)")
    ap.add_argument("--out", default="benchmarks/results/bn_reestimate")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch

    from tinyrobust.data import load_dataset
    from tinyrobust.data.loader import stratified_subset, to_tensors
    from tinyrobust.data.splits import config_split
    from tinyrobust.runs import load_run
    from tinyrobust.stats import wilson
    from tinyrobust.train.bn_reestimate import reestimate_bn

    @torch.no_grad()
    def correct(model, x, y):
        model.eval()
        return torch.cat([model(c).argmax(1) for c in x.split(500)]) == y

    torch.set_num_threads(a.threads)
    ns = [int(n) for n in a.batches.split(",") if n.strip()]
    rows, test_cache = [], {}
    source = ""
    for run in a.runs:
        run = Path(run)
        loaded = load_run(run)
        cfg = loaded.cfg
        if cfg.data.dataset not in test_cache:
            ds = load_dataset(cfg.data.dataset, "test", a.data_dir)
            test_cache[cfg.data.dataset] = (*to_tensors(ds), ds.source)
        x, y, source = test_cache[cfg.data.dataset]
        train_ds = config_split(cfg, "train", a.data_dir)
        tx, ty = to_tensors(train_ds, stratified_subset(train_ds.y, a.train_check, 0))
        t0 = time.perf_counter()
        c_before = correct(loaded.model, x, y)
        eval_s = time.perf_counter() - t0
        n = len(y)
        before = float(c_before.float().mean())
        row = {
            "run": run.name,
            "weight": cfg.model.quant.weight,
            "jr_weight": cfg.jr.weight,
            "epochs": cfg.train.epochs,
            "test_images": n,
            "train_check_images": len(ty),
            "before": {
                "test": before,
                "test_ci95": list(wilson(int(c_before.sum()), n)),
                "train_check": float(correct(loaded.model, tx, ty).float().mean()),
            },
            "summary_test_accuracy": loaded.summary.get("test_accuracy"),
            "eval_s": round(eval_s, 1),
            "after": {},
        }
        print(
            f"{run.name}: as trained test {100 * before:.2f}%, train-check {100 * row['before']['train_check']:.2f}%",
            file=sys.stderr,
        )
        for augment in (True, False):
            for nb in ns:
                model = load_run(run).model  # fresh weights each time
                t0 = time.perf_counter()
                used = reestimate_bn(model, train_ds, nb, a.batch_size, seed=0, augment=augment)
                re_s = time.perf_counter() - t0
                c_after = correct(model, x, y)
                acc = float(c_after.float().mean())
                row["after"][f"{'aug' if augment else 'noaug'}:{nb}"] = {
                    "augment": augment,
                    "batches": nb,
                    "test": acc,
                    "test_ci95": list(wilson(int(c_after.sum()), n)),
                    "train_check": float(correct(model, tx, ty).float().mean()),
                    "train_images": used,
                    "seconds": round(re_s, 1),
                    # paired on the same test images: images re-estimation fixed / broke
                    "fixed": int((~c_before & c_after).sum()),
                    "broken": int((c_before & ~c_after).sum()),
                }
                r = row["after"][f"{'aug' if augment else 'noaug'}:{nb}"]
                print(
                    f"  augment={augment} N={nb} ({used} images, {re_s:.1f} s): test {100 * acc:.2f}%, "
                    f"train-check {100 * r['train_check']:.2f}%",
                    file=sys.stderr,
                )
        rows.append(row)
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": a.threads,
        "torch": torch.__version__,
        "load_avg_at_end": os.getloadavg(),
    }
    cmd = "python benchmarks/bn_reestimate.py " + " ".join(sys.argv[1:])
    data = Path(source.split(" ")[0]).name if source else "?"
    out = {
        "command": cmd.strip(),
        "machine": machine,
        "data_source": data,
        "batch_size": a.batch_size,
        "seed": 0,
        "rows": rows,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(out, indent=2) + "\n")
    keys = [f"aug:{nb}" for nb in ns] + [f"noaug:{nb}" for nb in ns]
    head = [f"{'augmented' if k.startswith('aug') else 'un-augmented'}, N={k.split(':')[1]}" for k in keys]
    lines = [
        "# BatchNorm re-estimation after training",
        "",
        f"Command: `{out['command']}`  ",
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs (shared with other jobs), {a.threads} "
        f"torch thread(s), torch {machine['torch']}. Data: {data}. Re-estimation: N training batches of "
        f"{a.batch_size}, seed 0, augmented as in training (random crop + flip) or not.",
        "",
        "Each cell: test accuracy % on all test images (training-check accuracy % on "
        f"{a.train_check} fixed training images without augmentation). The test split gives final numbers "
        "only.",
        "",
        "| run | weights | JR lambda | as trained | " + " | ".join(head) + " |",
        "|" + "---|" * (4 + len(keys)),
    ]
    for r in rows:
        cells = [f"{100 * r['after'][k]['test']:.2f} ({100 * r['after'][k]['train_check']:.1f})" for k in keys]
        lines.append(
            f"| {r['run']} | {r['weight']} | {r['jr_weight']:g} | {100 * r['before']['test']:.2f} "
            f"({100 * r['before']['train_check']:.1f}) | " + " | ".join(cells) + " |"
        )
    lines += ["", "95% Wilson intervals, paired fixed/broken image counts and seconds are in the JSON."]
    Path(a.out + ".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}.json and {a.out}.md", file=sys.stderr)


if __name__ == "__main__":
    main()
