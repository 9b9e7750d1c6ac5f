"""The ATSS head family (Dynamic ATSS's own head): GN towers, per-level Scale, cls / box-delta / quality outputs.

Raw outputs per level: cls logits (B, C, H, W), box deltas (B, 4, H, W) (delta-xywh against the anchor,
times the level's Scale), quality logits (B, 1, H, W) (centerness or IoU, on the box tower).

Targets and losses, for a positive anchor assigned to GT g of class c (paper, Sec. III and Table II):
- soft target t = IoU of the anchor's detached predicted box with g (`AssignResult.pred_iou`), used by QFL / VFL
  on entry (anchor, c) and as the IoU-branch target; focal loss uses the hard target 1;
- centerness target sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) from the anchor centre to g;
- regression: GIoU of the decoded box with g, weighted by the quality target and normalised by the sum of
  those weights (averaged over processes), times `loss.box_weight`;
- quality: BCE of the quality logit against the quality target, normalised by the number of positives.
Every other (anchor, class) entry has classification target 0. Classification is normalised by the number of
positives (averaged over processes, at least 1).

Scores: cls probability x quality probability ("joint"); the authors rank the per-level candidates by the
joint score and report its square root, mmdetection ranks by cls and reports the joint score
(`conventions.pre_nms_rank_by_joint`, `conventions.score_sqrt`). Candidates are cls probabilities above the
threshold in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from ...config import BackboneConfig, FamilyOptions, HeadConfig, ModelConfig, loss_option
from ...registry import BACKBONES
from ..anchors import BoxCoder
from ..assigner import CombinedIoUAssigner
from ..losses import centerness_target, quality_focal_loss, reduce_mean, sigmoid_focal_loss, varifocal_loss
from .base import (
    DenseHead, HeadFamily, Scale, ScoreMaps, Targets, Variant, conv_gn_tower, connected, float32_loss,
    gather_positive, init_head_weights, register_family,
)

_WEIGHT_EPS = 1e-6


@dataclass
class ATSSOptions(FamilyOptions):
    """The ATSS family's own options (`head.quality`, `loss.focal_alpha`, ...; see `FamilyOptions`)."""

    quality: Literal["centerness", "iou"] = "iou"  # the quality branch
    focal_alpha: float = loss_option(0.25)  # loss.cls_loss: focal
    focal_gamma: float = loss_option(2.0)  # focal and varifocal losses
    vfl_alpha: float = loss_option(0.75)  # loss.cls_loss: vfl
    quality_weight: float = loss_option(1.0)  # BCE of the quality branch

    def __post_init__(self) -> None:
        if self.quality not in ("centerness", "iou"):
            raise ValueError(f"head.quality={self.quality!r} is unknown; use 'centerness' or 'iou'")


