"""Losses of Dynamic ATSS: classification (focal / QFL / VFL), GIoU regression and the quality branch.

All losses are computed in float32 from logits (`binary_cross_entropy_with_logits`, never the log of a
sigmoid), with autocast disabled, so the head may run under fp16/bf16 autocast. Normalisation follows
METHOD.md ("Targets and losses"); `num_pos` and the sum of regression weights are averaged over processes
with `reduce_mean`.

Targets. For a positive anchor (assigned to GT g with class c):
- soft target t = IoU of the anchor's detached predicted box with g (`AssignResult.pred_iou`), used by
  QFL / VFL on entry (anchor, c) and as the IoU-branch target; focal loss uses the hard target 1;
- centerness target sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) from the anchor centre to g;
- regression weight = the quality target (centerness or t).
Every other (anchor, class) entry has classification target 0.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from .anchors import BoxCoder
from .assigner import CombinedIoUAssigner
from ..config import AssignerConfig, LossConfig

_WEIGHT_EPS = 1e-6


def reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of `tensor` over all processes (all_reduce) when a process group of size > 1 exists, else itself."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    world_size = dist.get_world_size()
    if world_size == 1:
        return tensor
    tensor = tensor.detach().clone().float()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor / world_size


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Summed RetinaNet focal loss (torchvision's), in float32. targets: 0/1, same shape as logits."""
    return torchvision.ops.sigmoid_focal_loss(logits.float(), targets.float(), alpha=alpha, gamma=gamma,
                                              reduction="sum")


def quality_focal_loss(logits: Tensor, targets: Tensor, beta: float = 2.0) -> Tensor:
    """Summed Quality Focal Loss (GFL), in float32. targets: soft scores in [0, 1], same shape as logits.

    Entry-wise `|t - p|^beta * BCE(p, t)`: on the positive class of a positive this is the QFL positive
    term; everywhere else t = 0 and it is `p^beta * BCE(p, 0)`, the QFL negative term. No alpha.
    """
    logits = logits.float()
    targets = targets.float()
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return ((targets - prob).abs().pow(beta) * bce).sum()


def varifocal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.75, gamma: float = 2.0) -> Tensor:
    """Summed Varifocal Loss (VFNet), in float32. targets: soft scores in [0, 1], same shape as logits.

    Entries with t > 0 get `t * BCE(p, t)`. "Negatives" are all entries with t == 0, as in VFNet's
    reference implementation (`target <= 0`): the non-target classes of positive anchors, every class of
    negative anchors and also a positive's target class if its IoU target is exactly 0. They get
    `alpha * p^gamma * BCE(p, 0)`.
    """
    logits = logits.float()
    targets = targets.float()
    prob = logits.sigmoid()
    weight = torch.where(targets > 0, targets, alpha * prob.pow(gamma))
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (weight * bce).sum()


