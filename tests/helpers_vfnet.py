"""A synthetic mmdetection VFNet state dict and where each tensor must land, shared by the VFNet converter tests."""

from __future__ import annotations

import math
import re
from collections import OrderedDict

import torch

from helpers_mmdet import TINY, expected_target, mmdet_atss_state_dict


# ---------------------------------------------------------------------------------------------- converter
def mmdet_vfnet_state_dict(num_convs=3, head=256, num_classes=80, head_dcn=False, seed=0, device="cpu", **kwargs):
    """An mmdetection VFNet state dict (exact key names and shapes), filled with distinct random values (or empty
    on the "meta" device): helpers_mmdet's ResNet + FPN + towers, and `VFNetHead`'s own modules instead of
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
