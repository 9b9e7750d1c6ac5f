"""Combined-IoU ATSS label assignment: the paper's contribution.

Plain ATSS picks, for every ground-truth box (GT), the anchors whose centres are closest to the GT centre
on each FPN level ("candidates") and makes positive those candidates whose anchor IoU with the GT is at
least `mean + std` of the candidates' IoUs. Dynamic ATSS replaces the anchor IoU by a *combined* IoU

    ciou = w_p * piou + w_a * aiou

where `piou` is the IoU of the anchor's current (detached) predicted box with the GT and `aiou` the IoU of
the anchor itself. The statistics are taken per source and summed (paper, Sec. III-B; docs/method.md):

    thr = w_p * (mean(piou_c) + std(piou_c)) + w_a * (mean(aiou_c) + std(aiou_c))

over the K candidates of the GT, `std` unbiased. This is *not* `mean + std` of the summed IoUs.
A candidate is positive when `ciou >= thr` and its anchor centre lies strictly inside the GT with a
margin: `min(cx - x1, cy - y1, x2 - cx, y2 - cy) > center_margin`. An anchor positive for several GTs goes
to the GT with the highest `ciou` (ties: the lowest GT index).

`w_p = 0` is plain ATSS, `w_a = 0` uses the predicted IoUs only (Table II). A weight may also be "up"
(= progress = iter / max_iter) or "down" (= 1 - progress), the dynamic weights of Table III.

Implementation: everything is batched over images and GTs; only the (at most five) FPN levels are looped
over. IoUs are only evaluated for the (image, GT, candidate) triples, (B, G, K) with K = sum of the
per-level k, never for the full (B, N, G) matrix, because positives can only be candidates. Distance ties
are broken deterministically: among equidistant anchors the lowest anchor index is a candidate first.
Distances are squared L2 distances between centres (same order as L2, no sqrt). When the caller passes
`level_shapes` (the detector does), the candidates of a large level are searched in a (k+2) x (k+2) window
of the anchor grid around each GT centre instead of over the whole level; the window result is checked
to be exact (no anchor outside the window can be as close as the k-th) and the full search is used
otherwise, so the assignment is identical either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import torch
from torch import Tensor

from ..config import AssignerConfig

Weight = Union[float, str]


@dataclass
class AssignResult:
    """Per-anchor assignment of a batch.

    gt_index: (B, N) int64 index into the G (padded) GTs of the image, -1 for negatives.
    pred_iou: (B, N) float32 IoU of the anchor's predicted box with its assigned GT, 0 for negatives
        (also 0 everywhere when no predicted boxes were given).
    anchor_iou: (B, N) float32 IoU of the anchor with its assigned GT, 0 for negatives.
    stats: detached float32 scalars for monitoring (see `CombinedIoUAssigner.__call__`).
    """

    gt_index: Tensor
    pred_iou: Tensor
    anchor_iou: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)

    @property
    def pos_mask(self) -> Tensor:
        return self.gt_index >= 0


def resolve_weight(weight: Weight, progress: float) -> float:
    """A fixed weight, or the dynamic weights of Table III: "up" = progress, "down" = 1 - progress."""
    if weight == "up":
        return float(progress)
    if weight == "down":
        return 1.0 - float(progress)
    if isinstance(weight, str):
        raise ValueError(f"unknown weight schedule {weight!r}; use a number, 'up' or 'down'")
    return float(weight)


def paired_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of corresponding xyxy boxes, broadcasting over leading dims: (..., 4), (..., 4) -> (...).

    Same arithmetic, in the same order, as `torchvision.ops.box_iou` (so the two agree bit for bit),
    but element-wise instead of all pairs.
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    lt = torch.max(boxes1[..., :2], boxes2[..., :2])
    rb = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - inter
    return inter / union


def nearest_k(dist: Tensor, k: int) -> Tensor:
    """Indices of the k smallest entries of `dist` (non-negative) along the last dim, ties broken by the lowest
    index, in (distance, index) order. Exact and without host synchronisation: `torch.topk` leaves the order of
    equal values unspecified, so it runs on int64 keys (the float32 distance's bits, which order like the
    distance for non-negative values, then the index), which are all different."""
    n = dist.shape[-1]
    bits = dist.float().contiguous().view(torch.int32).to(torch.int64)
    keys = bits * n + torch.arange(n, device=dist.device)  # bits < 2^31 and n < 2^32: no overflow
    return keys.topk(k, dim=-1, largest=False).indices


def grid_nearest_k(ctr: Tensor, grid: tuple[int, int], query: Tensor, k: int) -> tuple[Tensor, Tensor] | None:
    """`nearest_k` for anchor centres on a row-major (H, W) grid, looking only at a window around each query.

    ctr: (H*W, 2) centres, rows and columns evenly spaced; query: (..., 2) points. Each query gets a window of
    `k + 2` rows x `k + 2` columns around its nearest grid cell (clamped into the grid), so the work is
    O(k^2) per query instead of O(H*W). Returns the indices and a 0-dim bool tensor, True when they are exact:
    for every query the k-th window distance is smaller than the distance to any anchor outside its window (the
    caller checks it, with other levels' flags in one host synchronisation, and otherwise searches the whole
    level). None when the grid is too small for a window to help. Window positions are in anchor-index order, so
    ties still go to the lowest anchor index.
    """
    height, width = grid
    side = k + 2
    if height * width != ctr.shape[0] or (height <= side and width <= side):
        return None

    def axis(coords: Tensor, size: int, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Window indices (..., n) along one axis, the distance from q to the nearest index outside the
        window, and the distance from q to the grid's extent (0 inside it)."""
        n = min(size, side)
        if size > 1:
            nearest = ((q - coords[0]) / (coords[1] - coords[0])).round().clamp(0, size - 1).long()
        else:
            nearest = torch.zeros_like(q, dtype=torch.long)
        first = (nearest - n // 2).clamp(0, size - n)
        outside = torch.full_like(q, float("inf"))
        below, above = first - 1, first + n
        outside = torch.where(below >= 0, torch.minimum(outside, q - coords[below.clamp(min=0)]), outside)
        outside = torch.where(above < size, torch.minimum(outside, coords[above.clamp(max=size - 1)] - q), outside)
        extent = (coords[0] - q).clamp(min=0) + (q - coords[-1]).clamp(min=0)
        return first[..., None] + torch.arange(n, device=q.device), outside, extent

    rows, row_gap, row_extent = axis(ctr[::width, 1], height, query[..., 1])
    cols, col_gap, col_extent = axis(ctr[:width, 0], width, query[..., 0])
    index = (rows[..., :, None] * width + cols[..., None, :]).flatten(-2)  # ascending anchor index
    window = ctr[index]
    dist = (window[..., 0] - query[..., 0, None]).square_()
    dist += (window[..., 1] - query[..., 1, None]).square_()
    chosen = nearest_k(dist, k)
    kth = dist.gather(-1, chosen[..., -1:]).squeeze(-1)
    # An anchor outside the window is outside its rows (or columns) and at least as far as the grid's
    # extent along the other axis.
    outside = torch.minimum(row_gap.square() + col_extent.square(), col_gap.square() + row_extent.square())
    return index.gather(-1, chosen), (kth < outside).all()


class CombinedIoUAssigner:
    """ATSS with combined predicted/anchor IoUs. See the module docstring for the rule."""

    def __init__(
        self, topk: int = 9, pred_weight: Weight = 1.0, anchor_weight: Weight = 1.0, center_margin: float = 0.01
    ) -> None:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        resolve_weight(pred_weight, 0.0)  # validate early
        resolve_weight(anchor_weight, 0.0)
        self.topk = topk
        # search candidates in a window of each level's grid: None = on CPU only (see __call__)
        self.window_search: bool | None = None
        self.pred_weight = pred_weight
        self.anchor_weight = anchor_weight
        self.center_margin = center_margin

    @classmethod
    def from_config(cls, config: AssignerConfig) -> CombinedIoUAssigner:
        return cls(config.topk, config.pred_weight, config.anchor_weight, config.center_margin)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(topk={self.topk}, pred_weight={self.pred_weight!r}, "
            f"anchor_weight={self.anchor_weight!r}, center_margin={self.center_margin})"
        )

    def weights(self, progress: float = 0.0) -> tuple[float, float]:
        """Effective (pred_weight, anchor_weight) at a training progress in [0, 1]."""
        return resolve_weight(self.pred_weight, progress), resolve_weight(self.anchor_weight, progress)

    @torch.no_grad()
    def __call__(
        self,
        anchors: Tensor,
        num_anchors_per_level: list[int],
        gt_boxes: Tensor,
        gt_mask: Tensor,
        pred_boxes: Tensor | None = None,
        progress: float = 0.0,
        level_shapes: list[tuple[int, int]] | None = None,
    ) -> AssignResult:
        """Assign the N anchors of B images to their G (padded) GTs.

        anchors (N, 4) xyxy, shared by the batch; num_anchors_per_level sums to N;
        gt_boxes (B, G, 4) xyxy; gt_mask (B, G) bool, False for padding;
        pred_boxes (B, N, 4) decoded predictions, or None when the effective pred weight is 0;
        level_shapes: optional (H, W) per level when each level's anchors form a row-major grid with one
        anchor per location; candidates are then searched in a window around each GT centre (same
        result, much less work on large levels).

        stats: num_pos (positives in the batch), pos_per_gt (mean positives per valid GT), iou_threshold
        (mean threshold over valid GTs), pos_pred_iou / pos_anchor_iou (mean PIoU / AIoU of the
        positives), frac_not_atss (fraction of the positives that plain ATSS, i.e. weights 0/1 with the same
        candidates, would have left negative), pred_weight / anchor_weight (effective weights).
        All zero, never NaN, when there are no GTs or no positives.
        """
        w_pred, w_anchor = self.weights(progress)
        if pred_boxes is None and w_pred != 0:
            raise ValueError(f"pred_boxes is required when the predicted-IoU weight is non-zero (got {w_pred})")
        if sum(num_anchors_per_level) != anchors.shape[0]:
            raise ValueError(f"num_anchors_per_level {num_anchors_per_level} does not sum to {anchors.shape[0]}")

        anchors = anchors.float()
        gt_boxes = gt_boxes.float()
        gt_mask = gt_mask.bool()
        device = anchors.device
        batch, num_gt = gt_boxes.shape[:2]
        num_anchors = anchors.shape[0]

        if num_gt == 0:
            return self._empty(batch, num_anchors, device, w_pred, w_anchor)

        # 1. Candidates: per level the k anchors nearest to each GT centre -> (B, G, K) anchor indices.
        anchor_ctr = (anchors[:, :2] + anchors[:, 2:]) / 2
        gt_ctr = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
        starts = [sum(num_anchors_per_level[:level]) for level in range(len(num_anchors_per_level))]

        def level_centres(level: int) -> Tensor:
            return anchor_ctr[starts[level]:starts[level] + num_anchors_per_level[level]]

        def whole_level_search(level: int, k: int) -> Tensor:
            ctr = level_centres(level)
            # squared distance (B, G, n) = dx^2 + dy^2, in place: these are the largest tensors here
            dist = (ctr[:, 0] - gt_ctr[..., 0, None]).square_()
            return nearest_k(dist.add_((ctr[:, 1] - gt_ctr[..., 1, None]).square_()), k)

        # On a CPU the window search (O(k^2) per GT instead of O(anchors)) pays for its one host synchronisation,
        # which costs nothing there; on an accelerator every level is searched whole, with no synchronisation.
        windowed = level_shapes is not None and (self.window_search if self.window_search is not None
                                                 else device.type == "cpu")
        cand_per_level, windowed_levels = [], []
        for level, n_level in enumerate(num_anchors_per_level):
            k = min(self.topk, n_level)
            found = grid_nearest_k(level_centres(level), level_shapes[level], gt_ctr, k) if windowed else None
            if found is None:
                cand_per_level.append(whole_level_search(level, k))
            else:
                cand_per_level.append(found[0])
                windowed_levels.append((level, k, found[1]))
        if windowed_levels:  # one host synchronisation for every level's exactness; an inexact level searches whole
            exact = torch.stack([flag for _, _, flag in windowed_levels]).tolist()
            for (level, k, _), ok in zip(windowed_levels, exact):
                if not ok:
                    cand_per_level[level] = whole_level_search(level, k)
        cand = torch.cat([c + start for c, start in zip(cand_per_level, starts)], dim=-1)  # (B, G, K)
        num_cand = cand.shape[-1]

        # 2. IoUs of the candidates' anchors / predicted boxes with their GT: (B, G, K).
        gt = gt_boxes[:, :, None, :]
        cand_anchors = anchors[cand]  # (B, G, K, 4)
        aiou = paired_iou(cand_anchors, gt)
        if pred_boxes is not None:
            flat = cand.reshape(batch, -1, 1).expand(-1, -1, 4)
            cand_pred = pred_boxes.detach().float().gather(1, flat).view(batch, num_gt, num_cand, 4)
            piou = paired_iou(cand_pred, gt)
        else:
            piou = torch.zeros_like(aiou)

        # 3. Per-GT threshold from per-source statistics; 4. combined IoU.
        def mean_plus_std(iou: Tensor) -> Tensor:
            std = iou.std(dim=-1) if num_cand > 1 else torch.zeros_like(iou[..., 0])
            return iou.mean(dim=-1) + std

        anchor_stat = mean_plus_std(aiou)  # (B, G)
        thr = w_anchor * anchor_stat
        ciou = w_anchor * aiou
        if w_pred != 0:  # (a weight of 0 must not let a non-finite prediction in)
            thr = w_pred * mean_plus_std(piou) + thr
            ciou = w_pred * piou + ciou

        # 5. Positive candidates: above the threshold and centre inside the GT (with margin), real GT.
        cand_ctr = anchor_ctr[cand]  # (B, G, K, 2)
        inside = torch.stack(
            [cand_ctr[..., 0] - gt[..., 0], cand_ctr[..., 1] - gt[..., 1],
             gt[..., 2] - cand_ctr[..., 0], gt[..., 3] - cand_ctr[..., 1]], dim=-1,
        ).amin(dim=-1) > self.center_margin
        valid = inside & gt_mask[:, :, None]
        pos = valid & (ciou >= thr[..., None])

        # 6. Anchors positive for several GTs: highest ciou wins, ties to the lowest GT index.
        #    Scatter-reductions over the flat (B*N) anchor index; slot B*N collects the non-positives.
        #    Only amax / amin reductions are used, so the result does not depend on the scatter order.
        dump = batch * num_anchors
        flat_cand = cand + torch.arange(batch, device=device)[:, None, None] * num_anchors  # (B, G, K)

        def scatter_max(mask: Tensor, values: Tensor, fill: float) -> Tensor:
            slots = torch.where(mask, flat_cand, dump).flatten()
            out = torch.full((dump + 1,), fill, dtype=values.dtype, device=device)
            return out.scatter_reduce(0, slots, torch.where(mask, values, fill).flatten(), reduce="amax")

        best = scatter_max(pos, ciou, float("-inf"))
        best_here = pos & (ciou == best[flat_cand])
        gt_ids = torch.arange(num_gt, device=device)[None, :, None].expand_as(cand)
        # amin of the GT index == -amax of its negation
        winner = -scatter_max(best_here, -gt_ids, -num_gt)[:dump]
        gt_index = torch.where(winner < num_gt, winner, -1).view(batch, num_anchors)
        win = best_here & (gt_ids == winner[flat_cand])  # exactly one (GT, candidate) per positive anchor
        pred_iou = scatter_max(win, piou, 0.0)[:dump].view(batch, num_anchors)
        anchor_iou = scatter_max(win, aiou, 0.0)[:dump].view(batch, num_anchors)

        # Monitoring. Plain ATSS (w_p = 0, w_a = 1) on the same candidates: aiou >= mean + std of aiou.
        atss_pos = valid & (aiou >= anchor_stat[..., None])
        atss_anchor = scatter_max(atss_pos, torch.ones_like(aiou), 0.0)[:dump] > 0
        pos_anchor = gt_index.flatten() >= 0
        num_pos = pos_anchor.sum().float()
        num_valid_gt = gt_mask.sum().float()
        denom_pos = num_pos.clamp(min=1)
        stats = {
            "num_pos": num_pos,
            "pos_per_gt": num_pos / num_valid_gt.clamp(min=1),
            "iou_threshold": torch.where(gt_mask, thr, 0.0).sum() / num_valid_gt.clamp(min=1),
            "pos_pred_iou": pred_iou.sum() / denom_pos,
            "pos_anchor_iou": anchor_iou.sum() / denom_pos,
            "frac_not_atss": (pos_anchor & ~atss_anchor).sum().float() / denom_pos,
            "pred_weight": torch.tensor(w_pred, device=device),
            "anchor_weight": torch.tensor(w_anchor, device=device),
        }
        return AssignResult(gt_index, pred_iou, anchor_iou, {k: v.detach().float() for k, v in stats.items()})

    @staticmethod
    def _empty(batch: int, num_anchors: int, device: torch.device, w_pred: float, w_anchor: float) -> AssignResult:
        zeros = torch.zeros(batch, num_anchors, device=device)
        zero = torch.zeros((), device=device)
        stats = {name: zero.clone() for name in
                 ("num_pos", "pos_per_gt", "iou_threshold", "pos_pred_iou", "pos_anchor_iou", "frac_not_atss")}
        stats["pred_weight"] = torch.tensor(w_pred, device=device)
        stats["anchor_weight"] = torch.tensor(w_anchor, device=device)
        return AssignResult(torch.full((batch, num_anchors), -1, dtype=torch.long, device=device),
                            zeros, zeros.clone(), stats)
