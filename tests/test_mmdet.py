"""mmdetection ATSS -> DynamicATSS conversion (dynamic_atss.convert).

State dicts are built here from mmdetection's layout (ResNet + FPN(start_level=1, add_extra_convs="on_output")
+ ATSSHead key names and shapes) with distinct random values, so that every tensor can be traced to where it
must land. The optional last test compares with the real mmdetection model (skipped unless mmdet is installed).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict

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
from hub_server import hub_server  # noqa: F401  (pytest fixture)

TINY = dict(layers=(1, 1, 2, 1), planes=(8, 16, 32, 64), stem=64, fpn=32, head=32, num_convs=2, num_classes=3)
TINY_OVERRIDES = {"head.num_groups": 8, "min_size": 64, "max_size": 96}


def mmdet_atss_state_dict(
    layers=(3, 4, 6, 3), planes=(64, 128, 256, 512), stem=64, bottleneck=True, groups=1, base_width=64,
    fpn=256, head=256, num_convs=4, num_classes=80, dcn=False, head_dcn=False, device="cpu", seed=0,
) -> OrderedDict[str, torch.Tensor]:
    """An mmdetection ATSS state dict (exact key names and shapes), filled with distinct random values."""
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    def bn(prefix: str, channels: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["backbone.conv1.weight"] = (stem, 3, 7, 7)
    bn("backbone.bn1", stem)
    inplanes, expansion = stem, (4 if bottleneck else 1)
    out_channels = []
    for stage, (blocks, plane) in enumerate(zip(layers, planes), start=1):
        for i in range(blocks):
            p = f"backbone.layer{stage}.{i}"
            stride = 2 if (i == 0 and stage > 1) else 1
            if bottleneck:
                width = int(plane * (base_width / 64)) * groups
                shapes[f"{p}.conv1.weight"] = (width, inplanes, 1, 1)
                bn(f"{p}.bn1", width)
                shapes[f"{p}.conv2.weight"] = (width, width // groups, 3, 3)
                if dcn and stage > 1:
                    shapes[f"{p}.conv2.conv_offset.weight"] = (27, width, 3, 3)
                    shapes[f"{p}.conv2.conv_offset.bias"] = (27,)
                bn(f"{p}.bn2", width)
                shapes[f"{p}.conv3.weight"] = (plane * 4, width, 1, 1)
                bn(f"{p}.bn3", plane * 4)
            else:
                shapes[f"{p}.conv1.weight"] = (plane, inplanes, 3, 3)
                bn(f"{p}.bn1", plane)
                shapes[f"{p}.conv2.weight"] = (plane, plane, 3, 3)
                bn(f"{p}.bn2", plane)
            if i == 0 and (stride != 1 or inplanes != plane * expansion):
                shapes[f"{p}.downsample.0.weight"] = (plane * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", plane * expansion)
            inplanes = plane * expansion
        out_channels.append(inplanes)
    for i, channels in enumerate(out_channels[1:]):
        shapes[f"neck.lateral_convs.{i}.conv.weight"] = (fpn, channels, 1, 1)
        shapes[f"neck.lateral_convs.{i}.conv.bias"] = (fpn,)
    for i in range(5):
        shapes[f"neck.fpn_convs.{i}.conv.weight"] = (fpn, fpn, 3, 3)
        shapes[f"neck.fpn_convs.{i}.conv.bias"] = (fpn,)
    for tower in ("cls_convs", "reg_convs"):
        for i in range(num_convs):
            shapes[f"bbox_head.{tower}.{i}.conv.weight"] = (head, fpn if i == 0 else head, 3, 3)
            if head_dcn and i == num_convs - 1:
                shapes[f"bbox_head.{tower}.{i}.conv.conv_offset.weight"] = (27, head, 3, 3)
                shapes[f"bbox_head.{tower}.{i}.conv.conv_offset.bias"] = (27,)
            shapes[f"bbox_head.{tower}.{i}.gn.weight"] = (head,)
            shapes[f"bbox_head.{tower}.{i}.gn.bias"] = (head,)
    for name, out in (("atss_cls", num_classes), ("atss_reg", 4), ("atss_centerness", 1)):
        shapes[f"bbox_head.{name}.weight"] = (out, head, 3, 3)
        shapes[f"bbox_head.{name}.bias"] = (out,)
    for i in range(5):
        shapes[f"bbox_head.scales.{i}.scale"] = ()
    if device == "meta":
        return OrderedDict((k, torch.empty(s, device="meta")) for k, s in shapes.items())
    generator = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1234, dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) * 0.5 + 0.75
        elif len(shape) == 4:
            state[key] = torch.randn(shape, generator=generator) * math.sqrt(1.0 / math.prod(shape[1:]))
        elif key.endswith("scale"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = 1 + 0.1 * torch.randn(shape, generator=generator) if key.endswith("weight") \
                else 0.1 * torch.randn(shape, generator=generator)
    return state


def expected_target(key: str) -> str | None:
    """Where an mmdetection key must land, written independently of the converter (None: dropped)."""
    if key.endswith("num_batches_tracked"):
        return None
    if key.startswith("backbone."):
        return "backbone.trunk." + key[len("backbone."):]
    if m := re.fullmatch(r"neck\.lateral_convs\.(\d)\.conv\.(weight|bias)", key):
        return f"fpn.fpn.inner_blocks.{m[1]}.0.{m[2]}"
    if m := re.fullmatch(r"neck\.fpn_convs\.(\d)\.conv\.(weight|bias)", key):
        level = int(m[1])
        return f"fpn.fpn.layer_blocks.{level}.0.{m[2]}" if level < 3 else f"fpn.fpn.extra_blocks.p{level + 3}.{m[2]}"
    if m := re.fullmatch(r"bbox_head\.(cls|reg)_convs\.(\d+)\.(conv|gn)\.(.+)", key):
        tower = "cls_tower" if m[1] == "cls" else "box_tower"
        index = 3 * int(m[2]) + (0 if m[3] == "conv" else 1)
        return f"head.{tower}.{index}.{m[4]}"
    if m := re.fullmatch(r"bbox_head\.atss_(cls|reg|centerness)\.(weight|bias)", key):
        return "head." + {"cls": "cls_logits", "reg": "bbox_pred", "centerness": "quality"}[m[1]] + "." + m[2]
    if m := re.fullmatch(r"bbox_head\.scales\.(\d)\.scale", key):
        return f"head.scales.{m[1]}.scale"
    raise AssertionError(f"unexpected key in the test state dict: {key}")


def assert_all_landed(model: torch.nn.Module, source: dict[str, torch.Tensor], expected=expected_target) -> None:
    """Every source tensor is where `expected(key)` says (None: dropped), and every model tensor was filled."""
    target = model.state_dict()
    filled = set()
    for key, value in source.items():
        dst = expected(key)
        if dst is None:
            continue
        assert dst in target, f"{key} -> {dst} missing from the model"
        assert torch.equal(target[dst], value.to(target[dst].dtype)), f"{key} did not land in {dst}"
        filled.add(dst)
    assert filled == set(target), f"model tensors not filled from the checkpoint: {sorted(set(target) - filled)}"


def assert_mmdet_conventions(config) -> None:
    assert config.anchors.center_offset == 0.0
    assert config.conventions.relu_before_p7 is False
    assert config.conventions.score_sqrt is False
    assert config.head.conv_bias is False
    assert config.head.quality == "centerness"
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


# ---------------------------------------------------------------------------------------------- real mmdetection
def _import_mmdet():
    """mmdetection 3.3 on mmcv-lite (no compiled ops): stub mmcv._ext before importing the models."""
    pytest.importorskip("mmdet")
    import importlib.machinery
    import sys
    import types

    if "mmcv._ext" not in sys.modules:
        ext = types.ModuleType("mmcv._ext")
        ext.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)
        ext.__file__ = "mmcv/_ext.stub"

        def missing(*args, **kwargs):
            raise RuntimeError("mmcv._ext is stubbed in this test")

        def module_getattr(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return missing

        ext.__getattr__ = module_getattr
        sys.modules["mmcv._ext"] = ext
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    return MODELS


def compare_with_mmdetection(mm, model, height: int = 256, width: int = 320):
    """One random image through mmdetection's model `mm` and the converted `model`: asserts that the detections
    (mmdetection's own `predict_by_feat`, with torchvision's NMS for mmcv's compiled one) are the same, and returns
    both raw head outputs (theirs, ours) for the caller's tolerance."""
    import mmdet.models.dense_heads.base_dense_head as base_dense_head
    import torchvision

    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    x = ((image - mean) / std)[None]
    with torch.no_grad():
        theirs = mm.bbox_head(mm.extract_feat(x))
        ours = model.forward_raw(x)

    def batched_nms(boxes, scores, idxs, nms_cfg, class_agnostic=False):  # mmcv.ops needs compiled ops
        keep = torchvision.ops.batched_nms(boxes, scores, idxs, nms_cfg["iou_threshold"])
        return torch.cat([boxes[keep], scores[keep, None]], -1), keep

    original = base_dense_head.batched_nms
    base_dense_head.batched_nms = batched_nms
    try:
        meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width), scale_factor=(1.0, 1.0))
        with torch.no_grad():
            expected = mm.bbox_head.predict_by_feat(*theirs, batch_img_metas=[meta], rescale=False, with_nms=True)[0]
    finally:
        base_dense_head.batched_nms = original
    model.config.min_size, model.config.max_size = height, width  # no resize: the same input as mmdetection's
    with torch.no_grad():
        detections = model([image])[0]
    assert len(detections["boxes"]) == len(expected.bboxes) > 10
    print(f"detections: {len(expected.bboxes)}, max abs difference of boxes "
          f"{(detections['boxes'] - expected.bboxes).abs().max().item():.3g} px, of scores "
          f"{(detections['scores'] - expected.scores).abs().max().item():.3g}")
    assert torch.equal(detections["labels"], expected.labels)
    assert torch.allclose(detections["scores"], expected.scores, atol=1e-4)
    assert torch.allclose(detections["boxes"], expected.bboxes, atol=1e-2)
    return theirs, ours


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


