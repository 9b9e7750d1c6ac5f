"""The VFNet family (VarifocalNet, Zhang et al. 2021) with ATSS label assignment by combined IoUs (paper, Table V).

Architecture per FPN level (the head is shared across levels), as in VarifocalNet's reference code:

    feature -> cls_tower (num_convs x [3x3 conv, GN, ReLU])  ---------------------> cls_dcn -> ReLU -> cls_logits
            -> box_tower (num_convs x [3x3 conv, GN, ReLU]) -> box_init_tower (1 x [3x3 conv, GN, ReLU])
                                                               -> bbox_pred -> Scale -> exp x reg_denom = initial box
                                                       star offsets <- initial box (gradient x 0.1)
               box_tower output -> box_refine_dcn(offsets) -> ReLU -> bbox_refine -> Scale' -> exp x initial (detached)
                                                                                                  = refined box

- Boxes are ltrb distances in pixels from the anchor centre (the anchor's only other use is the assigner's AIoU):
  initial `exp(scale_l * conv) * reg_denom_l`, with `reg_denom_l = octave_scale * stride_l` (the anchor side: 64,
  128, 256, 512, 1024 for the standard anchors, mmdetection's `reg_denoms`), refined = `exp(scale'_l * conv)` times
  the detached initial distances. The exponent runs in float32 (half precision overflows).
- Star-shaped deformable representation: the 3x3 deformable convs (`cls_dcn`, `box_refine_dcn`,
  `torchvision.ops.deform_conv2d`, no bias) sample the 9 points {x - l, x, x + r} x {y - t, y, y + b} of the initial
  box, in feature-map cells (distances / stride); the offsets are those points minus the regular 3x3 grid, in
  torchvision's (dy, dx) per kernel point, row-major over the kernel. The initial box reaches the offsets with its
  gradient scaled by 0.1 (`(1 - 0.1) * d.detach() + 0.1 * d`), as in the reference code.
- DCN models put DCNv2 in the last conv of both towers (mmdetection's `dcn_on_last_conv`), not in box_init_tower.

Raw outputs per level (`output_names`): IACS logits (B, C, H, W), initial distances (B, 4, H, W), refined distances
(B, 4, H, W), ltrb in pixels. Inference decodes the refined box and scores with sigmoid(IACS) (select, rank and
report: VFNet has no separate quality branch); `conventions.score_sqrt` / `pre_nms_rank_by_joint` do not apply.

Losses, for a positive anchor assigned to GT g of class c (VarifocalNet's weighting):
- IACS target t = IoU(refined box, g), detached and clamped at 1e-6, on entry (anchor, c); every other entry 0.
  Varifocal loss `t * BCE(p, t)` on t > 0, `alpha * p^gamma * BCE(p, 0)` elsewhere (`loss.vfl_alpha` 0.75,
  `loss.focal_gamma` 2), summed and divided by the number of positives (averaged over processes, at least 1).
- `loss_box_init`: GIoU loss of the initial box, each weighted by its own detached IoU with g, divided by the sum of
  those weights (averaged over processes, at least 1), times `loss.box_init_weight` (1.5).
- `loss_box`: the same for the refined box, times `loss.box_weight` (2.0).

Label assignment: the shared combined-IoU assigner (detection/assigner.py) with this family's predicted boxes,
chosen by `head.assign_boxes`. Default "refined": the refined box is the detector's output and its IoU with the
GT is exactly what the IACS is trained to predict (the VFL target), so the assigner ranks candidates by the
quality the classifier learns, as the ATSS family's PIoU is its soft target; it is also the more accurate box,
and more accurate predicted boxes are what the combined IoUs are meant to reward. "initial" uses the first-stage
box (it carries the gradient of the offsets and is closer to what an anchor-based ATSS head regresses). The
paper does not say which one its VFNet+CIoUs row used. `assigner.pred_weight = 0` is VFNet's own ATSS
assignment (anchor IoUs only, Table V "VFNet"); 1 is the "+CIoUs" row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torchvision
from torch import Tensor, nn

from ...config import BackboneConfig, FamilyOptions, ModelConfig, loss_option
from ...ops.dcn import DeformConv2d
from ...registry import BACKBONES
from ..assigner import CombinedIoUAssigner, paired_iou
from ..losses import reduce_mean, varifocal_loss
from .base import (
    DenseHead, HeadFamily, Scale, ScoreMaps, Targets, Variant, connected, conv_gn_tower, float32_loss,
    gather_positive, init_head_weights, register_family,
)

# Gradient multiplier from the initial box into the star-shaped offsets (VarifocalNet's `gradient_mul`).
OFFSET_GRADIENT_SCALE = 0.1
# IoUs are clamped here before they serve as targets and weights (VarifocalNet's reference code).
_MIN_IOU = 1e-6


@dataclass
class VFNetOptions(FamilyOptions):
    """The VFNet family's own options (`head.assign_boxes`, `loss.box_init_weight`, ...; see `FamilyOptions`)."""

    assign_boxes: Literal["initial", "refined"] = "refined"  # the predicted boxes the combined-IoU assigner uses
    focal_gamma: float = loss_option(2.0)  # varifocal loss
    vfl_alpha: float = loss_option(0.75)  # varifocal loss
    box_init_weight: float = loss_option(1.5)  # GIoU of the initial box

    def __post_init__(self) -> None:
        if self.assign_boxes not in ("initial", "refined"):
            raise ValueError(f"head.assign_boxes={self.assign_boxes!r} is unknown; use 'initial' or 'refined'")


