"""The ATSS head: two shared towers with GroupNorm, per-level scales, and cls / box / quality outputs."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...config import HeadConfig
from ...models.dcn import ModulatedDeformConv2d


class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level for the box deltas)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(config: HeadConfig, in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(config.num_convs):
        channels_in = in_channels if i == 0 else config.channels
        if config.dcn_last_conv and i == config.num_convs - 1:
            conv = ModulatedDeformConv2d(channels_in, config.channels, 3, 1, 1, bias=config.conv_bias)
        else:
            conv = nn.Conv2d(channels_in, config.channels, 3, 1, 1, bias=config.conv_bias)
        layers += [conv, nn.GroupNorm(config.num_groups, config.channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ATSSHead(nn.Module):
    """Shared across levels. For each level, (B, in_channels, H, W) ->
    cls logits (B, A*C, H, W), box deltas (B, A*4, H, W) (times the level's Scale), quality logits (B, A, H, W).

    The quality branch (centerness or IoU, same layer) sits on the box tower.
    """

    def __init__(self, config: HeadConfig, in_channels: int, num_classes: int, num_levels: int,
                 num_anchors: int = 1) -> None:
        super().__init__()
        self.cls_tower = _tower(config, in_channels)
        self.box_tower = _tower(config, in_channels)
        self.cls_logits = nn.Conv2d(config.channels, num_anchors * num_classes, 3, 1, 1)
        self.bbox_pred = nn.Conv2d(config.channels, num_anchors * 4, 3, 1, 1)
        self.quality = nn.Conv2d(config.channels, num_anchors, 3, 1, 1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        # N(0, 0.01) everywhere except DCN offset/mask convs, which stay zero (start as a plain conv).
        offset_convs = {id(m.conv_offset) for m in self.modules() if isinstance(m, ModulatedDeformConv2d)}
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, ModulatedDeformConv2d)) and id(module) not in offset_convs:
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - config.prior_prob) / config.prior_prob))

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        cls_logits, box_deltas, quality_logits = [], [], []
        for feature, scale in zip(features, self.scales):
            box_feature = self.box_tower(feature)
            cls_logits.append(self.cls_logits(self.cls_tower(feature)))
            box_deltas.append(scale(self.bbox_pred(box_feature)))
            quality_logits.append(self.quality(box_feature))
        return cls_logits, box_deltas, quality_logits
