"""The VFNet family (detection/heads/vfnet.py), its constructors and its mmdetection converter (convert/mmdet_vfnet.py).

Converter state dicts are built from mmdetection's VFNet layout (test_convert's ResNet + FPN + the `VFNetHead` key
names and shapes) with distinct random values, so every tensor can be traced to where it must land. The `slow`
tests compare with mmdetection's own VFNet model (skipped unless mmdetection is installed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

import dynamic_atss as da
from dynamic_atss import registry
from dynamic_atss.config import HeadConfig
from dynamic_atss.convert import MMDetConversionError, convert_mmdet, convert_mmdet_atss, convert_mmdet_state_dict
from dynamic_atss.convert import convert_mmdet_vfnet
from dynamic_atss.detection.assigner import AssignResult, paired_iou
from dynamic_atss.detection.heads import Targets
from dynamic_atss.detection.heads import vfnet as vfnet_module
from dynamic_atss.detection.heads.vfnet import VFNetHead, distance_to_boxes, star_offsets
from dynamic_atss.ops.dcn import DeformConv2d, ModulatedDeformConv2d
from hub_server import file_server  # noqa: F401  (pytest fixture)
from test_mmdet import TINY, TINY_OVERRIDES, _import_mmdet, assert_all_landed, expected_target, mmdet_atss_state_dict
from test_url import scratch_registry, torch_cache  # noqa: F401  (pytest fixtures)

VFNET_MODELS = [
    f"{prefix}vfnet_{variant}" for prefix in ("", "dynamic_")
    for variant in ("r50", "r50_dcn", "r101", "r101_dcn", "x101_32x8d", "x101_64x4d")
]


def tiny_vfnet(tiny_kwargs, name="dynamic_vfnet_r50", **extra):
    return da.create(name, num_classes=5, **{**tiny_kwargs, **extra})


def scene():
    """Two images: one with three objects, one without any."""
    images = [torch.rand(3, 120, 160, generator=torch.Generator().manual_seed(1)), torch.rand(3, 128, 128)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 80.0, 100.0], [50.0, 40.0, 150.0, 110.0], [5.0, 5.0, 40.0, 30.0]]),
         "labels": torch.tensor([1, 4, 0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return images, targets


# ---------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("name", VFNET_MODELS)
def test_every_vfnet_constructor_builds(name):
    assert name in da.list_models("*vfnet*")
    with torch.device("meta"):
        model = da.create(name)
    assert getattr(da, name) is not None  # exported constructor
    assert isinstance(model.head, VFNetHead)
    config = model.config
    assert (config.head.kind, config.head.num_convs, config.head.conv_bias) == ("vfnet", 3, False)
    assert config.assigner.pred_weight == (1.0 if name.startswith("dynamic_") else 0.0)
    assert config.anchors.center_offset == 0.0 and config.conventions.relu_before_p7 is True
    assert config.head.dcn_last_conv == config.backbone.dcn == name.endswith("_dcn")
    has_dcn = any(isinstance(m, ModulatedDeformConv2d) for m in model.modules())
    assert has_dcn == name.endswith("_dcn")
    assert 30e6 < sum(p.numel() for p in model.parameters()) < 110e6


def test_vfnet_r50_size_matches_mmdetection():
    """mmdetection's VFNet R-50 state dict holds 32,944,727 values; ours has no BatchNorm `num_batches_tracked`
    counters (53 of them, FrozenBatchNorm2d), everything else is the same size."""
    with torch.device("meta"):
        model = da.create("vfnet_r50")
    assert sum(v.numel() for v in model.state_dict().values()) == 32_944_727 - 53


def test_tiny_model_trains_and_every_head_parameter_gets_a_gradient(tiny_kwargs):
    model = tiny_vfnet(tiny_kwargs).train()
    images, targets = scene()
    empty = targets[1]
    for batch_images, batch_targets in ((images, targets), ([images[1]], [empty])):
        model.zero_grad()
        losses = model(batch_images, batch_targets)
        assert set(losses) == {"loss_cls", "loss_box", "loss_box_init"}
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        missing = [n for n, p in model.head.named_parameters() if p.grad is None]
        assert not missing, missing
        if batch_targets is targets:
            assert float(model.assign_stats["num_pos"]) > 0
            # every head parameter is trained, the star-shaped DCNs included (the per-level Scales only on the
            # levels that have positives)
            zero = [n for n, p in model.head.named_parameters() if not p.grad.abs().sum() > 0]
            assert not [n for n in zero if ".scale" not in n], zero
            assert "scales.0.scale" not in zero and "scales_refine.0.scale" not in zero
    assert float(losses["loss_box"].detach()) == 0.0 and float(losses["loss_box_init"].detach()) == 0.0  # the all-empty batch


def test_tiny_model_predicts(tiny_kwargs):
    model = tiny_vfnet(tiny_kwargs).eval()
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(0.0)  # IACS 0.5 everywhere: detections above the 0.05 threshold
        raw = model.forward_raw(torch.randn(1, 3, 128, 160))
        detections = model(scene()[0])
    assert [len(level) for level in raw] == [5, 5, 5]
    assert raw[0][0].shape == (1, 5, 16, 20) and raw[1][0].shape == raw[2][0].shape == (1, 4, 16, 20)
    assert all((level > 0).all() for level in raw[1] + raw[2])  # distances are exp(...) x positive factors
    assert len(detections) == 2 and all(0 < len(d["boxes"]) <= 100 for d in detections)
    for det, (height, width) in zip(detections, [(120, 160), (128, 128)]):
        assert det["boxes"][:, 2].max() <= width and det["boxes"][:, 3].max() <= height
        assert torch.all(det["scores"][:-1] >= det["scores"][1:])


def test_mixed_precision_forward_on_cpu(tiny_kwargs):
    """The star-shaped DCNs run in float32 under autocast (torchvision's deform_conv2d has no bf16 CPU kernel)."""
    model = tiny_vfnet(tiny_kwargs).train()
    images, targets = scene()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_bad_configs_are_refused(tiny_kwargs):
    with pytest.raises(ValueError, match="loss.cls_loss='qfl'.*'vfl'"):
        tiny_vfnet(tiny_kwargs, **{"loss.cls_loss": "qfl"})
    with pytest.raises(ValueError, match="head.assign_boxes.*'final'"):
        tiny_vfnet(tiny_kwargs, **{"head.assign_boxes": "final"})
    with pytest.raises(ValueError, match="head.dgqp=True"):
        tiny_vfnet(tiny_kwargs, **{"head.dgqp": True})


# ---------------------------------------------------------------------------------------------- star-shaped DCN
def test_star_offsets_by_hand():
    # l, t, r, b = 8, 16, 24, 4 px at stride 8: 1, 2, 3, 0.5 cells. Sampling rows {-t, 0, +b} = {-2, 0, 0.5},
    # columns {-l, 0, +r} = {-1, 0, 3}; minus the regular grid {-1, 0, 1}: dy {-1, 0, -0.5}, dx {0, 0, 2}.
    distances = torch.tensor([8.0, 16.0, 24.0, 4.0]).view(1, 4, 1, 1).requires_grad_()
    offsets = star_offsets(distances, 8)
    expected = [-1, 0, -1, 0, -1, 2,  # kernel row 0: (dy, dx) for columns 0, 1, 2
                0, 0, 0, 0, 0, 2,  # row 1
                -0.5, 0, -0.5, 0, -0.5, 2]  # row 2
    assert offsets.shape == (1, 18, 1, 1)
    torch.testing.assert_close(offsets.flatten(), torch.tensor(expected, dtype=torch.float32))
    # gradients reach the initial box scaled by 0.1 (and by 1 / stride: offsets are in feature cells)
    offsets.sum().backward()
    torch.testing.assert_close(distances.grad.flatten(), torch.tensor([-3.0, -3.0, 3.0, 3.0]) * 0.1 / 8)


def test_star_dcn_samples_the_nine_box_points():
    """torchvision's deform_conv2d with the star offsets reads the feature at {x-l, x, x+r} x {y-t, y, y+b}."""
    height, width, stride = 12, 14, 4
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    ramp = (100 * ys + xs).view(1, 1, height, width)  # bilinear sampling reproduces a linear ramp exactly
    dcn = DeformConv2d(1, 9, 3, 1, 1, bias=False)
    with torch.no_grad():
        dcn.weight.zero_()
        for k in range(9):
            dcn.weight[k, 0, k // 3, k % 3] = 1.0  # output channel k = the k-th sampling point
    left, top, right, bottom = 1.5, 2.0, 3.0, 2.5  # in cells
    distances = torch.tensor([left, top, right, bottom]).view(1, 4, 1, 1).expand(1, 4, height, width) * stride
    sampled = dcn(ramp, star_offsets(distances, stride))
    y0, x0 = 5, 6
    expected = [100 * (y0 + dy) + (x0 + dx) for dy in (-top, 0, bottom) for dx in (-left, 0, right)]
    torch.testing.assert_close(sampled[0, :, y0, x0], torch.tensor(expected))


# ---------------------------------------------------------------------------------------------- losses, assigner
def _flat_and_targets(model, images, targets):
    batch, sizes, originals = model.preprocess(images)
    raw = model.forward_raw(batch)
    feature_sizes = [tuple(level.shape[-2:]) for level in raw[0]]
    anchors, num_per_level = model.anchor_generator(feature_sizes, batch.device)
    flat_levels = model.head.flatten(raw)
    flat = {name: torch.cat([level[name] for level in flat_levels], 1) for name in flat_levels[0]}
    scales = [(h / oh, w / ow) for (h, w), (oh, ow) in zip(sizes.tolist(), originals)]
    return flat, anchors, num_per_level, feature_sizes, Targets(*model._prepare_targets(targets, scales, batch.device))


def test_vfl_target_is_the_iou_of_the_refined_box(tiny_kwargs, monkeypatch):
    model = tiny_vfnet(tiny_kwargs, **{"head.assign_boxes": "initial"}).train()
    images, targets = scene()
    flat, anchors, _, _, gt = _flat_and_targets(model, images, targets)
    # Positives by hand: anchors 3, 40 and 200 of image 0 go to GTs 0, 1 and 0; the assigner's IoUs are decoys.
    gt_index = torch.full(flat["cls_logits"].shape[:2], -1, dtype=torch.int64)
    positives = torch.tensor([3, 40, 200])
    gt_index[0, positives] = torch.tensor([0, 1, 0])
    decoy = torch.full(gt_index.shape, 0.123)
    assignment = AssignResult(gt_index, decoy, decoy)
    captured = {}

    def spy(logits, cls_targets, alpha, gamma):
        captured["targets"], captured["alpha_gamma"] = cls_targets.detach().clone(), (alpha, gamma)
        return torch.zeros((), requires_grad=True)

    monkeypatch.setattr(vfnet_module, "varifocal_loss", spy)
    strides = torch.ones(len(anchors))
    model.head.loss(flat, anchors, strides, gt, assignment)
    gt_boxes = gt.boxes[0, gt_index[0, positives]]
    refined = distance_to_boxes(flat["box_refine"][0, positives], anchors[positives])
    initial = distance_to_boxes(flat["box_init"][0, positives], anchors[positives])
    expected = paired_iou(refined, gt_boxes).clamp(min=1e-6).detach()
    assert not torch.allclose(expected, paired_iou(initial, gt_boxes))  # the test can tell the two boxes apart
    labels = gt.labels[0, gt_index[0, positives]]
    cls_targets = captured["targets"]
    torch.testing.assert_close(cls_targets[0, positives, labels], expected)
    assert int((cls_targets > 0).sum()) == 3  # nothing else is a target
    assert captured["alpha_gamma"] == (0.75, 2.0)


def test_box_losses_are_iou_weighted_giou(tiny_kwargs):
    model = tiny_vfnet(tiny_kwargs).train()
    images, targets = scene()
    flat, anchors, _, _, gt = _flat_and_targets(model, images, targets)
    gt_index = torch.full(flat["cls_logits"].shape[:2], -1, dtype=torch.int64)
    positives = torch.tensor([3, 40, 200])
    gt_index[0, positives] = torch.tensor([0, 1, 0])
    zeros = torch.zeros(gt_index.shape)
    losses = model.head.loss(flat, anchors, torch.ones(len(anchors)), gt, AssignResult(gt_index, zeros, zeros))
    gt_boxes = gt.boxes[0, gt_index[0, positives]]
    for key, name, weight in (("loss_box_init", "box_init", 1.5), ("loss_box", "box_refine", 2.0)):
        boxes = distance_to_boxes(flat[name][0, positives], anchors[positives])
        iou = paired_iou(boxes, gt_boxes).clamp(min=1e-6)
        giou = torchvision.ops.generalized_box_iou_loss(boxes, gt_boxes, reduction="none")
        expected = (giou * iou).sum() / iou.sum().clamp(min=1.0) * weight
        torch.testing.assert_close(losses[key], expected)


@pytest.mark.parametrize("assign_boxes", ["initial", "refined"])
def test_assigner_receives_the_configured_boxes(tiny_kwargs, assign_boxes):
    model = tiny_vfnet(tiny_kwargs, **{"head.assign_boxes": assign_boxes}).train()
    images, targets = scene()
    flat, anchors, num_per_level, feature_sizes, gt = _flat_and_targets(model, images, targets)
    received = {}
    assigner = model.assigner

    def spy(anchors_, num_per_level_, gt_boxes, gt_mask, pred_boxes, *args):
        received["pred_boxes"] = pred_boxes
        return assigner(anchors_, num_per_level_, gt_boxes, gt_mask, pred_boxes, *args)

    losses, stats = model.head.compute_loss(flat, anchors, num_per_level, list(model.config.anchors.strides), gt, spy,
                                            0.0, feature_sizes)
    name = "box_init" if assign_boxes == "initial" else "box_refine"
    other = "box_refine" if assign_boxes == "initial" else "box_init"
    assert not received["pred_boxes"].requires_grad
    torch.testing.assert_close(received["pred_boxes"], distance_to_boxes(flat[name].detach(), anchors))
    assert not torch.allclose(received["pred_boxes"], distance_to_boxes(flat[other].detach(), anchors))
    assert float(stats["num_pos"]) > 0 and all(torch.isfinite(v) for v in losses.values())


def test_default_assigner_boxes_are_the_refined_ones():
    assert HeadConfig().assign_boxes == "refined"
    with torch.device("meta"):
        assert da.create("dynamic_vfnet_r50").head.assign_boxes == "refined"


def test_pred_weight_zero_is_vfnet_own_atss_assignment(tiny_kwargs):
    """`vfnet_r50` (pred_weight 0) assigns by anchor IoUs only: other predicted boxes give the same positives;
    `dynamic_vfnet_r50` (pred_weight 1) depends on them."""
    images, targets = scene()
    for name, same in (("vfnet_r50", True), ("dynamic_vfnet_r50", False)):
        torch.manual_seed(0)
        model = tiny_vfnet(tiny_kwargs, name=name).train()
        flat, anchors, num_per_level, feature_sizes, gt = _flat_and_targets(model, images, targets)
        boxes = model.head.assignment_boxes(flat, anchors, torch.ones(len(anchors)))
        ours = model.assigner(anchors, num_per_level, gt.boxes, gt.mask, boxes, 0.0, feature_sizes)
        other = model.assigner(anchors, num_per_level, gt.boxes, gt.mask, boxes.flip(1), 0.0, feature_sizes)
        assert torch.equal(ours.gt_index, other.gt_index) == same, name


# ---------------------------------------------------------------------------------------------- contract: hub, fuse
def test_save_pretrained_round_trip(tiny_kwargs, tmp_path):
    model = tiny_vfnet(tiny_kwargs, **{"head.assign_boxes": "initial", "assigner.pred_weight": "up"}).eval()
    model.save_pretrained(tmp_path / "vfnet")
    loaded = da.create(f"local-dir:{tmp_path / 'vfnet'}").eval()
    assert loaded.config == model.config
    assert loaded.config.head.kind == "vfnet" and loaded.config.head.assign_boxes == "initial"
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        for ours, theirs in zip(model.forward_raw(x), loaded.forward_raw(x)):
            for a, b in zip(ours, theirs):
                assert torch.equal(a, b)


def test_default_inference_path_keeps_the_outputs(tiny_kwargs):
    """The default path gives the same raw outputs with and without autograd (no inference-only shortcut; the fused
    snapshot is checked in test_optimize.py, ONNX Runtime for every family in test_export.py)."""
    model = tiny_vfnet(tiny_kwargs).eval()
    x = torch.randn(1, 3, 128, 160)
    reference = model.forward_raw(x)  # gradients enabled
    with torch.inference_mode():
        for ref_level, new_level in zip(reference, model.forward_raw(x)):
            for ref, new in zip(ref_level, new_level):
                torch.testing.assert_close(new, ref.detach(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- converter
def mmdet_vfnet_state_dict(num_convs=3, head=256, num_classes=80, head_dcn=False, seed=0, device="cpu", **kwargs):
    """An mmdetection VFNet state dict (exact key names and shapes), filled with distinct random values (or empty
    on the "meta" device): test_convert's ResNet + FPN + towers, and `VFNetHead`'s own modules instead of
    ATSSHead's outputs."""
    source = mmdet_atss_state_dict(num_convs=num_convs, head=head, num_classes=num_classes, head_dcn=head_dcn,
                                   seed=seed, device=device, **kwargs)
    for key in [k for k in source if re.match(r"bbox_head\.atss_", k)]:
        del source[key]
    shapes = OrderedDict()
    shapes["bbox_head.vfnet_reg_conv.conv.weight"] = (head, head, 3, 3)
    shapes["bbox_head.vfnet_reg_conv.gn.weight"] = shapes["bbox_head.vfnet_reg_conv.gn.bias"] = (head,)
    for name, out in (("vfnet_reg", 4), ("vfnet_reg_refine", 4), ("vfnet_cls", num_classes)):
        shapes[f"bbox_head.{name}.weight"] = (out, head, 3, 3)
        shapes[f"bbox_head.{name}.bias"] = (out,)
    for name in ("vfnet_reg_refine_dconv", "vfnet_cls_dconv"):
        shapes[f"bbox_head.{name}.weight"] = (head, head, 3, 3)
    for i in range(5):
        shapes[f"bbox_head.scales_refine.{i}.scale"] = ()
    generator = torch.Generator().manual_seed(seed + 1)
    for key, shape in shapes.items():
        if device == "meta":
            source[key] = torch.empty(shape, device="meta")
        elif len(shape) == 4:
            source[key] = torch.randn(shape, generator=generator) * math.sqrt(1.0 / math.prod(shape[1:]))
        elif key.endswith("scale"):
            source[key] = torch.rand(shape, generator=generator) * 0.5 + 0.25
        elif key.endswith("gn.weight"):
            source[key] = 1 + 0.1 * torch.randn(shape, generator=generator)
        else:
            source[key] = 0.1 * torch.randn(shape, generator=generator)
    return source


_VFNET_TARGETS = {"vfnet_reg": "bbox_pred", "vfnet_reg_refine": "bbox_refine", "vfnet_cls": "cls_logits",
                  "vfnet_reg_refine_dconv": "box_refine_dcn", "vfnet_cls_dconv": "cls_dcn"}


def expected_vfnet_target(key: str) -> str | None:
    """Where an mmdetection VFNet key must land, written independently of the converter."""
    if m := re.fullmatch(r"bbox_head\.vfnet_reg_conv\.(conv|gn)\.(weight|bias)", key):
        return f"head.box_init_tower.{0 if m[1] == 'conv' else 1}.{m[2]}"
    if m := re.fullmatch(r"bbox_head\.(vfnet_\w+)\.(weight|bias)", key):
        return f"head.{_VFNET_TARGETS[m[1]]}.{m[2]}"
    if m := re.fullmatch(r"bbox_head\.scales_refine\.(\d)\.scale", key):
        return f"head.scales_refine.{m[1]}.scale"
    return expected_target(key)


TINY_VFNET = {**TINY, "num_convs": 3}


@pytest.mark.parametrize("dcn", [False, True])
def test_converter_every_tensor_lands(dcn, tmp_path):
    source = mmdet_vfnet_state_dict(**TINY_VFNET, dcn=dcn, head_dcn=dcn)
    path = tmp_path / "vfnet_tiny.pth"
    torch.save({"state_dict": source, "meta": {"dataset_meta": {"classes": ("a", "b", "c")}}}, path)
    model = convert_mmdet_vfnet(path, **TINY_OVERRIDES)
    assert_all_landed(model, source, expected_vfnet_target)
    config = model.config
    assert (config.head.kind, config.head.num_convs, config.head.conv_bias) == ("vfnet", 3, False)
    assert config.head.dcn_last_conv == config.backbone.dcn == dcn
    assert config.anchors.center_offset == 0.0 and config.conventions.relu_before_p7 is True
    assert config.assigner.pred_weight == 0.0 and config.loss.cls_loss == "vfl"
    assert config.class_names == ["a", "b", "c"]
    assert convert_mmdet(source, class_names=["a", "b", "c"], **TINY_OVERRIDES).config == config  # found by its keys
    with torch.no_grad():
        assert len(model([torch.rand(3, 64, 80)])) == 1


def test_converter_refuses_other_families_and_incomplete_heads():
    vfnet_source = mmdet_vfnet_state_dict(**TINY_VFNET)
    with pytest.raises(MMDetConversionError, match="vfnet head.*not atss"):
        convert_mmdet_atss(vfnet_source, **TINY_OVERRIDES)
    with pytest.raises(MMDetConversionError, match="atss head.*not vfnet"):
        convert_mmdet_vfnet(mmdet_atss_state_dict(**TINY), **TINY_OVERRIDES)
    del vfnet_source["bbox_head.scales_refine.3.scale"], vfnet_source["bbox_head.vfnet_cls_dconv.weight"]
    with pytest.raises(MMDetConversionError, match="vfnet_cls_dconv.weight.*scales_refine.3.scale"):
        convert_mmdet_vfnet(vfnet_source, **TINY_OVERRIDES)


@pytest.mark.parametrize(("name", "layers", "dcn"), [("vfnet_r50", (3, 4, 6, 3), False),
                                                    ("vfnet_r101_dcn", (3, 4, 23, 3), True)])
def test_constructors_build_what_the_converter_builds(name, layers, dcn):
    """`vfnet_*` (random weights) and `create("vfnet_*.mmdet_...")` (converted weights) are the same model."""
    converted, _ = convert_mmdet_state_dict(mmdet_vfnet_state_dict(layers=layers, dcn=dcn, head_dcn=dcn, device="meta"))
    with torch.device("meta"):
        built = da.create(name)
        reference = da.DynamicATSS(converted)
    assert built.config == dataclasses.replace(converted, class_names=None)
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


def test_indexed_mmdetection_weights_load_by_tag(tmp_path, file_server, torch_cache, scratch_registry):  # noqa: F811
    """`create("vfnet_r50.mmdet_coco_1x")`: the index entry (URL, hash) fetched, converted by `mmdet_vfnet`, cached;
    here from a loopback copy of the entry that serves a tiny checkpoint in mmdetection's VFNet layout."""
    source = mmdet_vfnet_state_dict(**TINY_VFNET, seed=3)
    source["bbox_head.vfnet_cls.bias"].fill_(-1.0)
    local = tmp_path / "vfnet_tiny.pth"
    torch.save({"state_dict": source, "meta": {"CLASSES": ("a", "b", "c")}}, local)
    data = local.read_bytes()
    prefix = hashlib.sha256(data).hexdigest()[:8]
    path = f"/mmdetection/v2.0/vfnet/vfnet_tiny_fpn_1x_coco/vfnet_tiny_fpn_1x_coco_2020-{prefix}.pth"
    file_server.files[path] = data
    real = registry.get_pretrained_cfg("vfnet_r50.mmdet_coco_1x")
    assert real.family == "vfnet" and real.url.endswith("-38db6f58.pth")
    registry.register_pretrained(dataclasses.replace(real, url=file_server.url(path), hash_prefix=prefix), default=True)
    assert "vfnet_r50.mmdet_coco_1x" in da.list_models("vfnet*", pretrained=True)
    model = da.create("vfnet_r50.mmdet_coco_1x", progress=False)
    reference = convert_mmdet_vfnet(local)
    assert model.config == reference.config and model.config.head.kind == "vfnet"
    x = torch.randn(1, 3, 128, 192)  # P7 1 x 2: GroupNorm(32) over 32 channels needs more than one value
    with torch.no_grad():
        for ours, theirs in zip(model.forward_raw(x), reference.forward_raw(x)):
            assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_convert_script_converts_vfnet_checkpoints(tmp_path, scratch_registry):  # noqa: F811
    """`dynamic-atss convert` (the manual route the URL loader names) takes any registered family; with `--tag`
    the checkpoint must hold the family of the index entry."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "hub" / "convert_mmdet.py"
    spec = importlib.util.spec_from_file_location("hub_script_convert_mmdet_vfnet", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    source = mmdet_vfnet_state_dict(**TINY_VFNET, seed=5)
    checkpoint = tmp_path / "vfnet_tiny.pth"
    torch.save({"state_dict": source, "meta": {"CLASSES": ("a", "b", "c")}}, checkpoint)
    assert script.main([str(checkpoint), "--out", str(tmp_path / "out")]) == 0
    loaded = da.create(f"local-dir:{tmp_path / 'out'}")
    assert loaded.config.head.kind == "vfnet" and loaded.pretrained_info["recipe"]["checkpoint"] == "vfnet_tiny.pth"
    assert_all_landed(loaded, source, expected_vfnet_target)
    # --tag of an ATSS entry (its hash pointed at this file): the family does not match
    atss = registry.get_pretrained_cfg("atss_r50.mmdet_coco_1x")
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:8]
    registry.register_pretrained(dataclasses.replace(atss, hash_prefix=digest), default=True)
    with pytest.raises(MMDetConversionError, match="vfnet head.*not atss"):
        script.main([str(checkpoint), "--tag", "atss_r50.mmdet_coco_1x", "--out", str(tmp_path / "out2")])


# ---------------------------------------------------------------------------------------------- real mmdetection
def _route_mmcv_deform_convs(monkeypatch):
    """mmcv-lite has no compiled deformable convolutions: compute mmcv's DeformConv2d / ModulatedDeformConv2d with
    torchvision's deform_conv2d (the same arithmetic: bilinear sampling, zeros outside, (dy, dx) offsets)."""
    import mmcv.ops.deform_conv as deform_conv
    import mmcv.ops.modulated_deform_conv as modulated_deform_conv

    def plain(x, offset, weight, stride, padding, dilation, groups, deform_groups, bias=False, im2col_step=32):
        assert groups == deform_groups == 1 and not bias
        return torchvision.ops.deform_conv2d(x, offset, weight, None, stride, padding, dilation)

    def modulated(x, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups):
        assert groups == deform_groups == 1
        return torchvision.ops.deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)

    monkeypatch.setattr(deform_conv, "deform_conv2d", plain)
    monkeypatch.setattr(modulated_deform_conv, "modulated_deform_conv2d", modulated)


def _mmdet_vfnet_config(dcn: bool):
    from mmengine.config import ConfigDict

    backbone = dict(type="ResNet", depth=50, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
                    norm_cfg=dict(type="BN", requires_grad=True), norm_eval=True, style="pytorch")
    if dcn:  # vfnet_r50-mdconv-c3-c5_fpn_ms-2x_coco
        backbone.update(dcn=dict(type="DCNv2", deform_groups=1, fallback_on_stride=False),
                        stage_with_dcn=(False, True, True, True))
    return ConfigDict(dict(  # vfnet_r50_fpn_1x_coco.py
        type="VFNet",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                               bgr_to_rgb=True, pad_size_divisor=32),
        backbone=backbone,
        neck=dict(type="FPN", in_channels=[256, 512, 1024, 2048], out_channels=256, start_level=1,
                  add_extra_convs="on_output", num_outs=5, relu_before_extra_convs=True),
        bbox_head=dict(
            type="VFNetHead", num_classes=80, in_channels=256, stacked_convs=3, feat_channels=256,
            strides=[8, 16, 32, 64, 128], center_sampling=False, dcn_on_last_conv=dcn, use_atss=True, use_vfl=True,
            loss_cls=dict(type="VarifocalLoss", use_sigmoid=True, alpha=0.75, gamma=2.0, iou_weighted=True,
                          loss_weight=1.0),
            loss_bbox=dict(type="GIoULoss", loss_weight=1.5),
            loss_bbox_refine=dict(type="GIoULoss", loss_weight=2.0)),
        train_cfg=dict(assigner=dict(type="ATSSAssigner", topk=9), allowed_border=-1, pos_weight=-1, debug=False),
        test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.6),
                      max_per_img=100),
    ))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("dcn", [False, True], ids=["r50", "r50-mdconv"])
