"""Inference beyond the default eager path: `optimize_for_inference` (a fused, channels_last, optionally bfloat16
snapshot), ONNX / `torch.export` export and the ONNX Runtime runner."""

from .export import (
    DetectionGraph, RawGraph, check_exportable, export_onnx, export_program, has_dcn, onnx_runtime,
)
from .optimize import InferenceSnapshot, optimize_for_inference
from .runtime import OnnxRuntimeDetector, raw_output_names

__all__ = [
    "DetectionGraph", "InferenceSnapshot", "OnnxRuntimeDetector", "RawGraph", "check_exportable", "export_onnx",
    "export_program", "has_dcn", "onnx_runtime", "optimize_for_inference", "raw_output_names",
]
