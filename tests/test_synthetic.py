"""Tests of dynamic_atss.data.synthetic."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from dynamic_atss.data import SyntheticShapes

from helpers_data import SMALL, _check_sample


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
