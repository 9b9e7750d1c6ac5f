"""Combined-IoU ATSS assignment as a drop-in for torchvision's `FCOS` and `RetinaNet`.

    from dynamic_atss.integrations.torchvision import use_combined_iou_assignment

    model = torchvision.models.detection.fcos_resnet50_fpn(num_classes=91)  # or retinanet_*, or built by hand
    use_combined_iou_assignment(model)            # pred_weight=0: plain ATSS on torchvision's anchors
    losses = model(images, targets)               # the same torchvision loss dict, positives chosen differently

Only which anchors are positive (and for which GT) changes; everything else stays torchvision's: heads, losses
(`model.head.compute_loss`), box coders, post-processing, inference outputs and `state_dict` keys (a model with the
drop-in saves and loads as a plain torchvision model; nothing is registered as a module, parameter or buffer).

How torchvision assigns (its `compute_loss`, `matched_idxs` per image, -1 = background):

* FCOS: a point is positive for a GT when it lies inside the GT, within `center_sampling_radius` (1.5) x stride of
  the GT centre (centre sampling), and the largest of its four distances to the GT sides lies in the level's
  scale range (4 x stride, 8 x stride], open at the first and last level; several GTs -> the smallest GT.
* RetinaNet: `Matcher(0.5, 0.4, allow_low_quality_matches=True)` on anchor IoUs: IoU >= 0.5 positive, < 0.4
  negative, in between ignored (-2, no classification loss), and each GT also gets its highest-IoU anchors.

With the drop-in, `CombinedIoUAssigner` decides instead (see `dynamic_atss.detection.assigner`): per FPN level the
`topk` anchors nearest to the GT centre are candidates; a candidate is positive when
`pred_weight * IoU(pred, gt) + anchor_weight * IoU(anchor, gt)` reaches the sum of the per-source `mean + std`
over the GT's candidates and its centre lies inside the GT by more than `center_margin` px; several GTs -> the
highest combined IoU. The predicted boxes are the model's own regression output of this very forward pass, decoded
with the model's own box coder (`head.box_coder` for FCOS, `head.regression_head.box_coder` for RetinaNet) and
detached. Every non-positive is a negative: for RetinaNet the "ignore" band (IoU 0.4..0.5) disappears, every
anchor gets a classification loss. FCOS's centre sampling and scale ranges are not used. `pred_weight=0` is plain
ATSS on torchvision's anchors (the ATSS paper's RetinaNet + ATSS / FCOS + ATSS).

Anchors: torchvision's own, from `model.anchor_generator`, with the level sizes of the forward pass.

* RetinaNet's anchors are real boxes (by default 3 scales x 3 ratios per location, A = 9); their IoUs are used
  as they are (`anchor_scale=1`). With A anchors per location, the `topk` candidates of a level are the anchors
  nearest to the GT centre over all A shapes (ties: lowest anchor index), as in ATSS's reference code.
* FCOS's anchors are points: torchvision gives each point a square of side `anchor_sizes` = (8, 16, 32, 64, 128),
  i.e. ONE stride, used only as the point and as the box coder's normaliser. ATSS's anchor IoU needs a square of
  8 x stride per point (octave scale 8). So for FCOS the anchor IoU is taken on each anchor box scaled by
  `anchor_scale=8` about its centre: with torchvision's default FCOS anchors this is exactly the box a torchvision
  `AnchorGenerator(sizes=((64,), (128,), (256,), (512,), (1024,)))` gives (checked in the tests), i.e. ATSS's
  anchors (centre offset 0, as in mmdetection). The box coder keeps the unscaled anchors.

What is patched, and why: torchvision offers no public way to plug in an assigner (RetinaNet's `proposal_matcher`
sees only the anchor-IoU matrix; FCOS has none), so `use_combined_iou_assignment` sets an attribute `compute_loss`
on this one model INSTANCE (the class and other models are untouched). It recomputes `matched_idxs` and then calls
torchvision's `model.head.compute_loss` unchanged. RetinaNet's `compute_loss` is not told the level sizes, so a
forward pre-hook on `model.head` (a public `nn.Module` hook) hands the feature-map sizes of the same forward pass to
it; they are consumed there, so nothing is kept between calls. `restore_assignment(model)` removes both;
`combined_iou_assignment(model, ...)` does the same as a context manager. Apply it before wrapping the model in
`DistributedDataParallel` / `accelerator.prepare` (a DDP-wrapped model is unwrapped here). The weights are fixed
numbers: torchvision's `forward(images, targets)` carries no training progress for the "up" / "down" schedules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, RetinaNet

from ..detection.assigner import CombinedIoUAssigner
from ..errors import UserInputError

__all__ = ["UnsupportedModelError", "CombinedIoULoss", "combined_iou_assignment", "restore_assignment",
           "use_combined_iou_assignment"]

#: ATSS's anchor side in strides (octave scale 8); torchvision's FCOS anchors are one stride wide.
FCOS_ANCHOR_SCALE = 8.0


class UnsupportedModelError(UserInputError, TypeError):
    """The drop-in was given something other than a torchvision `FCOS` / `RetinaNet`, or was applied twice."""


def _unwrap(model: nn.Module) -> nn.Module:
    """The detector inside a `DistributedDataParallel` (or any wrapper exposing `.module`)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, (FCOS, RetinaNet)) else model