def centerness_target(anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """FCOS/ATSS centerness of the anchor centres w.r.t. their GT boxes: (M, 4), (M, 4) -> (M,).

    sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)); anchor centres of positives lie inside the GT.
    """
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    left, top = cx - gt_boxes[:, 0], cy - gt_boxes[:, 1]
    right, bottom = gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy
    lr = torch.minimum(left, right) / torch.maximum(left, right)
    tb = torch.minimum(top, bottom) / torch.maximum(top, bottom)
    return torch.sqrt((lr * tb).clamp(min=0))


class DetectionLoss(nn.Module):
    """Assign labels with `CombinedIoUAssigner`, then classification + GIoU + quality losses."""

    def __init__(
        self, loss_cfg: LossConfig, assigner_cfg: AssignerConfig, quality: str, num_classes: int,
        box_coder: BoxCoder | None = None,
    ) -> None:
        super().__init__()
        if loss_cfg.cls_loss not in ("focal", "qfl", "vfl"):
            raise ValueError(f"unknown cls_loss {loss_cfg.cls_loss!r}; use 'focal', 'qfl' or 'vfl'")
        if quality not in ("centerness", "iou"):
            raise ValueError(f"unknown quality branch {quality!r}; use 'centerness' or 'iou'")
        self.cfg = loss_cfg
        self.quality = quality
        self.num_classes = num_classes
        self.assigner = CombinedIoUAssigner.from_config(assigner_cfg)
        self.box_coder = box_coder if box_coder is not None else BoxCoder()

    def extra_repr(self) -> str:
        return f"cls_loss={self.cfg.cls_loss!r}, quality={self.quality!r}, assigner={self.assigner!r}"

    def forward(
        self, anchors: Tensor, num_anchors_per_level: list[int], cls_logits: Tensor, box_deltas: Tensor,
        quality_logits: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor, progress: float = 0.0,
        level_shapes: list[tuple[int, int]] | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """anchors (N, 4); cls_logits (B, N, C); box_deltas (B, N, 4); quality_logits (B, N);
        gt_boxes (B, G, 4) xyxy; gt_labels (B, G) int64; gt_mask (B, G) bool; progress in [0, 1];
        level_shapes: the (H, W) anchor grid of each level, when known (faster candidate search).

        Returns ({"loss_cls", "loss_box", "loss_quality"}, assigner stats).
        """
        with torch.autocast(device_type=cls_logits.device.type, enabled=False):
            return self._forward(anchors, num_anchors_per_level, cls_logits.float(), box_deltas.float(),
                                 quality_logits.float(), gt_boxes.float(), gt_labels, gt_mask, progress, level_shapes)

    def _forward(
        self, anchors: Tensor, num_anchors_per_level: list[int], cls_logits: Tensor, box_deltas: Tensor,
        quality_logits: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor, progress: float,
        level_shapes: list[tuple[int, int]] | None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        anchors = anchors.float()
        pred_boxes = self.box_coder.decode(box_deltas.detach(), anchors)  # (B, N, 4)
        result = self.assigner(anchors, num_anchors_per_level, gt_boxes, gt_mask, pred_boxes, progress, level_shapes)

        img_idx, anchor_idx = (result.gt_index >= 0).nonzero(as_tuple=True)  # positives
        gt_idx = result.gt_index[img_idx, anchor_idx]
        labels = gt_labels[img_idx, gt_idx]
        soft = result.pred_iou[img_idx, anchor_idx]  # detached predicted IoU
        num_pos = reduce_mean(torch.tensor(float(img_idx.numel()), device=cls_logits.device)).clamp(min=1.0)

        # Classification over all anchors x classes.
        cls_targets = torch.zeros_like(cls_logits)
        if self.cfg.cls_loss == "focal":
            cls_targets[img_idx, anchor_idx, labels] = 1.0
            loss_cls = sigmoid_focal_loss(cls_logits, cls_targets, self.cfg.focal_alpha, self.cfg.focal_gamma)
        elif self.cfg.cls_loss == "qfl":
            cls_targets[img_idx, anchor_idx, labels] = soft
            loss_cls = quality_focal_loss(cls_logits, cls_targets)
        else:
            cls_targets[img_idx, anchor_idx, labels] = soft
            loss_cls = varifocal_loss(cls_logits, cls_targets, self.cfg.vfl_alpha, self.cfg.focal_gamma)
        loss_cls = loss_cls / num_pos

        # Quality targets (also the regression weights).
        pos_anchors = anchors[anchor_idx]
        target_boxes = gt_boxes[img_idx, gt_idx]
        if self.quality == "centerness":
            quality_targets = centerness_target(pos_anchors, target_boxes)
        else:
            quality_targets = soft

        # GIoU regression of the decoded positive boxes, weighted by the quality targets.
        boxes = self.box_coder.decode(box_deltas[img_idx, anchor_idx], pos_anchors)
        giou = torchvision.ops.generalized_box_iou_loss(boxes, target_boxes, reduction="none")
        weight_sum = reduce_mean(quality_targets.sum()).clamp(min=_WEIGHT_EPS)
        loss_box = (giou * quality_targets).sum() / weight_sum * self.cfg.box_weight

        loss_quality = F.binary_cross_entropy_with_logits(
            quality_logits[img_idx, anchor_idx], quality_targets, reduction="sum"
        ) / num_pos * self.cfg.quality_weight

        # Keep every head output in the graph even without positives (DDP would otherwise wait forever).
        losses = {
            "loss_cls": loss_cls,
            "loss_box": loss_box + 0.0 * box_deltas.sum(),
            "loss_quality": loss_quality + 0.0 * quality_logits.sum(),
        }
        return losses, result.stats
