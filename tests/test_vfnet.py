"""The VFNet family (detection/heads/vfnet.py): star offsets and DCN, the varifocal targets and losses, the
assignment, training and prediction. Its mmdetection converter is tested in test_mmdet_vfnet.py, its constructors
in test_zoo.py."""

from __future__ import annotations

import pytest
import torch
import torchvision

import dynamic_atss as da
from dynamic_atss.config import HeadConfig
from dynamic_atss.detection.assigner import AssignResult, paired_iou
from dynamic_atss.detection.heads import Targets
from dynamic_atss.detection.heads import vfnet as vfnet_module
from dynamic_atss.detection.heads.vfnet import distance_to_boxes, star_offsets
from dynamic_atss.ops.dcn import DeformConv2d


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
        losses, stats = model(batch_images, batch_targets, return_stats=True)
        assert set(losses) == {"loss_cls", "loss_box", "loss_box_init"}
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        missing = [n for n, p in model.head.named_parameters() if p.grad is None]
        assert not missing, missing
        if batch_targets is targets:
            assert float(stats["num_pos"]) > 0
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
def _raw_and_inputs(model, images, targets):
    """The raw outputs of a forward on `images`, and the `LossInputs` the head's `loss` derives from them."""
    batch, sizes, originals = model.preprocess(images)
    raw = model.forward_raw(batch)
    scales = [(h / oh, w / ow) for (h, w), (oh, ow) in zip(sizes.tolist(), originals)]
    inputs = model.head.loss_inputs(raw, Targets(*model._prepare_targets(targets, scales, batch.device)))
    return raw, inputs


def test_vfl_target_is_the_iou_of_the_refined_box(tiny_kwargs, monkeypatch):
    model = tiny_vfnet(tiny_kwargs, **{"head.assign_boxes": "initial"}).train()
    images, targets = scene()
    raw, inputs = _raw_and_inputs(model, images, targets)
    flat, anchors, gt = inputs.flat, inputs.anchors, inputs.targets
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
    model.head.loss(raw, gt, lambda *args: assignment)
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
    raw, inputs = _raw_and_inputs(model, images, targets)
    flat, anchors, gt = inputs.flat, inputs.anchors, inputs.targets
    gt_index = torch.full(flat["cls_logits"].shape[:2], -1, dtype=torch.int64)
    positives = torch.tensor([3, 40, 200])
    gt_index[0, positives] = torch.tensor([0, 1, 0])
    zeros = torch.zeros(gt_index.shape)
    losses, _ = model.head.loss(raw, gt, lambda *args: AssignResult(gt_index, zeros, zeros))
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
    raw, inputs = _raw_and_inputs(model, images, targets)
    flat, anchors = inputs.flat, inputs.anchors
    received = {}
    assigner = model.assigner

    def spy(anchors_, num_per_level_, gt_boxes, gt_mask, pred_boxes, *args):
        received["pred_boxes"] = pred_boxes
        return assigner(anchors_, num_per_level_, gt_boxes, gt_mask, pred_boxes, *args)

    losses, stats = model.head.loss(raw, inputs.targets, spy, 0.0)
    name = "box_init" if assign_boxes == "initial" else "box_refine"
    other = "box_refine" if assign_boxes == "initial" else "box_init"
    assert not received["pred_boxes"].requires_grad
    torch.testing.assert_close(received["pred_boxes"], distance_to_boxes(flat[name].detach(), anchors))
    assert not torch.allclose(received["pred_boxes"], distance_to_boxes(flat[other].detach(), anchors))
    assert float(stats["num_pos"]) > 0 and all(torch.isfinite(v) for v in losses.values())


def test_default_assigner_boxes_are_the_refined_ones():
    assert HeadConfig(kind="vfnet").family_options().assign_boxes == "refined"
    with torch.device("meta"):
        assert da.create("dynamic_vfnet_r50").head.assign_boxes == "refined"


def test_pred_weight_zero_is_vfnet_own_atss_assignment(tiny_kwargs):
    """`vfnet_r50` (pred_weight 0) assigns by anchor IoUs only: other predicted boxes give the same positives;
    `dynamic_vfnet_r50` (pred_weight 1) depends on them."""
    images, targets = scene()
    for name, same in (("vfnet_r50", True), ("dynamic_vfnet_r50", False)):
        torch.manual_seed(0)
        model = tiny_vfnet(tiny_kwargs, name=name).train()
        _, inputs = _raw_and_inputs(model, images, targets)
        anchors, num_per_level, shapes, gt = inputs.anchors, inputs.num_per_level, inputs.level_shapes, inputs.targets
        boxes = model.head.assignment_boxes(inputs.flat, anchors, inputs.strides)
        ours = model.assigner(anchors, num_per_level, gt.boxes, gt.mask, boxes, 0.0, shapes)
        other = model.assigner(anchors, num_per_level, gt.boxes, gt.mask, boxes.flip(1), 0.0, shapes)
        assert torch.equal(ours.gt_index, other.gt_index) == same, name


# ---------------------------------------------------------------------------------------------- contract: hub, fuse
def test_save_pretrained_round_trip(tiny_kwargs, tmp_path):
    model = tiny_vfnet(tiny_kwargs, **{"head.assign_boxes": "initial", "assigner.pred_weight": "up"}).eval()
    model.save_pretrained(tmp_path / "vfnet")
    loaded = da.create(f"local-dir:{tmp_path / 'vfnet'}").eval()
    assert loaded.config == model.config
    assert loaded.config.head.kind == "vfnet" and loaded.config.head.family_options().assign_boxes == "initial"
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


# ---------------------------------------------------------------------------------------------- recipes
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
