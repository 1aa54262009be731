"""What every benchmark records beside its numbers: the command as a user would type it and the machine."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Dict, List


def recorded_command(script: str) -> str:
    """``python benchmarks/<script> <args>`` with ``--work DIR`` left out (a scratch folder of this machine)."""
    args = sys.argv[1:]
    kept = [x for k, x in enumerate(args) if x != "--work" and (k == 0 or args[k - 1] != "--work")]
    return (f"python benchmarks/{script} " + " ".join(kept)).strip()


def machine(threads: int) -> Dict[str, Any]:
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": threads}


def sweep_recipe_config(name: str, weight: str, a, **train) -> Dict[str, Any]:
    """The qnn run of the JR sweep's recipe (4-bit activations, 8-bit first/last layers, SGD lr 0.05, cosine,
    half-epoch warm-up, weight decay 5e-4, batch 128, seed 0) on ``a.train_subset`` training images with
    ``a.val_size`` held out, for ``a.epochs`` epochs on ``a.threads`` threads; ``train`` adds train keys."""
    return {
        "name": name,
        "seed": 0,
        "data": {"dataset": "cifar10", "val_size": a.val_size, "val_seed": 0, "train_subset": a.train_subset},
        "model": {
            "name": "qnn",
            "quant": {"weight": weight, "act": "int4", "first_weight": "int8", "last_weight": "int8"},
        },
        "train": {
            "epochs": a.epochs,
            "batch_size": 128,
            "optimizer": "sgd",
            "lr": 0.05,
            "momentum": 0.9,
            "weight_decay": 0.0005,
            "schedule": "cosine",
            "warmup_epochs": 0.5,
            "threads": a.threads,
            **train,
        },
    }


def write_result(out: str, record: Dict[str, Any], md_lines: List[str]) -> None:
    """``<out>.json`` and ``<out>.md``, and the Markdown on stdout."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out + ".json").write_text(json.dumps(record, indent=2) + "\n")
    Path(out + ".md").write_text("\n".join(md_lines) + "\n")
    print("\n".join(md_lines))


def recipe_sentence(machine: Dict[str, Any], a) -> str:
    """The Markdown line saying where and how ``sweep_recipe_config`` runs were trained and scored."""
    return (
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs (shared with a running sweep), "
        f"{a.threads} thread(s). qnn, 4-bit activations, 8-bit first/last layers, {a.epochs} epochs of the "
        f"sweep's SGD recipe on {a.train_subset} training images, seed 0; accuracy on {a.val_size} validation "
        "images held out of the training split (test split not used), Wilson 95% interval."
    )
