"""Data pipeline tests: synthetic generator, COCO / Hugging Face adapters, transforms. CPU, small data."""

from __future__ import annotations

import json
import os
import time
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from dynamic_atss.data import (
    CocoDetection,
    DegenerateBoxWarning,
    HFDetection,
    ResizeShortestSide,
    SanitizeBoxes,
    SyntheticShapes,
    build_dataset,
    build_transforms,
    collate_fn,
)

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


def _write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


# ------------------------------------------------------------------------------------------------
# Synthetic generator
# ------------------------------------------------------------------------------------------------


def test_synthetic_sample_format_and_metadata():
    ds = SyntheticShapes(3, **SMALL)
    assert len(ds) == 3 and ds.num_classes == len(ds.class_names) == 6
    assert ds.label_to_cat_id == [1, 3, 5, 7, 9, 11]
    assert all(ds.cat_id_to_label[c] == k for k, c in enumerate(ds.label_to_cat_id))
    assert ds.image_ids == [1, 2, 3]
    for i in range(3):
        image, target = ds[i]
        assert image.shape == (3, 96, 128)
        assert len(target["labels"]) >= 1
        assert target["image_id"] == ds.image_ids[i]
        _check_sample(image, target, ds.num_classes)
    with pytest.raises(IndexError):
        ds[3]


def test_synthetic_determinism_and_splits():
    a = SyntheticShapes(6, seed=3, **SMALL)
    b = SyntheticShapes(6, seed=3, **SMALL)
    np.random.seed(123)
    torch.manual_seed(123)  # global RNG state must not matter
    img5, t5 = a[5]
    np.random.seed(7)
    torch.manual_seed(7)
    _ = b[0], b[2]  # access order must not matter either
    img5b, t5b = b[5]
    assert torch.equal(img5, img5b) and torch.equal(t5["boxes"], t5b["boxes"])
    assert torch.equal(t5["labels"], t5b["labels"])
    # a different seed, index or split gives a different image
    c = SyntheticShapes(6, seed=4, **SMALL)
    v = SyntheticShapes(6, seed=3, split="val", **SMALL)
    assert not torch.equal(c[5][0], img5)
    assert not torch.equal(v[5][0], img5)
    assert not torch.equal(a[4][0], img5)


def test_synthetic_boxes_are_tight_on_the_drawn_pixels():
    ds = SyntheticShapes(8, clutter=False, **SMALL)  # flat object colours: pixels identify the objects
    for i in range(len(ds)):
        arr, objects, ids = ds.render(i, return_id_map=True)
        for j, obj in enumerate(objects):
            own = ids == j
            ys, xs = np.nonzero(own)
            assert obj.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert obj.area == own.sum()
            colours = np.unique(arr[own], axis=0)
            assert len(colours) == 1  # one flat colour per object
            x1, y1, x2, y2 = obj.box
            crop = (arr[y1:y2, x1:x2] == colours[0]).all(-1) & own[y1:y2, x1:x2]
            # the drawn object touches all four sides of its box
            assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()


def test_synthetic_variety_sizes_overlap_and_ranged_image_size():
    ds = SyntheticShapes(40, image_size=(160, 160), seed=1)
    labels, sides, overlaps = set(), [], 0
    for i in range(len(ds)):
        _, objects = ds.render(i)
        boxes = np.array([o.box for o in objects], dtype=float)
        labels |= {o.label for o in objects}
        sides += list(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]))
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                iw = min(boxes[a, 2], boxes[b, 2]) - max(boxes[a, 0], boxes[b, 0])
                ih = min(boxes[a, 3], boxes[b, 3]) - max(boxes[a, 1], boxes[b, 1])
                overlaps += iw > 0 and ih > 0
    assert labels == set(range(6))
    assert min(sides) <= 16 and max(sides) >= 0.45 * 160
    assert overlaps > 0
    ranged = SyntheticShapes(12, image_size=((64, 96), (100, 140)))
    shapes = {ranged[i][0].shape[1:] for i in range(12)}
    assert len(shapes) > 1 and all(64 <= h <= 96 and 100 <= w <= 140 for h, w in shapes)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticShapes(2, image_size=(8, 8))