def test_matches_real_mmdetection_vfnet(dcn, monkeypatch):
    """Gold standard: mmdetection's own VFNet (random weights) vs the converted model, raw outputs and detections."""
    MODELS = _import_mmdet()
    import mmdet.models.dense_heads.base_dense_head as base_dense_head

    _route_mmcv_deform_convs(monkeypatch)
    mm = MODELS.build(_mmdet_vfnet_config(dcn)).eval()
    source = mmdet_vfnet_state_dict(dcn=dcn, head_dcn=dcn, seed=7)
    source["bbox_head.vfnet_cls.bias"].fill_(-1.5)  # plenty of detections above 0.05
    missing, unexpected = mm.load_state_dict(source, strict=False)
    assert not unexpected and not [k for k in missing if not k.startswith("bbox_head.")]
    # VFNetHead's own _load_from_state_dict is a no-op; its submodules load normally: check they did.
    loaded = mm.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.items() if k.startswith("bbox_head."))
    model = convert_mmdet_vfnet({"state_dict": loaded, "meta": {}})

    height, width = 256, 320
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    x = ((image - mean) / std)[None]
    mm.bbox_head.train()  # in train mode mmdetection's VFNetHead also returns the initial boxes
    with torch.no_grad():
        theirs = mm.bbox_head(mm.extract_feat(x))
        ours = model.forward_raw(x)
    mm.bbox_head.eval()
    worst = {name: max(_relative(a, b) for a, b in zip(mine, ref))
             for name, mine, ref in zip(model.head.output_names, ours, theirs)}
    print(f"max relative difference of raw head outputs per output: {worst}")
    assert max(worst.values()) < 1e-4

    def batched_nms(boxes, scores, idxs, nms_cfg, class_agnostic=False):  # mmcv.ops needs compiled ops
        keep = torchvision.ops.batched_nms(boxes, scores, idxs, nms_cfg["iou_threshold"])
        return torch.cat([boxes[keep], scores[keep, None]], -1), keep

    monkeypatch.setattr(base_dense_head, "batched_nms", batched_nms)
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width), scale_factor=(1.0, 1.0))
    with torch.no_grad():
        expected = mm.bbox_head.predict_by_feat(theirs[0], theirs[2], batch_img_metas=[meta], rescale=False,
                                                with_nms=True)[0]
    model.config.min_size, model.config.max_size = height, width  # no resize: the same input as mmdetection's
    with torch.no_grad():
        detections = model([image])[0]
    print(f"detections: {len(expected.bboxes)}, max abs difference of boxes "
          f"{(detections['boxes'] - expected.bboxes).abs().max().item():.3g} px, of scores "
          f"{(detections['scores'] - expected.scores).abs().max().item():.3g}")
    assert len(detections["boxes"]) == len(expected.bboxes) > 10
    assert torch.equal(detections["labels"], expected.labels)
    assert torch.allclose(detections["scores"], expected.scores, atol=1e-4)
    assert torch.allclose(detections["boxes"], expected.bboxes, atol=1e-2)