def distance_to_boxes(distances: Tensor, anchors: Tensor) -> Tensor:
    """ltrb distances (..., 4) from the anchor centres (anchors (..., 4) xyxy) -> boxes (..., 4) xyxy, float32."""
    anchors = anchors.float()
    centres = (anchors[..., :2] + anchors[..., 2:]) / 2
    distances = distances.float()
    return torch.cat([centres - distances[..., :2], centres + distances[..., 2:]], dim=-1)


def star_offsets(distances: Tensor, stride: float) -> Tensor:
    """Initial ltrb distances (B, 4, H, W) in pixels -> offsets (B, 18, H, W) of a 3x3 deformable conv
    (torchvision's layout: (dy, dx) per kernel point, kernel points row-major) that sample the 9 points
    {x - l, x, x + r} x {y - t, y, y + b} of the box instead of the regular grid {x - 1, x, x + 1} x {y - 1, y, y + 1}
    (in feature cells). Gradients reach `distances` scaled by `OFFSET_GRADIENT_SCALE`."""
    scaled = (1 - OFFSET_GRADIENT_SCALE) * distances.detach() + OFFSET_GRADIENT_SCALE * distances
    left, top, right, bottom = (scaled / stride).unbind(1)
    zero = torch.zeros_like(left)
    # Sampling position minus the regular grid position, per kernel row (y) and column (x).
    rows = torch.stack([1 - top, zero, bottom - 1], dim=1)  # (B, 3, H, W)
    cols = torch.stack([1 - left, zero, right - 1], dim=1)
    batch, _, height, width = distances.shape
    dy = rows[:, :, None].expand(batch, 3, 3, height, width)
    dx = cols[:, None, :].expand(batch, 3, 3, height, width)
    return torch.stack([dy, dx], dim=3).reshape(batch, 18, height, width)


def _iou_weighted_giou(
    distances: Tensor, img_idx: Tensor, anchor_idx: Tensor, pos_anchors: Tensor, gt_boxes: Tensor, weight: float,
) -> tuple[Tensor, Tensor]:
    """GIoU loss of the positives' boxes, each weighted by its detached IoU with its GT (clamped at 1e-6), divided by
    the sum of those IoUs (averaged over processes, at least 1), times `weight`; and those IoUs (P,).

    distances (B, N, 4) of all anchors; img_idx / anchor_idx (P,) pick the positives; pos_anchors, gt_boxes (P, 4).
    The loss keeps every entry of `distances` in the graph even without positives.
    """
    boxes = distance_to_boxes(distances[img_idx, anchor_idx], pos_anchors)
    iou = paired_iou(boxes.detach(), gt_boxes).clamp(min=_MIN_IOU)
    giou = torchvision.ops.generalized_box_iou_loss(boxes, gt_boxes, reduction="none")
    normaliser = reduce_mean(iou.sum()).clamp(min=1.0)
    return connected((giou * iou).sum() / normaliser * weight, distances), iou


