"""The GFL / GFLV2 head family (detection/heads/gfl.py): training, decoding, losses against hand-written float64
formulas, DGQP, the combined-IoU assignment on integral boxes, config errors, Hub round trip, and the mmdetection
GFL converter (synthetic state dicts here; the real mmdetection model in the `slow` test)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.ops import box_iou, generalized_box_iou

import dynamic_atss as da
from dynamic_atss.config import AnchorConfig, HeadConfig, ModelConfig
from dynamic_atss.convert import (
    MMDetConversionError, convert_mmdet, convert_mmdet_atss, convert_mmdet_gfl, convert_mmdet_state_dict,
)
from dynamic_atss.detection.anchors import AnchorGenerator
from dynamic_atss.detection.assigner import CombinedIoUAssigner
from dynamic_atss.detection.heads import Targets
from dynamic_atss.detection.heads.gfl import GFLHead
from dynamic_atss.detection.losses import distribution_focal_loss, joint_quality_focal_loss
from dynamic_atss.ops.dcn import ModulatedDeformConv2d
from hub_server import file_server  # noqa: F401  (pytest fixture)
from test_url import point_tag_at, scratch_registry, torch_cache  # noqa: F401  (pytest fixtures)
from test_mmdet import (
    TINY, TINY_OVERRIDES, _import_mmdet, assert_all_landed, compare_with_mmdetection, expected_target,
    mmdet_atss_state_dict,
)

GFL_NAMES = [f"{family}_{variant}" for family in ("gfl", "dynamic_gfl", "gflv2", "dynamic_gflv2")
             for variant in ("r50", "r101", "r101_dcn", "x101_32x8d", "x101_64x4d")]
GFL_NAMES += ["gfl_x101_32x4d", "gfl_x101_32x4d_dcn_c4"]  # mmdetection's published GFL X-101s


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
    losses = model(images, targets_for(boxes))
    assert set(losses) == {"loss_cls", "loss_box", "loss_dfl"}
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    assert (model.assign_stats["num_pos"] > 0) == with_gt
    if with_gt:
        assert losses["loss_box"] > 0 and losses["loss_dfl"] > 0
    sum(losses.values()).backward()
    missing = [n for n, p in model.head.named_parameters() if p.grad is None]
    assert not missing, missing
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "scores", "labels"}


def test_registered_constructors_and_their_defaults():
    assert set(GFL_NAMES) <= set(da.list_models("*gfl*"))
    assert all(callable(getattr(da, name)) for name in GFL_NAMES)  # importable constructors
    with torch.device("meta"):
        model = da.create("dynamic_gflv2_r101_dcn")
    config = model.config
    assert config.head.kind == "gfl" and config.head.dgqp and config.head.reg_max == 16
    assert (config.head.dgqp_topk, config.head.dgqp_hidden, config.head.conv_bias) == (4, 64, False)
    assert config.backbone.dcn and not config.head.dcn_last_conv
    assert any(isinstance(m, ModulatedDeformConv2d) for m in model.backbone.modules())
    assert config.anchors.center_offset == 0.0 and config.conventions.relu_before_p7 is False
    assert (config.loss.cls_loss, config.loss.box_weight, config.loss.dfl_weight) == ("qfl", 2.0, 0.25)
    assert config.assigner.pred_weight == 1.0
    with torch.device("meta"):
        baseline = da.create("gfl_x101_64x4d")
    assert baseline.config.assigner.pred_weight == 0.0 and not baseline.config.head.dgqp
    assert baseline.config.backbone.name == "resnext101_64x4d" and baseline.head.dgqp is None


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
    with pytest.raises(ValueError, match="head.dgqp=True needs box distributions"):
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


# ---------------------------------------------------------------------------------------------- primitives
def test_joint_quality_focal_loss_formula():
    gen = torch.Generator().manual_seed(0)
    cls = torch.randn(3, 7, 4, generator=gen) * 6  # includes large |logits|
    quality = torch.randn(3, 7, 1, generator=gen) * 4
    cls[0, 0, 0], quality[0, 0, 0] = 40.0, 40.0  # p = 1 in float32: log(1 - p) must stay finite
    targets = torch.zeros(3, 7, 4)
    targets[:, ::2, 1] = torch.rand(3, 4, generator=gen)
    targets[0, 0, 0] = 0.7
    x, z, t = cls.double(), quality.double(), targets.double()
    p = torch.sigmoid(x) * torch.sigmoid(z)
    one_minus_p = torch.sigmoid(-x) + torch.sigmoid(x) * torch.sigmoid(-z)
    expected = ((t - p).abs() ** 2 * -(t * torch.log(p) + (1 - t) * torch.log(one_minus_p))).sum()
    got = joint_quality_focal_loss(cls, quality, targets)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_distribution_focal_loss_formula():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(9, 17, generator=gen) * 3
    targets = torch.tensor([0.0, 0.5, 1.0, 3.25, 7.9, 12.0, 15.5, 15.99, 2.001])
    log_s = torch.log_softmax(logits.double(), -1)
    expected = []
    for row, y in zip(log_s, targets.double().tolist()):
        left = math.floor(y)
        expected.append(-((left + 1 - y) * row[left] + (y - left) * row[left + 1]))
    got = distribution_focal_loss(logits, targets)
    torch.testing.assert_close(got.double(), torch.stack(expected), rtol=1e-5, atol=1e-6)
    # minimised by the two-bin distribution with mean y
    sharp = torch.full((1, 17), -1e4)
    sharp[0, 3], sharp[0, 4] = math.log(0.75), math.log(0.25)
    assert distribution_focal_loss(sharp, torch.tensor([3.25])).item() == pytest.approx(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), rel=1e-5)
    with pytest.raises(ValueError, match=r"DFL targets must lie in \[0, 16\)"):
        distribution_focal_loss(logits[:1], torch.tensor([16.0]))


def tiny_head(dgqp=True, **head):
    config = ModelConfig(num_classes=3, fpn_channels=8,
                         head=HeadConfig(kind="gfl", channels=8, num_groups=4, num_convs=1, dgqp=dgqp, **head))
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
def loss_problem(dgqp, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sizes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    anchors, counts = AnchorGenerator(AnchorConfig(center_offset=0.0))(sizes, torch.device("cpu"))
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
    head = tiny_head(dgqp=dgqp)
    flat, anchors, counts, strides, targets = loss_problem(dgqp)
    pred_boxes = head.assignment_boxes(flat, anchors, strides)
    assignment = CombinedIoUAssigner(pred_weight=1.0)(anchors, counts, targets.boxes, targets.mask, pred_boxes)
    losses = head.loss(flat, anchors, strides, targets, assignment)

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


# ---------------------------------------------------------------------------------------------- mmdetection converter
def mmdet_gfl_state_dict(num_classes=3, head=32, reg_max=16, dgqp=False, topk=4, hidden=64, seed=0, device="cpu",
                         **kwargs):
    """An mmdetection GFL state dict (GFocalV2 GFLV2 with `dgqp`): the ATSS layout of test_convert with the
    GFLHead outputs instead of the ATSSHead ones, distinct random values."""
    state = mmdet_atss_state_dict(num_classes=num_classes, head=head, seed=seed, device=device, **kwargs)
    for key in [k for k in state if k.startswith(("bbox_head.atss_",))]:
        del state[key]
    gen = torch.Generator().manual_seed(seed + 100)

    def new(*shape):
        if device == "meta":
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=gen) * (0.1 if len(shape) == 1 else math.sqrt(1 / math.prod(shape[1:])))

    state["bbox_head.gfl_cls.weight"], state["bbox_head.gfl_cls.bias"] = new(num_classes, head, 3, 3), new(num_classes)
    state["bbox_head.gfl_reg.weight"] = new(4 * (reg_max + 1), head, 3, 3)
    state["bbox_head.gfl_reg.bias"] = new(4 * (reg_max + 1))
    state["bbox_head.integral.project"] = torch.linspace(0, reg_max, reg_max + 1)
    if dgqp:
        state["bbox_head.reg_conf.0.weight"], state["bbox_head.reg_conf.0.bias"] = new(hidden, 4 * (topk + 1), 1, 1), new(hidden)
        state["bbox_head.reg_conf.2.weight"], state["bbox_head.reg_conf.2.bias"] = new(1, hidden, 1, 1), new(1)
    return state


def gfl_target(key):
    if key == "bbox_head.integral.project":
        return None
    if m := re.fullmatch(r"bbox_head\.gfl_(cls|reg)\.(weight|bias)", key):
        return "head." + {"cls": "cls_logits", "reg": "bbox_pred"}[m[1]] + "." + m[2]
    if m := re.fullmatch(r"bbox_head\.reg_conf\.([02])\.(weight|bias)", key):
        return f"head.dgqp.{m[1]}.{m[2]}"
    return expected_target(key)


def assert_gfl_landed(model, source):
    assert_all_landed(model, source, gfl_target)


@pytest.mark.parametrize("dgqp", [False, True])
def test_converter_every_tensor_lands(tmp_path, dgqp):
    source = mmdet_gfl_state_dict(**TINY, dgqp=dgqp, hidden=16, seed=4)
    path = tmp_path / "gfl_tiny.pth"
    torch.save({"state_dict": source, "meta": {"dataset_meta": {"classes": ("a", "b", "c")}}}, path)
    model = convert_mmdet_gfl(path, **TINY_OVERRIDES)
    assert_gfl_landed(model, source)
    config = model.config
    assert config.head.kind == "gfl" and config.head.reg_max == 16 and config.head.dgqp == dgqp
    assert config.head.conv_bias is False and config.anchors.center_offset == 0.0
    assert config.conventions.relu_before_p7 is False and config.assigner.pred_weight == 0.0
    assert config.loss.cls_loss == "qfl" and config.class_names == ["a", "b", "c"]
    if dgqp:
        assert (config.head.dgqp_topk, config.head.dgqp_hidden) == (4, 16)
    with torch.no_grad():
        raw = model.forward_raw(torch.randn(1, 3, 64, 96))
    assert len(raw) == (3 if dgqp else 2)
    assert convert_mmdet(source, class_names=list("abc"), **TINY_OVERRIDES).config == config  # family from the keys


def test_converter_refuses_wrong_family_and_bad_heads():
    source = mmdet_gfl_state_dict(**TINY)
    with pytest.raises(MMDetConversionError, match=r"holds an mmdetection gfl head .* not atss"):
        convert_mmdet_atss(source, **TINY_OVERRIDES)
    with pytest.raises(MMDetConversionError, match="not atss|not gfl"):
        convert_mmdet_gfl(mmdet_atss_state_dict(**TINY), **TINY_OVERRIDES)
    bad = dict(source)
    bad["bbox_head.integral.project"] = bad["bbox_head.integral.project"] * 2
    with pytest.raises(MMDetConversionError, match="integral.project"):
        convert_mmdet_gfl(bad, **TINY_OVERRIDES)
    bad = dict(source)
    del bad["bbox_head.scales.2.scale"]
    with pytest.raises(MMDetConversionError, match=r"bbox_head\.scales\.2\.scale"):
        convert_mmdet_gfl(bad, **TINY_OVERRIDES)


@pytest.mark.parametrize(("name", "kwargs"), [
    ("gfl_r50", {}), ("gfl_r101", dict(layers=(3, 4, 23, 3))), ("gfl_r101_dcn", dict(layers=(3, 4, 23, 3), dcn=True)),
    ("gfl_x101_32x4d", dict(layers=(3, 4, 23, 3), groups=32, base_width=4)),
    ("gfl_x101_32x4d_dcn_c4", dict(layers=(3, 4, 23, 3), groups=32, base_width=4, dcn=True)),
])
def test_gfl_constructors_build_what_the_converter_builds(name, kwargs):
    """The constructors named by mmdetection's indexed GFL weights (model_index.json) build the converted config:
    DCNv1 layouts (18 offset channels), c3-c5 for R-101, c4-c5 for X-101 (stage 2 without DCN)."""
    source = mmdet_gfl_state_dict(num_classes=80, head=256, fpn=256, num_convs=4, device="meta", **kwargs)
    for key in [k for k in source if "conv_offset" in k]:
        source[key] = source[key][:18]  # mmdetection's GFL dconv models: DCNv1
    if name.endswith("_c4"):
        for key in [k for k in source if k.startswith("backbone.layer2.") and "conv_offset" in k]:
            del source[key]
    converted, _ = convert_mmdet_state_dict(source)
    with torch.device("meta"):
        built, reference = da.create(name), da.DynamicATSS(converted)
    assert built.config == converted, name
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


def test_model_card_names_the_head_and_the_dcn_stages():
    from dynamic_atss.hub.card import generate_model_card

    with torch.device("meta"):
        model = da.create("gfl_x101_32x4d_dcn_c4")
    card = generate_model_card(model.config, head_description=model.head.describe())
    assert "GFL head" in card and "DCNv2 in stages 3, 4" in card and "quality branch" not in card


def test_dcn_v1_backbone_converts_exactly():
    """mmdetection's GFL dconv models use DCNv1 (18 offset channels): loaded into DCNv2 with a mask of exactly 1."""
    source = mmdet_gfl_state_dict(**TINY, dcn=True, seed=6)
    for key in [k for k in source if "conv_offset" in k]:
        source[key] = source[key][:18]  # DCNv1: offsets only
    model = convert_mmdet_gfl(source, dcn=True, **TINY_OVERRIDES)
    layer = model.backbone.trunk.layer3[1].conv2
    assert isinstance(layer, ModulatedDeformConv2d)
    assert torch.equal(layer.conv_offset.weight[:18], source["backbone.layer3.1.conv2.conv_offset.weight"])
    x = torch.randn(1, layer.weight.shape[1], 9, 11)
    offsets = F.conv2d(x, source["backbone.layer3.1.conv2.conv_offset.weight"],
                       source["backbone.layer3.1.conv2.conv_offset.bias"], padding=1)
    dcn_v1 = torchvision.ops.deform_conv2d(x, offsets, source["backbone.layer3.1.conv2.weight"], padding=1)
    with torch.no_grad():
        assert torch.equal(layer(x), dcn_v1)


