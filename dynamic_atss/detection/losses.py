"""Loss primitives shared by the head families: focal / QFL / VFL classification losses (QFL also on GFLV2's
joint score), the distribution focal loss (DFL), centerness targets, and the cross-process normaliser
`reduce_mean`. Which family uses which, with which targets, is said in the
family's module (`detection/heads/`).

All losses are computed in float32 from logits (`binary_cross_entropy_with_logits`, never the log of a
sigmoid), with autocast disabled by the caller, so a head may run under fp16/bf16 autocast. Normalisers
(number of positives, sum of regression weights) are averaged over processes with `reduce_mean`, as in the
authors' code, so every process divides by the same number.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import Tensor


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


def joint_quality_focal_loss(cls_logits: Tensor, quality_logits: Tensor, targets: Tensor, beta: float = 2.0) -> Tensor:
    """Summed QFL on GFLV2's joint score p = sigmoid(cls) * sigmoid(quality), in float32.

    cls_logits (..., C); quality_logits broadcasting to it (e.g. (..., 1)); targets (..., C) soft scores in [0, 1].
    Entry-wise `|t - p|^beta * BCE(p, t)`, with BCE written from the logits rather than from p (which would need
    the log of a product of sigmoids, clamped where it underflows): log p = logsig(x) + logsig(z), and since
    1 - p = sigmoid(-x) + sigmoid(x) * sigmoid(-z), log(1 - p) = logaddexp(logsig(-x), logsig(x) + logsig(-z)).
    Hand-written because no library loss takes a product of sigmoids; exact and finite for any logits.
    """
    x, z, t = cls_logits.float(), quality_logits.float(), targets.float()
    log_sig_x = F.logsigmoid(x)
    log_p = log_sig_x + F.logsigmoid(z)
    log_not_p = torch.logaddexp(F.logsigmoid(-x), log_sig_x + F.logsigmoid(-z))
    bce = -(t * log_p + (1 - t) * log_not_p)
    return ((t - log_p.exp()).abs().pow(beta) * bce).sum()


def distribution_focal_loss(logits: Tensor, targets: Tensor, check: bool = True) -> Tensor:
    """Distribution Focal Loss (GFL), per distribution, in float32: (M, n + 1) logits over the values 0..n and
    (M,) targets y in [0, n) -> (M,) `-((y_r - y) * log S(y_l) + (y - y_l) * log S(y_r))`, where
    y_l = floor(y), y_r = y_l + 1 and S is the softmax. The caller clamps y below n (GFL: n - 0.01).
    `check=False` skips the range check (a host-device synchronisation) for targets clamped just before.
    """
    logits, targets = logits.float(), targets.float()
    if check and targets.numel() and not bool(((targets >= 0) & (targets < logits.shape[-1] - 1)).all()):
        raise ValueError(f"DFL targets must lie in [0, {logits.shape[-1] - 1}); clamp them first")
    left = targets.floor().long()
    log_prob = logits.log_softmax(dim=-1)
    log_left = log_prob.gather(-1, left[:, None]).squeeze(-1)
    log_right = log_prob.gather(-1, (left + 1)[:, None]).squeeze(-1)
    weight_right = targets - left.float()
    return -((1 - weight_right) * log_left + weight_right * log_right)


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
