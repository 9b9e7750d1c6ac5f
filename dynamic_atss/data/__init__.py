"""Datasets (synthetic / COCO folders / Hugging Face), joint transforms and the collate function.

Every dataset returns `(image, target)`: image a float32 `tv_tensors.Image` (3, H, W) in [0, 1]; target
`{"boxes": tv_tensors.BoundingBoxes (G, 4) float32 XYXY (canvas_size=(H, W)), "labels": (G,) int64 in
[0, num_classes), "image_id": int}`; and exposes `class_names`, `num_classes`, `label_to_cat_id`,
`cat_id_to_label`, `image_ids`, `transforms` and `to_coco_dict()` (ground truth for the COCO evaluator).
"""

from __future__ import annotations

from typing import Any

from .coco import CocoDetection
from .hf import HFDetection
from .synthetic import SHAPE_CLASSES, SyntheticShapes
from .transforms import (
    DatasetError,
    DatasetFileNotFoundError,
    DatasetSplitError,
    DegenerateBoxWarning,
    ResizeShortestSide,
    SanitizeBoxes,
    build_transforms,
    collate_fn,
)

__all__ = [
    "CocoDetection",
    "DatasetError",
    "DatasetFileNotFoundError",
    "DatasetSplitError",
    "DegenerateBoxWarning",
    "HFDetection",
    "ResizeShortestSide",
    "SHAPE_CLASSES",
    "SanitizeBoxes",
    "SyntheticShapes",
    "build_dataset",
    "build_transforms",
    "collate_fn",
]

_KINDS = {"synthetic": SyntheticShapes, "coco": CocoDetection, "hf": HFDetection}


def build_dataset(kind: str, **kwargs: Any) -> SyntheticShapes | CocoDetection | HFDetection:
    """`build_dataset("synthetic", num_images=64)`, `build_dataset("coco", image_dir=..., ann_file=...)`,
    `build_dataset("hf", source=..., split="train")`: kwargs go to the dataset class."""
    try:
        cls = _KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {sorted(_KINDS)}") from None
    return cls(**kwargs)
