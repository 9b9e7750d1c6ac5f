"""Tests of dynamic_atss.detection.heads.atss."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.ops import box_iou

from dynamic_atss.detection.anchors import AnchorGenerator, BoxCoder
from dynamic_atss.detection.assigner import CombinedIoUAssigner
from dynamic_atss.config import AnchorConfig, AssignerConfig, HeadConfig, LossConfig, ModelConfig
from dynamic_atss.detection.heads import Targets
from dynamic_atss.detection.heads.atss import ATSSHead
from dynamic_atss.detection.losses import quality_focal_loss

from helpers_losses import bce64, raw_from_flat


# --------------------------------------------------------------------------------------------------------
# The ATSS family: assignment + losses (`ATSSHead.loss`)
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
    """The ATSS family's `loss` (priors, assignment, losses) on given flattened outputs, as the detector calls it."""

    def __init__(self, loss_cfg, assigner_cfg, quality, num_classes):
        config = ModelConfig(num_classes=num_classes, head=HeadConfig(options={"quality": quality}, channels=8, num_groups=8,
                             num_convs=1), loss=loss_cfg, assigner=assigner_cfg)
        self.head = ATSSHead(config)
        self.assigner = CombinedIoUAssigner.from_config(assigner_cfg)

    def __call__(self, anchors, num_per_level, cls_logits, box_deltas, quality_logits, gt_boxes, gt_labels, gt_mask,
                 progress=0.0):
        flat = {"cls_logits": cls_logits, "box_deltas": box_deltas, "quality_logits": quality_logits.unsqueeze(-1)}
        shapes = [(-(-96 // s), -(-128 // s)) for s in STRIDES]  # detection_problem's grids
        assert [h * w for h, w in shapes] == list(num_per_level)
        return self.head.loss(raw_from_flat(self.head, flat, shapes), Targets(gt_boxes, gt_labels, gt_mask),
                              self.assigner, progress)


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