class VFNetHead(DenseHead):
    """Shared across levels; see the module docstring for the architecture, outputs, losses and assignment."""

    output_names = ("cls_logits", "box_init", "box_refine")
    box_outputs = ("box_refine",)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        head = config.head
        self.loss_cfg = config.loss
        self.assign_boxes = self.options.assign_boxes
        self.reg_denoms = [config.anchors.octave_scale * s for s in self.strides]
        channels = head.channels
        self.cls_tower = conv_gn_tower(head, config.fpn_channels)
        self.box_tower = conv_gn_tower(head, config.fpn_channels)
        # One more conv + GN + ReLU for the initial box only (never a DCN).
        self.box_init_tower = conv_gn_tower(dataclasses.replace(head, num_convs=1, dcn_last_conv=False), channels)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, 1, 1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(self.num_levels))
        self.box_refine_dcn = DeformConv2d(channels, channels, 3, 1, 1, bias=False)
        self.bbox_refine = nn.Conv2d(channels, 4, 3, 1, 1)
        self.scales_refine = nn.ModuleList(Scale(1.0) for _ in range(self.num_levels))
        self.cls_dcn = DeformConv2d(channels, channels, 3, 1, 1, bias=False)
        self.cls_logits = nn.Conv2d(channels, config.num_classes, 3, 1, 1)
        init_head_weights(self, head.prior_prob)
        for dcn in (self.box_refine_dcn, self.cls_dcn):  # N(0, 0.01) like every conv of the reference head
            nn.init.normal_(dcn.weight, std=0.01)

    def describe(self) -> str:
        return f"VFNet head (star-shaped deformable refinement, IACS with the Varifocal loss), assigner boxes `{self.assign_boxes}`"

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        cls_logits, box_init, box_refine = [], [], []
        for feature, scale, scale_refine, stride, reg_denom in zip(
            features, self.scales, self.scales_refine, self.strides, self.reg_denoms
        ):
            cls_feature = self.cls_tower(feature)
            box_feature = self.box_tower(feature)
            initial = scale(self.bbox_pred(self.box_init_tower(box_feature))).float().exp() * reg_denom
            offsets = star_offsets(initial, stride)
            refine_feature = torch.relu(self.box_refine_dcn(box_feature, offsets))
            refined = scale_refine(self.bbox_refine(refine_feature)).float().exp() * initial.detach()
            cls_logits.append(self.cls_logits(torch.relu(self.cls_dcn(cls_feature, offsets))))
            box_init.append(initial)
            box_refine.append(refined)
        return cls_logits, box_init, box_refine

    # ------------------------------------------------------------------ boxes
    def decode_boxes(self, flat: dict[str, Tensor], anchors: Tensor, strides: Tensor | float) -> Tensor:
        return distance_to_boxes(flat["box_refine"], anchors)

    def assignment_boxes(self, flat: dict[str, Tensor], anchors: Tensor, strides: Tensor) -> Tensor:
        name = "box_init" if self.assign_boxes == "initial" else "box_refine"
        return distance_to_boxes(flat[name].detach(), anchors)

    # ------------------------------------------------------------------ training
    @float32_loss
    def loss(
        self, raw: tuple[list[Tensor], ...], targets: Targets, assigner: CombinedIoUAssigner, progress: float = 0.0,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        inputs = self.loss_inputs(raw, targets)
        assignment = self.assign(inputs, assigner, progress)
        flat, anchors = inputs.flat, inputs.anchors
        cls_logits, box_init, box_refine = flat["cls_logits"], flat["box_init"], flat["box_refine"]
        pos = gather_positive(assignment, inputs.targets)
        img_idx, anchor_idx, labels, gt_boxes = pos["img"], pos["anchor"], pos["labels"], pos["gt_boxes"]
        num_pos = reduce_mean(torch.tensor(float(img_idx.numel()), device=cls_logits.device)).clamp(min=1.0)
        cfg, options = self.loss_cfg, self.options

        pos_anchors = anchors[anchor_idx]
        loss_box_init, _ = _iou_weighted_giou(box_init, img_idx, anchor_idx, pos_anchors, gt_boxes, options.box_init_weight)
        loss_box, refined_iou = _iou_weighted_giou(box_refine, img_idx, anchor_idx, pos_anchors, gt_boxes, cfg.box_weight)

        cls_targets = torch.zeros_like(cls_logits)
        cls_targets[img_idx, anchor_idx, labels] = refined_iou  # the IoU of the *refined* box with its GT
        loss_cls = varifocal_loss(cls_logits, cls_targets, options.vfl_alpha, options.focal_gamma) / num_pos
        return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_box_init": loss_box_init}, assignment.stats

    # ------------------------------------------------------------------ inference
    def detection_scores(self, flat: dict[str, Tensor]) -> ScoreMaps:
        iacs = flat["cls_logits"].float().sigmoid()
        return ScoreMaps(select=iacs, rank=iacs, score=iacs)


# ---------------------------------------------------------------------------------------------- family
def _variant_config(variant: Variant) -> ModelConfig:
    # VarifocalNet's mmdetection configs: 3-conv towers without conv bias (GN follows), anchors centred at
    # (x, y) * stride, P7 = conv(relu(P6)); `vfnet_*` assign with anchor IoUs only (VFNet itself, Table V "VFNet"),
    # `dynamic_vfnet_*` with the combined IoUs (Table V "+CIoUs").
    config = ModelConfig(backbone=BackboneConfig(name=BACKBONES[variant.trunk], dcn=variant.dcn),
                         **VFNET.mmdet_config(dcn_last_conv=variant.dcn))
    if variant.combined_ious:
        config.assigner.pred_weight = 1.0
    return config


def _variants() -> tuple[Variant, ...]:
    paper = {("r50", False): 41.3, ("r50", True): 41.6}
    backbones = {"r50": "ResNet-50", "r50_dcn": "ResNet-50-DCN", "r101": "ResNet-101", "r101_dcn": "ResNet-101-DCN",
                 "x101_32x8d": "ResNeXt-101 32x8d", "x101_64x4d": "ResNeXt-101 64x4d"}
    variants = []
    for token, backbone in backbones.items():
        for combined in (False, True):
            ap = paper.get((token, combined))
            doc = ("VFNet + combined IoUs, " if combined else "VFNet, ") + f"{backbone} FPN"
            if not combined and token == "r50":
                doc += ", ATSS assignment"
            if token == "r50_dcn" and not combined:
                doc += " (DCNv2 in stages 2-4 and the last tower convs)"
            if ap is not None:
                doc += f" (paper, Table V: {ap} AP on COCO val2017, 1x)"
            variants.append(Variant.named("vfnet", token, combined, doc + "."))
    return tuple(variants)


VFNET = register_family(HeadFamily(
    kind="vfnet",
    head=VFNetHead,
    cls_losses=("vfl",),
    cls_loss_note="its IoU-aware classification score is trained with the Varifocal loss",
    options=VFNetOptions,
    mmdet_head=dict(num_convs=3, conv_bias=False, num_groups=32),
    mmdet_conventions=dict(relu_before_p7=True, score_sqrt=False, pre_nms_rank_by_joint=False),
    mmdet_loss=dict(cls_loss="vfl", vfl_alpha=0.75, focal_gamma=2.0, box_weight=2.0, box_init_weight=1.5),
    variant_config=_variant_config,
    variants=_variants(),
))
