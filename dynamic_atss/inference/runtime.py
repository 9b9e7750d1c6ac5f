"""The network in ONNX Runtime, pre- and post-processing from the PyTorch model (deployment where ONNX is the
contract, and a check of the exported graph).

    from dynamic_atss import create
    from dynamic_atss.inference import onnx_runtime

    model = create("r50", ...).eval()
    fast = onnx_runtime(model)          # exports forward_raw once (seconds), checks it against PyTorch
    detections = fast(images)           # same call and output as model(images)

ONNX Runtime fuses BatchNorm / activations into its convolutions and picks blocked (NCHWc) layouts; how it
compares with eager PyTorch and `optimize_for_inference` on a given CPU: `python -m dynamic_atss benchmark speed
--models r50 r50+opt r50+onnx` (README, "Predict, evaluate, benchmark").
The detections equal the eager model's up to float rounding of the network (tests: boxes within 1e-3 px
relative, same labels), because resizing, anchors, decoding and NMS are the model's own code.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["OnnxRuntimeDetector", "raw_output_names"]


def raw_output_names(model: nn.Module) -> list[str]:
    """``<name>_p<level>`` for each of `model.head.output_names` and each FPN level, in `forward_raw` order."""
    levels = [int(round(math.log2(s))) for s in model.config.anchors.strides]
    return [f"{name}_p{level}" for name in model.head.output_names for level in levels]


def _session(path: str | os.PathLike[str], threads: int | None):
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError as error:
        raise ImportError("the ONNX Runtime path needs onnxruntime: pip install 'dynamic-atss[export]'") from error
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeDetector:
    """An exported graph (`export_onnx`, raw or with post-processing) run by ONNX Runtime on CPU, called like
    the model: `detector(images)` -> per image `{"boxes", "scores", "labels"}` in that image's pixels.

    `model`: the PyTorch model the file was exported from (its resizing, padding, anchors and post-processing
    are used; its network is not run).
    """

    def __init__(self, path: str | os.PathLike[str], model: nn.Module, threads: int | None = None) -> None:
        self.path = Path(path)
        self.model = model.eval()
        self.session = _session(self.path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.with_postprocess = self.input_names == ["images", "image_sizes"]
        if not self.with_postprocess and self.output_names != raw_output_names(model):
            raise ValueError(
                f"{self.path}: outputs {self.output_names} are not those of this model's forward_raw "
                f"({raw_output_names(model)}); export it from this model with dynamic_atss.inference.export_onnx"
            )

    def run_raw(self, batch: Tensor) -> tuple[list[Tensor], ...]:
        """`model.forward_raw(batch)` in ONNX Runtime (batch: normalised, padded, (B, 3, H, W))."""
        if self.with_postprocess:
            raise ValueError(f"{self.path} was exported with post-processing; it has no raw outputs")
        outputs = self.session.run(None, {"images": batch.detach().cpu().float().numpy()})
        names = self.model.head.output_names
        per_name = len(outputs) // len(names)
        return tuple([torch.from_numpy(o) for o in outputs[i * per_name:(i + 1) * per_name]] for i in range(len(names)))

    def __call__(self, images: list[Tensor] | Tensor) -> list[dict[str, Tensor]]:
        model = self.model
        with torch.inference_mode():
            if not self.with_postprocess:
                batch, sizes, original_sizes = model.preprocess(images)
                return model.detections_from_raw(self.run_raw(batch), sizes.cpu(), original_sizes)
            return self._detect_in_graph(images)

    def _detect_in_graph(self, images: list[Tensor] | Tensor) -> list[dict[str, Tensor]]:
        model = self.model
        batch, sizes, original = model.preprocess(images, normalize=False)  # the graph normalises
        batch, sizes = batch.detach().float().cpu(), sizes.numpy()
        boxes, scores, labels, batch_index = (
            torch.from_numpy(o) for o in self.session.run(None, {"images": batch.numpy(), "image_sizes": sizes})
        )
        detections = []
        for index, ((height, width), (orig_h, orig_w)) in enumerate(zip(sizes.tolist(), original)):
            mine = batch_index == index
            ratio = torch.tensor([orig_w / width, orig_h / height, orig_w / width, orig_h / height])
            detections.append({"boxes": boxes[mine] * ratio, "scores": scores[mine], "labels": labels[mine]})
        return detections
