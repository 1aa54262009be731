"""Export a trained model through Brevitas and prove the file behaves like the PyTorch model.

Formats (docs/deployment.md has the full story):

- ``onnx``: standard ONNX in QCDQ form (Brevitas ``export_onnx_qcdq``): quantized weights are
  stored as int8 tensors followed by ``Clip`` (to the N-bit range) and ``DequantizeLinear``;
  quantized activations become ``QuantizeLinear -> Clip -> DequantizeLinear``. Any ONNX runtime
  (onnxruntime, MCU converters) runs it; float layers are plain ONNX. Batch size is dynamic.
- ``qonnx``: QONNX (Brevitas ``export_qonnx`` + ``qonnx`` cleanup) with the custom ``Quant`` /
  ``BipolarQuant`` ops that FINN and hls4ml read; arbitrary bit widths, including 1-bit bipolar.
  Batch size 1 (what FINN expects).

Both are exported with the TorchScript exporter (``dynamo=False``): on torch 2.13 + Brevitas
0.13.4 it is ~10x faster than the dynamo path and reproduces PyTorch's logits to ~1e-8, and
BatchNorm is kept as its own node (``TrainingMode.PRESERVE``) so the file is the trained model,
op for op; toolchains fold it themselves.

Verification runs the written file (onnxruntime for ``onnx``, qonnx's executor for ``qonnx``) on
a seeded stratified test subset and compares top-1 predictions and logits with PyTorch.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from ..errors import ExportError
from ..inference import batched_logits
from ..io_utils import atomic_write, atomic_write_json, check_writable, sha256_file
from ..paths import portable_path, portable_record
from ..quant.table import ACT_TABLE, WEIGHT_TABLE
from ..rundir import versions
from .onnx_model import INSTALL_EXPORT, detect_format, onnx_predict_fn, require

FORMATS = ("onnx", "qonnx")
DEFAULT_FILENAMES = {"onnx": "model.onnx", "qonnx": "model.qonnx.onnx"}
# what produced or ran the file, recorded in <out>.verify.json
EXPORT_PACKAGES = ("torch", "brevitas", "onnx", "onnxruntime", "onnxoptimizer", "qonnx", "numpy")
OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear need >= 13; widest toolchain support
MIN_AGREEMENT = 0.995
VERIFY_SUFFIX = ".verify.json"

# python modules each format needs to export (onnxscript is only needed by the dynamo exporter)
EXPORT_DEPS = {
    "onnx": ["onnx", "onnxoptimizer", "onnxruntime"],
    "qonnx": ["onnx", "onnxoptimizer", "onnxruntime", "qonnx"],
}

# How each quantizer appears in each format (None: cannot be expressed), from the quantizer table
# (quant/table.py: one row per quantizer). Checked by tests.
WEIGHT_SUPPORT: Dict[str, Dict[str, Optional[str]]] = {q.name: {f: q.support(f) for f in FORMATS} for q in WEIGHT_TABLE}
ACT_SUPPORT: Dict[str, Dict[str, Optional[str]]] = {q.name: {f: q.support(f) for f in FORMATS} for q in ACT_TABLE}
WHY_NOT = {(q.name, fmt): why for q in WEIGHT_TABLE for fmt, why in q.why_not.items()}


def weight_support(quant: str, fmt: str) -> Optional[str]:
    """How weight quantizer ``quant`` is expressed in ``fmt``; None if it cannot."""
    return WEIGHT_SUPPORT[quant][fmt]


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")


def check_exportable(model: torch.nn.Module, fmt: str) -> None:
    """Raise ExportError naming the first layer whose quantizer ``fmt`` cannot express."""
    _check_format(fmt)
    if getattr(model, "stochastic", False):
        raise ExportError("the model is random at inference; an exported file is deterministic and cannot match it")
    plan = getattr(model, "plan", None) or {}
    for layer, lp in plan.items():
        if weight_support(lp.weight, fmt) is None:
            raise ExportError(
                f"cannot export to {fmt}: layer {layer!r} uses the {lp.weight!r} weight quantizer; "
                f"{WHY_NOT.get((lp.weight, fmt), 'the format has no such type')}"
            )
    if fmt == "onnx":  # any model: a 1-bit weight quantizer outside the plan
        for name, m in model.named_modules():
            wq = getattr(m, "weight_quant", None)
            if wq is not None and getattr(wq, "is_quant_enabled", False) and float(wq.bit_width()) == 1.0:
                raise ExportError(
                    f"cannot export to onnx: layer {name!r} has 1-bit (binary) weights; {WHY_NOT[('binary', 'onnx')]}"
                )


def _export_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy in eval mode with no Brevitas export handler attached.

    Brevitas attaches a format-specific handler to each quant proxy and never replaces one that is
    set; a failed export leaves them behind, and a later export to the other format would reuse
    them (a QONNX export then fails in the QCDQ handler). The copy also keeps the caller's model
    out of export mode entirely."""
    m = copy.deepcopy(model).eval()
    for sub in m.modules():
        if hasattr(sub, "export_handler"):
            sub.export_handler = None
        if hasattr(sub, "export_mode"):
            sub.export_mode = False
    return m


