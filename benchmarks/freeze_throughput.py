"""Throughput of the frozen inference path (models/freeze.py) against Brevitas eager, and faithfulness.

Usage: OMP_NUM_THREADS=1 python benchmarks/freeze_throughput.py [--runs DIR ...] [--batch 256]
       [--repeats 5] [--square-n 64] [--square-queries 200] [--check-n 1000] [--onnx]
       [--out benchmarks/results/freeze_throughput.json]

Per trained run, one thread, on CIFAR-10 test images:
- forward images/s (no grad) and forward + backward images/s (gradient of the summed cross-entropy
  w.r.t. the input, as white-box attacks use it), one batch of ``--batch`` per timing, Brevitas and
  frozen interleaved, best of ``--repeats`` (the machine is shared: the best repeat is the least
  disturbed one);
- Square L-inf (eps 8/255, ``--square-queries`` queries, same seed) on ``--square-n`` images through
  ``attacks.target.Target``: images/s, interleaved, best of ``--repeats``; the adversarial examples
  of both paths must be identical;
- faithfulness on ``--check-n`` test images: max |logit difference| and top-1 agreement;
- with ``--onnx``: onnxruntime (1 thread) forward images/s on the QCDQ export, for comparison.
Writes JSON and a Markdown table next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RUNS = ["qnn_int4_jr", "qnn_int4", "qnn_ternary", "mlc_resnet8_int8"]


def best_time(fn, repeats_log: list) -> None:
    t0 = time.perf_counter()
    fn()
    repeats_log.append(time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", default=[f"benchmarks/results/cifar10/runs/{r}" for r in RUNS])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--square-n", type=int, default=64)
    ap.add_argument("--square-queries", type=int, default=200)
    ap.add_argument("--check-n", type=int, default=1000)
    ap.add_argument("--onnx", action="store_true")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="benchmarks/results/freeze_throughput.json")
    ap.add_argument(
        "--note",
        default="shared with other jobs: best of interleaved repeats",
        help="what else ran on the machine (recorded in the JSON)",
    )
    a = ap.parse_args()
    torch.set_num_threads(1)

    from tinyrobust.attacks.target import Target
    from tinyrobust.attacks.torch_attacks import SquareLinf
    from tinyrobust.data import load_dataset
    from tinyrobust.data.loader import to_tensors
    from tinyrobust.models import freeze
    from tinyrobust.runs import load_run

    ds = load_dataset("cifar10", "test", a.data_dir)
    n_all = max(a.check_n, a.batch, a.square_n)
    x_all, y_all = to_tensors(ds, np.arange(n_all))
    x_all, y_all = x_all.float(), y_all.long()
    rows = []
    for run_dir in a.runs:
        run = load_run(run_dir)
        ref = run.model.eval()
        t0 = time.perf_counter()
        frz = freeze(ref)
        freeze_s = time.perf_counter() - t0
        paths = {"brevitas": ref, "frozen": frz}

        with torch.no_grad():
            lr = torch.cat([ref(x_all[i : i + 250]) for i in range(0, a.check_n, 250)])
            lf = torch.cat([frz(x_all[i : i + 250]) for i in range(0, a.check_n, 250)])
        check = {
            "n": a.check_n,
            "max_abs_logit_diff": float((lr - lf).abs().max()),
            "top1_identical": bool(torch.equal(lr.argmax(1), lf.argmax(1))),
            "top1_accuracy": float((lf.argmax(1) == y_all[: a.check_n]).float().mean()),
        }

        xb, yb = x_all[: a.batch], y_all[: a.batch]

        def fwd(m, xb=xb):
            with torch.no_grad():
                m(xb)

        def fwd_bwd(m, xb=xb, yb=yb):
            x = xb.clone().requires_grad_(True)
            torch.autograd.grad(torch.nn.functional.cross_entropy(m(x), yb, reduction="sum"), x)

        xs, ys = x_all[: a.square_n].numpy(), y_all[: a.square_n].numpy()
        adv = {}

        def square(name, m, xs=xs, ys=ys, adv=adv):
            torch.manual_seed(0)
            target = Target(m, tuple(xs.shape[1:]), 10, batch_size=a.batch)
            adv[name] = SquareLinf(target, 8 / 255, queries=a.square_queries).generate(xs, ys)

        times = {k: {p: [] for p in paths} for k in ("fwd", "fwd_bwd", "square")}
        for _ in range(a.repeats):  # interleaved: each repeat times every path and measurement
            for p, m in paths.items():
                best_time(lambda m=m: fwd(m), times["fwd"][p])
                best_time(lambda m=m: fwd_bwd(m), times["fwd_bwd"][p])
                best_time(lambda m=m, p=p: square(p, m), times["square"][p])
        robust = {p: float((paths["frozen"](torch.from_numpy(adv[p])).argmax(1).numpy() == ys).mean()) for p in paths}
        row = {
            "run": Path(run_dir).name,
            "freeze_seconds": round(freeze_s, 3),
            "check": check,
            "square_adversarials_identical": bool(np.array_equal(adv["brevitas"], adv["frozen"])),
            "square_robust_accuracy": robust,
        }
        for k, n in (("fwd", a.batch), ("fwd_bwd", a.batch), ("square", a.square_n)):
            ips = {p: n / min(times[k][p]) for p in paths}
            row[k] = {
                "brevitas_images_per_s": round(ips["brevitas"], 1),
                "frozen_images_per_s": round(ips["frozen"], 1),
                "speedup": round(ips["frozen"] / ips["brevitas"], 2),
                "seconds_all_repeats": {p: [round(t, 4) for t in times[k][p]] for p in paths},
            }
        if a.onnx:
            row["onnxruntime_fwd_images_per_s"] = onnx_fwd(ref, run, xb, a.repeats)
        rows.append(row)
        print(json.dumps({k: row[k] for k in row if k not in ("fwd", "fwd_bwd", "square")}), file=sys.stderr)
        for k in ("fwd", "fwd_bwd", "square"):
            print(row["run"], k, {kk: v for kk, v in row[k].items() if kk != "seconds_all_repeats"}, file=sys.stderr)

    out = {
        "command": "OMP_NUM_THREADS=1 python " + " ".join(shlex.quote(s) for s in [sys.argv[0], *sys.argv[1:]]),
        "machine": {
            "arch": platform.machine(),
            "nproc": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "note": a.note,
        },
        "settings": {
            "batch": a.batch,
            "repeats": a.repeats,
            "square_n": a.square_n,
            "square_queries": a.square_queries,
            "square_eps": "8/255",
            "check_n": a.check_n,
        },
        "runs": rows,
    }
    path = Path(a.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(out))
    print(f"wrote {path} and {path.with_suffix('.md')}", file=sys.stderr)


def onnx_fwd(model, run, xb, repeats):
    try:
        from tinyrobust.export.onnx_export import export_model
        from tinyrobust.export.onnx_model import OnnxClassifierModule

        with tempfile.TemporaryDirectory() as tmp:
            f = export_model(model, Path(tmp) / "m.onnx", "onnx", tuple(xb.shape[1:]))
            m = OnnxClassifierModule(f, batch_size=len(xb))
            ts = []
            for _ in range(repeats):
                best_time(lambda: m(xb), ts)
            return round(len(xb) / min(ts), 1)
    except Exception as exc:  # the export is optional here; record why it did not run
        return f"not measured: {type(exc).__name__}: {exc}"[:200]


def markdown(out) -> str:
    s = out["settings"]
    lines = [
        "# Frozen inference path vs Brevitas eager",
        "",
        f"Command: `{out['command']}`",
        "",
        f"Machine: {out['machine']['arch']}, {out['machine']['nproc']} cores (`uname -m`, `nproc`), torch "
        f"{out['machine']['torch']}, 1 thread, `TINYROBUST_DATA` pointing at CIFAR-10. The machine was shared "
        "with other jobs (other helpers and a training "
        f"run), so every number is the best of {s['repeats']} interleaved repeats (Brevitas and frozen timed "
        "alternately).",
        "",
        f"Forward / forward+backward (input gradient of the cross-entropy): batch {s['batch']}. Square: L-inf "
        f"eps 8/255, {s['square_queries']} queries, {s['square_n']} images, same seed on both paths. Check: "
        f"{s['check_n']} test images.",
        "",
        "| run | fwd img/s Brevitas | fwd img/s frozen | x | fwd+bwd Brevitas | fwd+bwd frozen | x | Square img/s "
        "Brevitas | Square frozen | x | max logit diff | top-1 identical | Square adv identical |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["runs"]:
        cells = [r["run"]]
        for k in ("fwd", "fwd_bwd", "square"):
            fmt = ".1f" if k == "square" else ".0f"
            cells += [
                f"{r[k]['brevitas_images_per_s']:{fmt}}",
                f"{r[k]['frozen_images_per_s']:{fmt}}",
                f"{r[k]['speedup']:.2f}",
            ]
        cells += [
            f"{r['check']['max_abs_logit_diff']:.1e}",
            str(r["check"]["top1_identical"]),
            str(r["square_adversarials_identical"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    onnx = [(r["run"], r["onnxruntime_fwd_images_per_s"]) for r in out["runs"] if "onnxruntime_fwd_images_per_s" in r]
    if onnx:
        lines += [
            "",
            "onnxruntime (1 thread) forward img/s on the ONNX (QCDQ) export: "
            + ", ".join(f"{k}: {v}" for k, v in onnx),
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
