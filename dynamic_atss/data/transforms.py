"""Joint (image, target) transforms built on `torchvision.transforms.v2` and `tv_tensors.BoundingBoxes`.

Also holds the helpers every dataset adapter shares, so that they all apply the same box policy:

* boxes partly outside the image are clipped to it,
* boxes whose width or height is `<= min_box_size` after clipping (including non-finite ones and boxes
  lying wholly outside the image) are dropped, and the dataset reports them in ONE summary
  `DegenerateBoxWarning` naming an example,
* images leave the dataset as float32 in [0, 1] (`finalize_image`).

The model resizes images itself (min_size / max_size in its config), so the resize here is an optional
pre-resize, e.g. to make data loading cheaper or to do multi-scale training outside the model.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..errors import UserInputError

__all__ = [
    "DegenerateBoxWarning",
    "ResizeShortestSide",
    "SanitizeBoxes",
    "build_transforms",
    "clip_and_filter_boxes",
    "finalize_image",
    "make_target",
    "displayed_size",
    "load_image",
    "pil_to_image",
]


try:  # public since torchvision 0.17
    _query_size = v2.query_size
except AttributeError:  # pragma: no cover
    from torchvision.transforms.v2._utils import query_size as _query_size


class DatasetError(UserInputError, ValueError):
    """The dataset's files or annotations cannot be used as given; the message names the file, row or id."""


class DatasetFileNotFoundError(UserInputError, FileNotFoundError):
    """An annotation file, image file or dataset path that does not exist."""


class DatasetSplitError(UserInputError, KeyError):
    """A split the dataset does not have; the message lists the available ones."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""


class DegenerateBoxWarning(UserWarning):
    """Boxes were dropped because they are empty / non-finite / outside the image (after clipping)."""


# --------------------------------------------------------------------------------------------------
# Shared helpers for the dataset adapters
# --------------------------------------------------------------------------------------------------


def clip_and_filter_boxes(
    boxes_xyxy: np.ndarray, height: int, width: int, min_box_size: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """Clip (N, 4) XYXY boxes to the image and flag the usable ones.

    Returns `(clipped float32 (N, 4), keep bool (N,))`; a box is kept when all its coordinates are
    finite and both its width and height are `> min_box_size` after clipping.
    """
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    finite = np.isfinite(b).all(axis=1)
    b = np.where(np.isfinite(b), b, 0.0)
    b[:, 0::2] = b[:, 0::2].clip(0.0, float(width))
    b[:, 1::2] = b[:, 1::2].clip(0.0, float(height))
    keep = finite & ((b[:, 2] - b[:, 0]) > min_box_size) & ((b[:, 3] - b[:, 1]) > min_box_size)
    return b.astype(np.float32), keep


def xywh_to_xyxy(boxes_xywh: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4).copy()
    b[:, 2] += b[:, 0]
    b[:, 3] += b[:, 1]
    return b


def warn_dropped(num_dropped: int, total: int, source: str, example: str, reasons: str) -> None:
    """The single summary warning the adapters emit for dropped boxes."""
    warnings.warn(
        f"{source}: dropped {num_dropped} of {total} boxes ({reasons}); e.g. {example}",
        DegenerateBoxWarning,
        stacklevel=3,
    )


# EXIF orientations 5-8 store the picture rotated by 90 degrees: viewers show it with width and height swapped.
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112


def displayed_size(img: PIL.Image.Image) -> tuple[int, int]:
    """(width, height) of `img` as image viewers show it: its EXIF orientation applied (read from the header only,
    nothing decoded)."""
    width, height = img.size
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):  # an unreadable EXIF block: the stored frame
        orientation = 1
    return (height, width) if orientation in _TRANSPOSED_ORIENTATIONS else (width, height)


def pil_to_image(img: PIL.Image.Image) -> tv_tensors.Image:
    """PIL image (any mode) -> uint8 `tv_tensors.Image` (3, H, W), in the frame viewers show.

    The EXIF orientation is applied (`PIL.ImageOps.exif_transpose`, as ultralytics and transformers' `load_image`
    do): a phone photo stored 160x96 with orientation 6 becomes the 96x160 picture everyone sees, and boxes and
    COCO annotations are in that frame. 16-bit greyscale (`I;16*`, e.g. 16-bit PNGs) is scaled from 0..65535 to
    0..255: PIL's own conversion clips the values at 255 instead, which turns almost every pixel white."""
    img = PIL.ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16"):
        grey = np.asarray(img).astype(np.uint32)
        grey = ((grey * 255 + 32767) // 65535).astype(np.uint8)  # rounded, 65535 -> 255
        return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(grey)).expand(3, -1, -1).clone())
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    return tv_tensors.Image(torch.from_numpy(arr.copy()).permute(2, 0, 1))