# ---------------------------------------------------------------------------------------------- real mmdetection
@pytest.mark.slow
def test_matches_real_mmdetection_gfl_r50():
    """Gold standard: mmdetection's own GFL R-50 (random weights) vs the converted model, raw outputs and detections."""
    MODELS = _import_mmdet()
    import mmdet
    from mmengine.config import Config

    config = Config.fromfile(f"{mmdet.__path__[0]}/.mim/configs/gfl/gfl_r50_fpn_1x_coco.py").model
    config.backbone.init_cfg = None
    mm = MODELS.build(config).eval()
    source = mmdet_gfl_state_dict(num_classes=80, head=256, num_convs=4, fpn=256, seed=11)
    source["bbox_head.gfl_cls.bias"].fill_(-1.5)  # plenty of detections above 0.05
    mm.load_state_dict(source, strict=True)  # our synthetic layout is exactly mmdetection's
    print(f"mmdetection GFL R-50 state-dict values: {sum(t.numel() for t in mm.state_dict().values()):,}")
    model = convert_mmdet_gfl({"state_dict": mm.state_dict(), "meta": {}})

    theirs, ours = compare_with_mmdetection(mm, model)
    rel = max(((a - b).abs().max() / a.abs().max()).item() for la, lb in zip(theirs, ours) for a, b in zip(la, lb))
    print(f"max relative difference of raw head outputs: {rel:.3g}")
    assert rel < 1e-4


