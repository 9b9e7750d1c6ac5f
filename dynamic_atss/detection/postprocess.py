"""Detections from the flattened head outputs, vectorised over the batch (one `batched_nms` call)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from .anchors import BoxCoder
from ..config import ConventionConfig, TestConfig


def postprocess(
    cls_logits: list[Tensor], box_deltas: list[Tensor], quality_logits: list[Tensor], anchors: list[Tensor],
    image_sizes: Tensor, box_coder: BoxCoder, test: TestConfig, conventions: ConventionConfig | None = None,
) -> list[dict[str, Tensor]]:
    """Per level: keep cls probabilities > score_thresh, top `pre_nms_topk` by cls * quality (authors) or by
    cls alone (mmdetection), decode; then class-wise NMS over all levels and the top `max_detections` per
    image. Scores are sqrt(cls * quality) (authors) or cls * quality (mmdetection).

    Args (one list entry per FPN level):
        cls_logits: (B, N_l, C); box_deltas: (B, N_l, 4); quality_logits: (B, N_l); anchors: (N_l, 4).
        image_sizes: (B, 2) (height, width) of each image inside the padded batch; boxes are clipped to it.
    Returns: per image `{"boxes": (D,4) xyxy, "scores": (D,), "labels": (D,) int64}`, sorted by score;
    boxes that clipping leaves with zero area are dropped.
    """
    conventions = conventions or ConventionConfig()
    batch_size, _, num_classes = cls_logits[0].shape
    all_boxes, all_scores, all_labels = [], [], []
    for cls_level, delta_level, quality_level, anchor_level in zip(cls_logits, box_deltas, quality_logits, anchors):
        cls_prob = cls_level.float().sigmoid()
        joint = (cls_prob * quality_level.float().sigmoid().unsqueeze(-1)).flatten(1)
        # -1 marks non-candidates: topk then never prefers them over a real candidate.
        candidate = (cls_prob > test.score_thresh).flatten(1)
        rank_by = joint if conventions.pre_nms_rank_by_joint else cls_prob.flatten(1)
        ranking = torch.where(candidate, rank_by, rank_by.new_full((), -1.0))
        flat_index = ranking.topk(min(test.pre_nms_topk, ranking.shape[1]), dim=1).indices
        values = torch.where(torch.gather(candidate, 1, flat_index), torch.gather(joint, 1, flat_index), -1.0)
        anchor_index = flat_index // num_classes
        deltas = torch.gather(delta_level, 1, anchor_index.unsqueeze(-1).expand(-1, -1, 4))
        all_boxes.append(box_coder.decode(deltas, anchor_level[anchor_index]))
        all_scores.append(values)
        all_labels.append(flat_index % num_classes)
    boxes, scores, labels = torch.cat(all_boxes, 1), torch.cat(all_scores, 1), torch.cat(all_labels, 1)

    heights = image_sizes[:, 0, None].to(boxes)
    widths = image_sizes[:, 1, None].to(boxes)
    boxes = torch.stack(
        [boxes[..., 0].clamp(min=0).minimum(widths), boxes[..., 1].clamp(min=0).minimum(heights),
         boxes[..., 2].clamp(min=0).minimum(widths), boxes[..., 3].clamp(min=0).minimum(heights)], dim=-1,
    )
    if conventions.score_sqrt:
        scores = scores.clamp(min=0).sqrt().where(scores >= 0, scores)

    # Boxes entirely outside the image collapse to zero area when clipped: drop them.
    valid = (scores >= 0) & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    image_index = torch.arange(batch_size, device=boxes.device).unsqueeze(1).expand_as(scores)[valid]
    boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
    keep = batched_nms(boxes, scores, image_index * num_classes + labels, test.nms_thresh)  # sorted by score
    # Group by image (stable, so still sorted by score inside an image) and keep each image's top k.
    order = torch.sort(image_index[keep], stable=True).indices
    keep = keep[order]
    kept_image = image_index[keep]
    counts = torch.bincount(kept_image, minlength=batch_size)
    first_of_image = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(keep), device=keep.device) - first_of_image[kept_image]
    keep = keep[rank < test.max_detections]
    counts = counts.clamp(max=test.max_detections).tolist()
    return [
        {"boxes": b, "scores": s, "labels": l}
        for b, s, l in zip(boxes[keep].split(counts), scores[keep].split(counts), labels[keep].split(counts))
    ]
