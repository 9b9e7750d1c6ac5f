"""COCO box evaluation for torchvision-style detection outputs.

Typical use::

    label_to_cat_id, _ = make_label_maps(sorted(coco.getCatIds()))
    evaluator = CocoEvaluator(coco, label_to_cat_id)
    for images, targets in loader:
        outputs = model(images)  # list of {"boxes" xyxy, "scores", "labels"}
        evaluator.update([t["image_id"] for t in targets], outputs)
    evaluator.gather(accelerator)  # all processes now hold every row
    if accelerator.is_main_process:
        metrics = evaluator.evaluate(per_class=True)
        print(format_table(metrics))

Notes
-----
* **Only the updated images are evaluated.** `evaluate` sets ``COCOeval.params.imgIds`` to the image ids
  passed to `update` (with or without detections), so evaluating a ``--limit N`` subset gives that subset's
  metrics rather than penalising the never-seen images as misses. To evaluate the full annotation file,
  call `update` for every image.
* An image id passed to `update` more than once (distributed samplers pad the last batch by repeating
  samples; `gather` can therefore see an image from two processes) is counted once: the first occurrence
  (in process-rank order after `gather`) wins, later ones are ignored and counted in `num_duplicates`.
* Boxes are kept as given (xyxy in original-image pixels); nothing is clipped or filtered here, and COCO's
  ``maxDets=100`` is applied per image *and category* by COCOeval, so the model should cap its own output
  at 100 detections per image.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "METRIC_NAMES",
    "CocoEvaluator",
    "UnknownImageIdError",
    "coco_category_info",
    "format_coco_summary",
    "format_per_class_table",
    "format_table",
    "has_faster_coco_eval",
    "load_coco",
    "make_label_maps",
]


#: Names of the 12 numbers of ``COCOeval.stats``, in that order.
METRIC_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip

_BACKENDS = ("auto", "pycocotools", "faster_coco_eval")


class UnknownImageIdError(ValueError, KeyError):
    """Detections were given for an image id that the annotation file does not contain."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- label <-> category id


def make_label_maps(cat_ids: Sequence[int]) -> tuple[list[int], dict[int, int]]:
    """Contiguous labels ``0..K-1`` <-> (possibly non-contiguous) COCO category ids.

    Label ``i`` is ``cat_ids[i]``: the given order is kept, so pass ``sorted(coco.getCatIds())`` for the usual
    convention. Returns ``(label_to_cat_id, cat_id_to_label)``; ``cat_id_to_label[label_to_cat_id[i]] == i``.
    """
    label_to_cat_id = [int(c) for c in cat_ids]
    cat_id_to_label = {c: i for i, c in enumerate(label_to_cat_id)}
    if len(cat_id_to_label) != len(label_to_cat_id):
        dup = sorted({c for c in label_to_cat_id if label_to_cat_id.count(c) > 1})
        raise ValueError(f"duplicate category ids: {dup}")
    return label_to_cat_id, cat_id_to_label


def coco_category_info(coco_gt: Any) -> tuple[list[int], list[str]]:
    """``(label_to_cat_id, class_names)`` with labels in increasing category-id order (torchvision convention)."""
    coco = load_coco(coco_gt)
    cat_ids = sorted(coco.getCatIds())
    return cat_ids, [coco.cats[c]["name"] for c in cat_ids]


# --------------------------------------------------------------------------- backends


def has_faster_coco_eval() -> bool:
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


def _resolve_backend(backend: str) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "faster_coco_eval" if has_faster_coco_eval() else "pycocotools"
    if backend == "faster_coco_eval" and not has_faster_coco_eval():
        raise ImportError("backend='faster_coco_eval' needs `pip install faster-coco-eval`")
    return backend


def load_coco(coco_gt: Any):
    """A pycocotools ``COCO`` from a ``COCO`` (returned as is), a path to a json, or an in-memory dict."""
    from pycocotools.coco import COCO

    if isinstance(coco_gt, COCO):
        return coco_gt
    if isinstance(coco_gt, (str, Path)):
        with open(coco_gt) as f:
            dataset = json.load(f)
    elif isinstance(coco_gt, Mapping):
        dataset = dict(coco_gt)
    elif hasattr(coco_gt, "dataset") and hasattr(coco_gt, "getImgIds"):  # another COCO API (faster_coco_eval)
        dataset = coco_gt.dataset
    else:
        raise TypeError(f"coco_gt must be a pycocotools COCO, a path or a dict, got {type(coco_gt).__name__}")
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


