"""mmdetection ATSS state dicts (exact key names and shapes, distinct random values), where each tensor must
land, and the comparison with a real mmdetection model; shared by the converter, URL-weights and family tests."""

from __future__ import annotations

import math
import re
from collections import OrderedDict

import pytest
import torch


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
    assert_same_detections_up_to_ties(detections, expected)
    return theirs, ours


def assert_same_detections_up_to_ties(detections: dict, expected, score_atol: float = 1e-4, box_atol: float = 1e-2):
    """Our detections equal mmdetection's (`InstanceData` with bboxes / scores / labels) one to one: same count, and
    each of theirs has its own match in ours with the same label, a score within `score_atol` and every box
    coordinate within `box_atol` px. Both lists are sorted by score; two detections whose scores differ by less
    than float32 rounding (random weights give many near-ties) may come in either order, so the match is by
    content, not by position."""
    assert len(detections["boxes"]) == len(expected.bboxes)
    unmatched = list(range(len(detections["boxes"])))
    for index in range(len(expected.bboxes)):
        label, score, box = expected.labels[index], expected.scores[index], expected.bboxes[index]
        match = next((j for j in unmatched if detections["labels"][j] == label
                      and abs(float(detections["scores"][j] - score)) <= score_atol
                      and float((detections["boxes"][j] - box).abs().max()) <= box_atol), None)
        assert match is not None, (f"mmdetection's detection {index} (label {int(label)}, score {float(score):.6f}, "
                                   f"box {box.tolist()}) has no match in ours")
        unmatched.remove(match)
