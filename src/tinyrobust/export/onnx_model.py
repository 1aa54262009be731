"""An exported ONNX / QONNX file as a black-box classifier: numpy NCHW float32 in, logits out.

``onnx_predict_fn(path)`` is what black-box attacks wrap (ART's ``BlackBoxClassifier`` takes a
predict function) and what ``tinyrobust export`` uses to verify a file against PyTorch:

- standard ONNX (QCDQ: QuantizeLinear/Clip/DequantizeLinear) runs in onnxruntime;
- QONNX (custom ``Quant``/``BipolarQuant`` ops that onnxruntime does not know) runs in qonnx's
  reference executor (``qonnx.core.onnx_exec.execute_onnx``), which executes node by node; the
  graph's batch size is changed once to the chunk size and the last chunk is zero-padded.

Neither path computes gradients: attacks against an exported file are query-only.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from ..errors import ExportError

# python module -> the pip package that provides it
PIP_NAMES = {
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnxscript": "onnxscript",
    "onnxoptimizer": "onnxoptimizer",
    "qonnx": "qonnx",
}
QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general", "onnx.brevitas")
QONNX_OPS = {"Quant", "BipolarQuant", "Trunc", "FloatQuant", "MultiThreshold", "IntQuant"}
DEFAULT_BATCH = {"onnx": 256, "qonnx": 32}  # qonnx's executor keeps every intermediate tensor

PredictFn = Callable[[np.ndarray], np.ndarray]
INSTALL_EXPORT = "pip install 'tinyrobust[export]'"  # the extra that holds every package above


def require(modules: Iterable[str], purpose: str) -> None:
    """Import each optional dependency or raise ExportError naming the extra to install (``export``)."""
    missing = []
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(PIP_NAMES.get(mod, mod))
    if missing:
        raise ExportError(
            f"{purpose} needs the optional package{'s' if len(missing) > 1 else ''} {', '.join(missing)}: "
            f"{INSTALL_EXPORT}"
        )


def detect_format(model_proto) -> str:
    """``"qonnx"`` if the graph uses QONNX custom quantization ops, else ``"onnx"``."""
    for node in model_proto.graph.node:
        if node.domain in QONNX_DOMAINS or (node.op_type in QONNX_OPS and node.domain not in ("", "ai.onnx")):
            return "qonnx"
    return "onnx"


def _as_input(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 4:
        raise ValueError(f"expected a float32 NCHW batch, got an array of shape {x.shape}")
    return x


def _check_shape(x: np.ndarray, expected: tuple, path: Path) -> None:
    want = tuple(expected[1:])
    got = tuple(x.shape[1:])
    if len(want) != len(got) or any(isinstance(w, int) and w > 0 and w != g for w, g in zip(want, got)):
        raise ValueError(f"{path} expects input of shape (N, {', '.join(map(str, want))}), got {tuple(x.shape)}")


def _chunks(x: np.ndarray, size: int, pad: bool):
    """Yield (chunk, n_valid); with ``pad`` every chunk has exactly ``size`` rows (zero-padded)."""
    for i in range(0, len(x), size):
        part = x[i : i + size]
        n = len(part)
        if pad and n < size:
            part = np.concatenate([part, np.zeros((size - n, *part.shape[1:]), dtype=part.dtype)])
        yield part, n


def _ort_predict_fn(path: Path, batch_size: int, threads: Optional[int], optimize: bool) -> PredictFn:
    require(["onnxruntime"], "running an exported ONNX model")
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only
    if threads is None:
        threads = torch.get_num_threads()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from None
    inp = sess.get_inputs()[0]
    out_name = sess.get_outputs()[0].name
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    size = fixed or batch_size

    def predict(x) -> np.ndarray:
        x = _as_input(x)
        _check_shape(x, inp.shape, path)
        outs = [sess.run([out_name], {inp.name: c})[0][:n] for c, n in _chunks(x, size, pad=fixed is not None)]
        return np.concatenate(outs) if outs else np.zeros((0, *sess.get_outputs()[0].shape[1:]), np.float32)

    predict.session = sess  # type: ignore[attr-defined]
    return predict


def _qonnx_predict_fn(path: Path, batch_size: int) -> PredictFn:
    require(["onnx", "onnxruntime", "qonnx"], "running a QONNX model")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.infer_shapes import InferShapes

    model = ModelWrapper(str(path))
    model = model.transform(ChangeBatchSize(batch_size)).transform(InferShapes())
    in_name, out_name = model.graph.input[0].name, model.graph.output[0].name
    in_shape = tuple(model.get_tensor_shape(in_name))

    def predict(x) -> np.ndarray:
        x = _as_input(x)
        _check_shape(x, in_shape, path)
        outs = [execute_onnx(model, {in_name: c})[out_name][:n] for c, n in _chunks(x, batch_size, pad=True)]
        return np.concatenate(outs) if outs else np.zeros((0, *model.get_tensor_shape(out_name)[1:]), np.float32)

    return predict


def onnx_predict_fn(
    path: str | Path,
    *,
    batch_size: Optional[int] = None,
    threads: Optional[int] = None,
    optimize: bool = True,
    fmt: Optional[str] = None,
) -> PredictFn:
    """A function ``predict(x: float32 NCHW in [0, 1]) -> logits`` running the exported file.

    ``fmt`` (``"onnx"``/``"qonnx"``) is detected from the graph when omitted. ``optimize=False``
    turns onnxruntime's graph optimizations off (QONNX runs node by node either way)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"exported model {path} not found (make one with `tinyrobust export`)")
    if fmt is None:
        require(["onnx"], "reading an exported model")
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf decode errors have many types
            raise ExportError(f"{path} is not a valid ONNX file ({type(exc).__name__}: {exc})") from None
        fmt = detect_format(proto)
    if fmt not in DEFAULT_BATCH:
        raise ExportError(f"unknown format {fmt!r}; choose one of: {', '.join(DEFAULT_BATCH)}")
    bs = int(batch_size or DEFAULT_BATCH[fmt])
    if fmt == "qonnx":
        return _qonnx_predict_fn(path, bs)
    return _ort_predict_fn(path, bs, threads, optimize)


def exported_model_accuracy(path: str | Path, x, y, *, batch_size: Optional[int] = None) -> float:
    """Top-1 accuracy of the exported file on ``(x float32 NCHW, y int labels)``."""
    y = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y)
    if len(y) == 0:
        raise ValueError("no samples to evaluate")
    logits = onnx_predict_fn(path, batch_size=batch_size)(x)
    return float((logits.argmax(1) == y).mean())


class OnnxClassifierModule(torch.nn.Module):
    """The exported file as a ``torch.nn.Module`` (logits out, no gradients), for code that
    expects a module (e.g. ``attacks.target.Target``). Only query-based attacks can use it."""

    def __init__(self, path: str | Path, *, batch_size: Optional[int] = None, fmt: Optional[str] = None):
        super().__init__()
        self.path = Path(path)
        self._predict = onnx_predict_fn(self.path, batch_size=batch_size, fmt=fmt)

    def forward(self, x):
        if x.requires_grad:
            raise ExportError(f"{self.path} is an exported model: it gives no gradients (use a black-box attack)")
        return torch.from_numpy(self._predict(x)).to(x.device)
