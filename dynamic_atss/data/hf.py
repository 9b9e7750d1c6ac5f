"""`HFDetection`: a Hugging Face `datasets` detection dataset in the package's common sample format.

Expected layout (the Hub's common one, e.g. cppe-5): an `image` column (`datasets.Image`) and an `objects`
column holding `bbox` (a list of [x, y, w, h], or [x1, y1, x2, y2] with `box_format="xyxy"`) and
`category` (a list of ints, ideally a `ClassLabel`), either as a dict of lists or as a list of dicts.
Optional `image_id`, `width`, `height` columns are used when present.

Box policy = the COCO adapter's: boxes are clipped to the image, boxes whose width or height is
`<= min_box_size` (or non-finite) are dropped with ONE summary `DegenerateBoxWarning` naming an example
row; malformed rows raise errors naming the row index. Without `width` / `height` columns the image size
is only known when a row is read, so boxes lying wholly outside their image are dropped then (reported by
a single warning per dataset object).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors

from .transforms import (
    DatasetError,
    DatasetFileNotFoundError,
    DatasetSplitError,
    DegenerateBoxWarning,
    apply_transforms,
    clip_and_filter_boxes,
    displayed_size,
    make_target,
    pil_to_image,
    warn_dropped,
    xywh_to_xyxy,
)

if TYPE_CHECKING:
    import datasets

__all__ = ["HFDetection"]

_SAVE_TO_DISK_MARKERS = ("state.json", "dataset_dict.json", "dataset_info.json")


def _load_source(source: Any, split: str, load_kwargs: dict[str, Any]) -> tuple[datasets.Dataset, str]:
    """-> (map-style Dataset, a description of the source for messages)."""
    import datasets  # lazy: importing `datasets` costs ~1.5 s
    if isinstance(source, datasets.Dataset):
        return source, f"datasets.Dataset({source.num_rows} rows)"
    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise DatasetSplitError(f"split {split!r} not in the DatasetDict; available splits: {sorted(source)}")
        return source[split], f"DatasetDict[{split!r}]"
    if isinstance(source, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise TypeError("HFDetection needs a map-style dataset; load it without streaming=True")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"source must be a datasets.Dataset, a DatasetDict, or a path / dataset name, got {type(source).__name__}"
        )
    path = os.fspath(source)
    desc = f"{path!r} (split {split!r})"
    if os.path.isdir(path) and any(os.path.isfile(os.path.join(path, m)) for m in _SAVE_TO_DISK_MARKERS[:2]):
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DatasetSplitError(f"split {split!r} not in {path}; available splits: {sorted(loaded)}")
            loaded = loaded[split]
        return loaded, desc
    if os.path.isfile(path) and path.endswith(".parquet"):
        return datasets.load_dataset("parquet", data_files={split: path}, split=split, **load_kwargs), desc
    if os.path.exists(path) or not os.path.isabs(path):
        if not os.path.exists(path):
            _check_hub_dataset(path)
        try:
            return datasets.load_dataset(path, split=split, **load_kwargs), desc
        except ValueError as e:  # unknown split and the like: name the source
            raise DatasetError(f"cannot load {desc} with datasets.load_dataset: {e}") from e
        except (ConnectionError, FileNotFoundError) as e:  # offline and not cached, or not on the Hub after all
            raise DatasetError(f"cannot load {desc}: {e}") from None
    raise DatasetFileNotFoundError(f"dataset path not found: {path}")


def _check_hub_dataset(name: str) -> None:
    """One quick question to the Hub before `datasets.load_dataset(name)`, which retries an unreachable Hub for
    half a minute and then raises a bare ConnectionError: a missing dataset or a silent Hub becomes one
    `DatasetError` in seconds. Offline mode (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) asks nothing: the cache decides."""
    import datasets  # noqa: PLC0415
    from huggingface_hub import HfApi  # noqa: PLC0415
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError  # noqa: PLC0415

    if datasets.config.HF_HUB_OFFLINE:
        return
    api = HfApi()
    try:
        api.dataset_info(name, timeout=10)
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if isinstance(error, RepositoryNotFoundError) or status == 404:
            raise DatasetError(
                f"data.source {name!r} is neither a local folder or file nor a dataset on the Hub ({api.endpoint}); "
                "check the name (org/name), or log in (`hf auth login`) for a private one"
            ) from None
        # other answers (gated, rate limits): the Hub answers; datasets says what it needs
    except Exception as error:  # noqa: BLE001  (connection refused, DNS, timeouts: the client's own error types)
        raise DatasetError(
            f"data.source {name!r} is not a local folder or file, and the Hub ({api.endpoint}) does not answer "
            f"({type(error).__name__}); check the network or HF_ENDPOINT, or set HF_DATASETS_OFFLINE=1 to load it from "
            "the local datasets cache"
        ) from None


def _sub_feature(feature: Any, key: str) -> Any:
    """Feature of field `key` inside a (possibly List/Sequence-wrapped) struct feature, or None."""
    while feature is not None and not isinstance(feature, dict):
        feature = getattr(feature, "feature", None)
    return None if feature is None else feature.get(key)


def _class_label(feature: Any) -> datasets.ClassLabel | None:
    import datasets
    while feature is not None and not isinstance(feature, datasets.ClassLabel):
        feature = getattr(feature, "feature", None)
    return feature


class HFDetection(torch.utils.data.Dataset):
    """Hugging Face detection dataset; see the module docstring.

    Args:
        source: a `datasets.Dataset`, a `DatasetDict` (indexed by `split`), a folder written by
            `save_to_disk`, a `.parquet` file, or anything `datasets.load_dataset(source, split=split)`
            accepts (a local folder of Parquet files, a Hub name when online).
        split: split to use for DatasetDicts / `load_dataset`.
        box_format: "xywh" (COCO / Hub convention) or "xyxy".
        transforms: optional joint (image, target) transforms (torchvision.transforms.v2 style).
        image_key, objects_key, bbox_key, category_key: column / field names.
        class_names: override the names read from the `ClassLabel` feature of the category field.
        keep_empty: keep rows without any usable box.
        min_box_size: boxes whose width or height is `<= min_box_size` after clipping are dropped.
        load_kwargs: extra kwargs for `datasets.load_dataset` (e.g. `cache_dir`).

    Category values are used directly as labels (`label_to_cat_id` is the identity), so they must lie in
    `[0, num_classes)`.
    """

    def __init__(
        self,
        source: Any,
        split: str = "train",
        box_format: str = "xywh",
        transforms: Any = None,
        image_key: str = "image",
        objects_key: str = "objects",
        bbox_key: str = "bbox",
        category_key: str = "category",
        class_names: Sequence[str] | None = None,
        keep_empty: bool = True,
        min_box_size: float = 1e-3,
        load_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if box_format not in ("xywh", "xyxy"):
            raise DatasetError(f"box_format must be 'xywh' or 'xyxy', got {box_format!r}")
        import datasets

        ds, self.source_desc = _load_source(source, split, dict(load_kwargs or {}))
        self.split = split
        self.box_format = box_format
        self.transforms = transforms
        self.image_key, self.objects_key = image_key, objects_key
        self.bbox_key, self.category_key = bbox_key, category_key
        self.keep_empty = bool(keep_empty)
        self.min_box_size = float(min_box_size)

        missing = [k for k in (image_key, objects_key) if k not in ds.column_names]
        if missing:
            raise DatasetError(f"{self.source_desc}: missing column(s) {missing}; columns are {ds.column_names}")
        self.hf_dataset = ds

        # Decode images ourselves (errors then name the row; sizes can be read from headers only).
        if isinstance(ds.features.get(image_key), datasets.Image):
            self._image_ds = ds.select_columns([image_key]).cast_column(image_key, datasets.Image(decode=False))
        else:
            self._image_ds = ds.select_columns([image_key])

        self._init_classes(ds.features.get(objects_key), class_names)
        self._scan(ds)
        self._late_warned = False

    # ----------------------------------------------------------------------------------------------
    def _init_classes(self, objects_feature: Any, class_names: Sequence[str] | None) -> None:
        label_feature = _class_label(_sub_feature(objects_feature, self.category_key))
        if class_names is not None:
            names = [str(n) for n in class_names]
        elif label_feature is not None:
            names = list(label_feature.names)
        else:
            names = None  # known after the scan
        self.class_names: list[str] = names if names is not None else []
        self._names_from_data = names is None

    def _parse_row(self, row: int, objects: Any) -> tuple[np.ndarray, np.ndarray]:
        src = self.source_desc
        if objects is None:
            return np.zeros((0, 4)), np.zeros((0,), np.int64)
        if isinstance(objects, dict):
            if self.bbox_key not in objects or self.category_key not in objects:
                raise DatasetError(
                    f"{src}: row {row}: '{self.objects_key}' has no '{self.bbox_key}' / '{self.category_key}' "
                    f"field (fields: {sorted(objects)})"
                )
            bboxes, cats = objects[self.bbox_key], objects[self.category_key]
        elif isinstance(objects, (list, tuple)):
            try:
                bboxes = [o[self.bbox_key] for o in objects]
                cats = [o[self.category_key] for o in objects]
            except (KeyError, TypeError, IndexError):
                raise DatasetError(
                    f"{src}: row {row}: '{self.objects_key}' must be a list of dicts with '{self.bbox_key}' and "
                    f"'{self.category_key}'"
                ) from None
        else:
            raise DatasetError(f"{src}: row {row}: cannot read '{self.objects_key}' of type {type(objects).__name__}")
        bboxes = [] if bboxes is None else list(bboxes)
        cats = [] if cats is None else list(cats)
        if len(bboxes) != len(cats):
            raise DatasetError(f"{src}: row {row}: {len(bboxes)} boxes but {len(cats)} categories")
        try:
            b = np.array(bboxes, dtype=np.float64).reshape(len(bboxes), 4) if bboxes else np.zeros((0, 4))
        except (TypeError, ValueError):
            raise DatasetError(f"{src}: row {row}: boxes must be 4 numbers each, got {bboxes!r}") from None
        try:
            c = np.array(cats, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise DatasetError(f"{src}: row {row}: categories must be integers, got {cats!r}") from None
        if c.size and (not np.isfinite(c).all() or (c != np.round(c)).any()):
            raise DatasetError(f"{src}: row {row}: categories must be integers, got {cats!r}")
        if self.box_format == "xywh":
            b = xywh_to_xyxy(b)
        return b, c.astype(np.int64)

    def _scan(self, ds: datasets.Dataset) -> None:
        extra = [k for k in ("image_id", "width", "height") if k in ds.column_names]
        has_size = "width" in extra and "height" in extra
        columns = ds.select_columns([self.objects_key] + extra)
        rows: list[int] = []
        sizes: list[tuple[int, int] | None] = []
        image_ids: list[int] = []
        boxes_all: list[np.ndarray] = []
        labels_all: list[np.ndarray] = []
        dropped, total, example = 0, 0, None
        big = 1e12
        row = 0
        for batch in columns.iter(batch_size=1000):
            for j, objects in enumerate(batch[self.objects_key]):
                xyxy, cats = self._parse_row(row, objects)
                if has_size:
                    h, w = batch["height"][j], batch["width"][j]
                else:
                    h, w = big, big  # clipping waits for the decoded image
                if cats.size:
                    n = len(self.class_names)
                    bad = (cats < 0) if self._names_from_data else (cats < 0) | (cats >= n)
                    if bad.any():
                        known = (
                            "must be >= 0"
                            if self._names_from_data
                            else f"outside [0, {n}) (classes: {self.class_names})"
                        )
                        raise DatasetError(f"{self.source_desc}: row {row}: category {int(cats[bad][0])} {known}")
                boxes, keep = clip_and_filter_boxes(xyxy, h, w, self.min_box_size)
                total += len(keep)
                if not keep.all():
                    dropped += int((~keep).sum())
                    if example is None:
                        k = int(np.flatnonzero(~keep)[0])
                        example = f"row {row}, box #{k} {xyxy[k].tolist()} ({self.box_format} input converted to xyxy)"
                image_id = int(batch["image_id"][j]) if "image_id" in extra else row
                boxes, cats = boxes[keep], cats[keep]
                if len(cats) or self.keep_empty:
                    rows.append(row)
                    sizes.append((int(h), int(w)) if has_size else None)
                    image_ids.append(image_id)
                    boxes_all.append(boxes.astype(np.float32))
                    labels_all.append(cats)
                row += 1
        if dropped:
            warn_dropped(
                dropped,
                total,
                self.source_desc,
                example or "",
                f"width or height <= {self.min_box_size} after clipping to the image, or non-finite",
            )
        if self._names_from_data:
            k = max((int(lab.max()) + 1 for lab in labels_all if lab.size), default=0)
            self.class_names = [f"class_{i}" for i in range(k)]
            warnings.warn(
                f"{self.source_desc}: the '{self.category_key}' field of '{self.objects_key}' is not a ClassLabel; "
                f"using {k} generic class names class_0..class_{k - 1} (pass class_names= to name them)",
                UserWarning,
                stacklevel=3,
            )
        if not rows:
            why = "no rows" if row == 0 else "no row with a usable box (keep_empty=False)"
            raise DatasetError(f"empty dataset: {why} in {self.source_desc}")
        self.num_classes = len(self.class_names)
        self.label_to_cat_id: list[int] = list(range(self.num_classes))
        self.cat_id_to_label: dict[int, int] = {i: i for i in range(self.num_classes)}
        self._rows = rows
        self.image_ids: list[int] = image_ids
        self._boxes = boxes_all
        self._labels = labels_all
        self._sizes = sizes

    # ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"HFDetection({len(self)} images, {self.num_classes} classes, source={self.source_desc})"

    def _decode(self, row: int) -> tv_tensors.Image:
        value = self._image_ds[row][self.image_key]
        what = f"{self.source_desc}: row {row}"
        try:
            if isinstance(value, PIL.Image.Image):
                return pil_to_image(value)
            if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
                src = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
                with PIL.Image.open(src) as img:
                    img.load()
                    return pil_to_image(img)
            if isinstance(value, (bytes, bytearray)):
                with PIL.Image.open(io.BytesIO(value)) as img:
                    img.load()
                    return pil_to_image(img)
            if isinstance(value, np.ndarray) and value.ndim == 3 and value.shape[-1] in (3, 4):
                arr = np.ascontiguousarray(value[..., :3]).astype(np.uint8)
                return tv_tensors.Image(torch.from_numpy(arr).permute(2, 0, 1))
        except (OSError, SyntaxError, ValueError, PIL.UnidentifiedImageError) as e:
            raise DatasetError(f"{what}: cannot decode the '{self.image_key}' image ({type(e).__name__}: {e})") from e
        raise DatasetError(f"{what}: unsupported '{self.image_key}' value of type {type(value).__name__}")

    def get_raw(self, index: int) -> tuple[tv_tensors.Image, dict]:
        """The sample before `transforms`, image as uint8 (3, H, W)."""
        row = self._rows[index]
        image = self._decode(row)
        h, w = image.shape[-2:]
        boxes, keep = clip_and_filter_boxes(self._boxes[index], h, w, self.min_box_size)
        labels = self._labels[index]
        if not keep.all():
            if not self._late_warned:
                self._late_warned = True
                warnings.warn(
                    f"{self.source_desc}: row {row}: dropped {int((~keep).sum())} box(es) lying outside the "
                    f"{w}x{h} image; further such drops in this dataset are not reported",
                    DegenerateBoxWarning,
                    stacklevel=3,
                )
            boxes, labels = boxes[keep], labels[keep]
        return image, make_target(boxes, labels, self.image_ids[index], h, w)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, target = self.get_raw(index)
        return apply_transforms(self.transforms, image, target)

    def to_coco_dict(self) -> dict[str, Any]:
        """Ground truth as a COCO dict (xywh, area = w * h, iscrowd 0, annotation ids from 1); image sizes
        come from the `width` / `height` columns or the image headers."""
        images, annotations = [], []
        for index, row in enumerate(self._rows):
            h, w = self._sizes[index] or self._image_size(row)
            boxes, keep = clip_and_filter_boxes(self._boxes[index], h, w, self.min_box_size)
            images.append({"id": self.image_ids[index], "file_name": f"row_{row}", "height": h, "width": w})
            for (x1, y1, x2, y2), label in zip(boxes[keep].tolist(), self._labels[index][keep].tolist()):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": self.image_ids[index],
                        "category_id": self.label_to_cat_id[label],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }
                )
        categories = [{"id": self.label_to_cat_id[k], "name": n} for k, n in enumerate(self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def _image_size(self, row: int) -> tuple[int, int]:
        value = self._image_ds[row][self.image_key]
        if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
            src = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
            try:
                with PIL.Image.open(src) as img:  # header only; the frame viewers show (EXIF orientation)
                    w, h = displayed_size(img)
                return h, w
            except (OSError, SyntaxError, ValueError, PIL.UnidentifiedImageError) as e:
                raise DatasetError(f"{self.source_desc}: row {row}: cannot read the image header ({e})") from e
        h, w = self._decode(row).shape[-2:]
        return h, w
