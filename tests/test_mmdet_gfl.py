"""Tests of dynamic_atss.convert.mmdet_gfl."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
import torchvision

import dynamic_atss as da
from dynamic_atss.convert import (
    MMDetConversionError, convert_mmdet, convert_mmdet_atss, convert_mmdet_gfl, convert_mmdet_state_dict,
)
from dynamic_atss.ops.dcn import ModulatedDeformConv2d

from hub_server import file_server  # noqa: F401  (pytest fixture)
from helpers_url import point_tag_at
from helpers_mmdet import TINY, TINY_OVERRIDES, _import_mmdet, assert_all_landed, compare_with_mmdetection, expected_target, mmdet_atss_state_dict
from helpers_gfl import mmdet_gfl_state_dict


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
    assert config.head.kind == "gfl" and config.head.family_options().reg_max == 16 and config.head.family_options().dgqp == dgqp
    assert config.head.conv_bias is False and config.anchors.center_offset == 0.0
    assert config.conventions.relu_before_p7 is False and config.assigner.pred_weight == 0.0
    assert config.loss.cls_loss == "qfl" and config.class_names == ["a", "b", "c"]
    if dgqp:
        assert (config.head.family_options().dgqp_topk, config.head.family_options().dgqp_hidden) == (4, 16)
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
