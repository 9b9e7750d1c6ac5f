"""Detections from a head family's flattened outputs, vectorised over the batch (one `batched_nms` call)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

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
    boxes, scores, labels, image_index = select_detections(head, flat_levels, anchors, strides, image_sizes, test)
    counts = torch.bincount(image_index, minlength=batch_size).tolist()  # the one host sync
    return [
        {"boxes": b, "scores": s, "labels": l}
        for b, s, l in zip(boxes.split(counts), scores.split(counts), labels.split(counts))
    ]


def select_detections(
    head: DenseHead, flat_levels: list[dict[str, Tensor]], anchors: list[Tensor], strides: list[float],
    image_sizes: Tensor, test: TestConfig,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`postprocess` as flat tensors: boxes (D, 4), scores (D,), labels (D,), image index (D,), grouped by image
    (images in order, each sorted by score). No host synchronisation and no shape-dependent Python branches,
    so `torch.export` / ONNX export trace it with dynamic batch and image sizes (NMS inside the graph)."""
    batch_size = flat_levels[0][head.output_names[0]].shape[0]
    num_classes = head.num_classes
    all_boxes, all_scores, all_labels = [], [], []
    for flat, anchor_level, stride in zip(flat_levels, anchors, strides):
        maps = head.detection_scores(flat)
        # -1 marks non-candidates: topk then never prefers them over a real candidate.
        candidate = (maps.select > test.score_thresh).flatten(1)
        ranking = torch.where(candidate, maps.rank.flatten(1), maps.rank.new_full((), -1.0))
        score = maps.score.flatten(1)
        if torch.compiler.is_compiling() or ranking.shape[1] < test.pre_nms_topk:
            # Pad with non-candidates so that topk(pre_nms_topk) exists at every size (an exported graph cannot
            # branch on the level's size); padded entries are never kept.
            ranking = torch.cat([ranking, ranking.new_full((batch_size, test.pre_nms_topk), -1.0)], 1)
            candidate = torch.cat([candidate, candidate.new_zeros(batch_size, test.pre_nms_topk)], 1)
            score = torch.cat([score, score.new_zeros(batch_size, test.pre_nms_topk)], 1)
        flat_index = ranking.topk(test.pre_nms_topk, dim=1).indices
        values = torch.where(torch.gather(candidate, 1, flat_index), torch.gather(score, 1, flat_index), -1.0)
        anchor_index = (flat_index // num_classes).clamp(max=anchor_level.shape[0] - 1)  # padding -> any anchor
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
    image_index = torch.arange(batch_size, device=boxes.device).unsqueeze(1).expand_as(scores)
    if torch.compiler.is_compiling():
        # Exporting: NMS over every entry, then drop the invalid ones. Same result: they score lowest, so they
        # never suppress a valid box. torchvision's batched_nms would pick its per-class loop on large CPU inputs
        # (data-dependent, does not export): its other strategy, one NMS on boxes offset per (image, class).
        boxes, scores, labels, image_index, valid = (t.flatten(0, 1) for t in (boxes, scores, labels, image_index, valid))
        groups = image_index * num_classes + labels
        offset = groups.to(boxes) * (boxes.max() + 1)
        keep = nms(boxes + offset[:, None], scores, test.nms_thresh)
        keep = keep[valid[keep]]
    else:
        image_index, boxes, scores, labels = image_index[valid], boxes[valid], scores[valid], labels[valid]
        keep = batched_nms(boxes, scores, image_index * num_classes + labels, test.nms_thresh)  # sorted by score
    # Each detection's rank among its image's (a running count per image; one-hot rather than bincount so that
    # it exports), then group by image, still sorted by score inside an image.
    kept_image = image_index[keep]
    one_hot = kept_image.unsqueeze(1) == torch.arange(batch_size, device=keep.device)
    rank = (one_hot.cumsum(0) * one_hot).sum(1) - 1
    keep = keep[rank < test.max_detections]
    # a stable sort by image, spelled as a sort on unique keys (ONNX has no stable sort)
    position = torch.arange(keep.shape[0], device=keep.device)
    keep = keep[(image_index[keep] * keep.shape[0] + position).argsort()]
    return boxes[keep], scores[keep], labels[keep], image_index[keep]
