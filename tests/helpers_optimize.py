"""Models with randomised BatchNorm statistics and confident scores, shared by the snapshot and predict tests."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import dynamic_atss as da


def _randomise_bns(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 1.5)
    return model


def _confident(name: str, tiny_kwargs: dict, **overrides) -> nn.Module:
    """A tiny model with plenty of detections above the threshold (to compare detections) and non-trivial BNs."""
    model = _randomise_bns(da.create(name, num_classes=3, **{**tiny_kwargs, **overrides}).eval())
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(2.0)
    return model