def _add_metadata(path: str, fmt: str, input_shape: Sequence[int], extra: Dict[str, str]) -> None:
    import onnx

    proto = onnx.load(path)
    props = {
        "tinyrobust.format": fmt,
        "tinyrobust.input": f"float32 NCHW (N, {', '.join(map(str, input_shape))}), pixels in [0, 1]; "
        "the normalisation (x - mean) / std is inside the graph",
        "tinyrobust.output": "logits (no softmax)",
        **extra,
    }
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, str(v)
    onnx.save(proto, path)


def export_model(
    model: torch.nn.Module,
    path: str | Path,
    fmt: str,
    input_shape: Sequence[int],
    *,
    opset: int = OPSET,
    metadata: Optional[Dict[str, str]] = None,
) -> Path:
    """Export ``model`` (input float NCHW in [0, 1], output logits) to ``path`` (written atomically).

    The model itself is not modified (a deep copy is exported)."""
    _check_format(fmt)
    require(EXPORT_DEPS[fmt], f"export to {fmt}")
    check_exportable(model, fmt)
    with warnings.catch_warnings():  # brevitas.graph warns about an optional CUDA kernel package
        warnings.simplefilter("ignore")
        from brevitas.export import export_onnx_qcdq, export_qonnx

    m = _export_copy(model)
    dummy = torch.rand(1, *input_shape)
    kwargs: Dict[str, Any] = dict(
        input_names=["x"],
        output_names=["logits"],
        opset_version=opset,
        dynamo=False,
        keep_initializers_as_inputs=False,
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=True,
    )
    if fmt == "onnx":
        kwargs["dynamic_axes"] = {"x": {0: "batch"}, "logits": {0: "batch"}}

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "onnx":
                export_onnx_qcdq(m, dummy, export_path=tmp, **kwargs)
            else:
                from qonnx.core.modelwrapper import ModelWrapper
                from qonnx.util.cleanup import cleanup_model

                export_qonnx(m, dummy, export_path=tmp, **kwargs)
                # shape inference, constant folding (Quant ops kept), readable names: what FINN/hls4ml expect
                cleanup_model(ModelWrapper(tmp)).save(tmp)
        _add_metadata(tmp, fmt, input_shape, metadata or {})

    try:
        atomic_write(path, write)
    except ModuleNotFoundError as exc:
        pkg = (exc.name or "").split(".")[0]
        raise ExportError(f"export to {fmt} needs the package {pkg!r}: {INSTALL_EXPORT}") from exc
    except (AssertionError, RuntimeError, NotImplementedError) as exc:
        # Brevitas/torch.onnx refusing the model: say so in one line; the traceback stays chained
        raise ExportError(
            f"Brevitas could not export the model to {fmt}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    return Path(path)


def torch_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """PyTorch's logits on ``x`` as numpy, the reference the exported file is compared with."""
    return batched_logits(model, x, batch_size).numpy()


def _compare(ref: np.ndarray, out: np.ndarray) -> Dict[str, Any]:
    if out.shape != ref.shape:
        raise ExportError(f"the exported model returns shape {out.shape}, PyTorch {ref.shape}")
    agree = ref.argmax(1) == out.argmax(1)
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    return {
        "agreement": float(agree.mean()),
        "disagreements": int((~agree).sum()),
        "max_abs_logit_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_logit_diff": float(diff.mean()) if diff.size else 0.0,
    }


def verify_export(
    model: torch.nn.Module,
    path: str | Path,
    x: torch.Tensor,
    y: Optional[torch.Tensor] = None,
    fmt: Optional[str] = None,
) -> Dict[str, Any]:
    """Run the exported file and PyTorch on ``x``: top-1 agreement and logit differences.

    For ``onnx`` the headline numbers use onnxruntime with its default graph optimizations (as a
    deployment would run it); ``*_no_graph_opt`` repeats them with the optimizations off. QONNX
    runs in qonnx's reference executor."""
    if len(x) == 0:
        raise ExportError("no samples to verify the export on")
    if fmt is None:
        require(["onnx"], "verifying an exported model")
        import onnx

        fmt = detect_format(onnx.load(str(path), load_external_data=False))
    ref = torch_logits(model, x)
    xs = x.detach().cpu().numpy().astype(np.float32)
    out = onnx_predict_fn(path, fmt=fmt)(xs)
    result: Dict[str, Any] = {"n": int(len(x)), **_compare(ref, out)}
    result["runtime"] = (
        "qonnx.core.onnx_exec.execute_onnx" if fmt == "qonnx" else "onnxruntime (default graph optimizations)"
    )
    if fmt == "onnx":
        raw = _compare(ref, onnx_predict_fn(path, fmt="onnx", optimize=False)(xs))
        result.update({f"{k}_no_graph_opt": v for k, v in raw.items()})
    if y is not None:
        yy = y.detach().cpu().numpy() if hasattr(y, "detach") else np.asarray(y)
        result["torch_accuracy"] = float((ref.argmax(1) == yy).mean())
        result["exported_accuracy"] = float((out.argmax(1) == yy).mean())
    return result


def verify_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + VERIFY_SUFFIX)


