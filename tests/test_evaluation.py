"""Tests for dynamic_atss.evaluation on a tiny hand-made COCO json (no data download, < 2 s)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import zipfile

import pytest
import torch

from dynamic_atss.evaluation import (
    METRIC_NAMES,
    CocoEvaluator,
    UnknownImageIdError,
    coco_category_info,
    format_per_class_table,
    format_table,
    has_faster_coco_eval,
    load_coco,
    make_label_maps,
)

CAT_IDS = [1, 7, 42]  # non-contiguous on purpose
NAMES = ["person", "dog", "zebra"]
# image id -> list of (category id, xyxy box); small (<32^2), medium, large (>96^2) boxes
GT = {
    11: [(1, (10, 10, 30, 30)), (7, (50, 40, 100, 90)), (42, (20, 100, 180, 190))],
    22: [(7, (5, 5, 20, 25)), (7, (100, 100, 150, 160)), (1, (30, 60, 140, 200))],
    33: [(42, (0, 0, 120, 110)), (1, (150, 150, 170, 168))],
}


def _make_dataset(with_annotations: bool = True) -> dict:
    images = [{"id": i, "width": 200, "height": 210, "file_name": f"{i:012d}.jpg"} for i in GT]
    cats = [{"id": c, "name": n, "supercategory": "thing"} for c, n in zip(CAT_IDS, NAMES)]
    dataset = {"images": images, "categories": cats}
    if with_annotations:
        anns = []
        for image_id, objs in GT.items():
            for cat, (x1, y1, x2, y2) in objs:
                w, h = x2 - x1, y2 - y1
                anns.append(
                    {"id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                     "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0}
                )  # fmt: skip
        dataset["annotations"] = anns
    return dataset


@pytest.fixture()
def dataset() -> dict:
    return _make_dataset()


@pytest.fixture()
def label_maps():
    return make_label_maps(CAT_IDS)


def _perfect_prediction(image_id: int, cat_id_to_label: dict) -> dict:
    objs = GT[image_id]
    return {
        "boxes": torch.tensor([box for _, box in objs], dtype=torch.float32),
        "scores": torch.linspace(0.9, 0.5, len(objs)),
        "labels": torch.tensor([cat_id_to_label[c] for c, _ in objs], dtype=torch.int64),
    }


def _backends() -> list:
    faster = pytest.param(
        "faster_coco_eval",
        marks=pytest.mark.skipif(not has_faster_coco_eval(), reason="faster-coco-eval not installed"),
    )
    return ["pycocotools", faster]


def _direct_cocoeval(dataset: dict, rows: list, img_ids: list) -> tuple:
    """pycocotools COCOeval run by hand on the given result rows: (stats, eval['precision'])."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = load_coco(copy.deepcopy(dataset))
        dt = gt.loadRes(copy.deepcopy(rows))
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats, ev.eval["precision"]


# ----------------------------------------------------------------------------- label maps


def test_label_maps_round_trip_non_contiguous():
    label_to_cat, cat_to_label = make_label_maps(CAT_IDS)
    assert label_to_cat == [1, 7, 42]
    assert cat_to_label == {1: 0, 7: 1, 42: 2}
    assert all(cat_to_label[label_to_cat[i]] == i for i in range(3))
    assert all(label_to_cat[cat_to_label[c]] == c for c in CAT_IDS)
    with pytest.raises(ValueError, match="duplicate"):
        make_label_maps([1, 7, 7])


def test_coco_category_info_sorted(dataset):
    shuffled = copy.deepcopy(dataset)
    shuffled["categories"] = shuffled["categories"][::-1]
    label_to_cat, names = coco_category_info(shuffled)
    assert label_to_cat == [1, 7, 42]
    assert names == NAMES


