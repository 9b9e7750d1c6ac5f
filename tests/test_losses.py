"""Tests of the classification / regression / quality losses (detection/losses.py); the ATSS head's losses given an
assignment are in test_atss.py."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

import dynamic_atss.detection.losses as losses_module
from dynamic_atss.detection.losses import (
    centerness_target,
    quality_focal_loss,
    reduce_mean,
    sigmoid_focal_loss,
    varifocal_loss,
)
from dynamic_atss.detection.losses import distribution_focal_loss, joint_quality_focal_loss

from helpers_losses import bce64


def soft_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 6, 5, generator=gen) * 6  # includes large |logits|
    targets = torch.zeros(4, 6, 5)
    rows = torch.arange(4 * 6).view(4, 6)[:, ::2].flatten()  # every other anchor is a positive
    classes = torch.randint(0, 5, (rows.numel(),), generator=gen)
    targets.view(-1, 5)[rows, classes] = torch.rand(rows.numel(), generator=gen)
    targets.view(-1, 5)[rows[0], classes[0]] = 0.0  # a positive whose IoU target is 0
    return logits, targets


def test_quality_focal_loss_formula():
    logits, targets = soft_problem()
    p, bce = bce64(logits, targets)
    positive = targets > 0
    expected = torch.where(positive, (targets.double() - p).abs() ** 2 * bce, p ** 2 * bce).sum()
    got = quality_focal_loss(logits, targets)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_varifocal_loss_formula():
    logits, targets = soft_problem(1)
    p, bce = bce64(logits, targets)
    t = targets.double()
    # positives (t > 0): t * BCE(p, t); every target-0 entry: 0.75 * p^2 * BCE(p, 0)
    expected = torch.where(targets > 0, t * bce, 0.75 * p ** 2 * bce).sum()
    got = varifocal_loss(logits, targets, alpha=0.75, gamma=2.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert varifocal_loss(logits, targets, alpha=0.5).item() != pytest.approx(got.item(), rel=1e-3)


def test_focal_loss_matches_torchvision_and_formula():
    logits, targets = soft_problem(2)
    hard = (targets > 0).float()
    got = sigmoid_focal_loss(logits, hard, alpha=0.25, gamma=2.0)
    tv = torchvision.ops.sigmoid_focal_loss(logits, hard, alpha=0.25, gamma=2.0, reduction="sum")
    assert got.item() == pytest.approx(tv.item(), rel=1e-6)
    p, bce = bce64(logits, hard)
    pt = torch.where(hard > 0, p, 1 - p)
    alpha_t = torch.where(hard > 0, 0.25, 0.75)
    assert got.item() == pytest.approx((alpha_t * (1 - pt) ** 2 * bce).sum().item(), rel=1e-5)


def test_soft_losses_safe_in_low_precision():
    logits = torch.tensor([[-40.0, -5.0, 0.0, 5.0, 40.0]])
    targets = torch.tensor([[0.0, 0.3, 0.0, 0.9, 1.0]])
    for dtype in (torch.float16, torch.bfloat16):
        x = logits.to(dtype).requires_grad_(True)
        for fn in (quality_focal_loss, varifocal_loss):
            value = fn(x, targets.to(dtype))
            assert value.dtype == torch.float32 and torch.isfinite(value)
            (grad,) = torch.autograd.grad(value, x)
            assert torch.isfinite(grad.float()).all()


def test_centerness_target():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 4.0, 8.0, 10.0]])  # centres (5, 5), (5, 7)
    gt = torch.tensor([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 10.0]])
    # (5,5) in [0,0,10,20]: l=r=5, t=5, b=15 -> sqrt(1 * 5/15); (5,7) in [0,0,10,10]: t=7, b=3 -> sqrt(3/7)
    expected = torch.tensor([math.sqrt(1 / 3), math.sqrt(3 / 7)])
    torch.testing.assert_close(centerness_target(anchors, gt), expected)


def test_reduce_mean_identity_and_distributed(monkeypatch):
    t = torch.tensor(6.0)
    assert reduce_mean(t) is t  # no process group
    # Simulate 2 processes: the other one contributed 2.0.
    monkeypatch.setattr(losses_module.dist, "is_available", lambda: True)
    monkeypatch.setattr(losses_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(losses_module.dist, "get_world_size", lambda: 2)

    def fake_all_reduce(tensor, op=None):
        tensor.add_(2.0)

    monkeypatch.setattr(losses_module.dist, "all_reduce", fake_all_reduce)
    assert reduce_mean(t).item() == pytest.approx(4.0)
    assert t.item() == 6.0  # the input is not modified


# ---------------------------------------------------------------------------------------------- GFL losses
def test_joint_quality_focal_loss_formula():
    gen = torch.Generator().manual_seed(0)
    cls = torch.randn(3, 7, 4, generator=gen) * 6  # includes large |logits|
    quality = torch.randn(3, 7, 1, generator=gen) * 4
    cls[0, 0, 0], quality[0, 0, 0] = 40.0, 40.0  # p = 1 in float32: log(1 - p) must stay finite
    targets = torch.zeros(3, 7, 4)
    targets[:, ::2, 1] = torch.rand(3, 4, generator=gen)
    targets[0, 0, 0] = 0.7
    x, z, t = cls.double(), quality.double(), targets.double()
    p = torch.sigmoid(x) * torch.sigmoid(z)
    one_minus_p = torch.sigmoid(-x) + torch.sigmoid(x) * torch.sigmoid(-z)
    expected = ((t - p).abs() ** 2 * -(t * torch.log(p) + (1 - t) * torch.log(one_minus_p))).sum()
    got = joint_quality_focal_loss(cls, quality, targets)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_distribution_focal_loss_formula():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(9, 17, generator=gen) * 3
    targets = torch.tensor([0.0, 0.5, 1.0, 3.25, 7.9, 12.0, 15.5, 15.99, 2.001])
    log_s = torch.log_softmax(logits.double(), -1)
    expected = []
    for row, y in zip(log_s, targets.double().tolist()):
        left = math.floor(y)
        expected.append(-((left + 1 - y) * row[left] + (y - left) * row[left + 1]))
    got = distribution_focal_loss(logits, targets)
    torch.testing.assert_close(got.double(), torch.stack(expected), rtol=1e-5, atol=1e-6)
    # minimised by the two-bin distribution with mean y
    sharp = torch.full((1, 17), -1e4)
    sharp[0, 3], sharp[0, 4] = math.log(0.75), math.log(0.25)
    assert distribution_focal_loss(sharp, torch.tensor([3.25])).item() == pytest.approx(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), rel=1e-5)
    with pytest.raises(ValueError, match=r"DFL targets must lie in \[0, 16\)"):
        distribution_focal_loss(logits[:1], torch.tensor([16.0]))
