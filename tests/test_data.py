"""dynamic_atss.data (the package): `collate_fn` and the one dataset factory `build_dataset`. CPU, small data.

The synthetic generator, the COCO and Hugging Face adapters and the transforms have their own files
(test_synthetic.py, test_data_coco.py, test_hf.py, test_transforms.py)."""

from __future__ import annotations

import pytest
import torch

from dynamic_atss.data import CocoDetection, HFDetection, SyntheticShapes, build_dataset, collate_fn


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
