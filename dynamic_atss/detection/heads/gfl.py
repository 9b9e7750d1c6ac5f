"""The GFL family: Generalized Focal Loss (GFL, v1) and GFLV2 with its distribution-guided quality predictor.

One module for both: `head.dgqp=False` is GFL (Li et al., NeurIPS 2020), `head.dgqp=True` is GFLV2 (Li et al.,
CVPR 2021). The towers are ATSS's (`num_convs` x (3x3 conv, GN, ReLU), one for classification, one for boxes).

Raw outputs per level (`output_names`):
- `cls_logits` (B, C, H, W): classification logits; the score is their sigmoid (GFL), or the sigmoid times the
  DGQP quality (GFLV2): one "joint" classification-quality score, trained with QFL, no separate quality branch;
- `box_dist_logits` (B, 4 * (reg_max + 1), H, W): per side (left, top, right, bottom, in that channel order, each
  `reg_max + 1` bins) the logits of a general distribution over the distances 0, 1, ..., reg_max in units of the
  level's stride, times the level's `Scale`. The distance is the distribution's mean (softmax integral) times the
  stride, measured from the anchor centre: box = (cx - l, cy - t, cx + r, cy + b);
- GFLV2 only, `quality_logits` (B, 1, H, W): DGQP, from each side's distribution: its top-k probabilities
  (`dgqp_topk`, 4) and their mean -> 4 * (k + 1) = 20 values -> 1x1 conv to `dgqp_hidden` (64) -> ReLU -> 1x1 conv
  to 1; the quality is its sigmoid. Gradients flow from the quality back into the distributions, as in GFLV2.

Training, for a positive anchor assigned to GT g of class c (the assignment is the shared combined-IoU ATSS,
whose predicted boxes are the decoded integral boxes, `assignment_boxes`; `assigner.pred_weight: 0` is the
plain GFL / GFLV2 baseline of the paper's Table V, `1` the "+CIoUs" row):
- QFL (beta 2) on every (anchor, class) entry of the score (GFLV2: of the joint score), soft target = IoU of the
  anchor's detached predicted box with g (`AssignResult.pred_iou`) on (anchor, c), 0 elsewhere; normalised by
  the number of positives (averaged over processes with `reduce_mean`, at least 1);
- GIoU of the decoded box with g (`loss.box_weight`, 2.0) and DFL of each side's distribution against the
  side's distance to g in stride units, clamped to [0, reg_max - 0.01] (`loss.dfl_weight`, 0.25, averaged over
  the 4 sides); both weighted by the positive's detached maximum score over classes (GFLV2: joint score) and
  normalised by the sum of those weights (averaged over processes, at least 1, as mmdetection's GFL head does;
  the GFocalV2 code does not clamp it, which only matters while that sum is below 1 early in training).

Inference: the score (joint for GFLV2) is thresholded (`test.score_thresh`), ranked for the per-level top-k and
reported; `conventions.score_sqrt` / `pre_nms_rank_by_joint` are ATSS-family conventions and do not apply.

Defaults of the registered constructors (`GFL` below): the GFL / GFLV2 authors' settings,
which are mmdetection's GFL config (`gfl_r50_fpn_1x_coco`): towers of 4 convs, 256 channels, GN(32), no conv
bias before GN (`head.conv_bias=False`); reg_max 16; DGQP top-4 + mean, 64 hidden; QFL weight 1, GIoU 2.0, DFL
0.25; anchors of side 8 x stride centred at (x, y) * stride (`anchors.center_offset=0.0`); P7 = conv(P6) without
ReLU (`conventions.relu_before_p7=False`); ATSS top-9; test: score > 0.05, top 1000 per level, NMS 0.6, 100
per image. The DCN variants use this library's DCNv2 backbone stages 2-4 (the authors' GFL/GFLV2 DCN models
use DCNv1 in stages 2-4 for R-101; converted DCNv1 checkpoints load exactly, see `convert/mmdet.py`); no DCN
in the head, as in GFL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from ...config import BackboneConfig, FamilyOptions, ModelConfig, loss_option
from ...registry import BACKBONES
from ..assigner import CombinedIoUAssigner
from ..losses import distribution_focal_loss, joint_quality_focal_loss, quality_focal_loss, reduce_mean
from .base import (
    DenseHead, HeadFamily, Scale, ScoreMaps, Targets, Variant, connected, conv_gn_tower, float32_loss,
    gather_positive, init_head_weights, register_family,
)

# DFL targets stay strictly below reg_max so that both neighbouring bins exist (GFL's `bbox2distance` eps).
_TARGET_EPS = 0.01


@dataclass
class GFLOptions(FamilyOptions):
    """The GFL family's own options (`head.reg_max`, `head.dgqp`, ..., `loss.dfl_weight`; see `FamilyOptions`)."""

    reg_max: int = 16  # box sides as distributions over reg_max + 1 bins
    dgqp: bool = False  # GFLV2's distribution-guided quality predictor
    dgqp_topk: int = 4  # DGQP: top-k probabilities of each side's distribution
    dgqp_hidden: int = 64  # DGQP: hidden channels
    dfl_weight: float = loss_option(0.25)  # distribution focal loss

    def __post_init__(self) -> None:
        if not isinstance(self.reg_max, int) or self.reg_max < 1:
            raise ValueError(
                f"head.reg_max={self.reg_max!r}: the box distributions need at least 2 bins (reg_max >= 1); GFL uses 16"
            )
        if self.dgqp:
            bins = self.reg_max + 1
            if not 1 <= self.dgqp_topk <= bins:
                raise ValueError(
                    f"head.dgqp_topk={self.dgqp_topk} must be between 1 and the number of bins per side, "
                    f"reg_max + 1 = {bins}; GFLV2 uses 4"
                )
            if self.dgqp_hidden < 1:
                raise ValueError(f"head.dgqp_hidden={self.dgqp_hidden} must be >= 1; GFLV2 uses 64")


