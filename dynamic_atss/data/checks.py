"""A fast up-front scan of a detection dataset, so that bad data fails in seconds, not at step 18 000.

For every image: the file (or the bytes of a Hugging Face row) opens and its header reads, the size matches
the annotation file, and the file is not truncated (JPEG end-of-image / PNG IEND marker at the end; when it is
missing the image is decoded to confirm). Also counted: boxes, images without a box, images whose only
annotations are crowd regions (they give no positive anchor). Only headers and the last bytes are read, from
a thread pool; a full decode happens only for a suspect file.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import PIL.Image
import torch

from .coco import CocoDetection
from .hf import HFDetection
from .transforms import DatasetError, displayed_size

__all__ = ["DataReport", "ImageSubset", "check_categories", "scan_dataset"]

_READ_ERRORS = (OSError, SyntaxError, ValueError, PIL.UnidentifiedImageError)


@dataclass
class _Item:
    index: int
    what: str  # "image id 7 (/data/x.jpg)" for messages
    open: Callable[[], Any] | None  # -> binary file object; None: nothing to read
    size: tuple[int, int] | None  # (height, width) the annotations give
    num_boxes: int
    crowd_only: bool = False


@dataclass
class DataReport:
    """What `scan_dataset` found; `bad` lists (index, reason) of images that cannot be used."""

    name: str
    num_images: int
    num_boxes: int | None  # None: not known without generating the data (synthetic)
    num_empty: int = 0
    crowd_only: list[str] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)
    checked_files: bool = False

    def summary(self) -> str:
        parts = [f"{self.num_images} images"]
        if self.num_boxes is not None:
            parts.append(f"{self.num_boxes} boxes")
            parts.append(f"{self.num_empty} without a box ({len(self.crowd_only)} with only crowd regions)")
        if self.num_boxes is None:
            parts.append("generated on the fly (no files to check)")
        else:
            parts.append(f"{len(self.bad)} unreadable or mis-sized" if self.checked_files else "image files not checked")
        return f"data check ({self.name}): " + ", ".join(parts)


class ImageSubset(torch.utils.data.Subset):
    """A dataset without some images; the dataset's own attributes (class_names, coco, ...) stay reachable."""

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling in a loader worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _image_header(opener: Callable[[], Any]) -> tuple[int, int]:
    """(height, width) of an image file; raises OSError / ValueError when unreadable or truncated."""
    source = opener()
    if isinstance(source, PIL.Image.Image):
        return source.height, source.width
    if hasattr(source, "shape"):  # a decoded (H, W, C) array
        return int(source.shape[0]), int(source.shape[1])
    with source as f:
        with PIL.Image.open(f) as img:
            width, height = displayed_size(img)  # the frame viewers show, as the datasets read it (EXIF)
            kind = img.format
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64))
        tail = f.read()
        marker = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}.get(kind)
        if marker is not None and marker not in tail:
            f.seek(0)
            with PIL.Image.open(f) as img:  # no end marker: decode to be sure (raises on a truncated file)
                img.load()
    return height, width


def _check(item: _Item) -> str | None:
    if item.open is None:
        return None
    try:
        height, width = _image_header(item.open)
    except FileNotFoundError:
        return f"{item.what}: file not found"
    except _READ_ERRORS as e:
        return f"{item.what}: unreadable ({type(e).__name__}: {e})"
    if item.size is not None and (height, width) != tuple(item.size):
        return (f"{item.what}: the file is {width}x{height} (as viewers show it, EXIF orientation applied) but the "
                f"annotations say {item.size[1]}x{item.size[0]}")
    return None


def _coco_items(ds: CocoDetection) -> list[_Item]:
    items = []
    for index, image_id in enumerate(ds.image_ids):
        file_name, height, width, _, labels = ds._records[image_id]
        path = os.path.join(ds.image_dir, file_name)
        anns = ds.coco.imgToAnns.get(image_id, [])
        crowd_only = bool(anns) and all(a.get("iscrowd", 0) for a in anns)
        items.append(_Item(index, f"image id {image_id} ({path})", lambda p=path: open(p, "rb"), (height, width),
                           len(labels), crowd_only))
    return items


def _hf_items(ds: HFDetection) -> list[_Item]:
    def opener(row: int) -> Any:
        value = ds._image_ds[row][ds.image_key]
        if isinstance(value, dict) and value.get("bytes"):
            return io.BytesIO(value["bytes"])
        if isinstance(value, dict) and value.get("path"):
            return open(value["path"], "rb")
        if isinstance(value, (bytes, bytearray)):
            return io.BytesIO(value)
        return value  # an already decoded image (or an array): nothing left to truncate

    return [_Item(index, f"{ds.source_desc}: row {row}", lambda r=row: opener(r), ds._sizes[index],
                  len(ds._labels[index])) for index, row in enumerate(ds._rows)]


def scan_dataset(dataset: Any, name: str, check_images: bool = True, workers: int = 8) -> DataReport:
    """Scan `dataset` (COCO folder or Hugging Face; other kinds are generated and only counted)."""
    if isinstance(dataset, CocoDetection):
        items = _coco_items(dataset)
    elif isinstance(dataset, HFDetection):
        items = _hf_items(dataset)
    else:
        return DataReport(name, len(dataset), None)
    report = DataReport(
        name, len(items), sum(i.num_boxes for i in items), num_empty=sum(i.num_boxes == 0 for i in items),
        crowd_only=[i.what for i in items if i.crowd_only and i.num_boxes == 0], checked_files=check_images,
    )
    if check_images and items:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as pool:
            problems = list(pool.map(_check, items))
        report.bad = [(item.index, problem) for item, problem in zip(items, problems) if problem is not None]
    return report


def check_categories(train_set: Any, val_set: Any | None) -> None:
    """Make the validation set speak the model's labels before training: the model's label k is the training
    set's k-th category, so a validation COCO file with other categories (train {1, 5, 90}, val {1, 90}) is
    relabelled to the training set's mapping, which the evaluator then takes from it; annotated validation
    categories the training set lacks raise `DatasetError` naming them (they are never renamed)."""
    if val_set is None:
        return
    base = val_set
    while isinstance(base, torch.utils.data.Subset):
        base = base.dataset
    if list(base.label_to_cat_id) == list(train_set.label_to_cat_id):
        return
    if isinstance(base, CocoDetection):
        base.use_categories(train_set.label_to_cat_id, train_set.class_names)
        return
    missing = sorted(set(base.label_to_cat_id) - set(train_set.label_to_cat_id))
    if missing:
        raise DatasetError(f"the validation set has category id(s) {missing} that the training set lacks (training "
                           f"categories: {list(train_set.label_to_cat_id)}); use the same categories for both")
    # Hugging Face rows: category values are the labels (identity mapping); the model's mapping is the training set's.
    base.label_to_cat_id = list(train_set.label_to_cat_id)
    base.cat_id_to_label = dict(train_set.cat_id_to_label)
    base.class_names = list(train_set.class_names)
    base.num_classes = len(base.label_to_cat_id)
