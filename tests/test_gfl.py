"""The GFL / GFLV2 head family (detection/heads/gfl.py): training, decoding, losses against hand-written float64
formulas, DGQP, the combined-IoU assignment on integral boxes, config errors, Hub round trip (the real mmdetection
losses in a `slow` test). Its mmdetection converter is tested in test_mmdet_gfl.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou, generalized_box_iou

import dynamic_atss as da
from dynamic_atss.config import AnchorConfig, HeadConfig, ModelConfig
from dynamic_atss.convert import convert_mmdet_gfl
from dynamic_atss.detection.anchors import AnchorGenerator
from dynamic_atss.detection.assigner import CombinedIoUAssigner
from dynamic_atss.detection.heads import Targets
from dynamic_atss.detection.heads.gfl import GFLHead

from helpers_mmdet import _import_mmdet
from helpers_gfl import mmdet_gfl_state_dict
from helpers_losses import raw_from_flat


def targets_for(boxes_per_image):
    return [{"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
             "labels": torch.arange(len(b), dtype=torch.int64) % 3} for b in boxes_per_image]


# ---------------------------------------------------------------------------------------------- model level
@pytest.mark.parametrize("name", ["gfl_r50", "dynamic_gflv2_r50"])
@pytest.mark.parametrize("with_gt", [True, False])
def test_trains_every_head_param_gets_a_gradient_and_predicts(name, with_gt, tiny_kwargs):
    model = da.create(name, num_classes=3, **tiny_kwargs).train()
    images = [torch.rand(3, 128, 160), torch.rand(3, 112, 128)]
    boxes = [[[10, 12, 70, 90], [60, 30, 150, 110]], [[5, 5, 60, 50]]] if with_gt else [[], []]
    losses, stats = model(images, targets_for(boxes), return_stats=True)
    assert set(losses) == {"loss_cls", "loss_box", "loss_dfl"}
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    assert (stats["num_pos"] > 0) == with_gt
    if with_gt:
        assert losses["loss_box"] > 0 and losses["loss_dfl"] > 0
    sum(losses.values()).backward()
    missing = [n for n, p in model.head.named_parameters() if p.grad is None]
    assert not missing, missing
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "scores", "labels"}


def state_values(model):
    return sum(t.numel() for t in model.state_dict().values())


def test_parameter_counts_match_mmdetection_gfl_r50():
    with torch.device("meta"):
        gfl, gflv2 = da.create("gfl_r50"), da.create("gflv2_r50")
    # mmdetection GFL R-50: 32,493,727 state-dict values, which include 53 BN num_batches_tracked and the 17
    # values of `integral.project` that this library does not store.
    assert state_values(gfl) == 32_493_727 - 53 - 17
    # DGQP: (20 x 64 + 64) + (64 + 1)
    assert state_values(gflv2) - state_values(gfl) == 20 * 64 + 64 + 64 + 1


def test_forward_raw_outputs_are_named_by_output_names(tiny_kwargs):
    x = torch.zeros(1, 3, 64, 96)
    for name, names in (("gfl_r50", ("cls_logits", "box_dist_logits")),
                        ("gflv2_r50", ("cls_logits", "box_dist_logits", "quality_logits"))):
        model = da.create(name, num_classes=3, **tiny_kwargs).eval()
        assert model.head.output_names == names and model.head.kind == "gfl"
        with torch.no_grad():
            raw = model.forward_raw(x)
        assert len(raw) == len(names)
        channels = {"cls_logits": 3, "box_dist_logits": 68, "quality_logits": 1}
        for out, name_ in zip(raw, names):
            assert len(out) == 5 and all(level.shape[1] == channels[name_] for level in out)
        flat = model.head.flatten(raw)
        assert set(flat[0]) == set(names) and flat[0]["box_dist_logits"].shape == (1, 8 * 12, 68)


def test_config_errors(tiny_kwargs):
    with pytest.raises(ValueError, match=r"head.reg_max=0: .*reg_max >= 1"):
        da.create("gfl_r50", **tiny_kwargs, **{"head.reg_max": 0})
    with pytest.raises(ValueError, match=r"head.dgqp_topk=18 must be between 1 and .* reg_max \+ 1 = 17"):
        da.create("gflv2_r50", **tiny_kwargs, **{"head.dgqp_topk": 18})
    with pytest.raises(ValueError, match=r"loss.cls_loss='focal' is not available for head.kind='gfl'"):
        da.create("gfl_r50", **tiny_kwargs, **{"loss.cls_loss": "focal"})
    with pytest.raises(ValueError, match="head.dgqp=True has no effect with head.kind='atss'"):
        da.create("r50", **tiny_kwargs, **{"head.dgqp": True})
    with pytest.raises(ValueError, match=r"head.kind='gfl2' is not a known head family; known: \[.*'gfl'"):
        da.create("gfl_r50", **tiny_kwargs, **{"head.kind": "gfl2"})
    with pytest.raises(ValueError, match=r"backbone.dcn_stages=\(1, 5\): ResNet stages are 1-4"):
        da.create("gfl_r50", **tiny_kwargs, **{"backbone.dcn": True, "backbone.dcn_stages": (1, 5)})
    # a smaller distribution is fine
    model = da.create("gflv2_r50", num_classes=2, **tiny_kwargs, **{"head.reg_max": 3, "head.dgqp_topk": 4})
    assert model.head.bbox_pred.out_channels == 16


def test_config_json_round_trip_through_save_and_load(tmp_path, tiny_kwargs):
    model = da.create("dynamic_gflv2_r50", num_classes=3, **tiny_kwargs, **{"head.dgqp_hidden": 16}).eval()
    assert ModelConfig.from_dict(json.loads(json.dumps(model.config.to_dict()))) == model.config
    model.save_pretrained(tmp_path / "gflv2")
    reloaded = da.create(f"local-dir:{tmp_path / 'gflv2'}")
    assert reloaded.config == model.config and reloaded.head.dgqp[0].out_channels == 16
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model.forward_raw(x), reloaded.forward_raw(x)):
            assert all(torch.equal(u, v) for u, v in zip(a, b))


def tiny_head(dgqp=True, **options):
    config = ModelConfig(num_classes=3, fpn_channels=8, head=HeadConfig(
        kind="gfl", channels=8, num_groups=4, num_convs=1, options={"dgqp": dgqp, **options}))
    return GFLHead(config)


def test_decode_is_the_softmax_integral_times_the_stride_from_the_anchor_centre():
    head = tiny_head(dgqp=False)
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 68, generator=gen) * 2
    anchors = torch.tensor([[0.0, 0, 64, 64], [8, 16, 72, 80], [-32, -32, 32, 32], [100, 50, 228, 178], [4, 4, 12, 12]])
    strides = torch.tensor([8.0, 8, 8, 16, 1])
    prob = torch.softmax(logits.double().view(2, 5, 4, 17), -1)
    distance = (prob * torch.arange(17, dtype=torch.float64)).sum(-1) * strides.double()[:, None]
    cx, cy = (anchors[:, 0] + anchors[:, 2]).double() / 2, (anchors[:, 1] + anchors[:, 3]).double() / 2
    expected = torch.stack([cx - distance[..., 0], cy - distance[..., 1], cx + distance[..., 2], cy + distance[..., 3]], -1)
    got = head.decode_boxes({"box_dist_logits": logits}, anchors, strides)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)
    # a one-hot distribution at bin i is the distance i * stride; a scalar stride works too (post-processing)
    one_hot = torch.full((1, 68), -1e4)
    for side, index in enumerate((0, 3, 16, 7)):
        one_hot[0, side * 17 + index] = 0.0
    box = head.decode_boxes({"box_dist_logits": one_hot}, torch.tensor([[0.0, 0, 32, 32]]), 4.0)
    assert box.tolist() == [[16.0, 4.0, 16.0 + 64, 16.0 + 28]]


def test_dgqp_is_topk_plus_mean_through_two_layers_and_multiplies_the_score():
    head = tiny_head(dgqp=True).double()
    for module in head.dgqp:
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.5)
            torch.nn.init.normal_(module.bias, std=0.5)
    gen = torch.Generator().manual_seed(3)
    dist = torch.randn(2, 68, 3, 5, generator=gen, dtype=torch.float64) * 3
    stats = head.distribution_statistics(dist)
    assert stats.shape == (2, 20, 3, 5)
    prob = torch.softmax(dist.view(2, 4, 17, 3, 5), 2)
    for side in range(4):
        top = prob[:, side].sort(dim=1, descending=True).values[:, :4]
        torch.testing.assert_close(stats[:, side * 5:side * 5 + 4], top)
        torch.testing.assert_close(stats[:, side * 5 + 4], top.mean(1))
    w1, b1 = head.dgqp[0].weight[:, :, 0, 0], head.dgqp[0].bias
    w2, b2 = head.dgqp[2].weight[:, :, 0, 0], head.dgqp[2].bias
    flat_stats = stats.permute(0, 2, 3, 1)
    expected = torch.relu(flat_stats @ w1.T + b1) @ w2.T + b2
    torch.testing.assert_close(head.dgqp(stats).permute(0, 2, 3, 1), expected)
    # scores: sigmoid(cls) x sigmoid(quality), all three maps
    flat = {"cls_logits": torch.randn(1, 6, 3, dtype=torch.float64), "quality_logits": torch.randn(1, 6, 1, dtype=torch.float64)}
    maps = head.detection_scores(flat)
    joint = flat["cls_logits"].sigmoid() * flat["quality_logits"].sigmoid()
    for m in maps:
        torch.testing.assert_close(m.double(), joint)


def test_dgqp_gradient_reaches_the_distributions(tiny_kwargs):
    model = da.create("gflv2_r50", num_classes=3, **tiny_kwargs).train()
    losses = model([torch.rand(3, 128, 128)], targets_for([[]]))  # no GT: only QFL, through the joint score
    losses["loss_cls"].backward()
    assert model.head.bbox_pred.weight.grad.abs().sum() > 0  # via DGQP
    assert model.head.dgqp[0].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- losses given an assignment
LOSS_PROBLEM_SIZES = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]


def loss_problem(dgqp, seed=0):
    gen = torch.Generator().manual_seed(seed)
    anchors, counts = AnchorGenerator(AnchorConfig(center_offset=0.0))(LOSS_PROBLEM_SIZES, torch.device("cpu"))
    strides = torch.repeat_interleave(torch.tensor([8.0, 16, 32, 64, 128]), torch.tensor(counts))
    batch, n = 2, anchors.shape[0]
    flat = {"cls_logits": torch.randn(batch, n, 3, generator=gen) * 2,
            "box_dist_logits": torch.randn(batch, n, 68, generator=gen) * 2}
    if dgqp:
        flat["quality_logits"] = torch.randn(batch, n, 1, generator=gen)
    boxes = torch.tensor([[[10.0, 12, 70, 90], [60, 30, 120, 110]], [[5, 5, 60, 50], [0, 0, 0, 0]]])
    targets = Targets(boxes, torch.tensor([[0, 2], [1, 0]]), torch.tensor([[True, True], [True, False]]))
    return flat, anchors, counts, strides, targets


@pytest.mark.parametrize("dgqp", [False, True])
def test_losses_match_hand_written_float64_formulas(dgqp):
    head = GFLHead(ModelConfig(num_classes=3, fpn_channels=8, anchors=AnchorConfig(center_offset=0.0), head=HeadConfig(
        kind="gfl", channels=8, num_groups=4, num_convs=1, options={"dgqp": dgqp})))
    flat, anchors, counts, strides, targets = loss_problem(dgqp)
    pred_boxes = head.assignment_boxes(flat, anchors, strides)
    assigner = CombinedIoUAssigner(pred_weight=1.0)
    assignment = assigner(anchors, counts, targets.boxes, targets.mask, pred_boxes)
    losses, _ = head.loss(raw_from_flat(head, flat, LOSS_PROBLEM_SIZES), targets, assigner)

    # float64, from scratch
    x = flat["cls_logits"].double()
    p = torch.sigmoid(x)
    if dgqp:
        p = p * torch.sigmoid(flat["quality_logits"].double())
    prob = torch.softmax(flat["box_dist_logits"].double().view(2, -1, 4, 17), -1)
    dist = (prob * torch.arange(17, dtype=torch.float64)).sum(-1) * strides.double()[:, None]
    centres = ((anchors[:, :2] + anchors[:, 2:]) / 2).double()
    boxes = torch.cat([centres - dist[..., :2], centres + dist[..., 2:]], -1)
    t = torch.zeros_like(p)
    positives = assignment.pos_mask.nonzero().tolist()
    assert len(positives) > 3
    qfl_total, box_total, dfl_total, weight_total = 0.0, 0.0, 0.0, 0.0
    for b, a in positives:
        g = int(assignment.gt_index[b, a])
        gt = targets.boxes[b, g].double()
        t[b, a, targets.labels[b, g]] = box_iou(boxes[b, a][None], gt[None])[0, 0]
        w = p[b, a].max()
        weight_total += w
        box_total += w * (1 - generalized_box_iou(boxes[b, a][None], gt[None])[0, 0])
        side = torch.cat([centres[a] - gt[:2], gt[2:] - centres[a]]) / strides[a].double()
        side = side.clamp(0, 16 - 0.01)
        log_s = torch.log_softmax(flat["box_dist_logits"][b, a].double().view(4, 17), -1)
        dfl = 0.0
        for k in range(4):
            left = int(math.floor(side[k]))
            dfl += -((left + 1 - side[k]) * log_s[k, left] + (side[k] - left) * log_s[k, left + 1])
        dfl_total += w * dfl / 4
    one_minus_p = 1 - p
    if dgqp:
        z = flat["quality_logits"].double()
        one_minus_p = torch.sigmoid(-x) + torch.sigmoid(x) * torch.sigmoid(-z)
    qfl_total = ((t - p).abs() ** 2 * -(t * torch.log(p) + (1 - t) * torch.log(one_minus_p))).sum()
    normaliser = max(weight_total.item(), 1.0)
    expected = {
        "loss_cls": qfl_total / len(positives),
        "loss_box": 2.0 * box_total / normaliser,
        "loss_dfl": 0.25 * dfl_total / normaliser,
    }
    # the QFL soft targets are the assigner's predicted IoUs of the same boxes
    torch.testing.assert_close(assignment.pred_iou[assignment.pos_mask].double(), t.amax(-1)[assignment.pos_mask],
                               rtol=1e-4, atol=1e-5)
    for key, value in expected.items():
        assert losses[key].item() == pytest.approx(float(value), rel=1e-4), key


def test_assignment_uses_the_decoded_integral_boxes(tiny_kwargs):
    model = da.create("dynamic_gflv2_r50", num_classes=3, **tiny_kwargs).train()
    seen = {}
    inner = model.assigner

    def spy(anchors, counts, gt_boxes, gt_mask, pred_boxes, progress, level_shapes):
        seen["pred_boxes"], seen["anchors"] = pred_boxes, anchors
        return inner(anchors, counts, gt_boxes, gt_mask, pred_boxes, progress, level_shapes)

    model.assigner = spy
    images = [torch.rand(3, 128, 128)]
    model(images, targets_for([[[10, 10, 90, 100]]]))
    batch, _, _ = model.preprocess(images)
    with torch.no_grad():
        raw = model.forward_raw(batch)
    logits = torch.cat([level.permute(0, 2, 3, 1).reshape(1, -1, 68) for level in raw[1]], 1).double()
    strides = torch.repeat_interleave(torch.tensor([8.0, 16, 32, 64, 128], dtype=torch.float64),
                                      torch.tensor([h * w for h, w in [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]]))
    distance = (torch.softmax(logits.view(1, -1, 4, 17), -1) * torch.arange(17.0, dtype=torch.float64)).sum(-1)
    distance = distance * strides[:, None]
    anchors = seen["anchors"].double()
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    expected = torch.cat([centres - distance[..., :2], centres + distance[..., 2:]], -1)
    torch.testing.assert_close(seen["pred_boxes"].double(), expected, rtol=1e-5, atol=1e-3)
    assert not seen["pred_boxes"].requires_grad


# ---------------------------------------------------------------------------------------------- recipes
@pytest.mark.parametrize(("recipe", "model", "pred_weight", "dgqp"), [
    ("gfl_r50_1x", "gfl_r50", 0.0, False), ("gflv2_r50_1x", "gflv2_r50", 0.0, True),
    ("dynamic_gflv2_r50_1x", "dynamic_gflv2_r50", 1.0, True),
])
def test_recipes_build_their_model(recipe, model, pred_weight, dgqp):
    from dynamic_atss.engine.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{recipe}.yaml")
    assert config.model == model and config.optim.max_iters == 90000
    with torch.device("meta"):
        built = da.create(config.model, **config.model_overrides)
    assert built.config.assigner.pred_weight == pred_weight and built.config.head.family_options().dgqp == dgqp


@pytest.mark.slow
def test_losses_match_real_mmdetection_gfl():
    """mmdetection's GFLHead.loss_by_feat (its ATSSAssigner, QFL, GIoU, DFL and normalisers) vs the converted
    model's losses with plain ATSS assignment (pred_weight 0), on the same random weights, image and GTs."""
    MODELS = _import_mmdet()
    import mmdet
    from mmengine.config import Config
    from mmengine.structures import InstanceData

    config = Config.fromfile(f"{mmdet.__path__[0]}/.mim/configs/gfl/gfl_r50_fpn_1x_coco.py").model
    config.backbone.init_cfg = None
    mm = MODELS.build(config).eval()
    source = mmdet_gfl_state_dict(num_classes=80, head=256, num_convs=4, fpn=256, seed=12)
    source["bbox_head.gfl_cls.bias"].fill_(-4.0)  # near the prior: the positives' terms weigh in the QFL sum
    mm.load_state_dict(source, strict=True)
    model = convert_mmdet_gfl({"state_dict": mm.state_dict(), "meta": {}})

    height, width = 256, 320
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(1))
    # GT corners off the anchor grid (no distance ties between candidates, which the two assigners break differently)
    boxes = torch.tensor([[12.3, 20.7, 97.1, 141.9], [150.2, 60.6, 301.4, 230.2], [40.9, 150.3, 88.4, 201.1]])
    labels = torch.tensor([3, 17, 3])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        theirs = mm.bbox_head(mm.extract_feat(((image - mean) / std)[None]))
        meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                    scale_factor=(1.0, 1.0), batch_input_shape=(height, width))
        expected = mm.bbox_head.loss_by_feat(*theirs, batch_gt_instances=[InstanceData(bboxes=boxes, labels=labels)],
                                             batch_img_metas=[meta])
        model.config.min_size, model.config.max_size = height, width
        model.train()
        ours, stats = model([image], [{"boxes": boxes, "labels": labels}], return_stats=True)
    expected = {"loss_cls": sum(expected["loss_cls"]), "loss_box": sum(expected["loss_bbox"]),
                "loss_dfl": sum(expected["loss_dfl"])}
    print("mmdetection:", {k: round(v.item(), 6) for k, v in expected.items()},
          "\nours:       ", {k: round(v.item(), 6) for k, v in ours.items()}, f"(positives {stats['num_pos']:.0f})")
    for key, value in expected.items():
        assert ours[key].item() == pytest.approx(value.item(), rel=1e-4), key


def test_default_inference_path_gives_the_same_raw_outputs(tiny_kwargs):
    """The default path gives the same raw outputs with and without autograd (no inference-only shortcut; the fused
    snapshot is checked in test_optimize.py, ONNX Runtime for every family in test_export.py)."""
    model = da.create("gflv2_r50", num_classes=3, **tiny_kwargs).eval()
    x = torch.randn(1, 3, 128, 128)
    reference = model.forward_raw(x)  # gradients enabled
    with torch.no_grad():
        without_grad = model.forward_raw(x)
    for a, b in zip(reference, without_grad):
        for u, v in zip(a, b):
            torch.testing.assert_close(v, u.detach(), rtol=1e-4, atol=1e-4)
