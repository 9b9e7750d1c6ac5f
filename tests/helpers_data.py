"""Sample format checks and small synthetic settings shared by the data tests (synthetic, COCO, Hugging Face,
transforms)."""

from __future__ import annotations

import torch
from torchvision import tv_tensors


SMALL = dict(image_size=(96, 128), max_objects=4, min_object_size=10)


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(torch.Tensor)


def _check_sample(image, target, num_classes):
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
    assert image.ndim == 3 and image.shape[0] == 3
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    h, w = image.shape[-2:]
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes)
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and boxes.dtype == torch.float32
    assert tuple(boxes.canvas_size) == (h, w) and boxes.ndim == 2 and boxes.shape[1] == 4
    labels = target["labels"]
    assert labels.dtype == torch.int64 and labels.shape == (boxes.shape[0],)
    if len(labels):
        assert int(labels.min()) >= 0 and int(labels.max()) < num_classes
        b = _plain(boxes)
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (b[:, 0::2] >= 0).all() and (b[:, 0::2] <= w).all()
        assert (b[:, 1::2] >= 0).all() and (b[:, 1::2] <= h).all()
    assert isinstance(target["image_id"], int)