def scale_boxes(boxes: Tensor, scale: float) -> Tensor:
    """(..., 4) xyxy boxes scaled by `scale` about their centres (the same boxes when scale == 1)."""
    if scale == 1:
        return boxes
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    half = (boxes[..., 2:] - boxes[..., :2]) * (scale / 2)
    return torch.cat([centre - half, centre + half], dim=-1)


def pad_targets(targets: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
    """torchvision targets -> (B, G, 4) GT boxes padded with zeros and the (B, G) bool mask of the real ones."""
    num_gt = max((len(t["boxes"]) for t in targets), default=0)
    device = targets[0]["boxes"].device
    boxes = torch.zeros(len(targets), num_gt, 4, device=device)
    mask = torch.zeros(len(targets), num_gt, dtype=torch.bool, device=device)
    for i, target in enumerate(targets):
        boxes[i, :len(target["boxes"])] = target["boxes"]
        mask[i, :len(target["boxes"])] = True
    return boxes, mask


class CombinedIoULoss:
    """`model.compute_loss` with the positives chosen by a `CombinedIoUAssigner` (see the module docstring).

    Called as torchvision calls `compute_loss`: `(targets, head_outputs, anchors[, num_anchors_per_level])` with
    head_outputs["bbox_regression"] (B, N, 4), anchors a list of B (N, 4) boxes (equal: one padded batch);
    returns `model.head.compute_loss(...)`'s dict. Not an `nn.Module`, so `state_dict` is unchanged.
    """

    def __init__(self, model: FCOS | RetinaNet, assigner: CombinedIoUAssigner, anchor_scale: float) -> None:
        self.model = model
        self.assigner = assigner
        self.anchor_scale = anchor_scale
        self._level_shapes: list[tuple[int, int]] | None = None  # this forward pass's, set by the hook
        self.hook = model.head.register_forward_pre_hook(self._record_level_shapes)

    def _record_level_shapes(self, head: nn.Module, inputs: tuple[Any, ...]) -> None:
        self._level_shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in inputs[0]] if head.training else None

    def box_coder_decode(self, regression: Tensor, anchors: Tensor) -> Tensor:
        """Predicted boxes (B, N, 4) from the regression output (B, N, 4) and anchors (N, 4), with the box coder
        the model's loss uses."""
        if isinstance(self.model, FCOS):
            return self.model.head.box_coder.decode(regression, anchors.expand_as(regression))
        coder = self.model.head.regression_head.box_coder
        return torch.stack([coder.decode_single(codes, anchors) for codes in regression])

    def matched_idxs(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor],
                     anchors: list[Tensor], level_shapes: list[tuple[int, int]]) -> list[Tensor]:
        """Per image the (N,) int64 index of each anchor's GT, -1 for negatives (torchvision's `matched_idxs`)."""
        anchors_shared = anchors[0]  # every image's anchors are those of the one padded batch size
        locations = sum(h * w for h, w in level_shapes)
        per_location = anchors_shared.shape[0] // locations
        num_anchors_per_level = [h * w * per_location for h, w in level_shapes]
        gt_boxes, gt_mask = pad_targets(targets)
        w_pred, _ = self.assigner.weights()
        pred_boxes = None
        if w_pred != 0:
            with torch.no_grad():
                pred_boxes = self.box_coder_decode(head_outputs["bbox_regression"].detach().float(), anchors_shared)
        result = self.assigner(
            scale_boxes(anchors_shared, self.anchor_scale), num_anchors_per_level, gt_boxes, gt_mask, pred_boxes,
            level_shapes=level_shapes if per_location == 1 else None,
        )
        return list(result.gt_index.unbind(0))

    def __call__(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor],
                 num_anchors_per_level: list[int] | None = None) -> dict[str, Tensor]:
        level_shapes, self._level_shapes = self._level_shapes, None  # consumed: nothing kept between calls
        if level_shapes is None:
            raise RuntimeError("compute_loss was called outside the model's training forward pass; the combined-IoU "
                               "assignment needs the feature-map sizes of that pass (call model(images, targets))")
        matched = self.matched_idxs(targets, head_outputs, anchors, level_shapes)
        return self.model.head.compute_loss(targets, head_outputs, anchors, matched)