def test_synthetic_speed():
    ds = SyntheticShapes(20, image_size=(320, 320))
    ds.render(0)
    t = time.perf_counter()
    for i in range(20):
        ds.render(i)
    per_image = (time.perf_counter() - t) / 20
    assert per_image < 0.05, f"{per_image * 1e3:.1f} ms per image"  # ~5 ms idle; generous for a busy machine


# ------------------------------------------------------------------------------------------------
# COCO folders
# ------------------------------------------------------------------------------------------------


def test_coco_roundtrip_of_synthetic_write_coco(tmp_path):
    syn = SyntheticShapes(5, split="val", **SMALL)
    image_dir, ann_file = syn.write_coco(tmp_path)
    assert ann_file == os.path.join(str(tmp_path), "annotations", "instances_val.json")
    with open(ann_file) as f:
        data = json.load(f)
    assert data == json.loads(json.dumps(syn.to_coco_dict()))
    assert sorted(c["id"] for c in data["categories"]) == [1, 3, 5, 7, 9, 11]
    assert all(a["iscrowd"] == 0 and a["id"] >= 1 and a["area"] > 0 for a in data["annotations"])
    coco = CocoDetection(image_dir, ann_file)
    assert coco.class_names == syn.class_names and coco.label_to_cat_id == syn.label_to_cat_id
    assert coco.cat_id_to_label == syn.cat_id_to_label and coco.image_ids == syn.image_ids
    assert set(coco.coco.getImgIds()) == set(syn.image_ids)
    for i in range(len(syn)):
        (ia, ta), (ib, tb) = syn[i], coco[i]
        _check_sample(ib, tb, coco.num_classes)
        assert torch.equal(ia, ib)  # PNG is lossless
        assert torch.equal(_plain(ta["boxes"]), _plain(tb["boxes"]))  # exact
        assert torch.equal(ta["labels"], tb["labels"]) and ta["image_id"] == tb["image_id"]


def _handwritten_coco(tmp_path):
    """3 images: #10 with normal / crowd / partly outside / zero-area / outside boxes, #20 without
    annotations, #30 with only a crowd box. Category ids 42, 7, 13 (neither contiguous nor sorted)."""
    image_dir = tmp_path / "imgs"
    image_dir.mkdir(parents=True)
    for name, (w, h) in {"a.png": (64, 48), "b.jpg": (40, 30), "c.png": (32, 32)}.items():
        PIL.Image.new("RGB", (w, h), (10, 200, 30)).save(image_dir / name)
    data = {
        "images": [
            {"id": 20, "file_name": "b.jpg", "width": 40, "height": 30},
            {"id": 10, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 30, "file_name": "c.png", "width": 32, "height": 32},
        ],
        "categories": [{"id": 42, "name": "dog"}, {"id": 7, "name": "cat"}, {"id": 13, "name": "bird"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 42, "bbox": [5, 6, 10, 12], "area": 120, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 7, "bbox": [0, 0, 64, 48], "area": 3072, "iscrowd": 1},
            {"id": 3, "image_id": 10, "category_id": 13, "bbox": [50, -4, 20, 10], "area": 200, "iscrowd": 0},
            {"id": 4, "image_id": 10, "category_id": 7, "bbox": [20, 20, 0, 5], "area": 0, "iscrowd": 0},
            {"id": 5, "image_id": 10, "category_id": 7, "bbox": [70, 10, 5, 5], "area": 25, "iscrowd": 0},
            {"id": 6, "image_id": 30, "category_id": 13, "bbox": [1, 1, 8, 8], "area": 64, "iscrowd": 1},
        ],
    }
    return str(image_dir), _write_json(str(tmp_path / "ann" / "instances.json"), data)


