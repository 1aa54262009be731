"""Where the frozen path's Square time goes, and whether any faithful path on this CPU is faster (issue 16).

Usage: OMP_NUM_THREADS=1 python benchmarks/square_profile.py [--run benchmarks/results/cifar10/runs/qnn_int4_jr]
       [--repeats 5] [--out benchmarks/results/square_profile.json]

One thread, CIFAR-10 test images, the settings of benchmarks/freeze_throughput.py (Square L-inf 8/255,
200 queries, 64 images). Measures:
- the batch sizes Square queries (one call per iteration on the still-robust images);
- the share of the frozen Square's time per operator (torch.profiler), so the convolutions' share is known;
- forward images/s at Square's typical batch and at 256 of: Brevitas eager, the frozen path, onnxruntime on
  the QCDQ export (1 thread), and the frozen path with oneDNN weights pre-packed once
  (``mkldnn_reorder_conv2d_weight``; the only conv change that keeps the logits bit-identical here);
- max |logit difference| of onnxruntime and of the pre-packed path against the frozen path.
Writes JSON and a Markdown table next to it.
"""

from __future__ import annotations

import argparse
import copy
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
import torch.nn as nn


class PrepackedConv(nn.Module):
    """A frozen conv whose weights are reordered into oneDNN's blocked layout once (forward only)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        w = conv.weight.detach()
        self.w = torch._C._nn.mkldnn_reorder_conv2d_weight(
            w.to_mkldnn(), self.padding, self.stride, self.dilation, self.groups
        )
        self.b = conv.bias.detach() if conv.bias is not None else None

    def forward(self, x):
        y = torch.mkldnn_convolution(
            x.to_mkldnn(), self.w, self.b, self.padding, self.stride, self.dilation, self.groups
        )
        return y.to_dense()


def prepacked(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model)
    for mod in list(m.modules()):
        for name, child in list(mod.named_children()):
            if type(child) is nn.Conv2d:
                setattr(mod, name, PrepackedConv(child))
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="benchmarks/results/cifar10/runs/qnn_int4_jr")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--note", default="", help="what else ran on the machine (recorded)")
    ap.add_argument("--out", default="benchmarks/results/square_profile.json")
    a = ap.parse_args()
    torch.set_num_threads(1)

    from tinyrobust.attacks.target import Target
    from tinyrobust.attacks.torch_attacks import SquareLinf
    from tinyrobust.data import load_dataset
    from tinyrobust.data.loader import to_tensors
    from tinyrobust.export.onnx_export import export_model
    from tinyrobust.export.onnx_model import OnnxClassifierModule
    from tinyrobust.models import freeze
    from tinyrobust.runs import load_run

    ds = load_dataset("cifar10", "test", a.data_dir)
    x, y = to_tensors(ds, np.arange(1000))
    x, y = x.float(), y.long()
    run = load_run(a.run)
    ref = run.model.eval()
    frz = freeze(ref)
    pk = prepacked(frz)
    tmp = tempfile.mkdtemp()
    ort_model = OnnxClassifierModule(
        export_model(ref, Path(tmp) / "m.onnx", "onnx", tuple(x.shape[1:])), batch_size=256
    )
    paths = {"brevitas": ref, "frozen": frz, "frozen_prepacked": pk, "onnxruntime": ort_model}

    calls = []
    hook = frz.register_forward_pre_hook(lambda mod, inp: calls.append(int(inp[0].shape[0])))

    def square(m):
        torch.manual_seed(0)
        t = Target(m, tuple(x.shape[1:]), 10, batch_size=256)
        return SquareLinf(t, 8 / 255, queries=200).generate(x[:64].numpy(), y[:64].numpy())

    square(frz)
    hook.remove()
    typical = int(np.median(calls))

    from torch.profiler import profile

    with profile() as prof:
        square(frz)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops)
    shares = {e.key: round(e.self_cpu_time_total / total, 4) for e in ops[:8]}

    with torch.no_grad():
        ref_logits = frz(x)
        diffs = {p: float((m(x) - ref_logits).abs().max()) for p, m in paths.items()}

    fwd = {p: {} for p in paths}
    sq = {p: [] for p in paths}
    for _ in range(a.repeats):
        for p, m in paths.items():
            for bs in (typical, 256):
                t0 = time.perf_counter()
                with torch.no_grad():
                    for i in range(0, 256, bs):
                        m(x[i : i + bs])
                fwd[p].setdefault(bs, []).append(256 / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            square(m)
            sq[p].append(time.perf_counter() - t0)
    res = {
        "command": "OMP_NUM_THREADS=1 python " + " ".join(shlex.quote(s) for s in [sys.argv[0], *sys.argv[1:]]),
        "machine": {"arch": platform.machine(), "nproc": os.cpu_count(), "torch": torch.__version__, "note": a.note},
        "run": Path(a.run).name,
        "square_calls": len(calls),
        "square_batch_median": typical,
        "square_batch_histogram": {str(k): int(v) for k, v in zip(*np.unique(calls, return_counts=True))},
        "frozen_square_op_shares": shares,
        "max_abs_logit_diff_vs_frozen": diffs,
        "forward_images_per_s_best": {p: {str(b): round(max(v), 1) for b, v in d.items()} for p, d in fwd.items()},
        "square_seconds_best": {p: round(min(v), 3) for p, v in sq.items()},
        "square_speedup_vs_brevitas": {p: round(min(sq["brevitas"]) / min(v), 2) for p, v in sq.items()},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        "# Square on the frozen path: where the time goes (issue 16)",
        "",
        f"Command: `{res['command']}`  ",
        f"Machine: {res['machine']['arch']}, {res['machine']['nproc']} cores, torch {res['machine']['torch']}, "
        f"1 thread. {a.note}",
        "",
        f"Run {res['run']}; Square L-inf 8/255, 200 queries, 64 images: {len(calls)} model calls, median batch "
        f"{typical} (the still-robust images). Frozen Square time by operator (self CPU): "
        + ", ".join(f"{k} {100 * v:.1f}%" for k, v in shares.items()),
        "",
        f"| path | max logit diff vs frozen | fwd img/s at batch {typical} | fwd img/s at batch 256 | Square s "
        "| Square x Brevitas |",
        "|---|---|---|---|---|---|",
    ]
    for p in paths:
        f = res["forward_images_per_s_best"][p]
        lines.append(
            f"| {p} | {diffs[p]:.1e} | {f[str(typical)]:.0f} | {f['256']:.0f} | {res['square_seconds_best'][p]:.3f} | "
            f"{res['square_speedup_vs_brevitas'][p]:.2f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
