"""A tiny model, test images and an exact-output comparison shared by the Hub tests (mixin, folder,
serialization, push, download, card, hub CLI)."""

from __future__ import annotations

import torch

import dynamic_atss
from dynamic_atss import DynamicATSS


TINY = {"backbone": "test_resnet", "fpn_channels": 32, "head.channels": 32, "head.num_groups": 8, "min_size": 64,
        "max_size": 96}
METRICS = {"dataset": "coco", "split": "val2017", "AP": 40.3, "AP50": 57.9, "AP75": 44.1}


def tiny_model(seed: int = 0, num_classes: int = 3) -> DynamicATSS:
    torch.manual_seed(seed)
    model = dynamic_atss.create("r50", num_classes=num_classes, class_names=[f"class{i}" for i in range(num_classes)],
                                **TINY)
    with torch.no_grad():  # scores well above the 0.05 threshold, so that there are detections to compare
        model.head.cls_logits.bias.fill_(0.5)
        for scale in model.head.scales:
            scale.scale.fill_(0.5 + torch.rand(()).item())
    return model.eval()


def images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, 48, 72, generator=generator), torch.rand(3, 70, 56, generator=generator)]


def assert_same_outputs(a: DynamicATSS, b: DynamicATSS) -> None:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for level_a, level_b in zip(a.forward_raw(x), b.forward_raw(x)):
            assert all(torch.equal(u, v) for u, v in zip(level_a, level_b))
        det_a, det_b = a.eval()(images()), b.eval()(images())
    assert sum(len(d["boxes"]) for d in det_a) > 0
    for da, db in zip(det_a, det_b):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(da[key], db[key])
