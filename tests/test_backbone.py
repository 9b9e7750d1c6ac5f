"""Tests of dynamic_atss.models.backbone."""

import torch

import dynamic_atss as da


def test_frozen_backbone_defaults():
    with torch.device("meta"):
        model = da.create("r50")
    trunk = model.backbone.trunk
    from torchvision.ops.misc import FrozenBatchNorm2d

    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in trunk.modules())
    assert isinstance(trunk.bn1, FrozenBatchNorm2d)
    assert not trunk.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in trunk.layer1.parameters())
    assert all(p.requires_grad for p in trunk.layer2.parameters())
    with torch.device("meta"):
        unfrozen = da.create("r50", **{"backbone.frozen_stages": -1, "backbone.norm": "bn"})
    assert unfrozen.backbone.trunk.conv1.weight.requires_grad
    assert isinstance(unfrozen.backbone.trunk.bn1, torch.nn.BatchNorm2d)


def test_any_timm_backbone(tiny_kwargs):
    model = da.create("r50", **{**tiny_kwargs, "backbone": "test_efficientnet"}).eval()
    cls, _, _ = model.forward_raw(torch.randn(1, 3, 64, 96))
    assert [tuple(c.shape[-2:]) for c in cls] == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