def test_update_converts_to_coco_rows(dataset, label_maps):
    label_to_cat, _ = label_maps
    ev = CocoEvaluator(dataset, label_to_cat, backend="pycocotools")
    pred = {
        "boxes": torch.tensor([[10.0, 20.0, 40.0, 60.0], [1.5, 2.5, 3.5, 7.5]]),
        "scores": torch.tensor([0.75, 0.25]),
        "labels": torch.tensor([2, 1]),
    }
    ev.update(torch.tensor([22]), [pred])
    rows = ev.results()
    assert rows == [
        {"image_id": 22, "category_id": 42, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.75},
        {"image_id": 22, "category_id": 7, "bbox": [1.5, 2.5, 2.0, 5.0], "score": 0.25},
    ]
    assert all(type(r["image_id"]) is int and type(r["category_id"]) is int for r in rows)
    assert all(type(r["score"]) is float for r in rows)


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("backend", _backends())
def test_perfect_detections_give_ap_1(dataset, label_maps, backend):
    label_to_cat, cat_to_label = label_maps
    ev = CocoEvaluator(dataset, label_to_cat, backend=backend)
    assert ev.backend == backend
    ids = list(GT)
    ev.update(ids[:2], [_perfect_prediction(i, cat_to_label) for i in ids[:2]])
    ev.update(ids[2:], [_perfect_prediction(i, cat_to_label) for i in ids[2:]])
    m = ev.evaluate(per_class=True)
    assert set(METRIC_NAMES) <= set(m)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "ARs", "ARm", "ARl"):
        assert m[name] == pytest.approx(1.0), name
    assert m["per_class"] == {"person": pytest.approx(1.0), "dog": pytest.approx(1.0), "zebra": pytest.approx(1.0)}


def test_evaluation_restricted_to_updated_images(dataset, label_maps):
    """`--limit N`: images never passed to update() must not count as misses."""
    label_to_cat, cat_to_label = label_maps
    ev = CocoEvaluator(dataset, label_to_cat, backend="pycocotools")
    ev.update([33], [_perfect_prediction(33, cat_to_label)])
    m = ev.evaluate(per_class=True)
    assert m["AP"] == pytest.approx(1.0)
    assert m["APm"] == -1.0  # image 33 has no medium object: undefined, as pycocotools says
    assert m["per_class"]["dog"] == -1.0  # no dog in image 33
    # an image updated with no detections does count: its GT become misses
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    ev.update([22], [empty])
    assert ev.image_ids == [33, 22]
    assert ev.evaluate()["AP"] < 0.9


def _hand_made_case(cat_to_label):
    # Image 11, class "dog" (cat 7): GT (50,40,100,90). Another image 22 dog GT at (100,100,150,160) is missed.
    # A false positive (score 0.9) ranks above the true positive (0.8).
    preds = {
        11: {
            "boxes": torch.tensor([[120.0, 0.0, 190.0, 60.0], [50.0, 40.0, 100.0, 90.0], [10.0, 10.0, 30.0, 30.0]]),
            "scores": torch.tensor([0.9, 0.8, 0.7]),
            "labels": torch.tensor([cat_to_label[7], cat_to_label[7], cat_to_label[1]]),
        },
        22: {
            "boxes": torch.tensor([[5.0, 5.0, 20.0, 25.0], [31.0, 62.0, 139.0, 197.0]]),
            "scores": torch.tensor([0.6, 0.55]),
            "labels": torch.tensor([cat_to_label[7], cat_to_label[1]]),
        },
    }
    return list(preds), list(preds.values())


@pytest.mark.parametrize("backend", _backends())
def test_hand_made_case_matches_direct_cocoeval(dataset, label_maps, backend):
    label_to_cat, cat_to_label = label_maps
    ev = CocoEvaluator(dataset, label_to_cat, backend=backend)
    ids, preds = _hand_made_case(cat_to_label)
    ev.update(ids, preds)
    m = ev.evaluate(per_class=True)
    assert 0.0 < m["AP"] < 1.0  # non-trivial
    assert ev.summary.splitlines()[0].endswith(f"] = {m['AP']:0.3f}")

    stats, precision = _direct_cocoeval(dataset, ev.results(), sorted(ids))
    for name, value in zip(METRIC_NAMES, stats):
        assert m[name] == pytest.approx(value, abs=1e-12), name
    for k, name in enumerate(NAMES):  # params.catIds = [1, 7, 42] = label order here
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        assert m["per_class"][name] == pytest.approx(p.mean() if p.size else -1.0, abs=1e-12)

    # Dog by hand: ranking FP, TP(img 11), TP(img 22 small), 3 GT -> precision 0, 1/2, 2/3 at recall 0, 1/3, 2/3
    # (IoU 1 for both TPs, so every IoU threshold agrees). Interpolated: 2/3 on recall points 0..0.66 (67 of them),
    # 0 on 0.67..1 -> AP = 67 * (2/3) / 101.
    assert m["per_class"]["dog"] == pytest.approx(67 * (2 / 3) / 101, abs=1e-12)
    # Zebra: one GT (image 11), never detected -> 0. Person: two GT, both found, the second at IoU
    # 14580 / 15400 = 0.947, so a miss + FP at the 0.95 threshold only (AP there: 51 points * 1 / 101).
    assert m["per_class"]["zebra"] == 0.0
    assert m["per_class"]["person"] == pytest.approx((9 + 51 / 101) / 10, abs=1e-12)


