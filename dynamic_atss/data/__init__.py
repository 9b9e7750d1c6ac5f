"""Datasets (synthetic / COCO folders / Hugging Face), joint transforms and the collate function.

Every dataset returns `(image, target)`: image a float32 `tv_tensors.Image` (3, H, W) in [0, 1]; target
`{"boxes": tv_tensors.BoundingBoxes (G, 4) float32 XYXY (canvas_size=(H, W)), "labels": (G,) int64 in
[0, num_classes), "image_id": int}`; and exposes `class_names`, `num_classes`, `label_to_cat_id`,
`cat_id_to_label`, `image_ids`, `transforms` and `to_coco_dict()` (ground truth for the COCO evaluator).

The names below load their module on first use: reading an image (`transforms.load_image`, what `predict` does)
imports neither pycocotools nor `datasets`, which only the COCO-folder and Hugging Face datasets need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .coco import CocoDetection
    from .hf import HFDetection
    from .synthetic import SyntheticShapes

# public name -> the module that defines it (imported on first access, PEP 562)
_HOMES = {
    "CocoDetection": "coco",
    "HFDetection": "hf",
    "SHAPE_CLASSES": "synthetic",
    "SyntheticShapes": "synthetic",
    **{name: "transforms" for name in ("DatasetError", "DatasetFileNotFoundError", "DatasetSplitError",
                                       "DegenerateBoxWarning", "ResizeShortestSide", "SanitizeBoxes",
                                       "build_transforms", "collate_fn")},
}

__all__ = sorted([*_HOMES, "build_dataset"])

_KINDS = {"synthetic": "SyntheticShapes", "coco": "CocoDetection", "hf": "HFDetection"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def build_dataset(kind: str, **kwargs: Any) -> SyntheticShapes | CocoDetection | HFDetection:
    """`build_dataset("synthetic", num_images=64)`, `build_dataset("coco", image_dir=..., ann_file=...)`,
    `build_dataset("hf", source=..., split="train")`: kwargs go to the dataset class."""
    try:
        cls = __getattr__(_KINDS[kind])
    except KeyError:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {sorted(_KINDS)}") from None
    return cls(**kwargs)
