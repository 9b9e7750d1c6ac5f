"""Tests of dynamic_atss.models.fpn: P3-P7 from C3-C5, and where P7's ReLU goes (authors vs mmdetection)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dynamic_atss.models.fpn import FPN


def features(batch=2, size=(32, 48)):
    generator = torch.Generator().manual_seed(0)
    h, w = size
    return [torch.randn(batch, c, h // s, w // s, generator=generator) for c, s in ((8, 1), (16, 2), (32, 4))]


def test_five_levels_each_half_the_previous_with_the_fpn_channels():
    fpn = FPN([8, 16, 32], channels=12)
    outputs = fpn(features())
    assert [tuple(o.shape) for o in outputs] == [(2, 12, 32, 48), (2, 12, 16, 24), (2, 12, 8, 12), (2, 12, 4, 6),
                                                  (2, 12, 2, 3)]


def test_p6_comes_from_p5_and_p7_from_relu_p6_or_p6():
    for relu_before_p7 in (True, False):
        torch.manual_seed(0)
        fpn = FPN([8, 16, 32], channels=12, relu_before_p7=relu_before_p7).eval()
        with torch.no_grad():
            p3, p4, p5, p6, p7 = fpn(features())
            extra = fpn.fpn.extra_blocks
            torch.testing.assert_close(p6, extra.p6(p5))
            torch.testing.assert_close(p7, extra.p7(F.relu(p6) if relu_before_p7 else p6))
            assert not torch.allclose(p7, extra.p7(p6 if relu_before_p7 else F.relu(p6)))
