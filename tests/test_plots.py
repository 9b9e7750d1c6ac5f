"""The numbers behind each figure: PR curves against pycocotools' AP, the confusion matrix's totals, the
dynamics series against log.jsonl; and the figures of a real (tiny) run."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dynamic_atss import plots

CATEGORIES = [{"id": 3, "name": "tree"}, {"id": 7, "name": "car"}, {"id": 9, "name": "never"}]


def coco_gt(annotations: list[dict], num_images: int = 4) -> COCO:
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "width": 100, "height": 100} for i in range(1, num_images + 1)],
                    "annotations": [{"id": n + 1, "area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0, **a}
                                    for n, a in enumerate(annotations)],
                    "categories": CATEGORIES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@pytest.fixture
def scene():
    """Random boxes of two classes (the third has no GT); detections: jittered GT boxes with wrong classes now and
    then, missed boxes, and false positives."""
    rng = np.random.default_rng(0)
    annotations, detections = [], []
    for image_id in range(1, 5):
        for _ in range(6):
            x, y = rng.uniform(0, 60, 2)
            w, h = rng.uniform(10, 40, 2)
            category = int(rng.choice([3, 7]))
            annotations.append({"image_id": image_id, "bbox": [x, y, w, h], "category_id": category})
            if rng.random() < 0.8:
                jitter = rng.normal(0, 3, 4)
                label = category if rng.random() < 0.8 else int(rng.choice([3, 7, 9]))
                detections.append([image_id, x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3],
                                   rng.uniform(0.05, 1), label])
        for _ in range(3):
            detections.append([image_id, *rng.uniform(0, 60, 2), *rng.uniform(5, 30, 2), rng.uniform(0.05, 0.6),
                               int(rng.choice([3, 7]))])
    return coco_gt(annotations), np.array(detections, dtype=float)


def test_the_area_under_each_pr_curve_is_the_ap_pycocotools_reports(scene):
    gt, detections = scene
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCOeval(gt, gt.loadRes(detections), iouType="bbox")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    curves = plots.pr_curves(plots._coco_eval(gt, detections, None))
    assert curves["recall"].shape == (101,) and curves["per_class"].shape == (3, 101)
    assert curves["all"].mean() == pytest.approx(reference.stats[0], abs=1e-3)
    assert curves["all_50"].mean() == pytest.approx(reference.stats[1], abs=1e-3)
    assert np.isnan(curves["per_class"][2]).all()  # "never" has no GT box: no curve, not a zero one
    assert 0 < reference.stats[0] < 1  # a scene with something to measure


def test_the_confusion_matrix_counts_every_gt_box_once():
    boxes = [[10, 10, 20, 20], [50, 50, 20, 20], [10, 60, 20, 20]]
    gt = coco_gt([{"image_id": 1, "bbox": b, "category_id": c} for b, c in zip(boxes, (3, 7, 7))], num_images=1)
    detections = np.array([
        [1, 10, 10, 20, 20, 0.9, 3],   # tree found
        [1, 51, 51, 20, 20, 0.8, 3],   # a car called a tree
        [1, 80, 0, 10, 10, 0.7, 7],    # a car where there is nothing
        [1, 10, 60, 20, 20, 0.1, 7],   # below the score threshold: the car at (10, 60) is missed
    ])
    matrix = plots.confusion_matrix(gt, detections, [3, 7, 9], score_threshold=0.25, iou_threshold=0.5)
    expected = np.zeros((4, 4), dtype=int)
    expected[0, 0] = 1  # tree -> tree
    expected[1, 0] = 1  # car -> tree
    expected[3, 1] = 1  # background -> car
    expected[1, 3] = 1  # car -> missed
    assert (matrix == expected).all()


def test_confusion_matrix_gt_totals_equal_the_gt_boxes(scene):
    gt, detections = scene
    matrix = plots.confusion_matrix(gt, detections, [3, 7, 9])
    assert matrix[:3].sum() == len(gt.dataset["annotations"])
    assert matrix[:3, :3].sum() > 0  # matched boxes, not only misses


def test_the_dynamics_figure_draws_the_logged_values(tmp_path, monkeypatch):
    rows = [{"step": s, "loss": 1.0 / s, "loss_cls": 0.5 / s, "lr": 0.01, "assign/pos_pred_iou": 0.3 + 0.01 * s,
             "assign/pos_anchor_iou": 0.5 - 0.01 * s, "assign/frac_not_atss": 0.02 * s, "assign/pos_per_gt": 5 + s,
             "assign/iou_threshold": 0.4 + 0.001 * s} for s in (10, 20, 30)]
    rows.insert(1, {"step": 20, "eval/AP": 0.1, "eval/AP50": 0.2})
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plots.plot_dynamics({"run": rows}, tmp_path / "assignment.png")
    drawn = {line.get_gid(): (list(line.get_xdata()), list(line.get_ydata()))
             for axis in figures[0].axes for line in axis.lines}
    for key in plots.DYNAMICS_KEYS:
        assert drawn[key] == ([10, 20, 30], [row[key] for row in rows if key in row]), key


def test_a_run_folder_gets_every_figure_and_the_plot_command_redraws_them(tmp_path, capsys):
    from dynamic_atss.cli.plot import main as plot_main
    from dynamic_atss.engine import load_config, train

    from helpers_trainer import TINY_RECIPE, write_recipe

    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"), checkpoint_every=0,
                          optim={**TINY_RECIPE["optim"], "max_iters": 4}, eval_every=2)
    summary = train(load_config(recipe))
    names = {"training.png", "ap.png", "assignment.png", "pr.png", "per_class_ap.png", "confusion.png", "example.png"}
    assert {p.split("/")[-1] for p in summary["plots"]} == names
    evaluated = json.loads((tmp_path / "run" / "eval" / "ground_truth.json").read_text())
    assert len(evaluated["images"]) == TINY_RECIPE["data"]["num_val"]
    for name in names - {"example.png"}:
        (tmp_path / "run" / "plots" / name).unlink()
    assert plot_main([str(tmp_path / "run"), "--out", str(tmp_path / "again")]) == 0
    assert {p.name for p in (tmp_path / "again").iterdir()} == names - {"example.png"}
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "](plots/assignment.png)" in card and (tmp_path / "run" / "model" / "plots" / "assignment.png").is_file()

