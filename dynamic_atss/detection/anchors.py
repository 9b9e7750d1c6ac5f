"""Anchor grid and box coder.

Box convention: continuous xyxy (width = x2 - x1, no "+1"). The authors' code (maskrcnn-benchmark) adds
+1 to widths ("TO_REMOVE"); mmdetection and torchvision do not, and neither do we. Converted
checkpoints are unaffected: the +1 only shifts targets by a fraction of a pixel.

Anchors: one square anchor per location of side `octave_scale * stride`, centred at
`(x + center_offset) * stride` (authors' code: offset 0.5, i.e. the cell centre; mmdetection: 0.0).
Per level the anchors are ordered row-major over (y, x), levels concatenated P3 -> P7, which is the
order in which `DynamicATSS` flattens its head outputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import AnchorConfig


class AnchorGenerator:
    """Anchors for a padded input size, cached per (feature sizes, device, dtype)."""

    def __init__(self, config: AnchorConfig) -> None:
        self.config = config
        self._cache: dict[tuple, tuple[Tensor, list[int]]] = {}

    def __call__(
        self, feature_sizes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, list[int]]:
        """Return anchors (N, 4) xyxy for all levels and the number of anchors on each level."""
        key = (tuple(feature_sizes), str(device), dtype)
        if key not in self._cache:
            if len(self._cache) > 32:  # many input sizes (multi-scale training): keep memory bounded
                self._cache.clear()
            self._cache[key] = self._generate(feature_sizes, device, dtype)
        return self._cache[key]

    def _generate(
        self, feature_sizes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, list[int]]:
        per_level = self.level_anchors(feature_sizes, device, dtype)
        return torch.cat(per_level), [len(a) for a in per_level]

    def level_anchors(
        self, feature_sizes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype = torch.float32
    ) -> list[Tensor]:
        """Uncached: one (H_l * W_l, 4) tensor per level (traceable with symbolic sizes, for export)."""
        if len(feature_sizes) != len(self.config.strides):
            raise ValueError(f"got {len(feature_sizes)} feature maps for {len(self.config.strides)} strides")
        per_level = []
        for (height, width), stride in zip(feature_sizes, self.config.strides):
            offset = self.config.center_offset
            ys = (torch.arange(height, device=device, dtype=torch.float32) + offset) * stride
            xs = (torch.arange(width, device=device, dtype=torch.float32) + offset) * stride
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            half = 0.5 * self.config.octave_scale * stride
            centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 4)
            per_level.append((centres + centres.new_tensor([-half, -half, half, half])).to(dtype))
        return per_level


class BoxCoder:
    """Delta-xywh coder with weights (wx, wy, ww, wh); dw, dh clamped before exp.

    `encode(boxes, anchors)` and `decode(deltas, anchors)` broadcast over leading dims: (..., 4).
    """

    def __init__(
        self, weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        clamp: float = math.log(1000.0 / 16),
    ) -> None:
        self.weights = weights
        self.clamp = clamp

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        wx, wy, ww, wh = self.weights
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        ax = anchors[..., 0] + 0.5 * aw
        ay = anchors[..., 1] + 0.5 * ah
        bw = boxes[..., 2] - boxes[..., 0]
        bh = boxes[..., 3] - boxes[..., 1]
        bx = boxes[..., 0] + 0.5 * bw
        by = boxes[..., 1] + 0.5 * bh
        return torch.stack(
            [wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw), wh * torch.log(bh / ah)], dim=-1
        )

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        wx, wy, ww, wh = self.weights
        deltas = deltas.float()  # exp in half precision overflows long before the clamp
        anchors = anchors.float()
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        ax = anchors[..., 0] + 0.5 * aw
        ay = anchors[..., 1] + 0.5 * ah
        cx = deltas[..., 0] / wx * aw + ax
        cy = deltas[..., 1] / wy * ah + ay
        w = torch.exp((deltas[..., 2] / ww).clamp(max=self.clamp)) * aw
        h = torch.exp((deltas[..., 3] / wh).clamp(max=self.clamp)) * ah
        return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
