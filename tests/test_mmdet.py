"""mmdetection ATSS -> DynamicATSS conversion (dynamic_atss.convert.mmdet).

State dicts are built (helpers_mmdet.py) from mmdetection's layout (ResNet + FPN(start_level=1, add_extra_convs="on_output")
+ ATSSHead key names and shapes) with distinct random values, so that every tensor can be traced to where it
must land. The optional last test compares with the real mmdetection model (skipped unless mmdet is installed).
"""

from __future__ import annotations

import math
import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from dynamic_atss.convert import (
    MMDetConversionError,
    convert_mmdet_atss,
    convert_mmdet_state_dict,
    infer_mmdet_backbone,
)
from dynamic_atss.hub import StateDictMismatchError
import dynamic_atss
from dynamic_atss.convert import convert_mmdet_atss
from dynamic_atss.convert import convert_mmdet_state_dict

from helpers_mmdet import TINY, mmdet_atss_state_dict, TINY_OVERRIDES, assert_all_landed, _import_mmdet, compare_with_mmdetection


def assert_mmdet_conventions(config) -> None:
    assert config.anchors.center_offset == 0.0
    assert config.conventions.relu_before_p7 is False
    assert config.conventions.score_sqrt is False
    assert config.head.conv_bias is False
    assert config.head.family_options().quality == "centerness"
    assert config.assigner.pred_weight == 0
    assert config.loss.cls_loss == "focal"


def test_tiny_checkpoint_file_every_tensor_lands(tmp_path):
    source = mmdet_atss_state_dict(**TINY)
    classes = ("cat", "dog", "bird")
    path = tmp_path / "atss_tiny.pth"
    torch.save({"state_dict": source, "meta": {"dataset_meta": {"classes": classes}, "epoch": 12}}, path)
    model = convert_mmdet_atss(path, **TINY_OVERRIDES)
    assert_all_landed(model, source)
    config = model.config
    assert_mmdet_conventions(config)
    assert config.class_names == list(classes)
    assert (config.num_classes, config.fpn_channels, config.head.channels, config.head.num_convs) == (3, 32, 32, 2)
    assert config.backbone.name == "resnet50" and config.backbone.dcn is False
    assert config.backbone.timm_kwargs["layers"] == [1, 1, 2, 1]
    assert not model.training
    with torch.no_grad():
        cls, box, quality = model.forward_raw(torch.randn(1, 3, 64, 96))
    assert [c.shape[1] for c in cls] == [3] * 5 and all(q.shape[1] == 1 for q in quality)


def test_resnet50_shapes_infer_resnet50_and_load():
    source = mmdet_atss_state_dict()  # the real atss_r50_fpn_1x_coco layout and shapes (~32M values)
    model = convert_mmdet_atss(source, backbone="resnet50", dcn=False)
    assert model.config.backbone.name == "resnet50" and model.config.backbone.timm_kwargs == {}
    assert model.config.num_classes == 80 and model.config.head.num_groups == 32
    assert_mmdet_conventions(model.config)
    assert_all_landed(model, source)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(layers=(3, 4, 6, 3)), "resnet50"),
        (dict(layers=(3, 4, 23, 3)), "resnet101"),
        (dict(layers=(3, 4, 23, 3), groups=32, base_width=8), "resnext101_32x8d"),
        (dict(layers=(3, 4, 23, 3), groups=64, base_width=4), "resnext101_64x4d"),
        (dict(layers=(2, 2, 2, 2), bottleneck=False), "resnet18"),
    ],
)
def test_backbone_inferred_from_keys(kwargs, name):
    source = mmdet_atss_state_dict(device="meta", **kwargs)
    config, info = infer_mmdet_backbone(source)
    assert config.name == name and config.timm_kwargs == {} and not config.dcn, info


def test_dcn_keys_convert():
    source = mmdet_atss_state_dict(**TINY, dcn=True, head_dcn=True, seed=3)
    model = convert_mmdet_atss(source, dcn=True, **TINY_OVERRIDES)
    assert model.config.backbone.dcn and model.config.head.dcn_last_conv
    assert_all_landed(model, source)
    state = model.state_dict()
    assert torch.equal(state["backbone.trunk.layer3.1.conv2.conv_offset.weight"],
                       source["backbone.layer3.1.conv2.conv_offset.weight"])
    assert torch.equal(state["head.box_tower.3.conv_offset.bias"], source["bbox_head.reg_convs.1.conv.conv_offset.bias"])
    with torch.no_grad():
        model.forward_raw(torch.randn(1, 3, 64, 64))
    with pytest.raises(MMDetConversionError, match="dcn=False was requested"):
        convert_mmdet_atss(source, dcn=False, **TINY_OVERRIDES)


def test_dcn_inferred_on_r101_layout():
    source = mmdet_atss_state_dict(layers=(3, 4, 23, 3), dcn=True, device="meta")
    config, _ = infer_mmdet_backbone(source)
    assert config.name == "resnet101" and config.dcn


def test_leftover_source_tensor_is_an_error():
    source = mmdet_atss_state_dict(**TINY)
    source["bbox_head.extra_branch.weight"] = torch.zeros(3)
    with pytest.raises(MMDetConversionError, match=r"not converted.*bbox_head\.extra_branch\.weight"):
        convert_mmdet_atss(source, **TINY_OVERRIDES)


