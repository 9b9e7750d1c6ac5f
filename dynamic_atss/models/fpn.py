"""FPN P3-P7 on torchvision's `FeaturePyramidNetwork`."""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock


class LastLevelP6P7(ExtraFPNBlock):
    """P6 = 3x3/2 conv on P5 (not C5); P7 = 3x3/2 conv on relu(P6) (authors) or on P6 (mmdetection).

    torchvision's own `LastLevelP6P7` always applies the ReLU, hence this small variant.
    """

    def __init__(self, channels: int, relu_before_p7: bool = True) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.relu_before_p7 = relu_before_p7
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        p6 = self.p6(results[-1])
        p7 = self.p7(F.relu(p6) if self.relu_before_p7 else p6)
        return results + [p6, p7], names + ["p6", "p7"]


class FPN(nn.Module):
    """C3, C4, C5 -> P3 ... P7, all with `channels` channels; no norm or activation inside."""

    def __init__(self, in_channels: list[int], channels: int = 256, relu_before_p7: bool = True) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(in_channels, channels, extra_blocks=LastLevelP6P7(channels, relu_before_p7))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return list(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features))).values())