def test_coco_handwritten_policy(tmp_path):
    image_dir, ann_file = _handwritten_coco(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(image_dir, ann_file)
    dropped = [w for w in caught if issubclass(w.category, DegenerateBoxWarning)]
    assert len(dropped) == 1, [str(w.message) for w in caught]
    msg = str(dropped[0].message)
    assert "dropped 2 of 4 boxes" in msg and "annotation id 4" in msg and ann_file in msg
    assert ds.label_to_cat_id == [7, 13, 42] and ds.class_names == ["cat", "bird", "dog"]
    assert ds.cat_id_to_label == {7: 0, 13: 1, 42: 2} and ds.num_classes == 3
    assert ds.image_ids == [10, 20, 30]  # empty images kept by default
    image, target = ds[0]
    _check_sample(image, target, 3)
    assert image.shape == (3, 48, 64) and target["image_id"] == 10
    # crowd (id 2) left out; id 3 clipped to the image; ids 4 (zero width) and 5 (outside) dropped
    assert _plain(target["boxes"]).tolist() == [[5, 6, 15, 18], [50, 0, 64, 6]]
    assert target["labels"].tolist() == [2, 1]
    for index, image_id in ((1, 20), (2, 30)):  # no annotation / only a crowd box
        image, target = ds[index]
        assert target["image_id"] == image_id and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
        _check_sample(image, target, 3)
    assert len(ds.coco.getAnnIds(iscrowd=None)) == 6  # the evaluator sees the crowd boxes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateBoxWarning)
        strict = CocoDetection(image_dir, ann_file, keep_empty=False)
    assert strict.image_ids == [10]


def _bad_coco(tmp_path, mutate):
    image_dir, ann_file = _handwritten_coco(tmp_path)
    with open(ann_file) as f:
        data = json.load(f)
    mutate(data, image_dir)
    _write_json(ann_file, data)
    return image_dir, ann_file


@pytest.mark.filterwarnings("ignore::dynamic_atss.data.DegenerateBoxWarning")
def test_coco_bad_input_errors_name_the_item(tmp_path):
    image_dir, ann_file = _handwritten_coco(tmp_path)
    missing = os.path.join(str(tmp_path), "nope.json")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDetection(image_dir, missing)

    def unknown_image(data, _):
        data["annotations"].append({"id": 77, "image_id": 999, "category_id": 7, "bbox": [1, 1, 2, 2]})

    d, a = _bad_coco(tmp_path / "u1", unknown_image)
    with pytest.raises(ValueError, match=r"annotation id 77 .*image id 999"):
        CocoDetection(d, a)

    def unknown_category(data, _):
        data["annotations"].append({"id": 88, "image_id": 10, "category_id": 5, "bbox": [1, 1, 2, 2]})

    d, a = _bad_coco(tmp_path / "u2", unknown_category)
    with pytest.raises(ValueError, match=r"annotation id 88 .*category id 5"):
        CocoDetection(d, a)

    def no_images(data, _):
        data["images"], data["annotations"] = [], []

    d, a = _bad_coco(tmp_path / "u3", no_images)
    with pytest.raises(ValueError, match="empty COCO dataset.*" + os.path.basename(a)):
        CocoDetection(d, a)

    def all_empty(data, _):
        data["annotations"] = [x for x in data["annotations"] if x["iscrowd"]]

    d, a = _bad_coco(tmp_path / "u4", all_empty)
    with pytest.raises(ValueError, match="keep_empty=False.*instances.json"):
        CocoDetection(d, a, keep_empty=False)

    d, a = _bad_coco(tmp_path / "u5", lambda data, img_dir: os.remove(os.path.join(img_dir, "b.jpg")))
    ds = CocoDetection(d, a)
    with pytest.raises(FileNotFoundError, match=r"image id 20.*b\.jpg"):
        ds[1]

    def corrupt(data, img_dir):
        with open(os.path.join(img_dir, "c.png"), "wb") as f:
            f.write(b"not a png at all")

    d, a = _bad_coco(tmp_path / "u6", corrupt)
    ds = CocoDetection(d, a)
    with pytest.raises(ValueError, match=r"image id 30.*c\.png"):
        ds[2]

    def wrong_size(data, _):
        data["images"][1]["width"] = 65

    d, a = _bad_coco(tmp_path / "u7", wrong_size)
    with pytest.raises(ValueError, match=r"a\.png.*image id 10"):
        CocoDetection(d, a)[0]

    broken = _write_json(str(tmp_path / "u8" / "x.json"), {})
    with open(broken, "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="x.json"):
        CocoDetection(image_dir, broken)


# ------------------------------------------------------------------------------------------------
# Hugging Face datasets
# ------------------------------------------------------------------------------------------------


def _hf_rows(syn, list_of_dicts=False):
    rows = {"image": [], "image_id": [], "objects": []}
    for i in range(len(syn)):
        arr, objects = syn.render(i)
        rows["image"].append(PIL.Image.fromarray(arr))
        rows["image_id"].append(1000 + i)
        bboxes = [[o.box[0], o.box[1], o.box[2] - o.box[0], o.box[3] - o.box[1]] for o in objects]
        cats = [o.label for o in objects]
        if list_of_dicts:
            rows["objects"].append([{"bbox": b, "category": c} for b, c in zip(bboxes, cats)])
        else:
            rows["objects"].append({"bbox": bboxes, "category": cats})
    return rows


def _hf_features(names, list_of_dicts=False, class_label=True):
    import datasets

    cat = datasets.ClassLabel(names=list(names)) if class_label else datasets.Value("int64")
    box = datasets.List(datasets.Value("float32"), length=4)
    objects = (
        datasets.List({"bbox": box, "category": cat})
        if list_of_dicts
        else {"bbox": datasets.List(box), "category": datasets.List(cat)}
    )
    return datasets.Features({"image": datasets.Image(), "image_id": datasets.Value("int64"), "objects": objects})


def test_hf_from_memory_disk_and_parquet_match_the_generator(tmp_path):
    import datasets

    syn = SyntheticShapes(4, **SMALL)
    ds = datasets.Dataset.from_dict(_hf_rows(syn), features=_hf_features(syn.class_names))
    ds.save_to_disk(str(tmp_path / "disk"))
    datasets.DatasetDict(train=ds, validation=ds.select([0, 1])).save_to_disk(str(tmp_path / "dict"))
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train.parquet"))
    cache = {"cache_dir": str(tmp_path / "cache")}
    sources = {
        "memory": HFDetection(ds),
        "disk": HFDetection(str(tmp_path / "disk")),
        "dict": HFDetection(tmp_path / "dict", split="train"),
        "parquet_dir": HFDetection(str(tmp_path / "pq"), load_kwargs=cache),
        "parquet_file": HFDetection(str(tmp_path / "pq" / "train.parquet"), load_kwargs=cache),
    }
    for name, hf in sources.items():
        assert len(hf) == 4, name
        assert hf.class_names == syn.class_names and hf.label_to_cat_id == list(range(6)), name
        assert hf.image_ids == [1000, 1001, 1002, 1003], name
        for i in range(4):
            (ia, ta), (ib, tb) = syn[i], hf[i]
            _check_sample(ib, tb, hf.num_classes)
            assert torch.equal(ia, ib), name
            assert torch.equal(_plain(ta["boxes"]), _plain(tb["boxes"])), name
            assert torch.equal(ta["labels"], tb["labels"]) and tb["image_id"] == 1000 + i, name
    assert len(HFDetection(str(tmp_path / "dict"), split="validation")) == 2
    with pytest.raises(KeyError, match=r"'test'.*available splits.*train"):
        HFDetection(datasets.DatasetDict(train=ds), split="test")
    gt = sources["memory"].to_coco_dict()
    assert len(gt["images"]) == 4 and gt["images"][0]["width"] == 128
    _, objects = syn.render(0)
    assert [a["bbox"] for a in gt["annotations"] if a["image_id"] == 1000] == [
        [o.box[0], o.box[1], o.box[2] - o.box[0], o.box[3] - o.box[1]] for o in objects
    ]


def test_hf_list_of_dicts_xyxy_and_policy():
    import datasets

    syn = SyntheticShapes(2, **SMALL)
    rows = _hf_rows(syn, list_of_dicts=True)
    # row 1 gets a box partly outside (clipped), a zero-height box and one outside the 96x128 image
    rows["objects"][1] += [
        {"bbox": [120, 90, 20, 20], "category": 2},
        {"bbox": [10, 10, 5, 0], "category": 2},
        {"bbox": [10, 200, 5, 5], "category": 2},
    ]
    del rows["image_id"]
    feats = _hf_features(syn.class_names, list_of_dicts=True)
    del feats["image_id"]
    ds = datasets.Dataset.from_dict(rows, features=feats)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hf = HFDetection(ds)
        _, target = hf[1]
    msgs = [str(w.message) for w in caught if issubclass(w.category, DegenerateBoxWarning)]
    assert len(msgs) == 2 and "row 1" in msgs[0] and "dropped 1 of" in msgs[0]  # zero-height at init
    assert "row 1" in msgs[1] and "outside" in msgs[1]  # outside: known once the image is decoded
    n = len(syn.render(1)[1])
    assert len(target["labels"]) == n + 1
    assert _plain(target["boxes"])[-1].tolist() == [120, 90, 128, 96]
    assert hf.image_ids == [0, 1]  # row index without an image_id column

    # xyxy input
    xyxy = {"image": rows["image"][:1], "objects": [[{"bbox": [2, 3, 40, 50], "category": 1}]]}
    hf = HFDetection(datasets.Dataset.from_dict(xyxy, features=feats), box_format="xyxy")
    assert _plain(hf[0][1]["boxes"]).tolist() == [[2, 3, 40, 50]]


def test_hf_without_classlabel_and_bad_rows():
    import datasets

    syn = SyntheticShapes(3, **SMALL)
    feats = _hf_features(syn.class_names, class_label=False)
    rows = _hf_rows(syn)
    ds = datasets.Dataset.from_dict(rows, features=feats)
    with pytest.warns(UserWarning, match="not a ClassLabel"):
        hf = HFDetection(ds)
    top = max(max(o["category"]) for o in rows["objects"])
    assert hf.class_names == [f"class_{i}" for i in range(top + 1)]
    assert HFDetection(ds, class_names=syn.class_names).class_names == syn.class_names

    bad = _hf_rows(syn)
    bad["objects"][2]["category"][0] = 17
    with pytest.raises(ValueError, match=r"row 2: category 17"):
        HFDetection(datasets.Dataset.from_dict(bad, features=feats), class_names=syn.class_names)
    mism = _hf_rows(syn)
    mism["objects"][1]["category"] = mism["objects"][1]["category"][:-1]
    with pytest.raises(ValueError, match=r"row 1: \d+ boxes but \d+ categories"):
        HFDetection(datasets.Dataset.from_dict(mism, features=feats), class_names=syn.class_names)
    corrupt = _hf_rows(syn)
    corrupt["image"][1] = {"bytes": b"definitely not an image", "path": None}
    hf = HFDetection(datasets.Dataset.from_dict(corrupt, features=feats), class_names=syn.class_names)
    hf[0]
    with pytest.raises(ValueError, match=r"row 1: cannot decode"):
        hf[1]
    with pytest.raises(ValueError, match="missing column"):
        HFDetection(ds, objects_key="annotations")
    with pytest.raises(ValueError, match="box_format"):
        HFDetection(ds, box_format="cxcywh")


# ------------------------------------------------------------------------------------------------
# Transforms
# ------------------------------------------------------------------------------------------------


def test_flip_twice_is_identity_and_flip_moves_boxes_with_pixels():
    syn = SyntheticShapes(2, clutter=False, **SMALL)
    image, target = syn[1]
    flip = v2.RandomHorizontalFlip(p=1.0)
    im1, t1 = flip(image, target)
    w = image.shape[-1]
    b, b1 = _plain(target["boxes"]), _plain(t1["boxes"])
    assert torch.equal(b1[:, [0, 2]], w - b[:, [2, 0]]) and torch.equal(b1[:, [1, 3]], b[:, [1, 3]])
    assert torch.equal(_plain(im1), _plain(image).flip(-1))
    im2, t2 = flip(im1, t1)
    assert torch.equal(_plain(im2), _plain(image)) and torch.equal(_plain(t2["boxes"]), b)
    assert torch.equal(t2["labels"], target["labels"]) and t2["image_id"] == target["image_id"]
    # inside the dataset: the flipped boxes still tightly enclose the object pixels
    flipped = SyntheticShapes(2, clutter=False, transforms=flip, **SMALL)
    _, objects, ids = flipped.render(1, return_id_map=True)
    _, tf = flipped[1]
    ids = np.ascontiguousarray(ids[:, ::-1])
    for j, box in enumerate(_plain(tf["boxes"]).tolist()):
        ys, xs = np.nonzero(ids == j)
        assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_resize_scales_boxes_by_the_image_scale_factor():
    syn = SyntheticShapes(1, **SMALL)  # 96 x 128
    image, target = syn[0]
    im, t = ResizeShortestSide(48, max_size=1000)(image, target)
    assert im.shape[-2:] == (48, 64) and tuple(t["boxes"].canvas_size) == (48, 64)
    assert torch.allclose(_plain(t["boxes"]), _plain(target["boxes"]) * 0.5)
    im, t = ResizeShortestSide(200, max_size=200)(image, target)  # longer side capped: 128 -> 200
    sy, sx = im.shape[-2] / 96, im.shape[-1] / 128
    assert im.shape[-1] == 200 and im.shape[-2] == 150
    expected = _plain(target["boxes"]) * torch.tensor([sx, sy, sx, sy])
    assert torch.allclose(_plain(t["boxes"]), expected, atol=1e-4)
    torch.manual_seed(0)
    multi = ResizeShortestSide((32, 64, 80), max_size=1000)
    seen = {multi(image, target)[0].shape[-2] for _ in range(30)}
    assert seen == {32, 64, 80}
    with pytest.raises(ValueError):
        ResizeShortestSide(800, max_size=500)


def test_build_transforms_train_and_eval():
    syn = SyntheticShapes(2, **SMALL)
    image, target = syn.get_raw(0)
    assert image.dtype == torch.uint8
    ev = build_transforms(train=False, min_size=(40, 48), max_size=1000)
    im, t = ev(image, target)
    assert im.dtype == torch.float32 and im.shape[-2:] == (48, 64)  # eval: last choice
    assert torch.allclose(_plain(t["boxes"]), _plain(target["boxes"]) * 0.5)
    expected = v2.functional.to_dtype(v2.functional.resize(_plain(image), [48, 64]), torch.float32, scale=True)
    assert torch.equal(_plain(im), expected)
    tr = build_transforms(train=True, min_size=(40, 48), flip_prob=0.5, photometric=True)
    torch.manual_seed(0)
    for _ in range(4):
        im, t = tr(image, target)
        _check_sample(im, t, syn.num_classes)
        assert im.shape[-2] in (40, 48)
    ds = SyntheticShapes(3, transforms=build_transforms(train=True), **SMALL)
    for i in range(3):
        _check_sample(*ds[i], ds.num_classes)


def test_sanitize_boxes_clips_and_drops_with_labels():
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([[1.0, 2.0, 10.0, 12.0], [-5.0, 3.0, 4.0, 8.0], [5.0, 5.0, 5.0, 9.0], [30.0, 1.0, 40.0, 5.0]]),
        format="XYXY",
        canvas_size=(20, 25),
    )
    target = {"boxes": boxes, "labels": torch.tensor([0, 1, 2, 3]), "image_id": 9}
    image = tv_tensors.Image(torch.zeros(3, 20, 25))
    with pytest.warns(DegenerateBoxWarning, match="dropped 2 of 4"):
        _, out = SanitizeBoxes()(image, target)
    assert _plain(out["boxes"]).tolist() == [[1, 2, 10, 12], [0, 3, 4, 8]]
    assert out["labels"].tolist() == [0, 1] and out["image_id"] == 9
    assert isinstance(out["boxes"], tv_tensors.BoundingBoxes) and tuple(out["boxes"].canvas_size) == (20, 25)


# ------------------------------------------------------------------------------------------------
# Collate and factory
# ------------------------------------------------------------------------------------------------


def test_collate_fn_keeps_per_image_sizes_and_build_dataset(tmp_path):
    ds = build_dataset("synthetic", num_images=4, image_size=((64, 96), (64, 96)), max_objects=3, min_object_size=8)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_fn)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 4
    for image, target in zip(images, targets):
        assert tuple(target["boxes"].canvas_size) == tuple(image.shape[-2:])
    assert len({im.shape for im in images}) > 1
    image_dir, ann_file = ds.write_coco(tmp_path, "tiny")
    coco = build_dataset("coco", image_dir=image_dir, ann_file=ann_file)
    assert isinstance(coco, CocoDetection) and len(coco) == 4
    with pytest.raises(ValueError, match="unknown dataset kind"):
        build_dataset("voc")


