"""Shared by the loss tests: a float64 binary cross-entropy reference; flattened outputs back to raw ones."""

from __future__ import annotations

import torch


def bce64(logits, targets):
    p = 1 / (1 + torch.exp(-logits.double()))
    t = targets.double()
    return p, -(t * torch.log(p) + (1 - t) * torch.log(1 - p))


def raw_from_flat(head, flat, level_shapes):
    """Flattened outputs {name: (B, N, k)} (levels concatenated, row-major) -> the per-level raw outputs
    `head.forward` would return (one list per `head.output_names`, each (B, k, H_l, W_l) per level): what a
    family's `loss` takes."""
    counts = [h * w for h, w in level_shapes]
    raw = []
    for name in head.output_names:
        levels = flat[name].split(counts, dim=1)
        raw.append([level.transpose(1, 2).reshape(level.shape[0], level.shape[2], h, w)
                    for level, (h, w) in zip(levels, level_shapes)])
    return tuple(raw)