def export_run(
    run_dir: str | Path,
    fmt: str = "onnx",
    out: str | Path | None = None,
    *,
    n: int = 1000,
    data_dir: Optional[str] = None,
    seed: int = 0,
    min_agreement: float = MIN_AGREEMENT,
    threads: Optional[int] = None,
) -> Dict[str, Any]:
    """Export a finished run, verify the file on ``n`` stratified test images, write it and
    ``<out>.verify.json``; raise ExportError (writing nothing) if top-1 agreement < ``min_agreement``."""
    from ..data import load_dataset, stratified_subset, to_tensors
    from ..runs import load_run

    _check_format(fmt)
    if n < 1:
        raise ExportError(f"--n must be at least 1, got {n}")
    require(EXPORT_DEPS[fmt], f"export to {fmt}")
    if threads is not None:
        torch.set_num_threads(threads)
    run = load_run(run_dir)
    out = Path(out) if out else run.run_dir / DEFAULT_FILENAMES[fmt]
    if out.is_dir():
        out = out / DEFAULT_FILENAMES[fmt]
    check_writable(out.parent)
    check_exportable(run.model, fmt)
    test = load_dataset(run.cfg.data.dataset, "test", data_dir or run.cfg.data.data_dir)
    n_used = min(n, len(test))
    idx = stratified_subset(test, n_used, seed=seed)
    x, y = to_tensors(test, idx)

    # export next to the target, verify, and only then move it into place
    staged = out.with_name(f".{out.name}.unverified")
    try:
        export_model(
            run.model,
            staged,
            fmt,
            run.dataset_info.input_shape,
            metadata={
                "tinyrobust.run": portable_path(run.run_dir),
                "tinyrobust.model": run.cfg.model.name,
                "tinyrobust.dataset": run.cfg.data.dataset,
                "tinyrobust.classes": ",".join(getattr(test, "classes", [])),
            },
        )
        result = verify_export(run.model, staged, x, y, fmt=fmt)
        if result["agreement"] < min_agreement:
            hint = ""
            if result.get("agreement_no_graph_opt", 0.0) >= min_agreement:
                hint = (
                    f"; with onnxruntime's graph optimizations off it is "
                    f"{100 * result['agreement_no_graph_opt']:.2f}%, so the runtime's op fusion changes "
                    "rounding at quantization boundaries"
                )
            raise ExportError(
                f"the exported {fmt} model disagrees with PyTorch: top-1 agreement "
                f"{100 * result['agreement']:.2f}% < {100 * min_agreement:.2f}% on {result['n']} test images "
                f"(largest logit difference {result['max_abs_logit_diff']:.3g}){hint}; {out} was not written"
            )
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)

    record = {
        "file": str(out),
        "sha256": sha256_file(out),
        "format": fmt,
        "opset": OPSET,
        "run": str(run.run_dir),
        "model": run.cfg.model.name,
        "dataset": run.cfg.data.dataset,
        "data_source": test.source,
        "subset": {"split": "test", "n": n_used, "requested": n, "seed": seed, "method": "stratified"},
        "min_agreement": min_agreement,
        "passed": True,
        **result,
        "versions": versions(EXPORT_PACKAGES),
    }
    # the record may be committed beside the run: no machine paths in it (paths.portable_record)
    record = portable_record(record, data_dir or run.cfg.data.data_dir)
    atomic_write_json(verify_path(out), record)
    return record


def format_export(r: Dict[str, Any]) -> str:
    lines = [
        f"exported {r['model']} ({r['run']}) to {r['format']}: {r['file']}",
        f"verified on {r['n']} stratified test images ({r['dataset']}, seed {r['subset']['seed']}) "
        f"with {r['runtime']}:",
        f"  top-1 agreement with PyTorch: {100 * r['agreement']:.2f}% ({r['disagreements']} differ; "
        f"required >= {100 * r['min_agreement']:.2f}%)",
        f"  largest |logit difference|:   {r['max_abs_logit_diff']:.3g} (mean {r['mean_abs_logit_diff']:.3g})",
    ]
    if "agreement_no_graph_opt" in r:
        lines.append(
            f"  without graph optimizations:  {100 * r['agreement_no_graph_opt']:.2f}% agreement, "
            f"largest difference {r['max_abs_logit_diff_no_graph_opt']:.3g}"
        )
    if "torch_accuracy" in r:
        lines.append(
            f"  accuracy on these images:     PyTorch {100 * r['torch_accuracy']:.2f}%, "
            f"exported {100 * r['exported_accuracy']:.2f}%"
        )
    lines.append(f"  record: {verify_path(r['file'])}")
    return "\n".join(lines)
