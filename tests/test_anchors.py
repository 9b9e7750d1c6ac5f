"""Tests of dynamic_atss.detection.anchors."""

import torch

from dynamic_atss.detection.anchors import AnchorGenerator, BoxCoder
from dynamic_atss.config import AnchorConfig


def test_box_coder_round_trip():
    anchors = torch.tensor([[0.0, 0.0, 64.0, 64.0], [100.0, 50.0, 228.0, 178.0]]).repeat(50, 1)
    xy = torch.rand(100, 2) * 200
    wh = torch.rand(100, 2) * 300 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    coder = BoxCoder()
    torch.testing.assert_close(coder.decode(coder.encode(boxes, anchors), anchors), boxes, atol=1e-4, rtol=1e-5)
    # widths/heights are clamped before exp
    huge = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), anchors[:1])
    assert torch.isfinite(huge).all() and (huge[0, 2] - huge[0, 0]) <= 64 * 1000 / 16 + 1e-3


def test_anchor_grid_convention():
    anchors, counts = AnchorGenerator(AnchorConfig())([(2, 3), (1, 2), (1, 1), (1, 1), (1, 1)], torch.device("cpu"))
    assert counts == [6, 2, 1, 1, 1] and anchors.shape == (11, 4)
    # level 0, stride 8: side 64, centre of cell (0, 1) = (12, 4), row-major over (y, x)
    torch.testing.assert_close(anchors[1], torch.tensor([12 - 32.0, 4 - 32.0, 12 + 32.0, 4 + 32.0]))
    mm, _ = AnchorGenerator(AnchorConfig(center_offset=0.0))([(2, 3), (1, 2), (1, 1), (1, 1), (1, 1)], torch.device("cpu"))
    torch.testing.assert_close(mm[1], torch.tensor([8 - 32.0, -32.0, 8 + 32.0, 32.0]))
