"""Standard AutoAttack: tinyrobust's integration vs torchattacks' AutoAttack run directly.

Usage: python benchmarks/autoattack_compare.py [--run benchmarks/results/cifar10/runs/mlc_resnet8_float]
       [--n 100] [--eps 2] [--threads 1] [--out benchmarks/results/autoattack_compare.json]

Same model (a 20-epoch run, loaded with tinyrobust.runs.load_run), same images (the first n of the
nested stratified CIFAR-10 test subset, seed 0), same eps. Rows:
  tinyrobust autoattack        ``run_attacks(..., ["autoattack"])``: torchattacks' APGD-CE, APGD-T,
                               FAB-T, Square-5000 with the reference budgets (100 iterations, 9
                               target classes), each on the survivors, behind our Target
  torchattacks.AutoAttack      ``torchattacks.AutoAttack(model, eps, version="standard")`` as shipped
                               (its APGD/APGD-T/FAB use torchattacks' default of 10 iterations)
  torchattacks.MultiAttack     the same four attacks with the reference budgets chained by torchattacks
                               itself, without our Target (isolates what the wrapper changes)
Robust accuracy is counted on all n images (clean-wrong ones count as broken). Seconds are wall
and CPU (process) time of the attack on one thread; on a shared machine the CPU time is the fair
one. Writes the JSON and a Markdown table next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tinyrobust.attacks import run_attacks
from tinyrobust.attacks.evaluate import _relative
from tinyrobust.data import load_dataset
from tinyrobust.data.loader import nested_stratified_order, to_tensors
from tinyrobust.runs import load_run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="benchmarks/results/cifar10/runs/mlc_resnet8_float")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--eps", type=float, default=2.0, help="pixel units /255")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/autoattack_compare.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import torchattacks

    run = load_run(args.run)
    model = run.model.eval()
    ds = load_dataset(run.config["data"]["dataset"], "test")
    idx = nested_stratified_order(ds.y, args.n, args.seed)
    x_t, y_t = to_tensors(ds, idx)
    x, y = x_t.numpy().astype(np.float32), y_t.numpy().astype(np.int64)
    eps = args.eps / 255
    n_classes = int(run.dataset_info.num_classes)

    # Warm-up (untimed): the first passes through a model pay one-off costs (allocator, kernels) that
    # would otherwise land on whichever row runs first.
    run_attacks(
        model,
        x[:8],
        y[:8],
        ["autoattack"],
        [args.eps],
        params={"autoattack": {"steps": 2, "square_queries": 10}},
        masking_checks=False,
        progress=False,
    )
    rows = []
    torch.manual_seed(args.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_attacks(
        model, x, y, ["autoattack"], [args.eps], seed=args.seed, masking_checks=False, progress=False, batch_size=128
    )
    ours_s, ours_cpu = time.perf_counter() - t0, time.process_time() - c0
    r = res["attacks"]["autoattack"]["results"][f"{args.eps:g}"]
    ours = np.array([c == "1" for c in r["robust"]])
    rows.append(
        {
            "implementation": "tinyrobust autoattack (torchattacks attacks, reference budgets, our Target)",
            "robust_accuracy": float(ours.mean()),
            "seconds": round(ours_s, 1),
            "cpu_seconds": round(ours_cpu, 1),
            "queries_per_image": r.get("queries_per_image"),
        }
    )

    torch.manual_seed(args.seed)
    attack = torchattacks.AutoAttack(
        model, norm="Linf", eps=eps, version="standard", n_classes=n_classes, seed=args.seed
    )
    t0, c0 = time.perf_counter(), time.process_time()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    adv = torch.cat([attack(xt[i : i + 128], yt[i : i + 128]) for i in range(0, len(xt), 128)])
    direct_s, direct_cpu = time.perf_counter() - t0, time.process_time() - c0
    with torch.no_grad():
        direct = (model(adv).argmax(1) == yt).numpy()
    rows.append(
        {
            "implementation": "torchattacks.AutoAttack(version='standard') run directly",
            "robust_accuracy": float(direct.mean()),
            "seconds": round(direct_s, 1),
            "cpu_seconds": round(direct_cpu, 1),
            "queries_per_image": None,
        }
    )

    # The same four torchattacks attacks with the reference budgets, chained by torchattacks' own
    # MultiAttack without our Target: isolates what the wrapper changes (it should change nothing).
    from tinyrobust.attacks.autoattack import standard_attacks

    torch.manual_seed(args.seed)
    chain = torchattacks.MultiAttack([a for _, a in standard_attacks(model, eps, n_classes, seed=args.seed)])
    t0, c0 = time.perf_counter(), time.process_time()
    adv = torch.cat([chain(xt[i : i + 128], yt[i : i + 128]) for i in range(0, len(xt), 128)])
    chain_s, chain_cpu = time.perf_counter() - t0, time.process_time() - c0
    with torch.no_grad():
        chained = (model(adv).argmax(1) == yt).numpy()
    rows.append(
        {
            "implementation": "torchattacks.MultiAttack of the same four attacks, reference budgets, run directly",
            "robust_accuracy": float(chained.mean()),
            "seconds": round(chain_s, 1),
            "cpu_seconds": round(chain_cpu, 1),
            "queries_per_image": None,
        }
    )

    with torch.no_grad():
        clean = float((model(xt).argmax(1) == yt).float().mean())
    out = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "model_run": _relative(args.run),
        "n": args.n,
        "eps": args.eps,
        "eps_units": "pixel/255",
        "clean_accuracy": clean,
        "rows": rows,
        "per_image_disagreements": int((ours != direct).sum()),
        "broken_only_by_ours": int((~ours & direct).sum()),
        "broken_only_by_direct": int((ours & ~direct).sum()),
        "disagreements_with_same_budget_chain": int((ours != chained).sum()),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchattacks": torchattacks.__version__,
            "load_average_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()],
        },
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    md = [
        "# Standard AutoAttack: tinyrobust integration vs torchattacks run directly",
        "",
        f"`{out['command']}`",
        "",
        f"Model `{out['model_run']}` (clean accuracy {100 * clean:.1f}% on these images), n = {args.n} CIFAR-10 "
        f"test images (nested stratified subset, seed {args.seed}), L-inf eps {args.eps:g}/255. Machine: "
        f"{out['machine']['cpu']}, {out['machine']['cores']} cores, {args.threads} thread(s), torch "
        f"{torch.__version__}, torchattacks {torchattacks.__version__}.",
        "",
        "| implementation | robust accuracy | wall s | CPU s |",
        "|---|---:|---:|---:|",
    ]
    md += [
        f"| {r['implementation']} | {100 * r['robust_accuracy']:.1f}% | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} |"
        for r in rows
    ]
    md += [
        "",
        "Per-image disagreements with torchattacks.AutoAttack: "
        f"{out['per_image_disagreements']} (broken only by "
        f"ours {out['broken_only_by_ours']}, only by the direct run {out['broken_only_by_direct']}); with the "
        f"same-budget chain: {out['disagreements_with_same_budget_chain']}. "
        "torchattacks.AutoAttack as shipped runs APGD, APGD-T and FAB with 10 iterations; ours uses the "
        "reference implementation's 100. The machine is shared (load average at the end "
        f"{out['machine']['load_average_1_5_15_at_end']}): compare CPU seconds, not wall seconds.",
    ]
    path.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
