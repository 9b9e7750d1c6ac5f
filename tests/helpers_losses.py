"""A float64 binary cross-entropy reference shared by the loss tests."""

from __future__ import annotations

import torch


def bce64(logits, targets):
    p = 1 / (1 + torch.exp(-logits.double()))
    t = targets.double()
    return p, -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
