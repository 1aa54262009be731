"""Training throughput (images/s) of the same model in float, QAT and QAT+JR.

Usage: python benchmarks/train_throughput.py [--model qnn] [--weight int4] [--act int4] [--threads 2]
       [--batch 128] [--steps 20] [--out benchmarks/results/train_throughput.json]

Synthetic inputs (throughput does not depend on pixel values); median step time after warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tinyrobust.config import QuantConfig
from tinyrobust.models import build_model
from tinyrobust.train.jacobian import jacobian_penalty
from tinyrobust.train.loop import environment


def measure(model, jr_weight: float, n_proj: int, batch: int, steps: int, warmup: int) -> float:
    x = torch.rand(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        if jr_weight > 0:
            logits, pen, _ = jacobian_penalty(model, x, weight=jr_weight, n_proj=n_proj)
            loss = F.cross_entropy(logits, y) + pen
        else:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qnn")
    ap.add_argument("--weight", default="int4")
    ap.add_argument("--act", default="int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    kw = dict(num_classes=10, input_shape=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
    q = QuantConfig(weight=a.weight, act=a.act, first_weight="int8", last_weight="int8")
    rows = {}
    for label, quant, jr in [("float", QuantConfig(), 0.0), ("qat", q, 0.0), ("qat_jr1", q, 0.01)]:
        torch.manual_seed(0)
        rows[label] = measure(build_model(a.model, quant=quant, **kw), jr, 1, a.batch, a.steps, a.warmup)
        print(f"{label:8s} {rows[label]:8.1f} images/s", flush=True)
    ratio = rows["qat"] / rows["qat_jr1"]
    print(f"QAT+JR step time / QAT step time = {ratio:.2f}x")
    result = {
        "command": "python benchmarks/train_throughput.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k != "out"),
        "model": a.model, "weight_quant": a.weight, "act_quant": a.act, "batch": a.batch,
        "images_per_s": rows, "jr_over_qat_time_ratio": ratio,
        "machine": {**environment(a.threads, 0), "node": platform.node()},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