def test_convert_script_writes_and_pushes(tmp_path, hub_server):  # noqa: F811
    import importlib.util
    from pathlib import Path

    from dynamic_atss import create

    source = mmdet_atss_state_dict(**TINY, seed=9)
    checkpoint = tmp_path / "atss_tiny_coco.pth"
    torch.save({"state_dict": source, "meta": {"CLASSES": ("a", "b", "c")}}, checkpoint)  # mmdetection 2.x meta
    path = Path(__file__).resolve().parents[1] / "hub" / "convert_mmdet.py"
    spec = importlib.util.spec_from_file_location("hub_script_convert_mmdet", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "out"
    assert script.main([str(checkpoint), "--out", str(out), "--push", "org/converted", "--endpoint",
                        hub_server.endpoint, "--token", "t", "--metrics", '{"AP": 12.5}']) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                     "preprocessor_config.json"]
    card = (out / "README.md").read_text()
    assert "mmdetection" in card and "hf-hub:org/converted" in card
    loaded = create("hf-hub:org/converted", endpoint=hub_server.endpoint, cache_dir=tmp_path / "cache")
    assert loaded.config.class_names == ["a", "b", "c"] and loaded.config.head.num_groups == 32
    assert loaded.pretrained_info["recipe"]["checkpoint"] == "atss_tiny_coco.pth"
    assert_all_landed(loaded, source)
