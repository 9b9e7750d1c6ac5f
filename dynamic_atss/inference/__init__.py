"""Inference beyond eager PyTorch: ONNX / `torch.export` export and the ONNX Runtime runner."""

from .export import (
    DetectionGraph, RawGraph, check_exportable, export_onnx, export_program, has_dcn, onnx_runtime,
)
from .runtime import OnnxRuntimeDetector, raw_output_names

__all__ = [
    "DetectionGraph", "OnnxRuntimeDetector", "RawGraph", "check_exportable", "export_onnx", "export_program",
    "has_dcn", "onnx_runtime", "raw_output_names",
]