def test_backends_agree(dataset, label_maps):
    if not has_faster_coco_eval():
        pytest.skip("faster-coco-eval not installed")
    label_to_cat, cat_to_label = label_maps
    ids, preds = _hand_made_case(cat_to_label)
    results = {}
    assert CocoEvaluator(dataset, label_to_cat).backend == "faster_coco_eval"  # "auto" picks it
    for backend in ("pycocotools", "faster_coco_eval"):
        ev = CocoEvaluator(load_coco(dataset), label_to_cat, backend=backend)  # a pycocotools COCO works for both
        ev.update(ids, preds)
        results[backend] = ev.evaluate(per_class=True)
    a, b = results["pycocotools"], results["faster_coco_eval"]
    for name in METRIC_NAMES:
        assert a[name] == pytest.approx(b[name], abs=1e-9), name
    assert a["per_class"] == pytest.approx(b["per_class"], abs=1e-9)


def test_no_detections_gives_zeros(dataset, label_maps):
    label_to_cat, _ = label_maps
    ev = CocoEvaluator(dataset, label_to_cat, backend="pycocotools")
    assert ev.evaluate() == {name: 0.0 for name in METRIC_NAMES}
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    ev.update([11, 22], [empty, empty])
    m = ev.evaluate(per_class=True)
    assert all(m[name] == 0.0 for name in METRIC_NAMES)
    assert m["per_class"] == {n: 0.0 for n in NAMES}


# ----------------------------------------------------------------------------- errors


def test_unknown_image_id_raises_naming_it(dataset, label_maps):
    label_to_cat, cat_to_label = label_maps
    ev = CocoEvaluator(dataset, label_to_cat, backend="pycocotools")
    with pytest.raises(KeyError, match="98765"):
        ev.update([11, 98765], [_perfect_prediction(11, cat_to_label)] * 2)
    with pytest.raises(ValueError, match="98765"):
        ev.update([98765], [_perfect_prediction(11, cat_to_label)])
    assert isinstance(UnknownImageIdError("x"), KeyError)
    assert len(ev) == 0  # nothing of the failed batch was kept


def test_label_outside_mapping_raises_naming_it(dataset, label_maps):
    label_to_cat, _ = label_maps
    ev = CocoEvaluator(dataset, label_to_cat, backend="pycocotools")
    pred = {"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]] * 2), "scores": torch.tensor([0.5, 0.4]),
            "labels": torch.tensor([0, 3])}  # fmt: skip
    with pytest.raises(ValueError, match=r"\[3\]"):
        ev.update([11], [pred])
    # a category of the model that the file lacks is not scored (issue 25), never an error after training
    assert CocoEvaluator(dataset, [1, 7, 99], backend="pycocotools").unscored_cat_ids == [99]


# ----------------------------------------------------------------------------- distributed


class _FakeAccelerator:
    num_processes = 2