def test_missing_source_tensors_are_errors():
    source = mmdet_atss_state_dict(**TINY)
    del source["neck.fpn_convs.4.conv.bias"]
    with pytest.raises(MMDetConversionError, match=r"neck\.fpn_convs\.4\.conv\.bias"):
        convert_mmdet_atss(source, **TINY_OVERRIDES)
    source = mmdet_atss_state_dict(**TINY)
    del source["backbone.layer2.0.bn2.running_var"]
    with pytest.raises(StateDictMismatchError, match=r"missing tensor.*backbone\.trunk\.layer2\.0\.bn2\.running_var"):
        convert_mmdet_atss(source, **TINY_OVERRIDES)
    source = mmdet_atss_state_dict(**TINY)
    del source["bbox_head.scales.4.scale"]
    with pytest.raises(MMDetConversionError, match=r"bbox_head\.scales\.4\.scale"):
        convert_mmdet_atss(source, **TINY_OVERRIDES)


def test_misshaped_source_tensor_is_an_error():
    source = mmdet_atss_state_dict(**TINY)
    source["bbox_head.cls_convs.1.gn.weight"] = torch.ones(16)
    with pytest.raises(StateDictMismatchError, match=r"head\.cls_tower\.4\.weight: checkpoint \(16,\), model \(32,\)"):
        convert_mmdet_atss(source, **TINY_OVERRIDES)


def test_requested_backbone_must_match_checkpoint():
    source = mmdet_atss_state_dict(device="meta")
    with pytest.raises(MMDetConversionError, match="'resnet50'"):
        convert_mmdet_state_dict(source, backbone="resnet101")


def test_other_num_classes_reinitialises_classifier():
    source = mmdet_atss_state_dict(**TINY)
    with pytest.warns(UserWarning, match="cls_logits"):
        model = convert_mmdet_atss(source, num_classes=5, class_names=list("abcde"), **TINY_OVERRIDES)
    assert model.config.num_classes == 5 and model.config.class_names == list("abcde")
    state = model.state_dict()
    assert state["head.cls_logits.weight"].shape == (5, 32, 3, 3)
    assert torch.allclose(state["head.cls_logits.bias"], torch.full((5,), -math.log(99.0)))
    assert torch.equal(state["head.bbox_pred.weight"], source["bbox_head.atss_reg.weight"])


def test_safetensors_file_and_saved_round_trip(tmp_path):
    source = mmdet_atss_state_dict(**TINY, seed=5)
    path = tmp_path / "atss_tiny.safetensors"
    save_file(dict(source), str(path))
    model = convert_mmdet_atss(path, **TINY_OVERRIDES)
    assert_all_landed(model, source)
    model.save_pretrained(tmp_path / "converted")
    from dynamic_atss import create

    reloaded = create(f"local-dir:{tmp_path / 'converted'}")
    assert reloaded.config == model.config
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(model.forward_raw(x), reloaded.forward_raw(x)):
            assert all(torch.equal(u, v) for u, v in zip(a, b))


class _NotATensor:  # pickled by reference: weights_only=True refuses it
    pass


def test_pickled_objects_are_refused_not_unpickled(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": mmdet_atss_state_dict(**TINY), "meta": {"hook": _NotATensor()}}, path)
    with pytest.raises(MMDetConversionError, match="weights_only=True"):
        convert_mmdet_atss(path, **TINY_OVERRIDES)


@pytest.mark.slow
def test_matches_real_mmdetection_atss_r50():
    """Gold standard: mmdetection's own ATSS R-50 (random weights) vs the converted model, raw and detections."""
    MODELS = _import_mmdet()
    from mmengine.config import ConfigDict

    config = ConfigDict(dict(
        type="ATSS",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                               bgr_to_rgb=True, pad_size_divisor=32),
        backbone=dict(type="ResNet", depth=50, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
                      norm_cfg=dict(type="BN", requires_grad=True), norm_eval=True, style="pytorch"),
        neck=dict(type="FPN", in_channels=[256, 512, 1024, 2048], out_channels=256, start_level=1,
                  add_extra_convs="on_output", num_outs=5),
        bbox_head=dict(
            type="ATSSHead", num_classes=80, in_channels=256, stacked_convs=4, feat_channels=256,
            anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=8, scales_per_octave=1,
                                  strides=[8, 16, 32, 64, 128]),
            bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
            loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
            loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
            loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0)),
        train_cfg=dict(assigner=dict(type="ATSSAssigner", topk=9), allowed_border=-1, pos_weight=-1, debug=False),
        # mmdetection's own test settings: pre-NMS top 1000 per level ranked by cls score, which the
        # converter reproduces with conventions.pre_nms_rank_by_joint = False.
        test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.6),
                      max_per_img=100),
    ))
    mm = MODELS.build(config).eval()
    source = mmdet_atss_state_dict(seed=7)
    source["bbox_head.atss_cls.bias"].fill_(-1.5)  # plenty of detections above 0.05
    mm.load_state_dict(source, strict=True)  # our synthetic layout is exactly mmdetection's
    model = convert_mmdet_atss({"state_dict": mm.state_dict(), "meta": {}})

    theirs, ours = compare_with_mmdetection(mm, model)
    diff = max((a - b).abs().max().item() for la, lb in zip(theirs, ours) for a, b in zip(la, lb))
    print(f"max abs difference of raw head outputs: {diff:.3g}")
    assert diff < 1e-3


def test_atss_constructors_build_what_the_converter_builds():
    for name, layers in (("atss_r50", (3, 4, 6, 3)), ("atss_r101", (3, 4, 23, 3))):
        converted, _ = convert_mmdet_state_dict(mmdet_atss_state_dict(layers=layers, device="meta"))
        built = dynamic_atss.create(name)
        assert built.config == dataclasses.replace(converted, class_names=None), name
        assert {k: v.shape for k, v in built.state_dict().items()} == \
            {k: v.shape for k, v in dynamic_atss.DynamicATSS(converted).state_dict().items()}
