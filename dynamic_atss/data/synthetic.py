"""`SyntheticShapes`: the embedded default detection dataset (nothing to download).

Each image is a smooth random background with clutter (lines, irregular faint blobs, pixel noise) and
1..`max_objects` filled shapes of 6 classes that differ by SHAPE (colours are random and independent of
the class): circle, square, triangle, ring, cross, star. Shapes are rotated / stretched a little, sizes
are log-uniform from `min_object_size` (12 px) to `max_object_frac` (60 %) of the shorter image side,
objects may overlap (each keeps >= `min_visible` of its pixels) and may be cut by the image border.

Boxes are EXACT: the tight box of each object's visible pixels (pixel-edge convention, so integer
coordinates, x2 = last column + 1). Sample `i` is a pure function of `(seed, split, i)`: identical across
processes and runs, and the train / val splits differ.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch
from torchvision import tv_tensors

from .transforms import apply_transforms, make_target

__all__ = ["SyntheticShapes", "SHAPE_CLASSES"]

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "ring", "cross", "star")

SizeSpec = Any  # int | (H, W) | ((h_min, h_max), (w_min, w_max)), each side an int or an inclusive range


@dataclass
class _Object:
    label: int
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 (pixel edges)
    area: int  # visible pixels


def _parse_size(image_size: SizeSpec) -> tuple[tuple[int, int], tuple[int, int]]:
    def side(v: Any) -> tuple[int, int]:
        if isinstance(v, (int, np.integer)):
            lo = hi = int(v)
        else:
            lo, hi = (int(x) for x in v)
        if not 16 <= lo <= hi:
            raise ValueError(
                f"image_size: each side must be an int >= 16 or a range (lo, hi) with 16 <= lo <= hi, got {v!r}"
            )
        return lo, hi

    if isinstance(image_size, (int, np.integer)):
        s = side(image_size)
        return s, s
    if isinstance(image_size, Sequence) and len(image_size) == 2:
        return side(image_size[0]), side(image_size[1])
    raise ValueError(f"image_size must be an int, (H, W), or ((h_min, h_max), (w_min, w_max)); got {image_size!r}")


def _noise_tile(size: int) -> np.ndarray:
    """A fixed (size, size, 3) int16 fine-grain noise tile shared by every image (cropped at random offsets)."""
    rng = np.random.default_rng(0x5EED)
    return rng.integers(-10, 11, size=(size, size, 3), dtype=np.int16)


class SyntheticShapes(torch.utils.data.Dataset):
    """Seeded synthetic shapes detection dataset; see the module docstring.

    Args:
        num_images: dataset length.
        image_size: `int` (square), `(H, W)`, or per-side inclusive ranges `((h_min, h_max), (w_min, w_max))`
            (a side may also mix: `(320, (256, 384))`); a ranged side is drawn per image.
        seed, split: sample `i` depends only on `(seed, split, i)`; "train" and "val" differ.
        max_objects / min_objects: number of objects drawn per image (uniform in the range). Placement can
            fail under heavy overlap, so an image may hold fewer than drawn, but always at least one when
            `min_objects >= 1`.
        min_object_size: smallest object extent in px; max_object_frac: largest, as a fraction of the
            shorter image side.
        min_visible: an object never gets occluded (or cut by the border) below this fraction of its pixels.
        clutter: draw distractor lines / blobs and pixel noise.
        transforms: optional joint (image, target) transforms (torchvision.transforms.v2 style).

    Labels are contiguous `0..5`; `label_to_cat_id` maps them to the deliberately non-contiguous COCO
    category ids `1, 3, 5, ...` used by `to_coco_dict` / `write_coco`. Image ids are `index + 1`.
    """

    def __init__(
        self,
        num_images: int,
        image_size: SizeSpec = (320, 320),
        seed: int = 0,
        split: str = "train",
        max_objects: int = 8,
        min_objects: int = 1,
        min_object_size: float = 12.0,
        max_object_frac: float = 0.6,
        min_visible: float = 0.6,
        clutter: bool = True,
        transforms: Any = None,
    ) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if not 0 <= min_objects <= max_objects:
            raise ValueError(f"need 0 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
        self.num_images = int(num_images)
        self.image_size = image_size
        self._size_range = _parse_size(image_size)
        min_side = min(self._size_range[0][0], self._size_range[1][0])
        if not 4 <= min_object_size <= max_object_frac * min_side:
            raise ValueError(
                f"min_object_size={min_object_size} must be in [4, max_object_frac * shorter side = "
                f"{max_object_frac * min_side:g}]"
            )
        self.seed = int(seed)
        self.split = str(split)
        self.max_objects = int(max_objects)
        self.min_objects = int(min_objects)
        self.min_object_size = float(min_object_size)
        self.max_object_frac = float(max_object_frac)
        self.min_visible = float(min_visible)
        self.clutter = bool(clutter)
        self.transforms = transforms

        self.class_names: list[str] = list(SHAPE_CLASSES)
        self.num_classes = len(self.class_names)
        self.label_to_cat_id: list[int] = [2 * k + 1 for k in range(self.num_classes)]
        self.cat_id_to_label: dict[int, int] = {c: k for k, c in enumerate(self.label_to_cat_id)}
        self.image_ids: list[int] = [i + 1 for i in range(self.num_images)]
        self._split_code = zlib.crc32(self.split.encode("utf-8"))
        max_h, max_w = self._size_range[0][1], self._size_range[1][1]
        self._noise = _noise_tile(max(max_h, max_w) + 64) if self.clutter else None

    # ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return (
            f"SyntheticShapes(num_images={self.num_images}, image_size={self.image_size!r}, seed={self.seed}, "
            f"split={self.split!r}, classes={self.class_names})"
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, target = self.get_raw(index)
        return apply_transforms(self.transforms, image, target)

    def get_raw(self, index: int) -> tuple[tv_tensors.Image, dict]:
        """The sample before `transforms`, image as uint8 (3, H, W)."""
        arr, objects = self.render(index)
        h, w = arr.shape[:2]
        boxes = np.array([o.box for o in objects], dtype=np.float32).reshape(-1, 4)
        labels = np.array([o.label for o in objects], dtype=np.int64)
        image = tv_tensors.Image(torch.from_numpy(arr).permute(2, 0, 1))
        return image, make_target(boxes, labels, self.image_ids[index], h, w)

    # ----------------------------------------------------------------------------------------------
    def _index(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        i = int(index)
        if i < 0:
            i += self.num_images
        if not 0 <= i < self.num_images:
            raise IndexError(f"index {index} out of range for SyntheticShapes of length {self.num_images}")
        return i

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, self.seed >> 32, self._split_code, i])

    def render(self, index: int, return_id_map: bool = False) -> Any:
        """Draw sample `index`: `(uint8 (H, W, 3) array, objects)`, plus with `return_id_map` an int16
        (H, W) map of which object owns each pixel (-1: background), in the order of `objects`."""
        i = self._index(index)
        rng = self._rng(i)
        (h0, h1), (w0, w1) = self._size_range
        H = int(rng.integers(h0, h1 + 1))
        W = int(rng.integers(w0, w1 + 1))

        img, bg_mean = self._background(rng, H, W)
        if self.clutter:
            img = self._clutter(rng, img, H, W)
        arr = np.array(img, dtype=np.uint8)  # (H, W, 3), writable copy

        objects, ids = self._place_objects(rng, arr, H, W, bg_mean)

        if self.clutter:
            oy, ox = (int(v) for v in rng.integers(0, 64, size=2))
            noise = self._noise[oy : oy + H, ox : ox + W]
            arr = (arr.astype(np.int16) + noise).clip(0, 255).astype(np.uint8)
        if return_id_map:
            return np.ascontiguousarray(arr), objects, ids
        return np.ascontiguousarray(arr), objects

    def _background(self, rng: np.random.Generator, H: int, W: int) -> tuple[PIL.Image.Image, np.ndarray]:
        # A few random colours on a coarse grid, upsampled: smooth gradients and soft low-frequency blobs.
        g = int(rng.integers(2, 6))
        base = rng.integers(0, 256, size=3)
        coarse = (base + rng.integers(-70, 71, size=(g, g, 3))).clip(0, 255).astype(np.uint8)
        return PIL.Image.fromarray(coarse, "RGB").resize((W, H), PIL.Image.BILINEAR), coarse.reshape(-1, 3).mean(0)

    def _clutter(self, rng: np.random.Generator, img: PIL.Image.Image, H: int, W: int) -> PIL.Image.Image:
        draw = PIL.ImageDraw.Draw(img, "RGBA")
        scale = min(H, W)
        for _ in range(int(rng.integers(1, 7))):  # lines / polylines, thin
            n = int(rng.integers(2, 5))
            xs, ys = rng.uniform(-0.1 * W, 1.1 * W, n), rng.uniform(-0.1 * H, 1.1 * H, n)
            pts = [(float(x), float(y)) for x, y in zip(xs, ys)]
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3)) + (int(rng.integers(90, 256)),)
            draw.line(pts, fill=colour, width=int(rng.integers(1, 4)))
        for _ in range(int(rng.integers(0, 5))):  # irregular translucent blobs (not objects)
            n = int(rng.integers(7, 13))
            r = rng.uniform(0.04, 0.25) * scale
            cx, cy = rng.uniform(0, W), rng.uniform(0, H)
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = r * rng.uniform(0.35, 1.0, n)
            pts = [(float(cx + a * math.cos(t)), float(cy + a * math.sin(t))) for a, t in zip(rad, ang)]
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3)) + (int(rng.integers(40, 110)),)
            draw.polygon(pts, fill=colour)
        for _ in range(int(rng.integers(0, 12))):  # specks smaller than any object
            x, y = rng.uniform(0, W), rng.uniform(0, H)
            s = float(rng.uniform(1.0, 3.0))
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3)) + (255,)
            draw.ellipse([x - s, y - s, x + s, y + s], fill=colour)
        return img

    def _shape_mask(self, rng: np.random.Generator, label: int, d: float) -> np.ndarray:
        """Boolean mask (S, S) of one shape whose circumscribed diameter is about `d`."""
        S = int(math.ceil(d)) + 2
        m = PIL.Image.new("L", (S, S), 0)
        draw = PIL.ImageDraw.Draw(m)
        c = S / 2.0
        r = d / 2.0
        theta = float(rng.uniform(0, 2 * np.pi))
        aspect = float(np.exp(rng.uniform(-0.2, 0.2)))  # mild stretch
        ax, ay = r * min(1.0, aspect), r * min(1.0, 1.0 / aspect)
        cos_t, sin_t = math.cos(theta), math.sin(theta)

        def poly(angles: np.ndarray, radii: np.ndarray) -> list[tuple[float, float]]:
            px, py = radii * np.cos(angles) * ax / r, radii * np.sin(angles) * ay / r
            return [(c + x * cos_t - y * sin_t, c + x * sin_t + y * cos_t) for x, y in zip(px, py)]

        name = SHAPE_CLASSES[label]
        if name == "circle":
            draw.ellipse([c - ax, c - ay, c + ax, c + ay], fill=255)
        elif name == "ring":
            k = float(rng.uniform(0.45, 0.65))
            draw.ellipse([c - ax, c - ay, c + ax, c + ay], fill=255)
            draw.ellipse([c - k * ax, c - k * ay, c + k * ax, c + k * ay], fill=0)
        elif name == "square":
            draw.polygon(poly(np.array([0.25, 0.75, 1.25, 1.75]) * np.pi, np.full(4, r)), fill=255)
        elif name == "triangle":
            angles = np.array([0.0, 2 / 3, 4 / 3]) * np.pi + rng.uniform(-0.08, 0.08, 3) * np.pi
            draw.polygon(poly(angles, np.full(3, r)), fill=255)
        elif name == "cross":
            t = float(rng.uniform(0.3, 0.42)) * r  # half arm thickness
            xs = np.array([t, t, r, r, t, t, -t, -t, -r, -r, -t, -t])
            ys = np.array([r, t, t, -t, -t, -r, -r, -t, -t, t, t, r])
            draw.polygon(poly(np.arctan2(ys, xs), np.hypot(xs, ys)), fill=255)
        elif name == "star":
            inner = float(rng.uniform(0.38, 0.5)) * r
            angles = np.arange(10) * (np.pi / 5)
            radii = np.where(np.arange(10) % 2 == 0, r, inner)
            draw.polygon(poly(angles, radii), fill=255)
        else:  # pragma: no cover
            raise AssertionError(name)
        return np.asarray(m) > 0

    def _place_objects(
        self, rng: np.random.Generator, arr: np.ndarray, H: int, W: int, bg_mean: np.ndarray
    ) -> tuple[list[_Object], np.ndarray]:
        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        ids = np.full((H, W), -1, dtype=np.int16)
        full_area: list[int] = []  # pixels of each accepted object's whole shape (also the part off-image)
        visible: list[int] = []
        labels: list[int] = []
        regions: list[tuple[int, int, int, int]] = []  # y0, y1, x0, x1 in image coords (clipped)
        lo = math.log(self.min_object_size)
        hi = math.log(max(self.min_object_size, self.max_object_frac * min(H, W)))
        for k in range(n):
            label = int(rng.integers(self.num_classes))
            d = float(math.exp(rng.uniform(lo, hi)))
            mask = self._shape_mask(rng, label, d)
            S = mask.shape[0]
            mask_area = int(np.count_nonzero(mask))
            colour = rng.integers(0, 256, size=3)
            if np.abs(colour - bg_mean).sum() < 120:  # keep objects visible against the background
                colour = np.where(bg_mean > 127, rng.integers(0, 70, size=3), rng.integers(185, 256, size=3))
            tries = 12 if (k > 0 or self.min_objects == 0) else 40
            for attempt in range(tries):
                if k == 0 and attempt == tries - 1:  # guarantee one object: fully inside
                    cx, cy = rng.uniform(S / 2, max(S / 2, W - S / 2)), rng.uniform(S / 2, max(S / 2, H - S / 2))
                else:
                    cx, cy = rng.uniform(0.3 * S, W - 0.3 * S), rng.uniform(0.3 * S, H - 0.3 * S)
                x0, y0 = int(round(cx - S / 2)), int(round(cy - S / 2))
                ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + S, W), min(y0 + S, H)
                if ix1 <= ix0 or iy1 <= iy0:
                    continue
                sub_mask = mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
                in_area = int(np.count_nonzero(sub_mask))
                if in_area < max(self.min_visible * mask_area, 16):
                    continue
                sub_ids = ids[iy0:iy1, ix0:ix1]
                covered = np.bincount(sub_ids[sub_mask].astype(np.int64) + 1, minlength=k + 1)[1:]
                if any(visible[j] - covered[j] < self.min_visible * full_area[j] for j in np.flatnonzero(covered)):
                    continue
                for j in np.flatnonzero(covered):
                    visible[j] -= int(covered[j])
                sub_ids[sub_mask] = len(labels)
                arr[iy0:iy1, ix0:ix1][sub_mask] = colour
                full_area.append(mask_area)
                visible.append(in_area)
                labels.append(label)
                regions.append((iy0, iy1, ix0, ix1))
                break
        objects = []
        for j, (y0, y1, x0, x1) in enumerate(regions):
            own = ids[y0:y1, x0:x1] == j
            rows = np.flatnonzero(own.any(axis=1))
            cols = np.flatnonzero(own.any(axis=0))
            box = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)
            objects.append(_Object(labels[j], box, visible[j]))
        return objects, ids

    # ----------------------------------------------------------------------------------------------
    def annotations(self, index: int) -> list[dict[str, Any]]:
        """COCO-style annotations of one image (xywh bbox, category_id, area = visible pixels)."""
        _, objects = self.render(index)
        out = []
        for o in objects:
            x1, y1, x2, y2 = o.box
            out.append(
                {"bbox": [x1, y1, x2 - x1, y2 - y1], "category_id": self.label_to_cat_id[o.label], "area": o.area}
            )
        return out

    def to_coco_dict(self, image_format: str = "png") -> dict[str, Any]:
        """The whole dataset as an in-memory COCO ground-truth dict (renders every image once).

        Annotation ids start at 1 (pycocotools treats id 0 as "unmatched"), `iscrowd=0`, integer xywh
        boxes, `area` = number of visible object pixels, category ids 1, 3, 5, ...
        """
        return self._coco_dict(image_format, write_dir=None)

    def write_coco(
        self, root: str | os.PathLike, split_name: str | None = None, image_format: str = "png"
    ) -> tuple[str, str]:
        """Write the dataset as a COCO folder and return `(image_dir, ann_file)`:

        `root/<split_name>/<image_id:012d>.<png|jpg>` and `root/annotations/instances_<split_name>.json`
        (`split_name` defaults to `self.split`). PNG (the default) is lossless, so images read back equal
        the generated ones; boxes are written as exact integers. Transforms are not applied.
        """
        split_name = self.split if split_name is None else str(split_name)
        image_dir = os.path.join(os.fspath(root), split_name)
        ann_dir = os.path.join(os.fspath(root), "annotations")
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        data = self._coco_dict(image_format, write_dir=image_dir)
        ann_file = os.path.join(ann_dir, f"instances_{split_name}.json")
        with open(ann_file, "w") as f:
            json.dump(data, f)
        return image_dir, ann_file

    def _coco_dict(self, image_format: str, write_dir: str | None) -> dict[str, Any]:
        fmt = image_format.lower().lstrip(".")
        if fmt not in ("png", "jpg", "jpeg"):
            raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
        images, annotations = [], []
        for i in range(self.num_images):
            arr, objects = self.render(i)
            image_id = self.image_ids[i]
            file_name = f"{image_id:012d}.{fmt}"
            if write_dir is not None:
                pil = PIL.Image.fromarray(arr, "RGB")
                path = os.path.join(write_dir, file_name)
                if fmt == "png":
                    pil.save(path, format="PNG", compress_level=1)
                else:
                    pil.save(path, format="JPEG", quality=95)
            images.append({"id": image_id, "file_name": file_name, "height": arr.shape[0], "width": arr.shape[1]})
            for o in objects:
                x1, y1, x2, y2 = o.box
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": self.label_to_cat_id[o.label],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": o.area,
                        "iscrowd": 0,
                    }
                )
        categories = [
            {"id": self.label_to_cat_id[k], "name": name, "supercategory": "shape"}
            for k, name in enumerate(self.class_names)
        ]
        return {
            "info": {"description": repr(self), "version": "1.0"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
