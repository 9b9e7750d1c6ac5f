"""Tests of dynamic_atss.data.coco."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import PIL.Image
import pytest
import torch

from dynamic_atss.data import CocoDetection, DegenerateBoxWarning, SyntheticShapes

from helpers_data import SMALL, _check_sample, _plain


def _write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


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