class ATSSHead(DenseHead):
    """Shared across levels; see the module docstring for outputs, losses and scores."""

    output_names = ("cls_logits", "box_deltas", "quality_logits")
    box_outputs = ("box_deltas",)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        head = config.head
        self.loss_cfg = config.loss
        self.quality_kind = self.options.quality
        self.conventions = config.conventions  # the model's own object: later edits to it take effect
        self.box_coder = BoxCoder()
        self.cls_tower = conv_gn_tower(head, config.fpn_channels)
        self.box_tower = conv_gn_tower(head, config.fpn_channels)
        self.cls_logits = nn.Conv2d(head.channels, config.num_classes, 3, 1, 1)
        self.bbox_pred = nn.Conv2d(head.channels, 4, 3, 1, 1)
        self.quality = nn.Conv2d(head.channels, 1, 3, 1, 1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(self.num_levels))
        init_head_weights(self, head.prior_prob)

    def describe(self) -> str:
        return f"ATSS head, quality branch `{self.quality_kind}`, classification loss `{self.loss_cfg.cls_loss}`"

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        cls_logits, box_deltas, quality_logits = [], [], []
        for feature, scale in zip(features, self.scales):
            box_feature = self.box_tower(feature)
            cls_logits.append(self.cls_logits(self.cls_tower(feature)))
            box_deltas.append(scale(self.bbox_pred(box_feature)))
            quality_logits.append(self.quality(box_feature))
        return cls_logits, box_deltas, quality_logits

    def decode_boxes(self, flat: dict[str, Tensor], anchors: Tensor, strides: Tensor | float) -> Tensor:
        return self.box_coder.decode(flat["box_deltas"], anchors)

    @float32_loss
    def loss(
        self, raw: tuple[list[Tensor], ...], targets: Targets, assigner: CombinedIoUAssigner, progress: float = 0.0,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        inputs = self.loss_inputs(raw, targets)
        assignment = self.assign(inputs, assigner, progress)
        flat, anchors = inputs.flat, inputs.anchors
        cls_logits, box_deltas = flat["cls_logits"], flat["box_deltas"]
        quality_logits = flat["quality_logits"][..., 0]
        pos = gather_positive(assignment, inputs.targets)
        img_idx, anchor_idx, labels, soft = pos["img"], pos["anchor"], pos["labels"], pos["pred_iou"]
        num_pos = reduce_mean(torch.tensor(float(img_idx.numel()), device=cls_logits.device)).clamp(min=1.0)

        # Classification over all anchors x classes.
        cfg, options = self.loss_cfg, self.options
        cls_targets = torch.zeros_like(cls_logits)
        if cfg.cls_loss == "focal":
            cls_targets[img_idx, anchor_idx, labels] = 1.0
            loss_cls = sigmoid_focal_loss(cls_logits, cls_targets, options.focal_alpha, options.focal_gamma)
        elif cfg.cls_loss == "qfl":
            cls_targets[img_idx, anchor_idx, labels] = soft
            loss_cls = quality_focal_loss(cls_logits, cls_targets)
        else:
            cls_targets[img_idx, anchor_idx, labels] = soft
            loss_cls = varifocal_loss(cls_logits, cls_targets, options.vfl_alpha, options.focal_gamma)
        loss_cls = loss_cls / num_pos

        # Quality targets (also the regression weights).
        pos_anchors = anchors[anchor_idx]
        target_boxes = pos["gt_boxes"]
        quality_targets = centerness_target(pos_anchors, target_boxes) if self.quality_kind == "centerness" else soft

        # GIoU regression of the decoded positive boxes, weighted by the quality targets.
        boxes = self.box_coder.decode(box_deltas[img_idx, anchor_idx], pos_anchors)
        giou = torchvision.ops.generalized_box_iou_loss(boxes, target_boxes, reduction="none")
        weight_sum = reduce_mean(quality_targets.sum()).clamp(min=_WEIGHT_EPS)
        loss_box = (giou * quality_targets).sum() / weight_sum * cfg.box_weight

        loss_quality = F.binary_cross_entropy_with_logits(
            quality_logits[img_idx, anchor_idx], quality_targets, reduction="sum"
        ) / num_pos * options.quality_weight
        return {
            "loss_cls": loss_cls,
            "loss_box": connected(loss_box, box_deltas),
            "loss_quality": connected(loss_quality, quality_logits),
        }, assignment.stats

    def detection_scores(self, flat: dict[str, Tensor]) -> ScoreMaps:
        cls_prob = flat["cls_logits"].float().sigmoid()
        joint = cls_prob * flat["quality_logits"].float().sigmoid()
        rank = joint if self.conventions.pre_nms_rank_by_joint else cls_prob
        # sqrt is monotonic: ranking and NMS order are those of the joint score either way.
        return ScoreMaps(select=cls_prob, rank=rank, score=joint.sqrt() if self.conventions.score_sqrt else joint)


# ---------------------------------------------------------------------------------------------- family
def _variant_config(variant: Variant) -> ModelConfig:
    backbone = BackboneConfig(name=BACKBONES[variant.trunk], dcn=variant.dcn)
    if not variant.combined_ious:
        # Plain ATSS as mmdetection trains it (anchor IoUs only, focal loss, centerness; anchors at offset 0, P7
        # from P6 without ReLU, score cls x centerness, no conv bias before GroupNorm): what the mmdetection
        # converter builds from its checkpoints (tests/test_mmdet.py checks that the two agree).
        return ModelConfig(backbone=backbone, **ATSS.mmdet_config())
    # The published Dynamic ATSS models: combined IoUs + QFL + IoU branch (paper, Tables II and IV), the authors'
    # conventions (ModelConfig's defaults).
    return ModelConfig(backbone=backbone, head=HeadConfig(kind="atss", dcn_last_conv=variant.dcn))


ATSS = register_family(HeadFamily(
    kind="atss",
    head=ATSSHead,
    cls_losses=("focal", "qfl", "vfl"),
    mmdet_head=dict(conv_bias=False, num_groups=32, quality="centerness"),
    mmdet_conventions=dict(relu_before_p7=False, score_sqrt=False, pre_nms_rank_by_joint=False),
    mmdet_loss=dict(cls_loss="focal"),
    options=ATSSOptions,
    variant_config=_variant_config,
    variants=(
        Variant("dynamic_atss_r50", "r50", doc="Dynamic ATSS, ResNet-50 FPN (paper: 40.3 AP on COCO test-dev, 1x)."),
        Variant("dynamic_atss_r101", "r101",
                doc="Dynamic ATSS, ResNet-101 FPN (paper: 44.7 AP on COCO test-dev, 2x multi-scale)."),
        Variant("dynamic_atss_r50_dcn", "r50", dcn=True,
                doc="Dynamic ATSS, ResNet-50-DCN FPN (paper: 44.4 AP on COCO test-dev, 1x)."),
        Variant("dynamic_atss_r101_dcn", "r101", dcn=True,
                doc="Dynamic ATSS, ResNet-101-DCN FPN (paper: 47.3 AP on COCO test-dev, 2x multi-scale)."),
        Variant("dynamic_atss_x101_32x8d", "x101_32x8d", doc="Dynamic ATSS, ResNeXt-101 32x8d FPN."),
        Variant("dynamic_atss_x101_64x4d", "x101_64x4d", doc="Dynamic ATSS, ResNeXt-101 64x4d FPN."),
        Variant("dynamic_atss_x101_32x8d_dcn", "x101_32x8d", dcn=True, doc="Dynamic ATSS, ResNeXt-101 32x8d-DCN FPN."),
        Variant("dynamic_atss_x101_64x4d_dcn", "x101_64x4d", dcn=True, doc="Dynamic ATSS, ResNeXt-101 64x4d-DCN FPN."),
        Variant("atss_r50", "r50", combined_ious=False, doc="Plain ATSS, ResNet-50 FPN, mmdetection's conventions "
                "(`atss_r50.mmdet_coco_1x`: its 39.4 AP COCO weights)."),
        Variant("atss_r101", "r101", combined_ious=False, doc="Plain ATSS, ResNet-101 FPN, mmdetection's conventions "
                "(`atss_r101.mmdet_coco_1x`: its 41.5 AP COCO weights)."),
    ),
))
