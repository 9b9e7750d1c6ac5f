"""The contestants of `dynamic-atss benchmark speed`: our models (registered names with random weights, or saved
weights) and torchvision's FCOS / RetinaNet built as their users run them, with the knobs that make a run fair
(the same input size for all, the same classification prior)."""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

from ..errors import UserInputError

class BenchmarkInputError(UserInputError, ValueError):
    """Bad input of a benchmark (model, data, split, sizes): the message names it and the fix."""


__all__ = ["BenchmarkInputError", "PEERS", "QUICK_MODEL_KWARGS", "SUFFIXES", "build_ours", "build_peer", "set_cls_prior", "set_input_size",
           "split_spec"]

PEERS = ("fcos", "retinanet")
QUICK_MODEL_KWARGS: dict[str, Any] = {
    "backbone": "test_resnet", "fpn_channels": 32, "head.channels": 32, "head.num_groups": 8,
}  # fmt: skip


SUFFIXES = ("opt", "opt-bf16", "onnx", "bf16")  # all inference variants: their training step is their base model's


def split_spec(spec: str) -> tuple[str, set[str]]:
    """'r50+onnx' -> ('r50', {'onnx'})."""
    name, *options = spec.split("+")
    unknown = set(options) - set(SUFFIXES)
    if unknown or not name or len(options) > 1:
        raise BenchmarkInputError(f"--models {spec}: the suffixes are '+opt' / '+opt-bf16' (optimize_for_inference, float32 / "
                         f"bfloat16), '+onnx' (ONNX Runtime) or '+bf16' (bfloat16 autocast), one at a time; got {options}")
    return name, set(options)


def build_ours(name: str, num_classes: int = 80, overrides: dict[str, Any] | None = None) -> nn.Module:
    """Our model with random weights: a registered name (``r50``, ``dynamic_atss_r101_dcn``) with config
    overrides, or saved weights (``local-dir:/path``, ``hf-hub:org/name``, or a folder path)."""
    from ..factory import create  # noqa: PLC0415

    if name.startswith(("local-dir:", "hf-hub:")) or os.path.isdir(name):
        source = name if name.startswith(("local-dir:", "hf-hub:")) else f"local-dir:{name}"
        return create(source)
    return create(name, pretrained=False, num_classes=num_classes, **(overrides or {}))


def build_peer(kind: str, num_classes: int = 80, backbone: str = "resnet50", **kwargs: Any) -> nn.Module:
    """torchvision's FCOS / RetinaNet R-50 FPN configured as their users run them from ImageNet weights.

    ``fcos_resnet50_fpn(weights=None, weights_backbone=None, trainable_backbone_layers=3)`` would NOT give that
    model: without backbone weights torchvision switches to trainable ``BatchNorm2d`` and trains every layer
    (and warns that ``trainable_backbone_layers`` is ignored). With ImageNet weights its builders do exactly
    what this function does (``resnet50(norm_layer=FrozenBatchNorm2d)``, ``_resnet_fpn_extractor(backbone, 3,
    returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))``), here with random weights.
    ``kwargs`` go to ``FCOS`` / ``RetinaNet`` (``min_size``, ``max_size``, ...); ``score_thresh`` defaults to 0.05.
    """
    from torchvision.models import resnet  # noqa: PLC0415
    from torchvision.models.detection import FCOS, RetinaNet  # noqa: PLC0415
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor  # noqa: PLC0415
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7  # noqa: PLC0415
    from torchvision.ops.misc import FrozenBatchNorm2d  # noqa: PLC0415

    classes = {"fcos": FCOS, "retinanet": RetinaNet}
    if kind not in classes:
        raise ValueError(f"unknown peer {kind!r}; choose from {sorted(classes)}")
    if not backbone.startswith("resnet") or not hasattr(resnet, backbone):
        raise ValueError(f"peer backbone must be a torchvision ResNet (resnet18 ... resnet152), got {backbone!r}")
    trunk = getattr(resnet, backbone)(weights=None, norm_layer=FrozenBatchNorm2d)
    body = _resnet_fpn_extractor(trunk, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    kwargs.setdefault("score_thresh", 0.05)
    return classes[kind](body, num_classes, **kwargs)


def set_input_size(model: nn.Module, height: int, width: int) -> None:
    """min_size / max_size such that a height x width input is processed at its own size."""
    if hasattr(model, "transform"):  # torchvision
        model.transform.min_size = (min(height, width),)
        model.transform.max_size = max(height, width)
    else:
        model.config.min_size = min(height, width)
        model.config.max_size = max(height, width)


def set_cls_prior(model: nn.Module, prior: float) -> None:
    bias = -math.log((1 - prior) / prior)
    if hasattr(model, "head") and hasattr(model.head, "classification_head"):  # torchvision
        layer = model.head.classification_head.cls_logits
    else:
        layer = model.head.cls_logits
    with torch.no_grad():
        layer.bias.fill_(bias)


