"""Tests of dynamic_atss.data.transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from dynamic_atss.data import DegenerateBoxWarning, ResizeShortestSide, SanitizeBoxes, SyntheticShapes, build_transforms

from helpers_data import SMALL, _plain, _check_sample


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


# ------------------------------------------------------------------------------------------- issue 25: EXIF
def _phone_photo(path, orientation: int = 6):
    """A JPEG stored 160 wide x 96 high with EXIF orientation 6 (rotate 90 degrees clockwise to view): viewers show
    it 96 wide x 160 high. A bright block at the stored top-left lands at the displayed top-right."""
    import PIL.Image

    stored = np.zeros((96, 160, 3), dtype=np.uint8)
    stored[:20, :30] = 255
    image = PIL.Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, quality=95)
    return path


def test_images_are_read_in_the_frame_viewers_show(tmp_path):
    """A phone photo stored 160x96 with orientation 6 was read (and its boxes drawn and reported) in the stored frame."""
    import PIL.Image

    from dynamic_atss.data.transforms import displayed_size, load_image

    path = _phone_photo(tmp_path / "phone.jpg")
    image = load_image(str(path), "test")
    assert tuple(image.shape) == (3, 160, 96)
    assert image[:, :20, -20:].float().mean() > 200 and image[:, -20:, :20].float().mean() < 50  # rotated, not flipped
    with PIL.Image.open(path) as header:
        assert displayed_size(header) == (96, 160) and header.size == (160, 96)


def test_coco_annotations_in_the_displayed_frame_are_accepted(tmp_path):
    """The COCO file annotates what a person sees (96x160): it was refused as "the file is 160x96"."""
    import json

    from dynamic_atss.data import CocoDetection
    from dynamic_atss.data.checks import scan_dataset

    _phone_photo(tmp_path / "phone.jpg")
    (tmp_path / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "phone.jpg", "width": 96, "height": 160}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [76, 0, 20, 30], "area": 600, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "block"}]}))
    dataset = CocoDetection(tmp_path, tmp_path / "ann.json")
    assert scan_dataset(dataset, "train").bad == []
    image, target = dataset[0]
    assert tuple(image.shape) == (3, 160, 96)
    x0, y0, x1, y1 = target["boxes"][0].tolist()
    assert image[:, int(y0):int(y1), int(x0):int(x1)].mean() > 0.8  # the box holds the bright block
    # without the sizes in the file, they are read from the header in the displayed frame too
    document = json.loads((tmp_path / "ann.json").read_text())
    del document["images"][0]["width"], document["images"][0]["height"]
    (tmp_path / "ann2.json").write_text(json.dumps(document))
    assert CocoDetection(tmp_path, tmp_path / "ann2.json").coco.imgs[1]["height"] == 160
