"""Tests of the classification / regression / quality losses and of the ATSS family's losses given an assignment."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torchvision.ops import box_iou

import dynamic_atss.detection.losses as losses_module
from dynamic_atss.detection.anchors import AnchorGenerator, BoxCoder
from dynamic_atss.detection.assigner import CombinedIoUAssigner
from dynamic_atss.config import AnchorConfig, AssignerConfig, HeadConfig, LossConfig, ModelConfig
from dynamic_atss.detection.heads import Targets
from dynamic_atss.detection.heads.atss import ATSSHead
from dynamic_atss.detection.losses import (
    centerness_target,
    quality_focal_loss,
    reduce_mean,
    sigmoid_focal_loss,
    varifocal_loss,
)


def soft_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 6, 5, generator=gen) * 6  # includes large |logits|
    targets = torch.zeros(4, 6, 5)
    rows = torch.arange(4 * 6).view(4, 6)[:, ::2].flatten()  # every other anchor is a positive
    classes = torch.randint(0, 5, (rows.numel(),), generator=gen)
    targets.view(-1, 5)[rows, classes] = torch.rand(rows.numel(), generator=gen)
    targets.view(-1, 5)[rows[0], classes[0]] = 0.0  # a positive whose IoU target is 0
    return logits, targets


def bce64(logits, targets):
    p = 1 / (1 + torch.exp(-logits.double()))
    t = targets.double()
    return p, -(t * torch.log(p) + (1 - t) * torch.log(1 - p))


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


# --------------------------------------------------------------------------------------------------------
# The ATSS family: assignment + losses (`ATSSHead.compute_loss`)
# --------------------------------------------------------------------------------------------------------
NUM_CLASSES = 3
STRIDES = [8, 16, 32, 64, 128]


def detection_problem(seed=0, with_gt=True):
    """2 images at 96x128 (P7 has 1 anchor): image 0 has 3 GTs (+1 padding), image 1 none."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [(-(-96 // s), -(-128 // s)) for s in (8, 16, 32, 64, 128)]
    anchors, num_per_level = AnchorGenerator(AnchorConfig())(sizes, torch.device("cpu"))
    n = anchors.shape[0]
    gt_boxes = torch.tensor([[[10.0, 12.0, 50.0, 60.0], [60.0, 20.0, 120.0, 90.0], [30.0, 30.0, 46.0, 44.0],
                              [0.0, 0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]] * 4])
    gt_labels = torch.tensor([[0, 2, 1, 0], [0, 0, 0, 0]])
    gt_mask = torch.tensor([[True, True, True, False], [False] * 4])
    if not with_gt:
        gt_mask[:] = False
    heads = {
        "cls_logits": torch.randn(2, n, NUM_CLASSES, generator=gen) - 3.0,
        "box_deltas": torch.randn(2, n, 4, generator=gen) * 0.3,
        "quality_logits": torch.randn(2, n, generator=gen),
    }
    heads = {k: v.requires_grad_(True) for k, v in heads.items()}
    return anchors, num_per_level, heads, gt_boxes, gt_labels, gt_mask


class ATSSAssignAndLoss:
    """The ATSS family's `compute_loss` (assignment + losses) on given flattened outputs, as the detector calls it."""

    def __init__(self, loss_cfg, assigner_cfg, quality, num_classes):
        config = ModelConfig(num_classes=num_classes, head=HeadConfig(quality=quality, channels=8, num_groups=8,
                             num_convs=1), loss=loss_cfg, assigner=assigner_cfg)
        self.head = ATSSHead(config)
        self.assigner = CombinedIoUAssigner.from_config(assigner_cfg)

    def __call__(self, anchors, num_per_level, cls_logits, box_deltas, quality_logits, gt_boxes, gt_labels, gt_mask,
                 progress=0.0):
        flat = {"cls_logits": cls_logits, "box_deltas": box_deltas, "quality_logits": quality_logits.unsqueeze(-1)}
        return self.head.compute_loss(flat, anchors, num_per_level, STRIDES[: len(num_per_level)],
                                      Targets(gt_boxes, gt_labels, gt_mask), self.assigner, progress)