def load_image(path: str, what: str) -> tv_tensors.Image:
    """Read an image file as uint8 RGB (3, H, W) in the frame viewers show (EXIF orientation applied); errors name
    `path` and `what` (e.g. "image id 7")."""
    if not os.path.isfile(path):
        raise DatasetFileNotFoundError(f"image file not found for {what}: {path}")
    try:
        with PIL.Image.open(path) as img:
            img.load()
            return pil_to_image(img)
    except (OSError, SyntaxError, ValueError, PIL.UnidentifiedImageError) as e:
        raise DatasetError(f"cannot read image file for {what}: {path} ({type(e).__name__}: {e})") from e


def finalize_image(image: Any) -> torch.Tensor:
    """Whatever the transforms returned -> float32 (3, H, W) in [0, 1], a `tv_tensors.Image`."""
    if isinstance(image, PIL.Image.Image):
        image = pil_to_image(image)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"transforms must return a tensor or PIL image, got {type(image).__name__}")
    if image.dtype == torch.uint8 and image.device.type == "cpu":
        # numpy: same values as F.to_dtype(scale=True), without torch's intra-op threading overhead
        # (which dominates for one small image on a busy machine).
        arr = image.as_subclass(torch.Tensor).numpy().astype(np.float32, order="C")
        arr *= np.float32(1.0 / 255.0)
        image = torch.from_numpy(arr)
    elif image.dtype != torch.float32:
        image = F.to_dtype(image, torch.float32, scale=True)
    if not isinstance(image, tv_tensors.Image):
        image = tv_tensors.Image(image)
    return image


def make_target(boxes_xyxy: np.ndarray | torch.Tensor, labels: Any, image_id: int, height: int, width: int) -> dict:
    boxes = torch.as_tensor(np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4))
    return {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(int(height), int(width))),
        "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
        "image_id": int(image_id),
    }