def test_every_pipeline_builds_datasets_through_the_one_factory(monkeypatch):
    """The trainer's and `benchmark coco`'s datasets come from `dynamic_atss.data.build_dataset`."""
    import ast
    import inspect

    from dynamic_atss.benchmark import coco as coco_bench
    from dynamic_atss.engine import trainer

    for module in (trainer, coco_bench):
        calls = {node.func.id for node in ast.walk(ast.parse(inspect.getsource(module)))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        assert not {"SyntheticShapes", "CocoDetection", "HFDetection"} & calls, module.__name__


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    """Issue 18, item 6: a 16-bit greyscale PNG (mode I;16) used to become 99% white (values clipped at 255)."""
    from dynamic_atss.data.coco import load_image

    ramp = np.linspace(0, 65535, 64 * 48).round().astype(np.uint16).reshape(48, 64)
    PIL.Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert PIL.Image.open(tmp_path / "deep.png").mode == "I;16"
    image = load_image(str(tmp_path / "deep.png"), "test image")
    assert image.shape == (3, 48, 64) and image.dtype == torch.uint8
    expected = torch.from_numpy((ramp.astype(np.float64) / 257).round().astype(np.uint8))
    assert torch.equal(image[0], expected) and torch.equal(image[1], image[2])
    assert 120 <= float(image.float().mean()) <= 135  # a ramp: mid-grey on average, not white


def test_an_unknown_hub_dataset_is_one_line_in_seconds(tmp_path, monkeypatch, capsys):
    """Issue 18, item 11: an unknown dataset name with the Hub unreachable was a ConnectionError traceback after
    ~30 s of retries. Now: exit 2, one line, in seconds; no network beyond loopback."""
    import socket

    import huggingface_hub

    from dynamic_atss.train import main as train_main

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.monotonic()
    assert train_main(["--config", "demo_cpu", "--data.kind", "hf", "--data.source", "nobody/no-such-dataset",
                       "--output_dir", str(tmp_path / "run")]) == 2
    assert time.monotonic() - start < 15
    err = capsys.readouterr().err
    assert "data.source 'nobody/no-such-dataset' is not a local folder or file, and the Hub" in err
    assert "HF_DATASETS_OFFLINE=1" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "train_config.json").exists()