def call(loss_fn, problem, progress=0.0):
    anchors, num_per_level, heads, gt_boxes, gt_labels, gt_mask = problem
    return loss_fn(anchors, num_per_level, heads["cls_logits"], heads["box_deltas"], heads["quality_logits"],
                   gt_boxes, gt_labels, gt_mask, progress=progress)


def manual_losses(problem, cls_loss, quality, assigner_cfg=AssignerConfig()):
    """Losses written out from docs/method.md with torchvision ops and explicit targets."""
    anchors, num_per_level, heads, gt_boxes, gt_labels, gt_mask = problem
    coder = BoxCoder()
    pred = coder.decode(heads["box_deltas"].detach(), anchors)
    result = CombinedIoUAssigner.from_config(assigner_cfg)(anchors, num_per_level, gt_boxes, gt_mask, pred)
    b, a = torch.nonzero(result.gt_index >= 0, as_tuple=True)
    g = result.gt_index[b, a]
    num_pos = max(len(b), 1)
    boxes_gt = gt_boxes[b, g]
    iou = torch.stack([box_iou(pred[i, j][None], gt_boxes[i, k][None])[0, 0] for i, j, k in zip(b, a, g)])
    target = torch.zeros_like(heads["cls_logits"])
    target[b, a, gt_labels[b, g]] = 1.0 if cls_loss == "focal" else iou
    logits = heads["cls_logits"]
    if cls_loss == "focal":
        loss_cls = torchvision.ops.sigmoid_focal_loss(logits, target, 0.25, 2.0, reduction="sum")
    else:
        p, bce = bce64(logits, target)
        loss_cls = ((target.double() - p).abs() ** 2 * bce).sum()
    cx = (anchors[a, 0] + anchors[a, 2]) / 2
    cy = (anchors[a, 1] + anchors[a, 3]) / 2
    l, t, r, bt = cx - boxes_gt[:, 0], cy - boxes_gt[:, 1], boxes_gt[:, 2] - cx, boxes_gt[:, 3] - cy
    centerness = torch.sqrt(torch.min(l, r) / torch.max(l, r) * torch.min(t, bt) / torch.max(t, bt))
    weight = centerness if quality == "centerness" else iou
    boxes = coder.decode(heads["box_deltas"][b, a], anchors[a])
    giou = torchvision.ops.generalized_box_iou_loss(boxes, boxes_gt)
    loss_box = 2.0 * (giou * weight).sum() / weight.sum()
    loss_quality = torch.nn.functional.binary_cross_entropy_with_logits(
        heads["quality_logits"][b, a], weight, reduction="sum") / num_pos
    return {"loss_cls": loss_cls.item() / num_pos, "loss_box": loss_box.item(),
            "loss_quality": loss_quality.item()}, len(b)


@pytest.mark.parametrize("cls_loss,quality", [("focal", "centerness"), ("qfl", "iou")])
def test_detection_loss_matches_manual(cls_loss, quality):
    problem = detection_problem()
    loss_fn = ATSSAssignAndLoss(LossConfig(cls_loss=cls_loss), AssignerConfig(), quality, NUM_CLASSES)
    losses, stats = call(loss_fn, problem)
    expected, num_pos = manual_losses(problem, cls_loss, quality)
    assert num_pos > 5
    assert stats["num_pos"].item() == num_pos
    assert set(losses) == {"loss_cls", "loss_box", "loss_quality"}
    for name, value in expected.items():
        assert losses[name].item() == pytest.approx(value, rel=1e-4), name