def use_combined_iou_assignment(model: nn.Module, pred_weight: float = 1.0, anchor_weight: float = 1.0,
                                topk: int = 9, center_margin: float = 0.01,
                                anchor_scale: float | None = None) -> nn.Module:
    """Make a torchvision `FCOS` / `RetinaNet` choose its training positives with combined IoUs; returns `model`.

    pred_weight / anchor_weight: weights of the predicted-box IoU and the anchor IoU (`pred_weight=0`: plain
    ATSS); topk: candidates per level; center_margin: px an anchor centre must lie inside its GT by;
    anchor_scale: side of the anchor box used for the anchor IoU, in units of torchvision's anchor box
    (None: 8 for FCOS, whose anchors are one stride wide, 1 for RetinaNet). See the module docstring.
    """
    detector = _unwrap(model)
    if not isinstance(detector, (FCOS, RetinaNet)):
        raise UnsupportedModelError(f"use_combined_iou_assignment: got a {type(model).__name__}; pass a "
                                    "torchvision.models.detection FCOS or RetinaNet")
    if isinstance(detector.__dict__.get("compute_loss"), CombinedIoULoss):
        raise UnsupportedModelError("use_combined_iou_assignment: this model already uses the combined-IoU "
                                    "assignment; call restore_assignment(model) first to change its settings")
    for name, weight in (("pred_weight", pred_weight), ("anchor_weight", anchor_weight)):
        if isinstance(weight, (str, bool)) or not isinstance(weight, (int, float)):
            raise UnsupportedModelError(f"use_combined_iou_assignment: {name}={weight!r}; use a number (torchvision's "
                                        "forward carries no training progress for 'up' / 'down' schedules)")
    if anchor_scale is None:
        anchor_scale = FCOS_ANCHOR_SCALE if isinstance(detector, FCOS) else 1.0
    assigner = CombinedIoUAssigner(topk, float(pred_weight), float(anchor_weight), center_margin)
    # An instance attribute shadows the class's compute_loss for this model only (see the module docstring).
    detector.compute_loss = CombinedIoULoss(detector, assigner, float(anchor_scale))
    return model


def restore_assignment(model: nn.Module) -> nn.Module:
    """Undo `use_combined_iou_assignment`: torchvision's own assignment again; returns `model`. No-op if not applied."""
    detector = _unwrap(model)
    loss = detector.__dict__.get("compute_loss")
    if isinstance(loss, CombinedIoULoss):
        loss.hook.remove()
        del detector.compute_loss
    return model


@contextlib.contextmanager
def combined_iou_assignment(model: nn.Module, **options: Any) -> Iterator[nn.Module]:
    """`with combined_iou_assignment(model, pred_weight=1.0): ...` -- the drop-in inside the block only."""
    use_combined_iou_assignment(model, **options)
    try:
        yield model
    finally:
        restore_assignment(model)