def test_gather_deduplicates_padded_images(dataset, label_maps, monkeypatch):
    import accelerate.utils

    label_to_cat, cat_to_label = label_maps
    rank0 = CocoEvaluator(dataset, label_to_cat, backend="pycocotools")
    rank1 = CocoEvaluator(dataset, label_to_cat, backend="pycocotools")
    rank0.update([11, 33], [_perfect_prediction(i, cat_to_label) for i in (11, 33)])
    rank1.update([22, 11], [_perfect_prediction(i, cat_to_label) for i in (22, 11)])  # 11 repeated: padding
    payloads = [list(rank0._per_image.items()), list(rank1._per_image.items())]
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda obj: [x for p in payloads for x in p])

    rank0.gather(None)  # no accelerator: no-op
    assert rank0.image_ids == [11, 33]
    rank0.gather(_FakeAccelerator())
    assert rank0.image_ids == [11, 33, 22]
    assert rank0.num_duplicates == 1
    assert len(rank0.results()) == sum(len(v) for v in GT.values())
    assert rank0.evaluate()["AP"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- files


def test_test_dev_submission(tmp_path, label_maps):
    label_to_cat, cat_to_label = label_maps
    image_info = _make_dataset(with_annotations=False)  # like image_info_test-dev2017.json
    ev = CocoEvaluator(image_info, label_to_cat, backend="pycocotools")
    ids = list(GT)
    ev.update(ids[:2], [_perfect_prediction(i, cat_to_label) for i in ids[:2]])
    with pytest.raises(ValueError, match=r"1 of 3 images.*33"):
        ev.write_test_dev_submission(tmp_path, "dyatss")
    assert not list(tmp_path.iterdir())

    pred = {"boxes": torch.tensor([[10.123456, 20.0, 40.5, 60.25]]), "scores": torch.tensor([0.123456789]),
            "labels": torch.tensor([2])}  # fmt: skip
    ev.update([33], [pred])
    zip_path = ev.write_test_dev_submission(tmp_path / "sub", "dyatss-r50")
    json_name = "detections_test-dev2017_dyatss-r50_results.json"
    assert zip_path == tmp_path / "sub" / "detections_test-dev2017_dyatss-r50_results.zip"
    assert (tmp_path / "sub" / json_name).is_file()
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.namelist() == [json_name]
        rows = json.loads(zf.read(json_name))
    assert isinstance(rows, list)
    assert {r["image_id"] for r in rows} == set(GT)
    assert len(rows) == len(GT[11]) + len(GT[22]) + 1
    for r in rows:
        assert set(r) == {"image_id", "category_id", "bbox", "score"}
        assert r["category_id"] in CAT_IDS
        assert len(r["bbox"]) == 4
    last = [r for r in rows if r["image_id"] == 33][0]
    assert last["category_id"] == 42
    assert last["bbox"] == [10.12, 20.0, 30.38, 40.25]  # xywh, 2 decimals
    assert last["score"] == 0.12346
    first = rows[0]  # image 11, person at (10, 10, 30, 30)
    assert first["bbox"] == [10.0, 10.0, 20.0, 20.0]

    with pytest.warns(UserWarning, match="written as"):
        path = ev.write_test_dev_submission(tmp_path, "dy_atss r50")
    assert path.name == "detections_test-dev2017_dy-atss-r50_results.zip"


def test_results_json_from_path_gt(tmp_path, dataset, label_maps):
    label_to_cat, cat_to_label = label_maps
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(dataset))
    ev = CocoEvaluator(str(ann_file), label_to_cat, backend="pycocotools")
    ev.update([11], [_perfect_prediction(11, cat_to_label)])
    out = ev.write_results_json(tmp_path / "res.json")
    rows = json.loads(out.read_text())
    assert [r["category_id"] for r in rows] == [1, 7, 42]
    assert rows[1]["bbox"] == [50.0, 40.0, 50.0, 50.0]


# ----------------------------------------------------------------------------- tables


def test_format_table():
    m = dict.fromkeys(METRIC_NAMES, 0.5)
    m.update(AP=0.4706, APs=-1.0)
    table = format_table(m)
    assert table.splitlines() == [
        "| AP | AP50 | AP75 | APs | APm | APl |",
        "|---|---|---|---|---|---|",
        "| 47.1 | 50.0 | 50.0 | - | 50.0 | 50.0 |",
    ]
    two = format_table({"ATSS": m, "Dynamic ATSS": dict(m, AP=0.5)}, columns=("AP", "AR100"))
    assert two.splitlines()[0] == "| Method | AP | AR100 |"
    assert two.splitlines()[3] == "| Dynamic ATSS | 50.0 | 50.0 |"
    per = format_per_class_table({"a": 0.5, "b": 0.25, "c": -1.0, "d": 1.0}, num_columns=3)
    assert per.splitlines() == [
        "| category | AP | category | AP | category | AP |",
        "|---|---|---|---|---|---|",
        "| a | 50.0 | b | 25.0 | c | - |",
        "| d | 100.0 |  |  |  |  |",
    ]


