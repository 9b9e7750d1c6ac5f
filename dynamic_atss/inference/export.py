"""Export: ONNX (dynamic batch and image size, optionally with NMS in the graph) and `torch.export`.

Both graphs take any batch size and any H, W that are multiples of ``size_divisible`` and at least twice the
largest stride (256 px for P7: `torch.export` specialises dimensions of size 1). Two graphs, for any head family (their outputs are named after the family's `head.output_names`):

- **raw** (`with_postprocess=False`): input ``images`` (B, 3, H, W), normalised and padded to a multiple of
  the model's ``size_divisible`` (what `DynamicATSS.preprocess` returns); outputs ``<name>_p<level>`` for every
  entry of `head.output_names` and every FPN level (e.g. ``cls_logits_p3`` ... ``quality_logits_p7``), each
  (B, k, H_l, W_l). This is `model.forward_raw`; `OnnxRuntimeDetector` wraps it with the model's own pre- and
  post-processing.
- **detections** (`with_postprocess=True`): inputs ``images`` (B, 3, H, W) in [0, 1] (already resized; any
  padding; H and W multiples of ``size_divisible``) and ``image_sizes`` (B, 2) int64 (height, width of each
  image inside the batch); the graph normalises, zeroes the padding as `preprocess` does, runs the network,
  decodes, runs class-wise NMS (torchvision's, exported as ONNX ``NonMaxSuppression``) and keeps each image's
  top ``max_detections``. Outputs ``boxes`` (D, 4) xyxy in the batch's pixels, ``scores`` (D,), ``labels``
  (D,) int64 and ``batch_index`` (D,) int64, grouped by image and sorted by score inside an image. The test
  thresholds (``model.config.test``) are baked in at export time.

ONNX export uses PyTorch's `torch.export`-based exporter (`torch.onnx.export(..., dynamo=True)`, needs
``onnxscript``: ``pip install "dynamic-atss[export]"``). DCN models export too: torchvision's `deform_conv2d`
becomes ONNX's ``DeformConv`` (opset >= 19; a translation registered here, PyTorch's exporter has none), which
ONNX Runtime runs on CPU (onnxruntime >= 1.20; tested with 1.32). Runtimes without ``DeformConv`` (e.g.
TensorRT, older onnxruntime) cannot run DCN graphs: export the models without DCN for those.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..detection.postprocess import select_detections
from ..errors import UserInputError
from ..ops.dcn import ModulatedDeformConv2d
from .runtime import OnnxRuntimeDetector, raw_output_names

__all__ = ["SUPPORTED_OPSETS", "DetectionGraph", "RawGraph", "UnsupportedOpsetError", "check_exportable", "check_opset", "export_onnx", "export_program", "raw_output_names"]

# ONNX opsets the export writes: torch's ONNX exporter implements its operators from opset 18 on (below, it
# exports 18 and tries a version conversion that may fail or keep 18), and ONNX defines opsets up to 23.
SUPPORTED_OPSETS = range(18, 24)


class UnsupportedOpsetError(UserInputError, ValueError):
    """An ONNX opset the exporter cannot write."""


class OpsetTooOldError(UserInputError, NotImplementedError):
    """The model holds an operator that the requested ONNX opset cannot express (DCN before opset 19)."""


def check_opset(opset: int) -> None:
    """Raise `UnsupportedOpsetError` for an opset outside `SUPPORTED_OPSETS` (the message lists them)."""
    if opset not in SUPPORTED_OPSETS:
        raise UnsupportedOpsetError(
            f"--opset {opset} is not supported: choose one of {list(SUPPORTED_OPSETS)} (DCN models need >= 19)"
        )


# An example input's side per 32 px of stride: big enough that every level has a few cells (P7 >= 2 x 2).
_EXAMPLE_SIDE = 256


def has_dcn(model: nn.Module) -> bool:
    return any(isinstance(m, ModulatedDeformConv2d) for m in model.modules())


def check_exportable(model: nn.Module, opset: int) -> None:
    """Raise a clear error, before tracing, for a model this opset cannot express (DCN needs opset >= 19)."""
    if has_dcn(model) and opset < 19:
        raise OpsetTooOldError(
            f"this model has deformable convolutions (DCN), which ONNX has only from opset 19 (DeformConv); got "
            f"opset {opset}. Export with opset >= 19, or pick a model without DCN (dynamic_atss_r50, _r101, "
            "_x101_32x8d, _x101_64x4d) for runtimes without DeformConv."
        )


def _deform_conv_translation() -> dict[Any, Any]:
    """torchvision::deform_conv2d -> ONNX DeformConv (same offset / mask layouts: ONNX took torchvision's)."""
    from onnxscript import opset19 as op  # noqa: PLC0415

    def deform_conv2d(input, weight, offset, mask, bias, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
                      dil_h: int, dil_w: int, n_weight_grps: int, n_offset_grps: int, use_mask: bool):
        if not use_mask:  # DCNv1: ONNX's mask defaults to ones
            return op.DeformConv(input, weight, offset, bias, dilations=[dil_h, dil_w], group=n_weight_grps,
                                 offset_group=n_offset_grps, pads=[pad_h, pad_w, pad_h, pad_w],
                                 strides=[stride_h, stride_w])
        return op.DeformConv(input, weight, offset, bias, mask, dilations=[dil_h, dil_w], group=n_weight_grps,
                             offset_group=n_offset_grps, pads=[pad_h, pad_w, pad_h, pad_w],
                             strides=[stride_h, stride_w])

    return {torch.ops.torchvision.deform_conv2d.default: deform_conv2d}


class RawGraph(nn.Module):
    """`model.forward_raw` with its per-level lists flattened into one tuple (the graph's outputs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return tuple(t for level_list in self.model.forward_raw(images) for t in level_list)


class DetectionGraph(nn.Module):
    """[0, 1] images (B, 3, H, W) + their sizes (B, 2) -> flat detections (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        model = self.model
        height, width = images.shape[-2:]
        inside = (torch.arange(height, device=images.device).view(1, -1, 1) < image_sizes[:, 0].view(-1, 1, 1)) & (
            torch.arange(width, device=images.device).view(1, 1, -1) < image_sizes[:, 1].view(-1, 1, 1)
        )
        batch = torch.where(inside.unsqueeze(1), model.normalize(images), 0.0)
        raw = model.forward_raw(batch)
        feature_sizes = [tuple(level.shape[-2:]) for level in raw[0]]
        # uncached: the generator's cache is keyed on concrete sizes (symbolic while exporting)
        anchors = model.head.prior_generator.level_anchors(feature_sizes, images.device)
        return select_detections(
            model.head, model.head.flatten(raw), anchors,
            list(model.config.anchors.strides), image_sizes, model.config.test,
        )


def _example_images(model: nn.Module, batch: int) -> Tensor:
    divisor = model.config.size_divisible
    side = max(_EXAMPLE_SIDE, 2 * max(model.config.anchors.strides))
    side = int(math.ceil(side / divisor) * divisor)
    generator = torch.Generator().manual_seed(0)
    param = next(model.parameters())
    return torch.rand(batch, 3, side, side + divisor, generator=generator).to(param.device, param.dtype)


def _dynamic_shapes(model: nn.Module, with_postprocess: bool) -> tuple[dict[int, Any], ...]:
    divisor = model.config.size_divisible
    batch = torch.export.Dim("batch", min=1, max=1024)
    # H = divisor * h: the exporter then knows every stride divides the input (no per-level rounding guards).
    # At least two cells on the coarsest level: torch.export specialises sizes of 1 (broadcasting).
    blocks = math.ceil(2 * max(model.config.anchors.strides) / divisor)
    height = divisor * torch.export.Dim("height_blocks", min=blocks, max=8192 // divisor)
    width = divisor * torch.export.Dim("width_blocks", min=blocks, max=8192 // divisor)
    image_dims = {0: batch, 2: height, 3: width}
    return (image_dims, {0: batch}) if with_postprocess else (image_dims,)


def export_program(model: nn.Module, example_input: Tensor | None = None, dynamic: bool = True
                   ) -> torch.export.ExportedProgram:
    """`torch.export.export` of `model.forward_raw` (any head family, DCN included), dynamic batch and size.

    The program returns the flat tuple of `RawGraph` (`raw_output_names(model)` order)."""
    model.eval()
    example = _example_images(model, 2) if example_input is None else example_input
    shapes = _dynamic_shapes(model, False) if dynamic else None
    with torch.no_grad():
        return torch.export.export(RawGraph(model).eval(), (example,), dynamic_shapes=shapes)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    with_postprocess: bool = False,
    opset: int = 19,
    dynamic: bool = True,
    check: bool = True,
) -> Path:
    """Export `model` to an ONNX file at `path` (see the module docstring for the two graphs); returns the path.

    `check` (when onnxruntime is installed): the raw graph is run by ONNX Runtime on another input size and
    compared with PyTorch (`RuntimeError` if they differ); a graph with post-processing is only loaded into an
    ONNX Runtime session (a random model's detections are mostly ties: the tests compare those).
    """
    try:
        import onnxscript  # noqa: F401, PLC0415
    except ImportError as error:
        raise ImportError(
            "ONNX export needs the onnx and onnxscript packages: pip install 'dynamic-atss[export]'"
        ) from error
    check_exportable(model, opset)  # DCN first: its message says what such a model needs
    check_opset(opset)
    model.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = _example_images(model, 2)
    if with_postprocess:
        graph: nn.Module = DetectionGraph(model).eval()
        args: tuple[Tensor, ...] = (images, torch.tensor([[images.shape[2], images.shape[3]]] * 2,
                                                         device=images.device))
        input_names = ["images", "image_sizes"]
        output_names = ["boxes", "scores", "labels", "batch_index"]
    else:
        graph = RawGraph(model).eval()
        args = (model.normalize(images),)
        input_names = ["images"]
        output_names = raw_output_names(model)
    with torch.no_grad():
        program = torch.onnx.export(
            graph, args, dynamo=True, opset_version=opset, input_names=input_names, output_names=output_names,
            dynamic_shapes=_dynamic_shapes(model, with_postprocess) if dynamic else None, verbose=False,
            custom_translation_table=_deform_conv_translation() if has_dcn(model) else None,
        )
    program.save(str(path))
    if check:
        _check_onnx(model, path, with_postprocess)
    return path


def _check_onnx(model: nn.Module, path: Path, with_postprocess: bool) -> None:
    try:
        import onnxruntime  # noqa: F401, PLC0415
    except ImportError:
        return
    runner = OnnxRuntimeDetector(path, model)
    divisor = model.config.size_divisible
    generator = torch.Generator().manual_seed(1)
    side = int(math.ceil(max(_EXAMPLE_SIDE, 2 * max(model.config.anchors.strides)) / divisor) * divisor)
    images = torch.rand(1, 3, side + 2 * divisor, side, generator=generator)
    if with_postprocess:
        return  # detections are compared by the tests (a random model's detections are mostly ties)
    with torch.no_grad():
        expected = RawGraph(model)((images - model.image_mean.cpu()) / model.image_std.cpu())
    got = runner.run_raw((images - model.image_mean.cpu()) / model.image_std.cpu())
    _assert_close(expected, [t for level in got for t in level], f"ONNX Runtime on {path}")


def _assert_close(expected: Sequence[Tensor], got: Sequence[Tensor], what: str, rtol: float = 1e-3) -> None:
    if len(expected) != len(got):
        raise RuntimeError(f"{what}: {len(got)} outputs, PyTorch gives {len(expected)}")
    for index, (a, b) in enumerate(zip(expected, got)):
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        if a.shape != b.shape:
            raise RuntimeError(f"{what}: output {index} has shape {tuple(b.shape)}, PyTorch gives {tuple(a.shape)}")
        error = float((a - b).abs().max() / a.abs().max().clamp(min=1e-6)) if a.numel() else 0.0
        if not error <= rtol:
            raise RuntimeError(f"{what}: output {index} differs from PyTorch by {error:.2e} relative (> {rtol:g})")


def onnx_runtime(model: nn.Module, path: str | os.PathLike[str] | None = None, threads: int | None = None
                 ) -> OnnxRuntimeDetector:
    """Export `model.forward_raw` to ONNX (to `path`, default a temporary file), check it against PyTorch and
    return the ONNX Runtime detector (see the module docstring)."""
    if path is None:
        directory = tempfile.mkdtemp(prefix="dynamic_atss_onnx_")
        path = Path(directory) / "model.onnx"
    export_onnx(model, path, with_postprocess=False)
    return OnnxRuntimeDetector(path, model, threads)