@pytest.mark.parametrize("cls_loss", ["focal", "qfl", "vfl"])
@pytest.mark.parametrize("quality", ["centerness", "iou"])
def test_all_configs_finite_with_gradients(cls_loss, quality):
    problem = detection_problem(1)
    loss_fn = ATSSAssignAndLoss(LossConfig(cls_loss=cls_loss), AssignerConfig(), quality, NUM_CLASSES)
    losses, stats = call(loss_fn, problem)
    total = sum(losses.values())
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert losses["loss_box"] > 0 and losses["loss_quality"] > 0
    total.backward()
    heads = problem[2]
    for name, x in heads.items():
        assert x.grad is not None and torch.isfinite(x.grad).all(), name
    # Image 1 has no GT: its anchors are all negatives and still get a classification gradient.
    assert heads["cls_logits"].grad[1].abs().sum() > 0
    assert heads["box_deltas"].grad[1].abs().sum() == 0  # no positives there
    assert all(not v.requires_grad for v in stats.values())


def test_no_gt_in_batch_keeps_graph_connected():
    problem = detection_problem(2, with_gt=False)
    loss_fn = ATSSAssignAndLoss(LossConfig(cls_loss="qfl"), AssignerConfig(), "iou", NUM_CLASSES)
    losses, stats = call(loss_fn, problem)
    assert stats["num_pos"].item() == 0
    assert losses["loss_box"].item() == 0.0 and losses["loss_quality"].item() == 0.0
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    # normalised by max(num_pos, 1) = 1: the plain sum over all (negative) entries
    logits = problem[2]["cls_logits"]
    expected = quality_focal_loss(logits, torch.zeros_like(logits))
    assert losses["loss_cls"].item() == pytest.approx(expected.item(), rel=1e-6)
    for name in ("loss_box", "loss_quality", "loss_cls"):
        assert losses[name].requires_grad, name
    sum(losses.values()).backward()
    for name, x in problem[2].items():
        assert x.grad is not None and torch.isfinite(x.grad).all(), name


def test_bf16_autocast_cpu():
    problem = detection_problem(3)
    anchors, num_per_level, heads, gt_boxes, gt_labels, gt_mask = problem
    loss_fn = ATSSAssignAndLoss(LossConfig(cls_loss="vfl"), AssignerConfig(), "iou", NUM_CLASSES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = {k: (v * 1.0).to(torch.bfloat16) for k, v in heads.items()}  # what a bf16 head returns
        losses, _ = loss_fn(anchors, num_per_level, low["cls_logits"], low["box_deltas"], low["quality_logits"],
                            gt_boxes, gt_labels, gt_mask)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, x in heads.items():
        assert x.grad is not None and torch.isfinite(x.grad).all(), name


def test_progress_reaches_the_assigner():
    problem = detection_problem(4)
    up = ATSSAssignAndLoss(LossConfig(), AssignerConfig(pred_weight="up"), "iou", NUM_CLASSES)
    atss = ATSSAssignAndLoss(LossConfig(), AssignerConfig(pred_weight=0.0), "iou", NUM_CLASSES)
    combined = ATSSAssignAndLoss(LossConfig(), AssignerConfig(pred_weight=1.0), "iou", NUM_CLASSES)
    _, s_up0 = call(up, problem, progress=0.0)
    _, s_atss = call(atss, problem)
    _, s_up1 = call(up, problem, progress=1.0)
    _, s_comb = call(combined, problem)
    assert s_up0["iou_threshold"] == s_atss["iou_threshold"] and s_up0["pred_weight"] == 0
    assert s_up1["iou_threshold"] == s_comb["iou_threshold"] and s_up1["pred_weight"] == 1
    assert s_comb["iou_threshold"] > s_atss["iou_threshold"]


def test_bad_config_rejected():
    with pytest.raises(ValueError, match="cls_loss"):
        ATSSAssignAndLoss(LossConfig(cls_loss="ce"), AssignerConfig(), "iou", 3)
    with pytest.raises(ValueError, match="quality"):
        ATSSAssignAndLoss(LossConfig(), AssignerConfig(), "iou_aware", 3)