def test_the_one_evaluation_loop_over_a_dataset_subset(dataset, label_maps):
    """`evaluator_for` + `evaluate_detections`: what the trainer and `benchmark coco` both run."""
    from dynamic_atss.evaluation import evaluate_detections, evaluator_for

    label_to_cat_id, cat_id_to_label = label_maps

    class Dataset(torch.utils.data.Dataset):
        def __init__(self):
            self.label_to_cat_id, self.class_names, self.ids = label_to_cat_id, NAMES, list(GT)

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, index):
            return torch.zeros(3, 8, 8), {"image_id": self.ids[index]}

        def to_coco_dict(self):
            return dataset

    calls = []

    def model(images):
        calls.append(len(images))
        return [_perfect_prediction(GT_ORDER.pop(0), cat_id_to_label) for _ in images]

    GT_ORDER = list(GT)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(Dataset(), range(3)), batch_size=2,
                                         collate_fn=lambda batch: tuple(zip(*batch)))
    evaluator = evaluate_detections(model, loader, evaluator_for(loader.dataset))
    assert calls == [2, 1] and len(evaluator) == 3
    assert evaluator.evaluate()["AP"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------- issue 25
def _coco_file(path, categories, annotations):
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 100}],
        "categories": [{"id": c, "name": f"c{c}"} for c in categories],
        "annotations": [{"id": k + 1, "image_id": 1, "category_id": c, "bbox": box, "area": box[2] * box[3],
                         "iscrowd": 0} for k, (c, box) in enumerate(annotations)]}))
    return path


def test_the_model_s_categories_score_a_val_file_that_lacks_one(tmp_path):
    """Train categories {1, 5, 90}, val {1, 90}: the evaluator built its mapping from the val file, so the model's
    label for category 5 was scored as 90 (or, with the model's mapping, it raised after training)."""
    gt = _coco_file(tmp_path / "val.json", [1, 90], [(1, [10, 10, 30, 30]), (90, [50, 50, 40, 40])])
    evaluator = CocoEvaluator(str(gt), [1, 5, 90], backend="pycocotools")
    assert evaluator.unscored_cat_ids == [5]
    boxes = torch.tensor([[10.0, 10, 40, 40], [50, 50, 90, 90], [50, 50, 90, 90]])
    evaluator.update([1], [{"boxes": boxes, "scores": torch.tensor([0.9, 0.8, 0.95]),
                            "labels": torch.tensor([0, 2, 1])}])  # label 1 (category 5) is not scored, not renamed
    metrics = evaluator.evaluate(per_class=True)
    assert metrics["AP"] == pytest.approx(1.0)
    assert {row["category_id"] for row in evaluator.results()} == {1, 90}


def test_check_categories_relabels_val_to_the_training_categories(tmp_path):
    from dynamic_atss.data import CocoDetection
    from dynamic_atss.data.checks import check_categories
    from dynamic_atss.errors import UserInputError
    from dynamic_atss.evaluation import evaluator_for

    train = CocoDetection(tmp_path, _coco_file(tmp_path / "train.json", [1, 5, 90],
                                               [(1, [1, 1, 5, 5]), (5, [2, 2, 5, 5]), (90, [3, 3, 5, 5])]))
    val = CocoDetection(tmp_path, _coco_file(tmp_path / "val.json", [1, 90], [(90, [50, 50, 40, 40])]))
    assert val.label_to_cat_id == [1, 90]
    check_categories(train, val)
    assert val.label_to_cat_id == [1, 5, 90] and val.class_names == ["c1", "c5", "c90"]
    assert val._records[1][4].tolist() == [2]  # the box of category 90 is label 2, as the model predicts it
    assert evaluator_for(val).label_to_cat_id == [1, 5, 90]
    unknown = CocoDetection(tmp_path, _coco_file(tmp_path / "val7.json", [1, 7], [(7, [5, 5, 9, 9])]))
    with pytest.raises(UserInputError, match=r"category id\(s\) 7 \('c7'\) that the model does not know"):
        check_categories(train, unknown)
