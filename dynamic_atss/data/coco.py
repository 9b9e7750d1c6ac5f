"""`CocoDetection`: a COCO-format folder (images + instances json) read through pycocotools.

Policy (shared with the Hugging Face adapter):

* category ids -> contiguous labels `0..K-1` sorted by id (`cat_id_to_label`, `label_to_cat_id`);
* `iscrowd=1` annotations are left out of the targets (they stay in `self.coco` for the evaluator);
* xywh -> xyxy; boxes partly outside the image are clipped to it; boxes whose width or height is
  `<= min_box_size` after clipping (or non-finite) are dropped, reported by ONE `DegenerateBoxWarning`
  naming an example annotation id;
* images with no usable annotation are kept unless `keep_empty=False`;
* bad input raises errors naming the file / image id / annotation id at fault.

`self.coco` is the unmodified ground truth (crowd boxes included): give it to the COCO evaluator and
restrict the evaluation to `self.image_ids` when `keep_empty=False` dropped images.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from pycocotools.coco import COCO
from torchvision import tv_tensors

from .transforms import (
    DatasetError,
    DatasetFileNotFoundError,
    apply_transforms,
    clip_and_filter_boxes,
    displayed_size,
    load_image,
    make_target,
    warn_dropped,
    xywh_to_xyxy,
)

__all__ = ["CocoDetection", "load_image"]


class CocoDetection(torch.utils.data.Dataset):
    """COCO detection dataset in the package's common sample format.

    Args:
        image_dir: folder the `file_name` entries of the annotation file are relative to.
        ann_file: COCO instances json.
        transforms: optional joint (image, target) transforms (torchvision.transforms.v2 style).
        keep_empty: keep images without any usable (non-crowd, non-degenerate) annotation.
        min_box_size: boxes whose width or height is `<= min_box_size` after clipping are dropped.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms: Any = None,
        keep_empty: bool = True,
        min_box_size: float = 1e-3,
    ) -> None:
        self.image_dir = os.fspath(image_dir)
        self.ann_file = os.fspath(ann_file)
        self.transforms = transforms
        self.keep_empty = bool(keep_empty)
        self.min_box_size = float(min_box_size)

        data = self._read_json(self.ann_file)
        self._validate(data)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO()
            coco.dataset = data
            coco.createIndex()
        self.coco = coco

        cat_ids = sorted(int(c["id"]) for c in data["categories"])
        self.label_to_cat_id: list[int] = cat_ids
        self.cat_id_to_label: dict[int, int] = {c: k for k, c in enumerate(cat_ids)}
        self.class_names: list[str] = [str(coco.cats[c].get("name", f"class_{c}")) for c in cat_ids]
        self.num_classes = len(cat_ids)

        self._records: dict[int, tuple[str, int, int, np.ndarray, np.ndarray]] = {}
        self._build_records()
        self.image_ids: list[int] = sorted(self._records)
        if not self.image_ids:
            why = "no images" if not data["images"] else "no image with a usable annotation (keep_empty=False)"
            raise DatasetError(f"empty COCO dataset: {why} in {self.ann_file}")

    # ----------------------------------------------------------------------------------------------
    @staticmethod
    def _read_json(ann_file: str) -> dict[str, Any]:
        if not os.path.isfile(ann_file):
            raise DatasetFileNotFoundError(f"COCO annotation file not found: {ann_file}")
        try:
            with open(ann_file, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"COCO annotation file is not valid JSON: {ann_file} ({e})") from e
        if not isinstance(data, dict):
            raise DatasetError(f"COCO annotation file must hold a JSON object: {ann_file}")
        missing = [k for k in ("images", "categories") if not isinstance(data.get(k), list)]
        if missing:
            raise DatasetError(f"COCO annotation file {ann_file} has no {' / '.join(repr(k) for k in missing)} list")
        data.setdefault("annotations", [])
        if not isinstance(data["annotations"], list):
            raise DatasetError(f"COCO annotation file {ann_file}: 'annotations' must be a list")
        return data

    def _validate(self, data: dict[str, Any]) -> None:
        src = self.ann_file
        if not data["categories"]:
            raise DatasetError(f"COCO annotation file {src} defines no categories")
        seen_cats: set[int] = set()
        for c in data["categories"]:
            if not isinstance(c, dict) or "id" not in c:
                raise DatasetError(f"{src}: category without an 'id': {c!r}")
            if c["id"] in seen_cats:
                raise DatasetError(f"{src}: duplicate category id {c['id']}")
            seen_cats.add(c["id"])
        seen_imgs: set[int] = set()
        for img in data["images"]:
            if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
                raise DatasetError(f"{src}: image entry without 'id' or 'file_name': {img!r}")
            if img["id"] in seen_imgs:
                raise DatasetError(f"{src}: duplicate image id {img['id']}")
            seen_imgs.add(img["id"])
        seen_anns: set[int] = set()
        for ann in data["annotations"]:
            if not isinstance(ann, dict) or "id" not in ann:
                raise DatasetError(f"{src}: annotation without an 'id': {ann!r}")
            aid = ann["id"]
            if aid in seen_anns:
                raise DatasetError(f"{src}: duplicate annotation id {aid}")
            seen_anns.add(aid)
            if ann.get("image_id") not in seen_imgs:
                raise DatasetError(
                    f"{src}: annotation id {aid} refers to image id {ann.get('image_id')!r}, which is not in 'images'"
                )
            if ann.get("category_id") not in seen_cats:
                raise DatasetError(
                    f"{src}: annotation id {aid} has unknown category id {ann.get('category_id')!r} "
                    f"(known: {sorted(seen_cats)})"
                )
            bbox = ann.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise DatasetError(f"{src}: annotation id {aid} has no valid 'bbox' [x, y, w, h]: {bbox!r}")
            try:
                [float(v) for v in bbox]
            except (TypeError, ValueError):
                raise DatasetError(f"{src}: annotation id {aid} has a non-numeric 'bbox': {bbox!r}") from None
            ann.setdefault("iscrowd", 0)
            ann.setdefault("area", float(bbox[2]) * float(bbox[3]))

    def _image_size(self, img: dict[str, Any]) -> tuple[int, int]:
        if "height" in img and "width" in img:
            return int(img["height"]), int(img["width"])
        path = os.path.join(self.image_dir, img["file_name"])
        what = f"image id {img['id']}"
        if not os.path.isfile(path):
            raise DatasetFileNotFoundError(f"image file not found for {what}: {path}")
        try:
            with PIL.Image.open(path) as im:  # reads the header only; the frame viewers show (EXIF orientation)
                w, h = displayed_size(im)
        except (OSError, SyntaxError, ValueError, PIL.UnidentifiedImageError) as e:
            raise DatasetError(f"cannot read image file for {what}: {path} ({type(e).__name__}: {e})") from e
        img["height"], img["width"] = h, w
        return h, w

    def _build_records(self) -> None:
        coco = self.coco
        dropped, total, example = 0, 0, None
        for image_id, img in coco.imgs.items():
            h, w = self._image_size(img)
            anns = [a for a in coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
            if anns:
                xyxy = xywh_to_xyxy(np.array([a["bbox"] for a in anns], dtype=np.float64))
                boxes, keep = clip_and_filter_boxes(xyxy, h, w, self.min_box_size)
                labels = np.array([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=np.int64)
                total += len(anns)
                if not keep.all():
                    dropped += int((~keep).sum())
                    if example is None:
                        bad = anns[int(np.flatnonzero(~keep)[0])]
                        example = f"annotation id {bad['id']} (image id {image_id}, bbox {bad['bbox']})"
                boxes, labels = boxes[keep], labels[keep]
            else:
                boxes, labels = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
            if len(labels) == 0 and not self.keep_empty:
                continue
            self._records[int(image_id)] = (img["file_name"], h, w, boxes, labels)
        if dropped:
            warn_dropped(
                dropped,
                total,
                self.ann_file,
                example or "",
                f"width or height <= {self.min_box_size} after clipping to the image, or non-finite",
            )

    # ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        return f"CocoDetection({len(self)} images, {self.num_classes} classes, ann_file={self.ann_file!r})"

    def use_categories(self, label_to_cat_id: Sequence[int], class_names: Sequence[str]) -> None:
        """Take another label -> category id mapping (a model's: its training set's categories), relabelling every
        box; raises `DatasetError` naming the annotated categories the mapping lacks (never renamed)."""
        mapping = {int(c): k for k, c in enumerate(label_to_cat_id)}
        annotated = {self.label_to_cat_id[int(label)] for *_, labels in self._records.values() for label in labels}
        missing = sorted(annotated - set(mapping))
        if missing:
            names = ", ".join(f"{c} ({self.class_names[self.cat_id_to_label[c]]!r})" for c in missing)
            raise DatasetError(f"{self.ann_file}: annotations of category id(s) {names} that the model does not "
                               f"know (its categories: {list(label_to_cat_id)}); remove them or train with them")
        old_to_new = np.asarray([mapping.get(c, -1) for c in self.label_to_cat_id], dtype=np.int64)
        self._records = {image_id: (name, h, w, boxes, old_to_new[labels])
                         for image_id, (name, h, w, boxes, labels) in self._records.items()}
        self.label_to_cat_id = [int(c) for c in label_to_cat_id]
        self.cat_id_to_label = mapping
        self.class_names = list(class_names)
        self.num_classes = len(self.label_to_cat_id)

    def get_raw(self, index: int) -> tuple[tv_tensors.Image, dict]:
        """The sample before `transforms`, image as uint8 (3, H, W)."""
        image_id = self.image_ids[index]
        file_name, h, w, boxes, labels = self._records[image_id]
        path = os.path.join(self.image_dir, file_name)
        image = load_image(path, f"image id {image_id}")
        ih, iw = image.shape[-2:]
        if (ih, iw) != (h, w):
            raise DatasetError(
                f"image file {path} (image id {image_id}) is {iw}x{ih} but {self.ann_file} says {w}x{h}"
            )
        return image, make_target(boxes, labels, image_id, h, w)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, target = self.get_raw(index)
        return apply_transforms(self.transforms, image, target)

    def to_coco_dict(self) -> dict[str, Any]:
        """The ground truth as loaded (crowd boxes included; `iscrowd` / `area` defaulted when absent).
        This is `self.coco.dataset` itself, not a copy."""
        return self.coco.dataset
