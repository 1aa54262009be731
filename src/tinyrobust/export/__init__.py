"""Deployment: export to ONNX (QCDQ) / QONNX with self-verification, exported files as black-box
classifiers, and memory footprints. See docs/deployment.md."""

from .footprint import footprint_run, footprint_table, format_footprint, reference_footprints
from .onnx_export import (
    FORMATS,
    check_exportable,
    export_model,
    export_run,
    format_export,
    verify_export,
    weight_support,
)
from .onnx_model import OnnxClassifierModule, exported_model_accuracy, onnx_predict_fn

__all__ = [
    "FORMATS",
    "OnnxClassifierModule",
    "check_exportable",
    "export_model",
    "export_run",
    "exported_model_accuracy",
    "footprint_run",
    "footprint_table",
    "format_export",
    "format_footprint",
    "onnx_predict_fn",
    "reference_footprints",
    "verify_export",
    "weight_support",
]
