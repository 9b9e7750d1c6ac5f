"""Tests of dynamic_atss.convert.mmdet_vfnet."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch
import torchvision

import dynamic_atss as da
from dynamic_atss import registry
from dynamic_atss.convert import MMDetConversionError, convert_mmdet, convert_mmdet_atss, convert_mmdet_state_dict
from dynamic_atss.convert import convert_mmdet_vfnet
from dynamic_atss.detection.heads.vfnet import VFNetHead

from hub_server import file_server  # noqa: F401  (pytest fixture)
from helpers_mmdet import (
    TINY, TINY_OVERRIDES, _import_mmdet, assert_all_landed, assert_same_detections_up_to_ties, mmdet_atss_state_dict,
)
from helpers_vfnet import TINY_VFNET, expected_vfnet_target, mmdet_vfnet_state_dict


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
    assert_same_detections_up_to_ties(detections, expected)
