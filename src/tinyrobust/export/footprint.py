"""Memory footprint of a model on a device: weights at their bit widths, activations at theirs.

Definitions (also printed with every table, and in docs/deployment.md):

- weight memory: what a device stores for the conv/dense layers: each weight at its quantizer's
  bit width (float = 32 bits), each bias as a 32-bit word, the 32-bit bias that a following
  BatchNorm folds into (for layers without a bias of their own; BN's scale folds into the weights
  or into the quantizer scale) and the 32-bit per-output-channel weight scales of quantized layers.
  ``weight_kb_bare`` is weights and own biases only (the headline before scales and folded biases
  were counted), shown beside it. Activation quantizers' scales (one per tensor) are not counted.
- activation memory of a layer: its output tensor at the bit width of the activation quantizer
  that follows it (float = 32 bits; the classifier's logits are 32-bit).
- peak activation: the largest single layer output (the lower bound of any schedule).
- double buffer: the largest sum of two consecutive tensors in layer order, input included (a
  layer reads one buffer while writing the other). A simple estimate: residual shortcuts, which
  keep a third tensor alive, are not modelled.
- KB = 1024 bytes.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..paths import portable_path

DEFINITIONS = {
    "weight_kb": "conv/dense weights at their bit width (float = 32), biases, BatchNorm folded into 32-bit "
    "biases, and 32-bit per-channel weight scales of quantized layers",
    "weight_kb_bare": "weights at their bit width and the layers' own biases only",
    "act_kb": "a layer's output tensor at the bit width of the activation quantizer that follows it "
    "(float = 32; logits 32)",
    "peak_act_kb": "largest single layer output",
    "double_buffer_kb": "largest sum of two consecutive tensors in layer order, input included "
    "(residual shortcuts not modelled)",
    "kb": "1 KB = 1024 bytes",
}

# reference models: (registry name, input shape, classes, what it is)
REFERENCES = [
    ("mlc_resnet8", (3, 32, 32), 10, "MLCommons Tiny ResNet-8 (image classification)"),
    ("mlc_dscnn", (1, 49, 10), 12, "MLCommons Tiny DS-CNN (keyword spotting)"),
]
REFERENCE_PRECISIONS = ("float", "int8")


def footprint_table(
    model: torch.nn.Module, input_shape: Sequence[int], *, input_bits: int = 8, name: Optional[str] = None
) -> Dict[str, Any]:
    """Per-layer and total memory of ``model`` (a ``TinyModel``) for one input of ``input_shape``.

    ``input_bits``: storage of the input tensor (8: uint8 pixels), used by the double-buffer estimate."""
    input_shape = tuple(int(s) for s in input_shape)
    rows = model.layer_table(input_shape)
    layers: List[Dict[str, Any]] = []
    for r in rows:
        layers.append(
            {
                "layer": r["layer"],
                "kind": r["kind"],
                "params": r["weights"] + r["biases"],
                "weight_quant": r["weight_quant"],
                "weight_bits": r["weight_bits"],
                "weight_kb": r["weight_bytes"] / 1024,
                "weight_kb_bare": r["weight_bytes_bare"] / 1024,
                "act_quant": r["act_quant"],
                "act_bits": r["act_bits"],
                "output_shape": r["output_shape"],
                "act_kb": r["act_bytes"] / 1024,
            }
        )
    input_kb = math.prod(input_shape) * input_bits / 8 / 1024
    tensors = [("input", input_kb)] + [(row["layer"], row["act_kb"]) for row in layers]
    pairs = [(a[1] + b[1], a[0], b[0]) for a, b in zip(tensors, tensors[1:])]
    db_kb, db_a, db_b = max(pairs) if pairs else (input_kb, "input", "input")
    peak = max(layers, key=lambda row: row["act_kb"]) if layers else None
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    bn_params = sum(p.numel() for m in bns for p in m.parameters(recurse=False))
    total = sum(p.numel() for p in model.parameters())
    layer_params = sum(row["params"] for row in layers)
    return {
        "model": name or type(model).__name__,
        "input_shape": list(input_shape),
        "input_bits": input_bits,
        "layers": layers,
        "parameters": total,
        "layer_parameters": layer_params,
        "bn_parameters": bn_params,
        "quantizer_parameters": total - layer_params - bn_params,  # learned scales (Brevitas)
        "weight_kb": sum(row["weight_kb"] for row in layers),
        "weight_kb_bare": sum(row["weight_kb_bare"] for row in layers),
        "bn_fold_kb": sum(r["bn_folded_biases"] for r in rows) * 4 / 1024,  # included in weight_kb
        "weight_scale_kb": sum(r["weight_scales"] for r in rows) * 4 / 1024,  # included in weight_kb
        "input_kb": input_kb,
        "peak_act_kb": peak["act_kb"] if peak else 0.0,
        "peak_act_layer": peak["layer"] if peak else None,
        "double_buffer_kb": db_kb,
        "double_buffer_pair": [db_a, db_b],
        "definitions": dict(DEFINITIONS),
    }


def reference_footprints(precisions: Sequence[str] = REFERENCE_PRECISIONS) -> List[Dict[str, Any]]:
    """Footprints of the MLCommons Tiny references in float and int8 (weights and activations).

    A reference that is not registered yields ``{"model", "precision", "skipped": why}``; it is
    included automatically once its model is registered."""
    from ..config import QuantConfig
    from ..models import MODELS, build_model

    out: List[Dict[str, Any]] = []
    for name, shape, classes, what in REFERENCES:
        for prec in precisions:
            if name not in MODELS:
                out.append(
                    {
                        "model": name,
                        "precision": prec,
                        "description": what,
                        "skipped": f"model {name!r} is not registered in this version",
                    }
                )
                continue
            torch.manual_seed(0)
            model = build_model(
                name,
                num_classes=classes,
                input_shape=shape,
                mean=(0.5,) * shape[0],
                std=(0.25,) * shape[0],
                quant=QuantConfig(weight=prec, act=prec),
            )
            fp = footprint_table(model, shape, input_bits=32 if prec == "float" else 8, name=name)
            fp.update(precision=prec, description=what)
            out.append(fp)
    return out


def _kb(v: float) -> str:
    return f"{v:.2f}"


def format_footprint(
    fp: Dict[str, Any], references: Optional[List[Dict[str, Any]]] = None, *, layers: bool = True
) -> str:
    """Text table of ``footprint_table`` output, optionally followed by the references."""
    lines = [
        f"memory footprint of {fp['model']} (input {'x'.join(map(str, fp['input_shape']))} "
        f"at {fp['input_bits']} bits = {_kb(fp['input_kb'])} KB)"
    ]
    if layers:
        lines += [
            "",
            f"{'layer':<20}{'kind':<14}{'params':>8}{'w-quant':>20}{'w-bits':>7}{'w-KB':>9}"
            f"{'a-bits':>7}{'output':>14}{'a-KB':>9}",
        ]
        for r in fp["layers"]:
            shape = "x".join(map(str, r["output_shape"]))
            lines.append(
                f"{r['layer']:<20}{r['kind']:<14}{r['params']:>8,}{r['weight_quant']:>20}"
                f"{r['weight_bits']:>7}{_kb(r['weight_kb']):>9}{r['act_bits']:>7}{shape:>14}"
                f"{_kb(r['act_kb']):>9}"
            )
    lines += [
        "",
        f"parameters:        {fp['parameters']:,} ({fp['layer_parameters']:,} conv/dense, "
        f"{fp['bn_parameters']:,} BatchNorm, {fp['quantizer_parameters']:,} quantizer scales)",
        f"weight memory:     {_kb(fp['weight_kb'])} KB  (of which per-channel weight scales "
        f"{_kb(fp['weight_scale_kb'])} KB, BatchNorm folded into biases {_kb(fp['bn_fold_kb'])} KB; "
        f"weights and biases alone {_kb(fp['weight_kb_bare'])} KB)",
        f"peak activation:   {_kb(fp['peak_act_kb'])} KB  (largest single layer output: {fp['peak_act_layer']})",
        f"double buffer:     {_kb(fp['double_buffer_kb'])} KB  (largest pair of consecutive tensors: "
        f"{' + '.join(fp['double_buffer_pair'])})",
        "",
        "definitions:",
        *(f"  {k:<17} {v}" for k, v in fp["definitions"].items()),
    ]
    if references is not None:
        lines += [
            "",
            "references (float: 32-bit weights/activations/input; int8: 8-bit):",
            f"{'model':<16}{'precision':>10}{'params':>10}{'weight KB':>11}{'peak act KB':>13}{'dbl-buf KB':>12}",
            f"{fp['model'] + ' (this)':<16}{'':>10}{fp['parameters']:>10,}{_kb(fp['weight_kb']):>11}"
            f"{_kb(fp['peak_act_kb']):>13}{_kb(fp['double_buffer_kb']):>12}",
        ]
        for r in references:
            if "skipped" in r:
                lines.append(f"{r['model']:<16}{r['precision']:>10}  skipped: {r['skipped']}")
            else:
                lines.append(
                    f"{r['model']:<16}{r['precision']:>10}{r['parameters']:>10,}{_kb(r['weight_kb']):>11}"
                    f"{_kb(r['peak_act_kb']):>13}{_kb(r['double_buffer_kb']):>12}"
                )
    return "\n".join(lines)


def footprint_run(run_dir, *, references: bool = True) -> Dict[str, Any]:
    """Footprint of a finished run (its model at its quantizers), plus the references."""
    from ..runs import load_run

    run = load_run(run_dir)
    # images are stored as uint8 pixels; other inputs (e.g. audio features) as 32-bit floats
    bits = 8 if getattr(run.dataset_info, "kind", "image") == "image" else 32
    fp = footprint_table(run.model, run.dataset_info.input_shape, input_bits=bits, name=run.cfg.model.name)
    fp["run"] = portable_path(run.run_dir)
    fp["dataset"] = run.cfg.data.dataset
    if references:
        fp["references"] = reference_footprints()
    return fp
