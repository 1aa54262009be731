"""``tinyrobust eval``: clean accuracy and size of a finished run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .inference import batched_accuracy
from .io_utils import atomic_write_json
from .paths import portable_record
from .runs import load_run


def eval_run(run_dir: str | Path, data_dir: Optional[str] = None, threads: int = 2) -> Dict[str, Any]:
    from .data import load_dataset
    from .data.loader import to_tensors
    from .train.loop import model_summary

    torch.set_num_threads(threads)
    run = load_run(run_dir)
    test = load_dataset(run.cfg.data.dataset, "test", data_dir or run.cfg.data.data_dir)
    x, y = to_tensors(test)
    result = {
        "run": str(run.run_dir),
        "model": run.cfg.model.name,
        "dataset": run.cfg.data.dataset,
        "data_source": test.source,
        "test_examples": len(y),
        "clean_accuracy": batched_accuracy(run.model, x, y),
        **model_summary(run.model, run.dataset_info),
    }
    result = portable_record(result, data_dir or run.cfg.data.data_dir)  # eval.json may be committed
    atomic_write_json(Path(run_dir) / "eval.json", result)
    return result


def format_eval(r: Dict[str, Any]) -> str:
    lines = [
        f"run:            {r['run']}",
        f"model:          {r['model']} on {r['dataset']} ({r['data_source']})",
        f"clean accuracy: {100 * r['clean_accuracy']:.2f}% on {r['test_examples']} test images",
        f"parameters:     {r['parameters']:,} ({r['layer_parameters']:,} in conv/dense layers)",
        f"weight memory:  {r['weight_kb']:.1f} KB",
        "",
        f"{'layer':<22}{'kind':<14}{'params':>9}{'w-quant':>20}{'bits':>6}{'KB':>9}",
    ]
    for row in r["layers"]:
        lines.append(
            f"{row['layer']:<22}{row['kind']:<14}{row['weights'] + row['biases']:>9,}"
            f"{row['weight_quant']:>20}{row['weight_bits']:>6}{row['weight_bytes'] / 1024:>9.2f}"
        )
    return "\n".join(lines)