class GFLHead(DenseHead):
    """GFL / GFLV2 head, shared across levels; see the module docstring for outputs, losses and scores."""

    box_outputs = ("box_dist_logits",)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        head, options = config.head, self.options
        self.loss_cfg = config.loss
        self.reg_max = options.reg_max
        self.dgqp_topk = options.dgqp_topk
        # GFL (v1) has no quality output: the names depend on the configuration, not only on the family.
        self.output_names = ("cls_logits", "box_dist_logits") + (("quality_logits",) if options.dgqp else ())
        self.cls_tower = conv_gn_tower(head, config.fpn_channels)
        self.box_tower = conv_gn_tower(head, config.fpn_channels)
        self.cls_logits = nn.Conv2d(head.channels, config.num_classes, 3, 1, 1)
        self.bbox_pred = nn.Conv2d(head.channels, 4 * (self.reg_max + 1), 3, 1, 1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(self.num_levels))
        self.dgqp: nn.Sequential | None = None
        if options.dgqp:
            self.dgqp = nn.Sequential(
                nn.Conv2d(4 * (options.dgqp_topk + 1), options.dgqp_hidden, 1), nn.ReLU(inplace=True),
                nn.Conv2d(options.dgqp_hidden, 1, 1),
            )
        # The bin values 0..reg_max (not a parameter, not saved: it follows from reg_max).
        self.register_buffer("bin_values", torch.arange(self.reg_max + 1, dtype=torch.float32), persistent=False)
        init_head_weights(self, head.prior_prob)

    def describe(self) -> str:
        bins = f"box sides as distributions over {self.reg_max + 1} bins (DFL)"
        if self.dgqp is None:
            return f"GFL head, {bins}, QFL on the classification score"
        return (f"GFLV2 head, {bins}, DGQP (top-{self.dgqp_topk} + mean -> {self.dgqp[0].out_channels} -> 1), "
                "QFL on the joint classification-quality score")

    # ------------------------------------------------------------------ network
    def distribution_statistics(self, box_dist_logits: Tensor) -> Tensor:
        """DGQP's input: (B, 4 * (reg_max + 1), H, W) -> (B, 4 * (k + 1), H, W), per side its top-k bin
        probabilities (descending) followed by their mean, sides in the order l, t, r, b."""
        batch, _, height, width = box_dist_logits.shape
        # softmax in at least float32 (the head may run in half precision)
        logits = box_dist_logits.to(torch.promote_types(box_dist_logits.dtype, torch.float32))
        prob = logits.view(batch, 4, self.reg_max + 1, height, width).softmax(dim=2)
        top = prob.topk(self.dgqp_topk, dim=2).values
        stats = torch.cat([top, top.mean(dim=2, keepdim=True)], dim=2)
        return stats.view(batch, 4 * (self.dgqp_topk + 1), height, width).to(box_dist_logits.dtype)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], ...]:
        cls_logits, box_dist_logits, quality_logits = [], [], []
        for feature, scale in zip(features, self.scales):
            cls_logits.append(self.cls_logits(self.cls_tower(feature)))
            dist = scale(self.bbox_pred(self.box_tower(feature)))
            box_dist_logits.append(dist)
            if self.dgqp is not None:
                quality_logits.append(self.dgqp(self.distribution_statistics(dist)))
        if self.dgqp is None:
            return cls_logits, box_dist_logits
        return cls_logits, box_dist_logits, quality_logits

    # ------------------------------------------------------------------ boxes
    def distances(self, box_dist_logits: Tensor) -> Tensor:
        """(..., 4 * (reg_max + 1)) logits -> (..., 4) expected distances (l, t, r, b) in units of the stride:
        the softmax integral sum_i P(i) * i of each side."""
        prob = box_dist_logits.float().unflatten(-1, (4, self.reg_max + 1)).softmax(dim=-1)
        return prob @ self.bin_values.float()

    def decode_boxes(self, flat: dict[str, Tensor], anchors: Tensor, strides: Tensor | float) -> Tensor:
        distances = self.distances(flat["box_dist_logits"])
        if isinstance(strides, Tensor):
            strides = strides.float().unsqueeze(-1)
        distances = distances * strides
        anchors = anchors.float()
        centres = (anchors[..., :2] + anchors[..., 2:]) / 2
        return torch.cat([centres - distances[..., :2], centres + distances[..., 2:]], dim=-1)

    # ------------------------------------------------------------------ training
    @float32_loss
    def loss(
        self, raw: tuple[list[Tensor], ...], targets: Targets, assigner: CombinedIoUAssigner, progress: float = 0.0,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        inputs = self.loss_inputs(raw, targets)
        assignment = self.assign(inputs, assigner, progress)
        flat, anchors, strides = inputs.flat, inputs.anchors, inputs.strides
        cls_logits, box_dist_logits = flat["cls_logits"], flat["box_dist_logits"]
        quality_logits = flat.get("quality_logits")
        pos = gather_positive(assignment, inputs.targets)
        img_idx, anchor_idx, labels = pos["img"], pos["anchor"], pos["labels"]
        num_pos = reduce_mean(torch.tensor(float(img_idx.numel()), device=cls_logits.device)).clamp(min=1.0)

        # QFL over all anchors x classes, soft target = IoU of the detached predicted box with its GT.
        cls_targets = torch.zeros_like(cls_logits)
        cls_targets[img_idx, anchor_idx, labels] = pos["pred_iou"]
        if quality_logits is None:
            loss_cls = quality_focal_loss(cls_logits, cls_targets)
        else:
            loss_cls = joint_quality_focal_loss(cls_logits, quality_logits, cls_targets)
        loss_cls = loss_cls / num_pos

        # Box losses of the positives, weighted by their detached max score.
        with torch.no_grad():
            scores = cls_logits[img_idx, anchor_idx].sigmoid()
            if quality_logits is not None:
                scores = scores * quality_logits[img_idx, anchor_idx].sigmoid()
            weights = scores.amax(dim=-1)  # (P,)
        weight_sum = reduce_mean(weights.sum()).clamp(min=1.0)
        pos_logits = box_dist_logits[img_idx, anchor_idx]
        pos_anchors, pos_strides, gt_boxes = anchors[anchor_idx], strides[anchor_idx], pos["gt_boxes"]
        boxes = self.decode_boxes({"box_dist_logits": pos_logits}, pos_anchors, pos_strides)
        giou = torchvision.ops.generalized_box_iou_loss(boxes, gt_boxes, reduction="none")
        loss_box = (giou * weights).sum() / weight_sum * self.loss_cfg.box_weight

        centres = (pos_anchors[:, :2] + pos_anchors[:, 2:]) / 2
        side_targets = torch.cat([centres - gt_boxes[:, :2], gt_boxes[:, 2:] - centres], dim=-1) / pos_strides[:, None]
        side_targets = side_targets.clamp(min=0, max=self.reg_max - _TARGET_EPS)
        # clamped into range just above: no need for the loss's range check (a host-device synchronisation)
        dfl = distribution_focal_loss(pos_logits.reshape(-1, self.reg_max + 1), side_targets.reshape(-1), check=False)
        loss_dfl = (dfl.view(-1, 4).mean(dim=-1) * weights).sum() / weight_sum * self.options.dfl_weight

        outputs = (box_dist_logits,) if quality_logits is None else (box_dist_logits, quality_logits)
        return {
            "loss_cls": loss_cls,
            "loss_box": connected(loss_box, *outputs),
            "loss_dfl": connected(loss_dfl, box_dist_logits),
        }, assignment.stats

    # ------------------------------------------------------------------ inference
    def detection_scores(self, flat: dict[str, Tensor]) -> ScoreMaps:
        score = flat["cls_logits"].float().sigmoid()
        if self.dgqp is not None:
            score = score * flat["quality_logits"].float().sigmoid()
        return ScoreMaps(select=score, rank=score, score=score)


# ---------------------------------------------------------------------------------------------- family
def _variant_config(variant: Variant) -> ModelConfig:
    # mmdetection's GFL settings (= the GFL / GFLV2 authors'); `gfl_*` / `gflv2_*` assign with anchor IoUs only,
    # `dynamic_*` with combined IoUs. score_sqrt / pre_nms_rank_by_joint are ATSS-family conventions (no effect).
    config = ModelConfig(
        backbone=BackboneConfig(name=BACKBONES[variant.trunk], dcn=variant.dcn,
                                dcn_stages=variant.options.get("dcn_stages", (2, 3, 4))),
        **GFL.mmdet_config(dgqp=variant.options.get("dgqp", False)),
    )
    if variant.combined_ious:
        config.assigner.pred_weight = 1.0
    return config


def _variants() -> tuple[Variant, ...]:
    variants = [
        Variant("gfl_x101_32x4d", "x101_32x4d", combined_ious=False, doc="GFL (v1), anchor IoUs only; ResNeXt-101 32x4d "
                "FPN (mmdetection's GFL X-101, `.mmdet_coco_2x_ms`: 45.9 AP)."),
        Variant("gfl_x101_32x4d_dcn_c4", "x101_32x4d", dcn=True, combined_ious=False, options={"dcn_stages": (3, 4)},
                doc="GFL (v1), anchor IoUs only; ResNeXt-101 32x4d FPN, DCN in stages 3-4 only (mmdetection's "
                "dconv-c4-c5)."),
    ]
    names = {"r50": "ResNet-50", "r101": "ResNet-101", "r101_dcn": "ResNet-101-DCN",
             "x101_32x8d": "ResNeXt-101 32x8d", "x101_64x4d": "ResNeXt-101 64x4d"}
    for version, dgqp in (("gfl", False), ("gflv2", True)):
        for combined in (False, True):
            what = ("GFLV2" if dgqp else "GFL (v1)") + (
                " with combined IoUs" + (' (Table V "+CIoUs")' if dgqp else "") if combined
                else ", anchor IoUs only" + (" (Table V baseline)" if dgqp else ""))
            for token, backbone in names.items():
                paper = ""
                if dgqp and token == "r50":
                    paper = f" (paper: {41.1 if combined else 40.6} AP val2017, 1x)"
                variants.append(Variant.named(version, token, combined, f"{what}; {backbone} FPN{paper}.", dgqp=dgqp))
    return tuple(variants)


GFL = register_family(HeadFamily(
    kind="gfl",
    head=GFLHead,
    cls_losses=("qfl",),
    cls_loss_note="GFL / GFLV2 train their joint classification-quality score with QFL",
    options=GFLOptions,
    mmdet_head=dict(conv_bias=False, num_groups=32, reg_max=16, dgqp_topk=4, dgqp_hidden=64),
    mmdet_conventions=dict(relu_before_p7=False, score_sqrt=False, pre_nms_rank_by_joint=False),
    mmdet_loss=dict(cls_loss="qfl", box_weight=2.0, dfl_weight=0.25),
    variant_config=_variant_config,
    variants=_variants(),
))