def apply_transforms(transforms: Any, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """Apply optional joint transforms, then guarantee the common sample format."""
    if transforms is not None:
        image, target = transforms(image, target)
    return finalize_image(image), target


# --------------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------------


def _choose_size(h: int, w: int, short: int, max_size: int | None) -> tuple[int, int]:
    scale = short / min(h, w)
    if max_size is not None and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


class ResizeShortestSide(v2.Transform):
    """Resize so that the shorter side is `min_size` (or one drawn uniformly from a tuple of choices),
    capping the longer side at `max_size`; the aspect ratio is kept (up to rounding to whole pixels).

    Boxes are scaled by `new_w / w` along x and `new_h / h` along y.
    """

    def __init__(
        self,
        min_size: int | Sequence[int],
        max_size: int | None = 1333,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        sizes = (min_size,) if isinstance(min_size, int) else tuple(int(s) for s in min_size)
        if not sizes or any(s <= 0 for s in sizes):
            raise ValueError(f"min_size must be a positive int or a non-empty tuple of them, got {min_size!r}")
        if max_size is not None and max_size < max(sizes):
            raise ValueError(f"max_size={max_size} is smaller than min_size={min_size!r}")
        self.min_size = sizes
        self.max_size = max_size
        self.antialias = antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _query_size(flat_inputs)
        idx = int(torch.randint(len(self.min_size), ()).item()) if len(self.min_size) > 1 else 0
        return {"size": _choose_size(h, w, self.min_size[idx], self.max_size)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, size=list(params["size"]), antialias=self.antialias)

    # torchvision < 0.21 calls these names
    _get_params = make_params
    _transform = transform

    def extra_repr(self) -> str:
        return f"min_size={self.min_size}, max_size={self.max_size}"


class SanitizeBoxes(v2.Transform):
    """Clip boxes to the canvas and drop those whose width or height is `<= min_size`, together with
    every other per-box tensor of the same target dict (labels, area, iscrowd, ...).

    Unlike `v2.SanitizeBoundingBoxes` (which requires `min_size >= 1` and drops boxes that stick out of
    the image instead of clipping them), this applies exactly the policy of the dataset adapters. Drops
    here come from augmentation, not from bad data; with `warn=True` the first drop of this instance is
    reported once (a `DegenerateBoxWarning`) and later ones are silent.
    """

    def __init__(self, min_size: float = 1e-3, warn: bool = True) -> None:
        super().__init__()
        self.min_size = float(min_size)
        self.warn = warn
        self._warned = False

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        return self._walk(sample)

    def _walk(self, node: Any) -> Any:
        if isinstance(node, tv_tensors.BoundingBoxes):
            out, _ = self._sanitize(node)
            return out
        if isinstance(node, dict):
            box_keys = [k for k, v in node.items() if isinstance(v, tv_tensors.BoundingBoxes)]
            if not box_keys:
                return {k: self._walk(v) for k, v in node.items()}
            out = dict(node)
            for key in box_keys:
                boxes, keep = self._sanitize(node[key])
                out[key] = boxes
                n = node[key].shape[0]
                for k, v in node.items():
                    if k in box_keys or not isinstance(v, torch.Tensor) or isinstance(v, tv_tensors.Image):
                        continue
                    if v.ndim >= 1 and v.shape[0] == n:
                        out[k] = v[keep]
            return out
        if isinstance(node, (tuple, list)):
            return type(node)(self._walk(v) for v in node)
        return node

    def _sanitize(self, boxes: tv_tensors.BoundingBoxes) -> tuple[tv_tensors.BoundingBoxes, torch.Tensor]:
        xyxy = F.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
        h, w = boxes.canvas_size
        data = xyxy.as_subclass(torch.Tensor)
        finite = torch.isfinite(data).all(dim=-1)
        data = torch.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
        x = data[..., 0::2].clamp(0, w)
        y = data[..., 1::2].clamp(0, h)
        clipped = torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)
        keep = finite & (clipped[..., 2] - clipped[..., 0] > self.min_size) & (
            clipped[..., 3] - clipped[..., 1] > self.min_size
        )
        if self.warn and not self._warned and not bool(keep.all()):
            self._warned = True
            warnings.warn(
                f"SanitizeBoxes: dropped {int((~keep).sum())} of {keep.numel()} boxes that became empty "
                f"(width or height <= {self.min_size}) after the transforms; further drops by this "
                "transform are not reported",
                DegenerateBoxWarning,
                stacklevel=2,
            )
        out = tv_tensors.wrap(clipped[keep], like=xyxy)
        if boxes.format != tv_tensors.BoundingBoxFormat.XYXY:
            out = F.convert_bounding_box_format(out, new_format=boxes.format)
        return out, keep

    def extra_repr(self) -> str:
        return f"min_size={self.min_size}"


def build_transforms(
    train: bool,
    min_size: int | tuple[int, ...] | None = None,
    max_size: int = 1333,
    flip_prob: float = 0.5,
    photometric: bool = False,
    min_box_size: float = 1e-3,
) -> v2.Compose:
    """Joint (image, target) transforms for the datasets of this package.

    * `min_size`: optional resize of the shorter side (an int, or a tuple of choices drawn uniformly per
      image in train mode; in eval mode the LAST choice is used, as torchvision's detection transform
      does), longer side capped at `max_size`. `None`: no resize (the model resizes anyway).
    * train mode: horizontal flip with `flip_prob`; `photometric=True` adds a mild colour jitter.
    * always: `ToDtype(float32, scale=True)` then `SanitizeBoxes(min_box_size)`.
    """
    ops: list[Any] = []
    if min_size is not None:
        if not train and not isinstance(min_size, int):
            min_size = tuple(min_size)[-1]
        ops.append(ResizeShortestSide(min_size, max_size))
    if train:
        if flip_prob > 0:
            ops.append(v2.RandomHorizontalFlip(p=flip_prob))
        if photometric:
            ops.append(v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.02))
    ops.append(v2.ToDtype(torch.float32, scale=True))
    ops.append(SanitizeBoxes(min_box_size))
    return v2.Compose(ops)


def collate_fn(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """(image, target) samples -> (list of images, list of targets); sizes may differ (the model pads)."""
    images = [sample[0] for sample in batch]
    targets = [sample[1] for sample in batch]
    return images, targets
