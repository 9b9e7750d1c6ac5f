"""mmdetection VFNet checkpoints -> the "vfnet" head family (detection/heads/vfnet.py).

    from dynamic_atss.convert import convert_mmdet_vfnet
    model = convert_mmdet_vfnet("vfnet_r50_fpn_1x_coco_20201027-38db6f58.pth")

Covers mmdetection's `VFNet` = ResNet / ResNeXt (optionally DCNv2 in stages 2-4, `mdconv-c3-c5`) + FPN
(`start_level=1, add_extra_convs="on_output", num_outs=5, relu_before_extra_convs=True`) + `VFNetHead`
(`use_atss=True`, `bbox_norm_type="reg_denom"`, `dcn_on_last_conv` for the DCN models): `vfnet_r50_fpn_1x_coco`,
`vfnet_r50_fpn_ms-2x_coco`, `vfnet_r101_*`, `vfnet_*-mdconv-c3-c5_fpn_ms-2x_coco`, `vfnet_x101-{32x4d,64x4d}*`.
The backbone and neck are mapped by `convert/mmdet.py` (shared with every family); the head:

| mmdetection `bbox_head.`                      | dynamic-atss `head.`                                  |
|-----------------------------------------------|-------------------------------------------------------|
| `cls_convs.{i}.conv.*` / `.gn.*`              | `cls_tower.{3i}.*` / `cls_tower.{3i+1}.*`             |
| `reg_convs.{i}.conv.*` / `.gn.*`              | `box_tower.{3i}.*` / `box_tower.{3i+1}.*`             |
| `vfnet_reg_conv.conv.*` / `.gn.*`             | `box_init_tower.0.*` / `box_init_tower.1.*`           |
| `vfnet_reg.*`, `scales.{l}.scale`             | `bbox_pred.*`, `scales.{l}.scale` (initial box)       |
| `vfnet_reg_refine_dconv.weight`               | `box_refine_dcn.weight` (star-shaped DCN, no bias)    |
| `vfnet_reg_refine.*`, `scales_refine.{l}.scale` | `bbox_refine.*`, `scales_refine.{l}.scale`          |
| `vfnet_cls_dconv.weight`                      | `cls_dcn.weight` (star-shaped DCN, no bias)           |
| `vfnet_cls.*`                                 | `cls_logits.*`                                        |

Conventions (mmdetection's VFNet configs; not inferable from a state dict, so assumed): anchors and points at
`(x, y) * stride` (`anchors.center_offset = 0.0`), P7 = conv(relu(P6)) (`conventions.relu_before_p7 = True`),
`reg_denoms` 64 ... 1024 (= 8 x stride, our anchor side), GroupNorm with 32 groups, star-offset gradient 0.1 (a
training-only setting). Head convs drop their bias before GN when the checkpoint has none (`head.conv_bias`).
Training settings of the converted config are VFNet's own: anchor IoUs only (`assigner.pred_weight = 0`), VFL,
GIoU 1.5 (initial) / 2.0 (refined); set `assigner.pred_weight = 1.0` to fine-tune it with the combined IoUs.
Test settings match mmdetection's (score > 0.05, top 1000 per level by IACS, NMS 0.6, 100 per image).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

from torch import Tensor

from ..detection.heads import FAMILIES
from .mmdet import _NUM_LEVELS, MMDetConversionError, convert_gn_towers, convert_mmdet, register_mmdet_head

if TYPE_CHECKING:  # pragma: no cover
    from ..models.detector import DynamicATSS

__all__ = ["convert_mmdet_vfnet"]

# mmdetection module -> ours, for the modules with a weight and a bias.
_CONVS = (("vfnet_reg", "bbox_pred"), ("vfnet_reg_refine", "bbox_refine"), ("vfnet_cls", "cls_logits"))
# The star-shaped deformable convs (mmcv DeformConv2d: weight only).
_DCNS = (("vfnet_reg_refine_dconv", "box_refine_dcn"), ("vfnet_cls_dconv", "cls_dcn"))


@register_mmdet_head("bbox_head.vfnet_cls.weight", "vfnet")
def _convert_vfnet_head(remaining: dict[str, Tensor], take: Callable[[str, "str | None"], Tensor]) -> dict[str, Any]:
    """mmdetection `VFNetHead` -> the "vfnet" family (VFNet itself: anchor IoUs only, VFL, two GIoU losses)."""
    towers = convert_gn_towers(remaining, take, "VFNetHead")
    required = [f"bbox_head.{name}.{kind}" for name, _ in _CONVS for kind in ("weight", "bias")]
    required += [f"bbox_head.{name}.weight" for name, _ in _DCNS]
    required += [f"bbox_head.vfnet_reg_conv.{part}" for part in ("conv.weight", "gn.weight", "gn.bias")]
    required += [f"bbox_head.{scales}.{i}.scale" for scales in ("scales", "scales_refine") for i in range(_NUM_LEVELS)]
    missing = [key for key in required if key not in remaining]
    if missing:
        raise MMDetConversionError(f"missing tensor(s) of an mmdetection VFNetHead: {', '.join(missing)}")
    dcn_bias = [f"bbox_head.{name}.bias" for name, _ in _DCNS if f"bbox_head.{name}.bias" in remaining]
    if dcn_bias:
        raise MMDetConversionError(f"bbox_head: star-shaped deformable convs with a bias ({dcn_bias}); mmcv's have none")

    for part, index in (("conv.weight", 0), ("conv.bias", 0), ("gn.weight", 1), ("gn.bias", 1)):
        key = f"bbox_head.vfnet_reg_conv.{part}"
        if key in remaining:  # the conv's bias only where the towers have one (`head.conv_bias`)
            take(key, f"head.box_init_tower.{index}.{part.split('.')[1]}")
    outputs = {}
    for name, target in _CONVS:
        for kind in ("weight", "bias"):
            outputs[f"{target}.{kind}"] = take(f"bbox_head.{name}.{kind}", f"head.{target}.{kind}")
    for name, target in _DCNS:
        outputs[f"{target}.weight"] = take(f"bbox_head.{name}.weight", f"head.{target}.weight")
    for name in ("bbox_pred", "bbox_refine"):
        if outputs[f"{name}.weight"].shape[0] != 4:
            raise MMDetConversionError(f"bbox_head: {name} predicts {outputs[f'{name}.weight'].shape[0]} values, not 4")
    for scales in ("scales", "scales_refine"):
        for i in range(_NUM_LEVELS):
            take(f"bbox_head.{scales}.{i}.scale", f"head.{scales}.{i}.scale")
    return dict(num_classes=outputs["cls_logits.weight"].shape[0], **FAMILIES["vfnet"].mmdet_config(**towers))


def convert_mmdet_vfnet(state_dict_or_path: dict[str, Any] | str | os.PathLike, **kwargs: Any) -> DynamicATSS:
    """`convert_mmdet` for mmdetection VFNet checkpoints (refuses other heads)."""
    return convert_mmdet(state_dict_or_path, expected_family="vfnet", **kwargs)
