"""Attack throughput (images/s): tinyrobust's attack wrapper against ART called directly.

Usage: python benchmarks/attack_throughput.py [--runs DIR ...] [--n 64] [--threads 2]
       [--out benchmarks/results/attack_throughput.json]

For each trained run (default: the proposed qnn and the float ResNet-8 of benchmarks/results/cifar10),
on the same n test images (clean-correct ones are attacked), eps 8/255:
- PGD-20: `tinyrobust.attacks.run_attacks(..., ["pgd"])` against ART `ProjectedGradientDescent` on a
  plain `PyTorchClassifier` with the same settings (eps_step 2.5*eps/20, 1 random start);
- Square, 1000 queries: ours (`attacks/torch_attacks.py`) against ART `SquareAttack` (max_iter 1000,
  p_init 0.8, 1 restart). Both stop early on success, so robust accuracy is printed beside the speed.
Both sides do the same work (predict, attack the clean-correct images, score the adversarials), in
interleaved repeats (best time of each). Ratio = ours images/s / ART images/s (>= 1.0: our wrapper adds
no overhead).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch


def art_classifier(model, shape, classes):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=shape, nb_classes=classes, clip_values=(0.0, 1.0)
    )


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--runs",
        nargs="+",
        default=["benchmarks/results/cifar10/runs/qnn_int4_jr", "benchmarks/results/cifar10/runs/mlc_resnet8_float"],
    )
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="benchmarks/results/attack_throughput.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from art.attacks.evasion import ProjectedGradientDescent, SquareAttack

    from tinyrobust.attacks import run_attacks
    from tinyrobust.data import load_dataset
    from tinyrobust.data.loader import stratified_subset, to_tensors
    from tinyrobust.runs import load_run
    from tinyrobust.train.loop import environment

    eps = 8 / 255
    rows = []
    for run_dir in a.runs:
        run = load_run(run_dir)
        ds = load_dataset(run.cfg.data.dataset, "test", a.data_dir)
        x, y = to_tensors(ds, stratified_subset(ds.y, a.n, 0))
        x, y = x.numpy(), y.numpy()
        shape, classes = run.dataset_info.input_shape, run.dataset_info.num_classes
        with torch.no_grad():
            ok = run.model(torch.as_tensor(x)).argmax(1).numpy() == y
        xs = x[ok]  # the images both attack (clean-correct): throughput counts these
        row = {
            "run": run_dir,
            "model": run.cfg.model.name,
            "quant": run.config["model"]["quant"],
            "n": a.n,
            "attacked": int(ok.sum()),
        }
        for name, ours_params, art_build in [
            (
                "pgd20",
                {"pgd": {"steps": 20}},
                lambda c: ProjectedGradientDescent(
                    c,
                    norm=np.inf,
                    eps=eps,
                    eps_step=2.5 * eps / 20,
                    max_iter=20,
                    num_random_init=1,
                    batch_size=128,
                    verbose=False,
                ),
            ),
            (
                "square1000",
                {"square": {"queries": 1000}},
                lambda c: SquareAttack(
                    c, norm=np.inf, eps=eps, max_iter=1000, p_init=0.8, nb_restarts=1, batch_size=128, verbose=False
                ),
            ),
        ]:
            attack = "pgd" if name.startswith("pgd") else "square"
            clf = art_classifier(run.model, shape, classes)

            def ours(run=run, x=x, y=y, attack=attack, ours_params=ours_params):
                return run_attacks(
                    run.model, x, y, [attack], [8], params=ours_params, progress=False, masking_checks=False
                )

            def art_direct(clf=clf, x=x, y=y, art_build=art_build):
                # the same work as ours: predict, attack the clean-correct images, score the adversarials
                np.random.seed(0)
                torch.manual_seed(0)
                keep = clf.predict(x).argmax(1) == y
                x_adv = art_build(clf).generate(x[keep], y[keep])
                return float((clf.predict(x_adv).argmax(1) == y[keep]).sum()) / a.n

            # interleaved repeats, best of each: background load hits both alike
            t_ours = t_art = float("inf")
            for _ in range(a.repeats):
                res, t = timed(ours)
                t_ours = min(t_ours, t)
                art_robust, t = timed(art_direct)
                t_art = min(t_art, t)
            row[name] = {
                "ours_images_per_s": len(xs) / t_ours,
                "art_images_per_s": len(xs) / t_art,
                "ratio_ours_over_art": t_art / t_ours,
                "ours_robust_accuracy": res["attacks"][attack]["results"]["8"]["robust_accuracy"],
                "art_robust_accuracy": art_robust,
                "ours_s": t_ours,
                "art_s": t_art,
            }
            print(
                f"{run.cfg.model.name:12s} {name:11s} ours {len(xs) / t_ours:7.2f} img/s  ART {len(xs) / t_art:7.2f} "
                f"img/s  ratio {t_art / t_ours:5.2f}  robust acc ours {row[name]['ours_robust_accuracy']:.3f} "
                f"ART {art_robust:.3f}",
                flush=True,
            )
        rows.append(row)
    result = {
        "command": "python benchmarks/attack_throughput.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
            for k, v in vars(a).items()
            if k != "out" and v is not None
        ),
        "eps": "8/255",
        "rows": rows,
        "machine": {**environment(a.threads, 0), "node": platform.node()},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