# ---------------------------------------------------------------------------------------------- recipes, demo
def test_table_v_recipes_build_the_two_rows():
    from dynamic_atss.engine.config import load_config

    for recipe, pred_weight in (("vfnet_r50_1x", 0.0), ("dynamic_vfnet_r50_1x", 1.0)):  # shipped recipes, by name
        train = load_config(recipe)
        with torch.device("meta"):
            model = da.create(train.model, **train.model_overrides)
        assert model.config.head.kind == "vfnet" and model.config.assigner.pred_weight == pred_weight
        assert model.config.backbone.name == "resnet50" and train.optim.max_iters == 90_000
    from dynamic_atss.demo import HEADS

    model, _, _, plotted = HEADS["vfnet"]  # `demo --compare --head vfnet` draws Figure 4
    assert model == "dynamic_vfnet_r50" and "loss_box_init" in plotted


def test_loss_plot_shows_every_logged_part(tmp_path):
    from dynamic_atss.visualize import logged_loss_parts, plot_losses

    logs = {}
    for name in ("vfnet", "dynamic_vfnet"):
        logs[name] = tmp_path / f"{name}.jsonl"
        logs[name].write_text("\n".join(
            '{"step": %d, "loss": 3.0, "loss_cls": 1.0, "loss_box": 1.2, "loss_box_init": 0.8, "lr": 0.01}' % step
            for step in (10, 20)))
    assert logged_loss_parts(logs) == ("loss_box", "loss_box_init", "loss_cls")
    pytest.importorskip("matplotlib")
    assert plot_losses(logs, tmp_path / "losses.png") and (tmp_path / "losses.png").stat().st_size > 0
