"""Figures of a training run and of an evaluation (matplotlib, the `plot` extra; headless, Agg).

From a run folder's `log.jsonl` (`plot_run`, `dynamic-atss plot RUN_DIR`, and the end of `train`):

* `training.png`: each loss part (raw and smoothed) and the learning rate over iterations;
* `ap.png`: AP and AP50 of the periodic evaluations (EMA and trained weights when both were evaluated);
* `assignment.png`: the assignment dynamics the paper argues from -- the mean predicted and anchor IoU of the
  positives, the share of positives plain ATSS would not have picked, positives per GT box and the IoU
  threshold -- over iterations; `plot_dynamics` draws several runs in one figure (`demo --compare`).

From an evaluation (`evaluation_figures`: a COCO ground truth and the detections; a run's `eval/` folder, or
`benchmark coco --plots`): precision-recall curves (all classes and per class, up to 20) at IoU 0.5 and averaged
over IoU 0.5:0.95 (`pr.png`), per-class AP bars (`per_class_ap.png`), and a confusion matrix with a background
row and column (`confusion.png`). The numbers behind each figure come from public functions (`pr_curves`,
`confusion_matrix`, `log_series`) so that they can be checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DYNAMICS_KEYS", "confusion_matrix", "evaluation_figures", "log_series", "plot_dynamics", "plot_run",
           "pr_curves", "read_run_log"]

# The assigner's statistics as the trainer logs them (`assign/<key>`), with what each panel calls them.
DYNAMICS_KEYS = {
    "assign/pos_pred_iou": "mean predicted IoU of positives",
    "assign/pos_anchor_iou": "mean anchor IoU of positives",
    "assign/frac_not_atss": "share of positives plain ATSS would not pick",
    "assign/pos_per_gt": "positives per GT box",
    "assign/iou_threshold": "IoU threshold (mean over GT boxes)",
}
EVAL_DIR = "eval"  # in a run folder: detections.json and ground_truth.json of the final evaluation
PLOTS_DIR = "plots"
MAX_CLASS_CURVES = 20


def _pyplot() -> Any:
    """matplotlib's pyplot on the headless Agg backend; a clear error without the `plot` extra."""
    try:
        import matplotlib  # noqa: PLC0415
    except ImportError:
        from .errors import UserInputError  # noqa: PLC0415

        raise UserInputError("figures need matplotlib: pip install 'dynamic-atss[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def read_run_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of `RUN_DIR/log.jsonl` (a torn last line of a running or killed run is left out)."""
    rows = []
    for line in (Path(run_dir) / "log.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def log_series(rows: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key` over the rows that hold it, in step order."""
    pairs = sorted((row["step"], row[key]) for row in rows if isinstance(row.get(key), (int, float)))
    return np.array([p[0] for p in pairs], dtype=float), np.array([p[1] for p in pairs], dtype=float)


def smooth(values: np.ndarray, weight: float = 0.9) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average, bias-corrected at the start."""
    out, average = np.empty_like(values), 0.0
    for i, value in enumerate(values):
        average = weight * average + (1 - weight) * value
        out[i] = average / (1 - weight ** (i + 1))
    return out


def _mean(curve: np.ndarray) -> float:
    """The mean of a precision curve (its AP); NaN for a class without GT boxes (all NaN), without a warning."""
    return float(np.nanmean(curve)) if not np.isnan(curve).all() else float("nan")


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def plot_training(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Each loss part (thin: as logged, thick: smoothed) and the learning rate; None without loss rows."""
    parts = sorted({k for row in rows for k in row if k.startswith("loss")}, key=lambda k: (k != "loss", k))
    if not parts:
        return None
    plt = _pyplot()
    fig, (losses, lr) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    for i, key in enumerate(parts):
        steps, values = log_series(rows, key)
        color = f"C{i}"
        losses.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        losses.plot(steps, smooth(values), color=color, linewidth=1.8, label=key)
    losses.set(title="training losses (thick: smoothed)", xlabel="iteration", ylabel="loss")
    losses.legend(fontsize=8)
    losses.grid(alpha=0.3)
    steps, values = log_series(rows, "lr")
    lr.plot(steps, values, color="black")
    lr.set(title="learning rate", xlabel="iteration")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    lr.grid(alpha=0.3)
    return _save(fig, path)


def plot_ap(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """AP and AP50 (percent) of the evaluations over iterations; None when the run has no evaluation."""
    curves = [(f"{prefix}/{metric}", label, style) for prefix, label in (("eval", ""), ("eval_raw", " (trained weights)"))
              for metric, style in (("AP", "-o"), ("AP50", "--s"))]
    drawn = [(key, label, style) for key, label, style in curves if len(log_series(rows, key)[0])]
    if not drawn:
        return None
    ema = any(key.startswith("eval_raw/") for key, _, _ in drawn)
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(6.5, 3.8))
    for key, label, style in drawn:
        steps, values = log_series(rows, key)
        name = key.split("/")[1] + (" (EMA weights)" if ema and key.startswith("eval/") else label)
        axis.plot(steps, 100 * values, style, label=name, color="C0" if key.startswith("eval/") else "C1")
    axis.set(title="COCO AP on the validation set", xlabel="iteration", ylabel="percent")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return _save(fig, path)


def plot_dynamics(runs: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """The assignment dynamics of one or more runs (label -> log rows) in four panels; None without them."""
    if not any(log_series(rows, "assign/pos_pred_iou")[0].size for rows in runs.values()):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    panels = [(axes[0, 0], ("assign/pos_pred_iou", "assign/pos_anchor_iou"), "IoU of the positives with their GT"),
              (axes[0, 1], ("assign/frac_not_atss",), DYNAMICS_KEYS["assign/frac_not_atss"]),
              (axes[1, 0], ("assign/pos_per_gt",), DYNAMICS_KEYS["assign/pos_per_gt"]),
              (axes[1, 1], ("assign/iou_threshold",), DYNAMICS_KEYS["assign/iou_threshold"])]
    for axis, keys, title in panels:
        for r, (run_label, rows) in enumerate(runs.items()):
            for k, key in enumerate(keys):
                steps, values = log_series(rows, key)
                label = ", ".join(filter(None, [run_label if len(runs) > 1 else "",
                                                "predicted" if key.endswith("pred_iou") else
                                                "anchor" if key.endswith("anchor_iou") else ""]))
                axis.plot(steps, values, color=f"C{r}", linestyle=("-", "--")[k], label=label or None, gid=key)
        axis.set(title=title, xlabel="iteration")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    fig.suptitle("label assignment over training (as logged)")
    return _save(fig, path)


# -------------------------------------------------------------------------------------------------- evaluation
def _coco_eval(coco_gt: Any, detections: np.ndarray, image_ids: list[int] | None) -> Any:
    """pycocotools' COCOeval, evaluated and accumulated (`eval['precision']`: T x R x K x A x M)."""
    import contextlib  # noqa: PLC0415
    import io  # noqa: PLC0415

    from pycocotools.coco import COCO  # noqa: PLC0415
    from pycocotools.cocoeval import COCOeval  # noqa: PLC0415

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_dt = coco_gt.loadRes(detections) if len(detections) else COCO()
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            coco_eval.params.imgIds = sorted(image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def pr_curves(coco_eval: Any) -> dict[str, Any]:
    """Precision over COCO's 101 recall points (all areas, 100 detections per image) from an accumulated
    COCOeval: `recall` (101,), `all_50` / `all` (101,) over the classes that have GT boxes, at IoU 0.5 and
    averaged over IoU 0.5:0.95, and `per_class_50` / `per_class` (K, 101), NaN for a class without GT. The mean
    of a curve is its AP as pycocotools computes it (AP50 and AP: `all_50.mean()`, `all.mean()`)."""
    import warnings  # noqa: PLC0415

    precision = np.asarray(coco_eval.eval["precision"])[:, :, :, 0, -1]  # T x R x K
    masked = np.where(precision > -1, precision, np.nan)  # -1: a class without GT boxes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the mean of a class without GT: NaN, as intended
        return {"recall": np.asarray(coco_eval.params.recThrs), "per_class": np.nanmean(masked, axis=0).T,
                "per_class_50": masked[0].T, "all": np.nanmean(masked, axis=(0, 2)),
                "all_50": np.nanmean(masked[0], axis=1)}


def confusion_matrix(coco_gt: Any, detections: np.ndarray, category_ids: list[int], image_ids: list[int] | None = None,
                     score_threshold: float = 0.25, iou_threshold: float = 0.5) -> np.ndarray:
    """(K+1, K+1) counts, rows: the GT class (last row: background, i.e. a detection matching no GT box),
    columns: the detected class (last column: background, i.e. a GT box no detection matched). Per image, the
    detections scoring at least `score_threshold` are matched best score first to the unmatched GT box of any
    class with the highest IoU >= `iou_threshold` (crowd boxes ignored). Row sums over the classes = GT boxes."""
    import torch  # noqa: PLC0415
    from torchvision.ops import box_convert, box_iou  # noqa: PLC0415

    index = {cat: k for k, cat in enumerate(category_ids)}
    background = len(category_ids)
    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)
    detections = np.asarray(detections, dtype=float).reshape(-1, 7)
    for image_id in (image_ids if image_ids is not None else coco_gt.getImgIds()):
        gts = [a for a in coco_gt.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0) and a["category_id"] in index]
        gt_boxes = torch.tensor([a["bbox"] for a in gts], dtype=torch.float64).reshape(-1, 4)
        gt_labels = [index[a["category_id"]] for a in gts]
        rows = detections[(detections[:, 0] == image_id) & (detections[:, 5] >= score_threshold)]
        rows = rows[np.argsort(-rows[:, 5], kind="stable")]
        det_boxes = torch.tensor(rows[:, 1:5], dtype=torch.float64).reshape(-1, 4)
        iou = box_iou(box_convert(det_boxes, "xywh", "xyxy"), box_convert(gt_boxes, "xywh", "xyxy")).numpy()
        matched = np.zeros(len(gts), dtype=bool)
        for d, row in enumerate(rows):
            predicted = index.get(int(row[6]), None)
            if predicted is None:
                continue
            candidates = np.where(~matched & (iou[d] >= iou_threshold))[0]
            if len(candidates):
                g = candidates[np.argmax(iou[d][candidates])]
                matched[g] = True
                matrix[gt_labels[g], predicted] += 1
            else:
                matrix[background, predicted] += 1
        for g in np.where(~matched)[0]:
            matrix[gt_labels[g], background] += 1
    return matrix


def evaluation_figures(coco_gt: Any, detections: np.ndarray, out_dir: str | Path, class_names: list[str] | None = None,
                       image_ids: list[int] | None = None, score_threshold: float = 0.25,
                       iou_threshold: float = 0.5) -> list[Path]:
    """`pr.png`, `per_class_ap.png` and `confusion.png` in `out_dir` for `detections` ((N, 7) rows `[image_id,
    x, y, w, h, score, category_id]`) against the pycocotools `coco_gt`, on `image_ids` (default: all)."""
    out_dir = Path(out_dir)
    category_ids = sorted(coco_gt.getCatIds())
    names = class_names or [str(coco_gt.cats[c].get("name", c)) for c in category_ids]
    coco_eval = _coco_eval(coco_gt, detections, image_ids)
    curves = pr_curves(coco_eval)
    plt = _pyplot()
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    shown = [k for k in range(len(names)) if not np.isnan(curves["per_class"][k]).all()][:MAX_CLASS_CURVES]
    for axis, suffix, title in ((axes[0], "_50", "IoU 0.5"), (axes[1], "", "IoU 0.5:0.95 (mean)")):
        for k in shown:
            axis.plot(curves["recall"], curves[f"per_class{suffix}"][k], linewidth=0.9, alpha=0.7,
                      label=f"{names[k]} {100 * _mean(curves[f'per_class{suffix}'][k]):.1f}")
        axis.plot(curves["recall"], curves[f"all{suffix}"], color="black", linewidth=2.5,
                  label=f"all classes {100 * _mean(curves[f'all{suffix}']):.1f}")
        axis.set(title=f"precision-recall, {title}", xlabel="recall", xlim=(0, 1), ylim=(0, 1.02))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, title="AP (%)", title_fontsize=7, loc="lower left")
    axes[0].set_ylabel("precision")
    paths.append(_save(fig, out_dir / "pr.png"))

    per_class_ap = [100 * _mean(curves["per_class"][k]) for k in range(len(names))]
    fig, axis = plt.subplots(figsize=(max(5.0, 0.45 * len(names) + 2), 3.8))
    axis.bar(range(len(names)), np.nan_to_num(per_class_ap), color="C0")
    axis.set_xticks(range(len(names)), names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    axis.set(title="AP per class (IoU 0.5:0.95, %)", ylabel="AP (%)")
    axis.grid(alpha=0.3, axis="y")
    paths.append(_save(fig, out_dir / "per_class_ap.png"))

    matrix = confusion_matrix(coco_gt, detections, category_ids, image_ids, score_threshold, iou_threshold)
    labels = [*names, "background"]
    fig, axis = plt.subplots(figsize=(max(4.5, 0.5 * len(labels) + 2.5),) * 2)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)  # shaded per row: where each class goes
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        axis.text(j, i, str(count), ha="center", va="center", fontsize=8,
                  color="white" if shares[i, j] > 0.5 else "black")
    axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axis.set_yticks(range(len(labels)), labels)
    axis.set(xlabel="detected as", ylabel="ground truth (shade: share of the row)",
             title=f"confusion matrix (score >= {score_threshold:g}, IoU >= {iou_threshold:g})")
    paths.append(_save(fig, out_dir / "confusion.png"))
    return paths


def write_evaluation(evaluator: Any, directory: str | Path) -> Path:
    """Keep what `evaluation_figures` needs of a `CocoEvaluator`: `detections.json` (COCO results) and
    `ground_truth.json` (the evaluated images and their annotations) in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    evaluator.write_results_json(directory / "detections.json")
    dataset = evaluator.coco_gt.dataset
    ids = set(evaluator.image_ids)
    kept = {**dataset, "images": [i for i in dataset.get("images", []) if i["id"] in ids],
            "annotations": [a for a in dataset.get("annotations", []) if a["image_id"] in ids]}
    (directory / "ground_truth.json").write_text(json.dumps(kept))
    return directory


def _load_evaluation(directory: Path) -> tuple[Any, np.ndarray, list[int]]:
    import contextlib  # noqa: PLC0415
    import io  # noqa: PLC0415

    from pycocotools.coco import COCO  # noqa: PLC0415

    coco_gt = COCO()
    coco_gt.dataset = json.loads((directory / "ground_truth.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    results = json.loads((directory / "detections.json").read_text())
    detections = np.array([[r["image_id"], *r["bbox"], r["score"], r["category_id"]] for r in results],
                          dtype=float).reshape(-1, 7)
    return coco_gt, detections, [i["id"] for i in coco_gt.dataset["images"]]


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Every figure a run folder allows (finished or not), into `RUN_DIR/plots/` (or `out_dir`)."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / PLOTS_DIR
    rows = read_run_log(run_dir)
    paths = [plot_training(rows, out_dir / "training.png"), plot_ap(rows, out_dir / "ap.png"),
             plot_dynamics({run_dir.name: rows}, out_dir / "assignment.png")]
    if (run_dir / EVAL_DIR / "detections.json").is_file():
        coco_gt, detections, image_ids = _load_evaluation(run_dir / EVAL_DIR)
        paths += evaluation_figures(coco_gt, detections, out_dir, image_ids=image_ids)
    return [p for p in paths if p is not None]