# --------------------------------------------------------------------------- conversions


def _to_numpy(x: Any, dtype) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, on any device
        x = x.detach().cpu()
        if x.dtype.is_floating_point and dtype == np.float64:
            x = x.double()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _to_int(x: Any) -> int:
    if hasattr(x, "item"):
        x = x.item()
    if isinstance(x, float) and not x.is_integer():
        raise ValueError(f"image id must be an integer, got {x}")
    return int(x)


# --------------------------------------------------------------------------- evaluator


class CocoEvaluator:
    """Accumulates detections and computes the 12 COCO box metrics.

    Args:
        coco_gt: pycocotools ``COCO``, path to an annotation (or image-info) json, or the json as a dict.
        label_to_cat_id: ``label_to_cat_id[label]`` is the COCO category id of contiguous label ``label``.
        class_names: one name per label (for ``per_class``); defaults to the categories' names.
        backend: ``"pycocotools"``, ``"faster_coco_eval"`` (same numbers, C++), or ``"auto"`` (the latter when
            installed).
    """

    def __init__(
        self,
        coco_gt: Any,
        label_to_cat_id: Sequence[int],
        class_names: Sequence[str] | None = None,
        backend: str = "auto",
    ) -> None:
        self.backend = _resolve_backend(backend)
        self.coco_gt = load_coco(coco_gt)
        self.label_to_cat_id, self.cat_id_to_label = make_label_maps(label_to_cat_id)
        # Categories the model knows but the annotation file lacks (a val file without some training category):
        # nothing to score them against. Their detections are left out and their per-class AP is -1, never renamed.
        self.unscored_cat_ids = [c for c in self.label_to_cat_id if c not in self.coco_gt.cats]
        if class_names is None:
            class_names = [str(self.coco_gt.cats[c].get("name", c)) if c in self.coco_gt.cats else str(c)
                           for c in self.label_to_cat_id]
        elif len(class_names) != len(self.label_to_cat_id):
            raise ValueError(f"{len(class_names)} class names for {len(self.label_to_cat_id)} labels")
        self.class_names = list(class_names)
        self._label_to_cat = np.asarray(self.label_to_cat_id, dtype=np.int64)
        self._scored = np.asarray([c in self.coco_gt.cats for c in self.label_to_cat_id], dtype=bool)
        self._faster_gt = None  # faster_coco_eval COCO, built on first use
        self.coco_eval = None  # the last COCOeval object, for inspection
        self.summary = ""  # COCOeval.summarize()-style text of the last evaluate(), for logs
        self.reset()

    # ------------------------------------------------------------------ accumulation

    def reset(self) -> None:
        # image id -> (xywh float64 (n,4), scores float64 (n,), category ids int64 (n,)); insertion-ordered
        self._per_image: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.num_duplicates = 0

    @property
    def image_ids(self) -> list[int]:
        """Image ids processed so far (with or without detections), in first-seen order."""
        return list(self._per_image)

    def __len__(self) -> int:
        return len(self._per_image)

    def update(self, image_ids: Sequence[int], predictions: Sequence[Mapping[str, Any]]) -> None:
        """Add one batch: ``predictions[i]`` (``boxes`` xyxy, ``scores``, ``labels``) belongs to ``image_ids[i]``.

        Every image id must be in the annotation file (`UnknownImageIdError`, a ``KeyError`` and ``ValueError``,
        otherwise) and every label in ``[0, num_classes)``. Images without detections still count as processed.
        """
        if hasattr(image_ids, "tolist"):
            image_ids = image_ids.tolist()
        image_ids = [_to_int(i) for i in image_ids]
        if len(image_ids) != len(predictions):
            raise ValueError(f"{len(image_ids)} image ids for {len(predictions)} predictions")
        unknown = [i for i in image_ids if i not in self.coco_gt.imgs]
        if unknown:
            raise UnknownImageIdError(
                f"detections for image id(s) {unknown[:10]} not in the annotation file "
                f"({len(self.coco_gt.imgs)} images)"
            )
        num_labels = len(self.label_to_cat_id)
        converted = []
        for image_id, pred in zip(image_ids, predictions):
            boxes = _to_numpy(pred["boxes"], np.float64).reshape(-1, 4)
            scores = _to_numpy(pred["scores"], np.float64).reshape(-1)
            labels = _to_numpy(pred["labels"], np.int64).reshape(-1)
            if not (len(boxes) == len(scores) == len(labels)):
                raise ValueError(
                    f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels"
                )
            bad = (labels < 0) | (labels >= num_labels)
            if bad.any():
                raise ValueError(
                    f"image {image_id}: label(s) {sorted(set(labels[bad].tolist()))[:10]} outside the "
                    f"label -> category id mapping [0, {num_labels})"
                )
            scored = self._scored[labels]
            xywh = boxes[scored].copy()
            xywh[:, 2:] -= xywh[:, :2]
            converted.append((image_id, (xywh, scores[scored], self._label_to_cat[labels[scored]])))
        for image_id, rows in converted:  # all validated: commit
            self._add(image_id, rows)

    def _add(self, image_id: int, rows: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        if image_id in self._per_image:
            self.num_duplicates += 1
        else:
            self._per_image[image_id] = rows

    def gather(self, accelerator: Any = None) -> None:
        """Collect every process's images into every process (all-gather), keeping each image id once.

        Needs ``accelerator`` (an ``accelerate.Accelerator``) with ``num_processes > 1``; otherwise a no-op.
        Call it on all processes (it is a collective), then evaluate/write on the main process.
        """
        if accelerator is None or getattr(accelerator, "num_processes", 1) <= 1:
            return
        from accelerate.utils import gather_object

        gathered = gather_object(list(self._per_image.items()))  # flattened in rank order
        num_duplicates = self.num_duplicates
        self.reset()
        for image_id, rows in gathered:
            self._add(int(image_id), rows)
        self.num_duplicates += num_duplicates

    # ------------------------------------------------------------------ results

    def results_array(self) -> np.ndarray:
        """``(N, 7)`` float64 rows ``[image_id, x, y, w, h, score, category_id]`` (COCOeval's ndarray format)."""
        if not self._per_image:
            return np.zeros((0, 7), dtype=np.float64)
        parts = []
        for image_id, (xywh, scores, cats) in self._per_image.items():
            part = np.empty((len(scores), 7), dtype=np.float64)
            part[:, 0] = image_id
            part[:, 1:5] = xywh
            part[:, 5] = scores
            part[:, 6] = cats
            parts.append(part)
        return np.concatenate(parts, axis=0)

    def results(self, bbox_decimals: int | None = None, score_decimals: int | None = None) -> list[dict]:
        """COCO result rows ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` (plain Python types)."""
        arr = self.results_array()
        if bbox_decimals is not None:
            arr[:, 1:5] = np.round(arr[:, 1:5], bbox_decimals)
        if score_decimals is not None:
            arr[:, 5] = np.round(arr[:, 5], score_decimals)
        image_ids = arr[:, 0].astype(np.int64).tolist()
        cat_ids = arr[:, 6].astype(np.int64).tolist()
        bboxes = arr[:, 1:5].tolist()
        scores = arr[:, 5].tolist()
        return [
            {"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(image_ids, cat_ids, bboxes, scores)
        ]

    def write_results_json(self, path: str | Path, bbox_decimals: int = 2, score_decimals: int = 5) -> Path:
        """Write the result rows as a COCO results json (a list of dicts), floats rounded."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = self.results(bbox_decimals=bbox_decimals, score_decimals=score_decimals)
        with open(path, "w") as f:
            json.dump(rows, f, separators=(",", ":"))
        return path

    def write_test_dev_submission(
        self, out_dir: str | Path, model_name: str, bbox_decimals: int = 2, score_decimals: int = 5
    ) -> Path:
        """Write ``detections_test-dev2017_<model_name>_results.json`` and a ``.zip`` holding only it.

        ``coco_gt`` must be the image-info file of the split (e.g. ``image_info_test-dev2017.json``): every image
        in it must have been passed to `update` (after `gather` when distributed), else ``ValueError`` listing how
        many are missing and some of their ids. Characters of ``model_name`` other than letters, digits, ``.``
        and ``-`` (underscores separate the file-name fields on the evaluation server) become ``-``.
        Returns the path of the zip (the file to upload).
        """
        missing = sorted(set(self.coco_gt.getImgIds()) - set(self._per_image))
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(self.coco_gt.getImgIds())} images of the image-info file have not "
                f"been processed, e.g. ids {missing[:10]} (did you use --limit, or forget gather()?)"
            )
        safe_name = re.sub(r"[^A-Za-z0-9.\-]", "-", model_name)
        if safe_name != model_name:
            warnings.warn(f"model name {model_name!r} written as {safe_name!r} in the submission file name")
        if not safe_name:
            raise ValueError("empty model name")
        out_dir = Path(out_dir)
        json_path = out_dir / f"detections_test-dev2017_{safe_name}_results.json"
        self.write_results_json(json_path, bbox_decimals=bbox_decimals, score_decimals=score_decimals)
        zip_path = json_path.with_suffix(".zip")
        with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.write(json_path, arcname=json_path.name)
        return zip_path

    # ------------------------------------------------------------------ evaluation

    def _make_coco_eval(self, dt_array: np.ndarray):
        if self.backend == "faster_coco_eval":
            from faster_coco_eval import COCO as FCOCO
            from faster_coco_eval import COCOeval_faster

            if self._faster_gt is None:
                self._faster_gt = FCOCO(self.coco_gt.dataset)
            coco_dt = self._faster_gt.loadRes(dt_array)
            coco_eval = COCOeval_faster(self._faster_gt, coco_dt, iouType="bbox")
        else:
            from pycocotools.cocoeval import COCOeval

            coco_dt = self.coco_gt.loadRes(dt_array)
            coco_eval = COCOeval(self.coco_gt, coco_dt, iouType="bbox")
        return coco_eval

    def evaluate(self, per_class: bool = False) -> dict[str, Any]:
        """The 12 COCO box metrics (``METRIC_NAMES``, in [0, 1], -1 where undefined, e.g. no small GT).

        Evaluation is restricted to the processed image ids (``params.imgIds``); see the module notes. With no
        detections at all every metric (and every per-class AP) is 0.0. With ``per_class=True`` the result also
        has ``"per_class": {class_name: AP}`` (AP@[.5:.95], all areas, 100 dets; -1 for a class without GT in the
        evaluated images), from ``COCOeval.eval["precision"]``.
        """
        dt_array = self.results_array()
        if len(dt_array) == 0:
            metrics: dict[str, Any] = {name: 0.0 for name in METRIC_NAMES}
            if per_class:
                metrics["per_class"] = {name: 0.0 for name in self.class_names}
            self.coco_eval = None
            self.summary = ""
            return metrics

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco_eval = self._make_coco_eval(dt_array)
            coco_eval.params.imgIds = sorted(self._per_image)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        self.coco_eval = coco_eval
        stats = np.asarray(coco_eval.stats, dtype=np.float64)[: len(METRIC_NAMES)]
        metrics = {name: float(v) for name, v in zip(METRIC_NAMES, stats)}
        self.summary = format_coco_summary(metrics)
        if per_class:
            metrics["per_class"] = self._per_class_ap(coco_eval)
        return metrics

    def _per_class_ap(self, coco_eval) -> dict[str, float]:
        params = coco_eval.params
        precision = np.asarray(coco_eval.eval["precision"])  # [T IoUs, R recalls, K cats, A areas, M maxDets]
        area_idx = list(params.areaRngLbl).index("all")
        det_idx = len(params.maxDets) - 1  # maxDets are sorted; the last is 100
        cat_index = {int(c): k for k, c in enumerate(params.catIds)}
        out = {}
        for name, cat_id in zip(self.class_names, self.label_to_cat_id):
            if cat_id not in cat_index:  # a category of the model that the annotation file lacks
                out[name] = -1.0
                continue
            p = precision[:, :, cat_index[cat_id], area_idx, det_idx]
            p = p[p > -1]
            out[name] = float(p.mean()) if p.size else -1.0
        return out


# --------------------------------------------------------------------------- tables


_SUMMARY_LINES = {  # name -> (AP/AR, IoU, area, maxDets), as COCOeval.summarize() prints them
    "AP": (1, "0.50:0.95", "all", 100), "AP50": (1, "0.50", "all", 100), "AP75": (1, "0.75", "all", 100),
    "APs": (1, "0.50:0.95", "small", 100), "APm": (1, "0.50:0.95", "medium", 100),
    "APl": (1, "0.50:0.95", "large", 100), "AR1": (0, "0.50:0.95", "all", 1),
    "AR10": (0, "0.50:0.95", "all", 10), "AR100": (0, "0.50:0.95", "all", 100),
    "ARs": (0, "0.50:0.95", "small", 100), "ARm": (0, "0.50:0.95", "medium", 100),
    "ARl": (0, "0.50:0.95", "large", 100),
}  # fmt: skip


def evaluator_for(dataset: Any, label_to_cat_id: Sequence[int] | None = None,
                  class_names: Sequence[str] | None = None) -> CocoEvaluator:
    """A `CocoEvaluator` for a detection dataset (`CocoDetection`, `HFDetection`, the synthetic one, or a
    `Subset` of one): its already-indexed COCO ground truth (`.coco`) when it has one, else `to_coco_dict()`.

    `label_to_cat_id` / `class_names` are the MODEL's (what its labels mean: the training set's categories); by
    default the dataset's, which is right only when the dataset was given the model's categories
    (`dynamic_atss.data.checks.check_categories` does that for a validation set before training)."""
    import torch  # noqa: PLC0415

    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    coco_gt = getattr(dataset, "coco", None)
    if label_to_cat_id is None:
        label_to_cat_id, class_names = dataset.label_to_cat_id, class_names or dataset.class_names
    return CocoEvaluator(coco_gt if coco_gt is not None else dataset.to_coco_dict(), label_to_cat_id,
                         class_names=class_names)


def evaluate_detections(
    model: Any, loader: Any, evaluator: CocoEvaluator, accelerator: Any = None, *,
    autocast: Any = contextlib.nullcontext, progress: Any = None,
) -> CocoEvaluator:
    """The one COCO evaluation loop (trainer and `benchmark coco`): `model(images)` on every batch of `loader`
    (`(images, targets)` as `collate_fn` makes them) without gradients, detections into `evaluator` by
    `image_id`, then gathered across processes. `autocast`: a context factory around the model call;
    `progress`: a tqdm bar updated once per batch."""
    import torch  # noqa: PLC0415

    with torch.no_grad():
        for images, targets in loader:
            with autocast():
                detections = model(list(images))
            evaluator.update([int(t["image_id"]) for t in targets],
                             [{k: v.cpu() for k, v in d.items()} for d in detections])
            if progress is not None:
                progress.update(1)
    evaluator.gather(accelerator)
    return evaluator


def format_coco_summary(metrics: Mapping[str, Any]) -> str:
    """The 12 lines of ``COCOeval.summarize()`` for ``metrics`` (same text for both backends)."""
    lines = []
    for name in METRIC_NAMES:
        ap, iou, area, max_dets = _SUMMARY_LINES[name]
        title, short = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
        lines.append(
            f" {title:<18} {short} @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = {metrics[name]:0.3f}"
        )
    return "\n".join(lines)


def _fmt(value: float, scale: float, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value < 0:
        return "-"  # -1: undefined (e.g. no GT of that size)
    return f"{value * scale:.{decimals}f}"


def format_table(
    metrics: Mapping[str, Any] | Mapping[str, Mapping[str, Any]],
    columns: Sequence[str] = ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    scale: float = 100,
    decimals: int = 1,
) -> str:
    """A Markdown table of ``metrics`` (values x ``scale``), one row; undefined values (-1) shown as ``-``.

    ``metrics`` may also be ``{row_name: metrics}`` for several rows (e.g. methods), which adds a first
    ``Method`` column, as in the paper's tables.
    """
    multi = bool(metrics) and all(isinstance(v, Mapping) for k, v in metrics.items() if k != "per_class")
    rows = dict(metrics) if multi else {None: metrics}
    header = (["Method"] if multi else []) + list(columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for name, m in rows.items():
        cells = [str(name)] if multi else []
        cells += [_fmt(float(m[c]), scale, decimals) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_per_class_table(
    per_class: Mapping[str, float], num_columns: int = 3, scale: float = 100, decimals: int = 1
) -> str:
    """A Markdown table of per-class AP, ``num_columns`` (class, AP) pairs per row."""
    if "per_class" in per_class and isinstance(per_class["per_class"], Mapping):  # the evaluate() dict
        per_class = per_class["per_class"]
    items = list(per_class.items())
    num_columns = max(1, min(num_columns, len(items) or 1))
    header = ["category", "AP"] * num_columns
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for start in range(0, len(items), num_columns):
        chunk = items[start : start + num_columns]
        cells = []
        for name, ap in chunk:
            cells += [str(name), _fmt(float(ap), scale, decimals)]
        cells += [""] * (len(header) - len(cells))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
