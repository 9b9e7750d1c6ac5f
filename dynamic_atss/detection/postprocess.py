"""Detections from a head family's flattened outputs, vectorised over the batch (one `batched_nms` call)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from ..config import TestConfig
from .heads.base import DenseHead


def postprocess(
    head: DenseHead, flat_levels: list[dict[str, Tensor]], anchors: list[Tensor], strides: list[float],
    image_sizes: Tensor, test: TestConfig,
) -> list[dict[str, Tensor]]:
    """Per level: keep the (anchor, class) entries whose `select` score is above `score_thresh`, take the top
    `pre_nms_topk` by the `rank` score and decode their boxes (the head family says what the three scores
    are, `DenseHead.detection_scores`); then class-wise NMS over all levels and the top `max_detections` per
    image, by the reported `score`.

    Args (one list entry per FPN level):
        head: the model's head family; flat_levels: `head.flatten(raw)`, {name: (B, N_l, k)};
        anchors: (N_l, 4); strides: the level's stride.
        image_sizes: (B, 2) (height, width) of each image inside the padded batch; boxes are clipped to it.
    Returns: per image `{"boxes": (D,4) xyxy, "scores": (D,), "labels": (D,) int64}`, sorted by score;
    boxes that clipping leaves with zero area are dropped.
    """
    batch_size = flat_levels[0][head.output_names[0]].shape[0]
    num_classes = head.num_classes
    all_boxes, all_scores, all_labels = [], [], []
    for flat, anchor_level, stride in zip(flat_levels, anchors, strides):
        maps = head.detection_scores(flat)
        # -1 marks non-candidates: topk then never prefers them over a real candidate.
        candidate = (maps.select > test.score_thresh).flatten(1)
        ranking = torch.where(candidate, maps.rank.flatten(1), maps.rank.new_full((), -1.0))
        flat_index = ranking.topk(min(test.pre_nms_topk, ranking.shape[1]), dim=1).indices
        values = torch.where(torch.gather(candidate, 1, flat_index), torch.gather(maps.score.flatten(1), 1, flat_index), -1.0)
        anchor_index = flat_index // num_classes
        kept = {
            name: torch.gather(flat[name], 1, anchor_index.unsqueeze(-1).expand(-1, -1, flat[name].shape[-1]))
            for name in head.box_outputs
        }
        all_boxes.append(head.decode_boxes(kept, anchor_level[anchor_index], stride))
        all_scores.append(values)
        all_labels.append(flat_index % num_classes)
    boxes, scores, labels = torch.cat(all_boxes, 1), torch.cat(all_scores, 1), torch.cat(all_labels, 1)

    heights = image_sizes[:, 0, None].to(boxes)
    widths = image_sizes[:, 1, None].to(boxes)
    boxes = torch.stack(
        [boxes[..., 0].clamp(min=0).minimum(widths), boxes[..., 1].clamp(min=0).minimum(heights),
         boxes[..., 2].clamp(min=0).minimum(widths), boxes[..., 3].clamp(min=0).minimum(heights)], dim=-1,
    )
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
