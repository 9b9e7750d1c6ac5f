"""Tests of the combined-IoU ATSS assigner against hand-made cases and a per-image, per-GT reference loop."""

from __future__ import annotations

import statistics

import pytest
import torch
from torchvision.ops import box_iou

from dynamic_atss.detection.anchors import AnchorGenerator, BoxCoder
from dynamic_atss.detection.assigner import CombinedIoUAssigner, nearest_k, paired_iou
from dynamic_atss.config import AnchorConfig, AssignerConfig


def mean_std(values: list[float]) -> float:
    return statistics.mean(values) + statistics.stdev(values)  # stdev: unbiased (n - 1)


# --------------------------------------------------------------------------------------------------------
# Reference: a straightforward loop over images and GTs, written from docs/method.md.
# --------------------------------------------------------------------------------------------------------
def reference_assign(anchors, num_per_level, gt_boxes, gt_mask, pred_boxes, topk, w_pred, w_anchor,
                     margin=0.01):
    batch, num_gt = gt_mask.shape
    num_anchors = anchors.shape[0]
    gt_index = torch.full((batch, num_anchors), -1, dtype=torch.long)
    pred_iou_out = torch.zeros(batch, num_anchors)
    anchor_iou_out = torch.zeros(batch, num_anchors)
    thresholds = []
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    for b in range(batch):
        best: dict[int, tuple[float, int, float, float]] = {}  # anchor -> (ciou, gt, piou, aiou)
        for g in range(num_gt):
            if not gt_mask[b, g]:
                continue
            box = gt_boxes[b, g]
            aiou = box_iou(anchors, box[None])[:, 0]
            piou = box_iou(pred_boxes[b], box[None])[:, 0] if pred_boxes is not None else torch.zeros(num_anchors)
            gc = (box[:2] + box[2:]) / 2
            cands, start = [], 0
            for n in num_per_level:
                d = (centres[start:start + n, 0] - gc[0]) ** 2 + (centres[start:start + n, 1] - gc[1]) ** 2
                cands.append(torch.sort(d, stable=True).indices[:min(topk, n)] + start)  # ties: lowest index
                start += n
            c = torch.cat(cands)
            thr = w_pred * (piou[c].mean() + piou[c].std()) + w_anchor * (aiou[c].mean() + aiou[c].std())
            thresholds.append(float(thr))
            for i in c.tolist():
                ciou = w_pred * piou[i] + w_anchor * aiou[i]
                cx, cy = centres[i]
                inside = min(cx - box[0], cy - box[1], box[2] - cx, box[3] - cy) > margin
                if inside and ciou >= thr and (i not in best or ciou > best[i][0]):  # ties: lowest GT
                    best[i] = (float(ciou), g, float(piou[i]), float(aiou[i]))
        for i, (_, g, p, a) in best.items():
            gt_index[b, i] = g
            pred_iou_out[b, i] = p
            anchor_iou_out[b, i] = a
    return gt_index, pred_iou_out, anchor_iou_out, thresholds


