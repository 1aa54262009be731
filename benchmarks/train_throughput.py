"""Training throughput (images/s) of the same model in float, QAT and QAT+JR.

Usage: python benchmarks/train_throughput.py [--model qnn] [--weight int4] [--act int4] [--threads 2]
       [--batch 128] [--steps 20] [--jr-fraction 0.25] [--out benchmarks/results/train_throughput.json]

QAT+JR is measured twice: the penalty on the whole batch (Hoffman et al., ``jr.batch_fraction`` 1)
and on a share of it in a side pass (``jr.batch_fraction`` = --jr-fraction, what our configs use).

Synthetic inputs (throughput does not depend on pixel values); median step time after warm-up,
the three configurations measured in interleaved blocks so background load hits them alike.
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
from tinyrobust.train.jacobian import training_forward
from tinyrobust.train.loop import environment


class Stepper:
    """One model + optimizer; ``step()`` runs one training step and returns its seconds."""

    def __init__(self, model, jr_weight: float, batch: int, jr_fraction: float = 1.0):
        self.model, self.jr, self.fraction = model.train(), jr_weight, jr_fraction
        # Brevitas activation quantizers spend their first 300 training batches collecting percentile
        # statistics (a costly kthvalue per batch) before the scale becomes a learned parameter: get
        # past that with cheap small-batch forwards, so the timing is of steady-state training.
        with torch.no_grad():
            for _ in range(310):
                model(torch.rand(2, 3, 32, 32))
        self.x, self.y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.times: list[float] = []

    def step(self) -> float:
        t0 = time.perf_counter()
        logits, pen, _ = training_forward(self.model, self.x, weight=self.jr, n_proj=1, batch_fraction=self.fraction)
        loss = F.cross_entropy(logits, self.y) + (pen if pen is not None else 0.0)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0


def measure(steppers: dict, steps: int, warmup: int, block: int = 3) -> dict:
    """Median step time per stepper, measured in interleaved blocks so that load from other
    processes affects every configuration alike."""
    for s in steppers.values():
        for _ in range(warmup):
            s.step()
    for _ in range(max(1, steps // block)):
        for s in steppers.values():
            s.times += [s.step() for _ in range(block)]
    return {k: statistics.median(s.times) for k, s in steppers.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qnn")
    ap.add_argument("--weight", default="int4")
    ap.add_argument("--act", default="int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--jr-fraction", type=float, default=0.25, help="jr.batch_fraction of the sub-batch row")
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    kw = dict(num_classes=10, input_shape=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
    q = QuantConfig(weight=a.weight, act=a.act, first_weight="int8", last_weight="int8")
    steppers = {}
    for label, quant, jr, frac in [
        ("float", QuantConfig(), 0.0, 1.0),
        ("qat", q, 0.0, 1.0),
        ("qat_jr1", q, 0.01, 1.0),
        ("qat_jr1_sub", q, 0.01, a.jr_fraction),
    ]:
        torch.manual_seed(0)
        steppers[label] = Stepper(build_model(a.model, quant=quant, **kw), jr, a.batch, frac)
    times = measure(steppers, a.steps, a.warmup)
    rows = {k: a.batch / t for k, t in times.items()}
    for label, v in rows.items():
        print(f"{label:8s} {v:8.1f} images/s", flush=True)
    ratio = rows["qat"] / rows["qat_jr1"]
    ratio_sub = rows["qat"] / rows["qat_jr1_sub"]
    print(
        f"QAT+JR step time / QAT step time = {ratio:.2f}x (whole batch), "
        f"{ratio_sub:.2f}x (batch_fraction {a.jr_fraction})"
    )
    result = {
        "command": "python benchmarks/train_throughput.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k != "out"),
        "model": a.model,
        "weight_quant": a.weight,
        "act_quant": a.act,
        "batch": a.batch,
        "images_per_s": rows,
        "jr_over_qat_time_ratio": ratio,
        "jr_fraction": a.jr_fraction,
        "jr_sub_batch_over_qat_time_ratio": ratio_sub,
        "machine": {**environment(a.threads, 0), "node": platform.node()},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