# ---------------------------------------------------------------------------------------------- recipes and demo
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
    assert built.config.assigner.pred_weight == pred_weight and built.config.head.dgqp == dgqp


def test_demo_compares_gflv2_with_and_without_combined_ious(tmp_path):
    import yaml
    from dynamic_atss.__main__ import main as cli
    from test_trainer import TINY_RECIPE

    recipe = dict(TINY_RECIPE, output_dir=str(tmp_path / "demo"), checkpoint_every=0)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    assert cli(["demo", "--config", str(tmp_path / "tiny.yaml"), "--iters", "3", "--compare", "--head", "gflv2"]) == 0
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert set(summary["AP"]) == {"GFLV2 + CIoUs (combined IoUs)", "GFLV2 (anchor IoUs only)"}
    baseline = json.loads((tmp_path / "demo" / "gflv2_baseline" / "model" / "config.json").read_text())["model"]
    assert baseline["head"]["kind"] == "gfl" and baseline["head"]["dgqp"] and baseline["assigner"]["pred_weight"] == 0.0
    main = json.loads((Path(summary["model_dir"]) / "config.json").read_text())["model"]
    assert main["head"]["dgqp"] and main["assigner"]["pred_weight"] == 1.0
    assert (tmp_path / "demo" / "losses.png").is_file()


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
        ours = model([image], [{"boxes": boxes, "labels": labels}])
    expected = {"loss_cls": sum(expected["loss_cls"]), "loss_box": sum(expected["loss_bbox"]),
                "loss_dfl": sum(expected["loss_dfl"])}
    print("mmdetection:", {k: round(v.item(), 6) for k, v in expected.items()},
          "\nours:       ", {k: round(v.item(), 6) for k, v in ours.items()}, f"(positives {model.assign_stats['num_pos']:.0f})")
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


def test_indexed_gfl_weights_load_by_tag(tmp_path, file_server, torch_cache, scratch_registry):  # noqa: F811
    """`create("gfl_r50.mmdet_coco_1x")`: the indexed mmdetection URL, hash-checked and converted by this family's
    converter (a tiny checkpoint served from loopback stands in for the real file)."""
    import hashlib

    source = mmdet_gfl_state_dict(**TINY, seed=8)
    source["bbox_head.gfl_cls.bias"].fill_(-1.0)
    torch.save({"state_dict": source, "meta": {"CLASSES": ("cat", "dog", "bird")}}, tmp_path / "gfl_tiny.pth")
    data = (tmp_path / "gfl_tiny.pth").read_bytes()
    prefix = hashlib.sha256(data).hexdigest()[:8]
    file_server.files[f"/gfl/gfl_tiny-{prefix}.pth"] = data
    point_tag_at(file_server.url(f"/gfl/gfl_tiny-{prefix}.pth"), prefix, "gfl_r50.mmdet_coco_1x")
    model = da.create("gfl_r50.mmdet_coco_1x", progress=False)
    assert model.config.head.kind == "gfl" and model.config.class_names == ["cat", "dog", "bird"]
    assert_gfl_landed(model, source)