def random_batch(seed: int, height: int = 128, width: int = 160, num_gt: int = 7, quantum: float = 4.0):
    """Anchors of a small input (P7 has 2 anchors < topk), 3 images: full, partial, no GT.

    GT coordinates are multiples of `quantum` so that many GT centres are equidistant from several anchor
    centres (distance ties). Predictions: half jittered GT-ish boxes, half random deltas.
    """
    gen = torch.Generator().manual_seed(seed)
    sizes = [(-(-height // s), -(-width // s)) for s in (8, 16, 32, 64, 128)]
    anchors, num_per_level = AnchorGenerator(AnchorConfig())(sizes, torch.device("cpu"))
    batch = 3
    xy = torch.rand(batch, num_gt, 2, generator=gen) * torch.tensor([width - 20.0, height - 20.0])
    wh = 8 + torch.rand(batch, num_gt, 2, generator=gen) * 90
    gt = torch.cat([xy, xy + wh], dim=-1)
    gt = (gt / quantum).round() * quantum
    gt[..., 2:] = torch.maximum(gt[..., 2:], gt[..., :2] + quantum)
    gt_mask = torch.ones(batch, num_gt, dtype=torch.bool)
    gt_mask[1, 4:] = False
    gt_mask[2] = False
    gt[~gt_mask] = 0.0  # padding
    gt[0, 1] = gt[0, 0]  # a duplicate GT: every shared positive must go to GT 0
    deltas = torch.randn(batch, anchors.shape[0], 4, generator=gen) * 0.6
    pred = BoxCoder().decode(deltas, anchors)
    return anchors, num_per_level, gt, gt_mask, pred


WEIGHTS = [
    (1.0, 1.0, 0.0),  # combined (paper default)
    (0.0, 1.0, 0.0),  # plain ATSS
    (1.0, 0.0, 0.0),  # predicted IoUs only
    (0.5, 1.5, 0.0),
    ("up", "down", 0.3),  # Table III schedules
    ("up", 1.0, 0.7),
    (1.0, "down", 0.45),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("pred_weight,anchor_weight,progress", WEIGHTS)
def test_matches_reference_loop(seed, pred_weight, anchor_weight, progress):
    anchors, num_per_level, gt, gt_mask, pred = random_batch(seed)
    assert min(num_per_level) < 9  # a level smaller than topk
    assigner = CombinedIoUAssigner(topk=9, pred_weight=pred_weight, anchor_weight=anchor_weight)
    result = assigner(anchors, num_per_level, gt, gt_mask, pred, progress=progress)
    w_pred = {"up": progress}.get(pred_weight, pred_weight)
    w_anchor = {"down": 1 - progress}.get(anchor_weight, anchor_weight)
    ref_index, ref_piou, ref_aiou, thresholds = reference_assign(
        anchors, num_per_level, gt, gt_mask, pred, 9, w_pred, w_anchor)

    assert result.gt_index.dtype == torch.int64 and result.gt_index.shape == (3, anchors.shape[0])
    assert (ref_index >= 0).sum() > 10  # the case is not trivial
    assert torch.equal(result.gt_index, ref_index)
    torch.testing.assert_close(result.pred_iou, ref_piou, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.anchor_iou, ref_aiou, rtol=0, atol=1e-6)
    assert (result.gt_index[2] == -1).all()  # no GT in image 2
    assert (result.gt_index[1] < 4).all()  # padded GTs never assigned
    assert not (result.gt_index[0] == 1).any()  # duplicate of GT 0: ties go to the lowest GT index

    stats = result.stats
    num_pos = int((ref_index >= 0).sum())
    assert stats["num_pos"].item() == num_pos
    assert stats["pos_per_gt"].item() == pytest.approx(num_pos / int(gt_mask.sum()), rel=1e-6)
    assert stats["iou_threshold"].item() == pytest.approx(statistics.mean(thresholds), rel=1e-5)
    pos = ref_index >= 0
    assert stats["pos_pred_iou"].item() == pytest.approx(ref_piou[pos].mean().item(), rel=1e-5)
    assert stats["pos_anchor_iou"].item() == pytest.approx(ref_aiou[pos].mean().item(), rel=1e-5)
    atss_index = reference_assign(anchors, num_per_level, gt, gt_mask, pred, 9, 0.0, 1.0)[0]
    frac = (pos & (atss_index < 0)).sum().item() / num_pos
    assert stats["frac_not_atss"].item() == pytest.approx(frac, abs=1e-6)
    assert stats["pred_weight"].item() == pytest.approx(w_pred)
    assert stats["anchor_weight"].item() == pytest.approx(w_anchor)
    for value in stats.values():
        assert value.dim() == 0 and not value.requires_grad


def test_combined_differs_from_atss_and_reports_it():
    anchors, num_per_level, gt, gt_mask, pred = random_batch(3)
    combined = CombinedIoUAssigner()(anchors, num_per_level, gt, gt_mask, pred)
    atss = CombinedIoUAssigner(pred_weight=0.0)(anchors, num_per_level, gt, gt_mask, pred)
    assert not torch.equal(combined.gt_index, atss.gt_index)
    assert combined.stats["frac_not_atss"] > 0
    assert atss.stats["frac_not_atss"] == 0  # plain ATSS never disagrees with itself


# --------------------------------------------------------------------------------------------------------
# Hand-made cases: one GT [0, 0, 12, 12], nine anchors on one level (all are candidates, K = 9).
# --------------------------------------------------------------------------------------------------------
GT = [0.0, 0.0, 12.0, 12.0]
ANCHORS = [
    [0, 0, 12, 12],  # 0: aiou 1
    [0, 0, 12, 6],  # 1: aiou 1/2, centre (6, 3) inside
    [0, 0, 6, 6],  # 2: aiou 1/4, centre (3, 3) inside
    [6, 0, 18, 12],  # 3: aiou 1/3, centre (12, 6) ON the right edge -> never positive
    [20, 20, 32, 32],  # 4: aiou 0, centre outside
    [3, 3, 9, 9],  # 5: aiou 1/4, centre (6, 6) inside
    [40, 40, 52, 52],  # 6-8: far away, aiou 0
    [40, 0, 52, 12],
    [0, 40, 12, 52],
]
AIOU = [1.0, 0.5, 0.25, 1 / 3, 0.0, 0.25, 0.0, 0.0, 0.0]
FAR = [40, 40, 52, 52]
PIOU_TO_BOX = {0.0: FAR, 0.5: [0, 0, 12, 6], 1.0: GT}


def run_hand(piou, progress=0.0, **kwargs):
    anchors = torch.tensor(ANCHORS, dtype=torch.float32)
    pred = torch.tensor([PIOU_TO_BOX[v] for v in piou], dtype=torch.float32)[None]
    gt = torch.tensor([[GT]])
    assert torch.allclose(paired_iou(anchors, gt[0]), torch.tensor(AIOU))
    assert torch.allclose(paired_iou(pred[0], gt[0]), torch.tensor(piou))
    assigner = CombinedIoUAssigner(topk=9, **kwargs)
    return assigner(anchors, [9], gt, torch.ones(1, 1, dtype=torch.bool), pred, progress=progress)


def positives(result):
    return sorted(torch.nonzero(result.gt_index[0] >= 0).flatten().tolist())


PIOU = [0.5, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # anchor 3 predicts the GT exactly but is on its edge


def test_hand_anchor_iou_only():
    thr = mean_std(AIOU)
    assert thr == pytest.approx(0.2593 + 0.3319, abs=1e-4)  # 0.5911
    result = run_hand(PIOU, pred_weight=0.0)
    assert positives(result) == [0]  # aiou 1; anchor 1 (0.5) is below
    assert result.stats["iou_threshold"].item() == pytest.approx(thr, rel=1e-6)
    assert result.anchor_iou[0, 0].item() == pytest.approx(1.0)
    assert result.pred_iou[0, 0].item() == pytest.approx(0.5)  # pred IoU reported even with weight 0
    assert result.stats["frac_not_atss"].item() == 0.0


def test_hand_pred_iou_only():
    thr = mean_std(PIOU)
    assert thr == pytest.approx(0.3889 + 0.4859, abs=1e-4)  # 0.8748
    result = run_hand(PIOU, anchor_weight=0.0)
    assert positives(result) == [1, 2]  # piou 1; anchor 3 (piou 1) fails the centre test
    assert result.stats["iou_threshold"].item() == pytest.approx(thr, rel=1e-6)
    assert result.stats["frac_not_atss"].item() == pytest.approx(1.0)  # ATSS took only anchor 0
    assert result.stats["pos_pred_iou"].item() == pytest.approx(1.0)
    assert result.stats["pos_anchor_iou"].item() == pytest.approx(0.375)


def test_hand_combined():
    thr = mean_std(PIOU) + mean_std(AIOU)  # 0.8748 + 0.5911 = 1.4659
    ciou = [p + a for p, a in zip(PIOU, AIOU)]  # [1.5, 1.5, 1.25, 1.33, 0, .25, 0, 0, 0]
    assert [i for i in (0, 1, 2, 5) if ciou[i] >= thr] == [0, 1]
    result = run_hand(PIOU)
    assert positives(result) == [0, 1]
    assert result.stats["iou_threshold"].item() == pytest.approx(thr, rel=1e-6)
    assert result.stats["frac_not_atss"].item() == pytest.approx(0.5)  # anchor 1 is new
    assert result.stats["num_pos"].item() == 2 and result.stats["pos_per_gt"].item() == 2
    # Table III schedules: "up"/"down" go from ATSS (progress 0) through 1:1 to PIoU only (progress 1).
    assert positives(run_hand(PIOU, 0.0, pred_weight="up", anchor_weight="down")) == [0]
    assert positives(run_hand(PIOU, 0.5, pred_weight="up", anchor_weight="down")) == [0, 1]
    assert positives(run_hand(PIOU, 1.0, pred_weight="up", anchor_weight="down")) == [1, 2]


def test_hand_threshold_is_sum_of_separate_stds():
    piou = [0.5, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    thr = mean_std(piou) + mean_std(AIOU)  # 0.7187 + 0.5911 = 1.3099
    ciou = [p + a for p, a in zip(piou, AIOU)]  # [1.5, 1.5, 1.25, 0.33, 0, .25, 0, 0, 0]
    assert [i for i in (0, 1, 2, 5) if ciou[i] >= thr] == [0, 1]
    # mean + std of the summed IoUs would be 1.2116 and would also take anchor 2 (1.25).
    assert mean_std(ciou) == pytest.approx(1.2116, abs=1e-4)
    result = run_hand(piou)
    assert positives(result) == [0, 1]
    assert result.stats["iou_threshold"].item() == pytest.approx(thr, rel=1e-6)


def test_conflict_goes_to_highest_combined_iou():
    # Two GTs share anchor 0 ([0,0,10,10]); GT 1 matches it better. With IoUs [x, 0, 0, 0] the
    # threshold is mean + std = x/4 + x/2 < x, so anchor 0 is positive for both GTs.
    anchors = torch.tensor([[0, 0, 10, 10], [100, 100, 110, 110], [200, 0, 210, 10], [0, 200, 10, 210]],
                           dtype=torch.float32)
    gt = torch.tensor([[[0, 0, 10, 12], [0, 0, 10, 10.5]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    result = CombinedIoUAssigner(pred_weight=0.0)(anchors, [4], gt, mask)
    assert result.gt_index[0].tolist() == [1, -1, -1, -1]
    assert result.anchor_iou[0, 0].item() == pytest.approx(1 / 1.05)
    assert result.stats["num_pos"].item() == 1 and result.stats["pos_per_gt"].item() == 0.5
    # GTs in the other order: still the better one (now index 0).
    result = CombinedIoUAssigner(pred_weight=0.0)(anchors, [4], gt.flip(1), mask)
    assert result.gt_index[0].tolist() == [0, -1, -1, -1]
    # Mask GT 1 out: anchor 0 goes to GT 0.
    mask[0, 1] = False
    assert CombinedIoUAssigner(pred_weight=0.0)(anchors, [4], gt, mask).gt_index[0].tolist() == [0, -1, -1, -1]
    # Identical GTs: the lowest index wins.
    same = torch.tensor([[[0, 0, 10, 12], [0, 0, 10, 12]]])
    result = CombinedIoUAssigner(pred_weight=0.0)(anchors, [4], same, torch.ones(1, 2, dtype=torch.bool))
    assert result.gt_index[0].tolist() == [0, -1, -1, -1]


def test_center_margin():
    # The anchor centre (5, 5) is 0.005 from the GT's left edge: inside, but not by the 0.01 margin.
    anchors = torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60], [200, 0, 210, 10], [0, 200, 10, 210]],
                           dtype=torch.float32)
    gt = torch.tensor([[[4.995, 0, 20, 10]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    assert (CombinedIoUAssigner(pred_weight=0.0)(anchors, [4], gt, mask).gt_index == -1).all()
    got = CombinedIoUAssigner(pred_weight=0.0, center_margin=0.001)(anchors, [4], gt, mask).gt_index
    assert got[0].tolist() == [0, -1, -1, -1]


# --------------------------------------------------------------------------------------------------------
# Candidates, edge cases, API.
# --------------------------------------------------------------------------------------------------------
def test_nearest_k_breaks_ties_by_lowest_index():
    dist = torch.tensor([[3.0, 1.0, 1.0, 0.0, 1.0, 2.0, 1.0, 1.0]])
    assert nearest_k(dist, 3).tolist() == [[3, 1, 2]]
    assert nearest_k(dist, 1).tolist() == [[3]]
    # A tie group wider than the 2k window: all equal.
    flat = torch.zeros(2, 50)
    flat[1, :10] = 1.0
    assert nearest_k(flat, 4).tolist() == [[0, 1, 2, 3], [10, 11, 12, 13]]
    # Matches a stable sort on random data with many ties.
    gen = torch.Generator().manual_seed(0)
    d = torch.randint(0, 6, (4, 7, 300), generator=gen).float()
    assert torch.equal(nearest_k(d, 9), torch.sort(d, dim=-1, stable=True).indices[..., :9])


def test_no_gt_at_all_and_level_smaller_than_topk():
    anchors, num_per_level, gt, gt_mask, pred = random_batch(0)
    for gt_boxes, mask in ((gt[:, :0], gt_mask[:, :0]), (gt, torch.zeros_like(gt_mask))):
        result = CombinedIoUAssigner()(anchors, num_per_level, gt_boxes, mask, pred)
        assert (result.gt_index == -1).all() and result.gt_index.shape == (3, anchors.shape[0])
        assert (result.pred_iou == 0).all() and (result.anchor_iou == 0).all()
        for value in result.stats.values():
            assert torch.isfinite(value)
        assert result.stats["num_pos"] == 0 and result.stats["frac_not_atss"] == 0
    # Single level of 3 anchors with topk 9: all three are candidates.
    anchors = torch.tensor([[0, 0, 10, 10], [0, 0, 20, 20], [40, 40, 50, 50]], dtype=torch.float32)
    gt = torch.tensor([[[0, 0, 10, 10]]])
    result = CombinedIoUAssigner(pred_weight=0.0)(anchors, [3], gt, torch.ones(1, 1, dtype=torch.bool))
    assert result.gt_index[0].tolist() == [0, -1, -1]  # thr = mean+std([1, .25, 0]) = 0.937
    assert result.stats["iou_threshold"].item() == pytest.approx(mean_std([1.0, 0.25, 0.0]), rel=1e-6)


def test_half_inputs_give_float32_and_same_result():
    anchors, num_per_level, gt, gt_mask, pred = random_batch(1)
    half = CombinedIoUAssigner()(anchors.half(), num_per_level, gt.half(), gt_mask, pred.half())
    full = CombinedIoUAssigner()(anchors.half().float(), num_per_level, gt.half().float(), gt_mask,
                                 pred.half().float())
    assert half.pred_iou.dtype == torch.float32 and half.anchor_iou.dtype == torch.float32
    assert torch.equal(half.gt_index, full.gt_index)


def test_pred_boxes_required_only_with_nonzero_pred_weight():
    anchors, num_per_level, gt, gt_mask, _ = random_batch(0)
    with pytest.raises(ValueError, match="pred_boxes"):
        CombinedIoUAssigner()(anchors, num_per_level, gt, gt_mask, None)
    # "up" at progress 0 is weight 0: no predictions needed (first iteration).
    up = CombinedIoUAssigner(pred_weight="up")(anchors, num_per_level, gt, gt_mask, None, progress=0.0)
    atss = CombinedIoUAssigner(pred_weight=0.0)(anchors, num_per_level, gt, gt_mask, None)
    assert torch.equal(up.gt_index, atss.gt_index)
    assert (up.pred_iou == 0).all()
    # With weight 0 the predictions do not influence the assignment, even when they are not finite.
    bad = torch.full((3, anchors.shape[0], 4), float("nan"))
    with_bad = CombinedIoUAssigner(pred_weight=0.0)(anchors, num_per_level, gt, gt_mask, bad)
    assert torch.equal(with_bad.gt_index, atss.gt_index)
    with pytest.raises(ValueError):
        CombinedIoUAssigner(pred_weight="sideways")


def test_from_config_and_gradients_detached():
    config = AssignerConfig(topk=5, pred_weight="up", anchor_weight=1.5, center_margin=0.02)
    assigner = CombinedIoUAssigner.from_config(config)
    assert (assigner.topk, assigner.pred_weight, assigner.anchor_weight, assigner.center_margin) == (
        5, "up", 1.5, 0.02)
    assert assigner.weights(0.25) == (0.25, 1.5)
    anchors, num_per_level, gt, gt_mask, pred = random_batch(0)
    pred = pred.clone().requires_grad_(True)
    result = assigner(anchors, num_per_level, gt, gt_mask, pred, progress=0.5)
    assert not result.pred_iou.requires_grad


def test_threshold_is_inclusive():
    # Four halves of the GT: every IoU is exactly 0.5, so mean + std = 0.5 and ciou >= thr holds for all.
    anchors = torch.tensor([[0, 0, 12, 6], [0, 6, 12, 12], [0, 0, 6, 12], [6, 0, 12, 12]], dtype=torch.float32)
    gt = torch.tensor([[GT]])
    result = CombinedIoUAssigner(pred_weight=0.0)(anchors, [4], gt, torch.ones(1, 1, dtype=torch.bool))
    assert result.gt_index[0].tolist() == [0, 0, 0, 0]
    assert result.stats["iou_threshold"].item() == 0.5


@pytest.mark.parametrize("height,width", [(128, 160), (512, 384)])
@pytest.mark.parametrize("seed", [0, 1])
def test_grid_window_search_gives_the_same_assignment(height, width, seed):
    import dynamic_atss.detection.assigner as assigner_module

    anchors, num_per_level, gt, gt_mask, pred = random_batch(seed, height, width)
    # GTs partly or wholly outside the image, where the window's exactness check matters.
    gt[1, 0] = torch.tensor([-300.0, 10.0, -280.0, 40.0])
    gt[1, 1] = torch.tensor([width - 6.0, height - 6.0, width + 250.0, height + 90.0])
    gt[1, 2] = torch.tensor([width - 30.0, 4.0, width + 120.0, 40.0])
    shapes = [(-(-height // s), -(-width // s)) for s in (8, 16, 32, 64, 128)]
    used = []
    original = assigner_module.grid_nearest_k

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        used.append(out is not None and bool(out[1]))
        return out

    assigner = CombinedIoUAssigner(topk=9)
    full = assigner(anchors, num_per_level, gt, gt_mask, pred)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(assigner_module, "grid_nearest_k", spy)
        windowed = assigner(anchors, num_per_level, gt, gt_mask, pred, level_shapes=shapes)
    assert any(used)  # the window search really ran on the large levels
    assert torch.equal(windowed.gt_index, full.gt_index)
    assert torch.equal(windowed.pred_iou, full.pred_iou) and torch.equal(windowed.anchor_iou, full.anchor_iou)
    ref_index = reference_assign(anchors, num_per_level, gt, gt_mask, pred, 9, 1.0, 1.0)[0]
    assert torch.equal(windowed.gt_index, ref_index)


def test_accelerator_search_is_exact_and_never_waits_for_the_device(host_syncs):
    """Off the CPU (`window_search` False) every level is searched whole: the same assignment as the window
    search, and not one host-device synchronisation in the assigner."""
    height, width = 512, 384
    anchors, num_per_level, gt, gt_mask, pred = random_batch(0, height, width)
    shapes = [(-(-height // s), -(-width // s)) for s in (8, 16, 32, 64, 128)]
    assigner = CombinedIoUAssigner(topk=9)
    windowed = assigner(anchors, num_per_level, gt, gt_mask, pred, level_shapes=shapes)
    assigner.window_search = False
    with host_syncs() as syncs:
        whole = assigner(anchors, num_per_level, gt, gt_mask, pred, level_shapes=shapes)
    assert not syncs.seen
    assert torch.equal(whole.gt_index, windowed.gt_index) and torch.equal(whole.pred_iou, windowed.pred_iou)
