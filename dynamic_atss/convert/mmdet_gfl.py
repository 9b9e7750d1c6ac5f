"""mmdetection GFL checkpoints (and the GFocalV2 authors' GFLV2 ones) -> the "gfl" head family.

    from dynamic_atss.convert import convert_mmdet_gfl
    model = convert_mmdet_gfl("gfl_r50_fpn_1x_coco_20200629_121244-25944287.pth")

Covers mmdetection's `GFLHead` configs (`gfl_r50_fpn_1x_coco`, `gfl_r50_fpn_ms-2x_coco`, `gfl_r101_fpn_ms-2x_coco`,
`gfl_r101-dconv-c3-c5_fpn_ms-2x_coco`, `gfl_x101-32x4d_fpn_ms-2x_coco`, `gfl_x101-32x4d-dconv-c4-c5_fpn_ms-2x_coco`)
and the GFocalV2 repository's `GFocalHead` (GFLV2: the same keys plus the DGQP `reg_conf`). The backbone and neck
are mapped by `convert/mmdet.py` (shared: the DCN stages become `backbone.dcn_stages`, e.g. (3, 4) for
dconv-c4-c5, and DCNv1 layers load exactly into this library's DCNv2 layers, see there).

| mmdetection                                   | dynamic-atss                                        |
|-----------------------------------------------|-----------------------------------------------------|
| `bbox_head.cls_convs.{i}.conv.weight`, `.gn.*` | `head.cls_tower.{3i}.weight`, `head.cls_tower.{3i+1}.*` |
| `bbox_head.reg_convs.*`                       | `head.box_tower.*` (same pattern)                   |
| `bbox_head.gfl_cls.*` / `bbox_head.gfl_reg.*` | `head.cls_logits.*` / `head.bbox_pred.*`            |
| `bbox_head.scales.{i}.scale`                  | `head.scales.{i}.scale`                             |
| `bbox_head.integral.project` (0..reg_max)     | dropped (checked; `head.bin_values` is rebuilt)     |
| `bbox_head.reg_conf.{0,2}.*` (GFLV2 DGQP)     | `head.dgqp.{0,2}.*`                                 |

Conventions, as mmdetection's GFL configs set them: anchors centred at (x, y) * stride (`center_offset=0.0`), no
ReLU before P7 (`relu_before_extra_convs=False`), no tower conv bias (GN follows), GN(32), reg_max from the
`gfl_reg` width, DGQP top-k / hidden width from the `reg_conf` shapes (the mean is always appended, GFocalV2's
`add_mean=True`), score = sigmoid(cls) (GFLV2: times the DGQP sigmoid), test: score > 0.05, top 1000 per level,
NMS 0.6, 100 per image. The checkpoints are plain GFL / GFLV2, so `assigner.pred_weight = 0`; set it to 1 to
fine-tune with combined IoUs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

from ..detection.heads import FAMILIES
from .mmdet import MMDetConversionError, convert_gn_towers, convert_mmdet, register_mmdet_head

if TYPE_CHECKING:  # pragma: no cover
    from ..models.detector import DynamicATSS

_NUM_LEVELS = 5
_DGQP = "bbox_head.reg_conf"


@register_mmdet_head("bbox_head.gfl_reg.weight", "gfl")
def _convert_gfl_head(remaining: dict[str, Tensor], take: Callable[[str, "str | None"], Tensor]) -> dict[str, Any]:
    """mmdetection `GFLHead` / GFocalV2 `GFocalHead` -> the "gfl" family (GFLV2 when `reg_conf` is present)."""
    towers = convert_gn_towers(remaining, take, "GFLHead")
    dgqp = f"{_DGQP}.0.weight" in remaining
    required = [f"bbox_head.{name}.{kind}" for name in ("gfl_cls", "gfl_reg") for kind in ("weight", "bias")]
    required += [f"bbox_head.scales.{i}.scale" for i in range(_NUM_LEVELS)]
    if dgqp:
        required += [f"{_DGQP}.{i}.{kind}" for i in (0, 2) for kind in ("weight", "bias")]
    missing = [key for key in required if key not in remaining]
    if missing:
        raise MMDetConversionError(f"missing tensor(s) of an mmdetection GFLHead: {', '.join(missing)}")
    reg_channels = remaining["bbox_head.gfl_reg.weight"].shape[0]
    if reg_channels % 4 or reg_channels // 4 < 2:
        raise MMDetConversionError(
            f"bbox_head.gfl_reg has {reg_channels} output channels; GFL predicts 4 * (reg_max + 1) (one anchor per "
            "location, reg_max >= 1)"
        )
    reg_max = reg_channels // 4 - 1
    project = remaining.get("bbox_head.integral.project")
    if project is not None:
        take("bbox_head.integral.project", None)
        if not torch.equal(project.float(), torch.arange(reg_max + 1, dtype=torch.float32)):
            raise MMDetConversionError(
                f"bbox_head.integral.project is {project.tolist()}, not 0..{reg_max}; this library integrates over "
                "the bin values 0..reg_max (GFL's Integral)"
            )
    num_classes = take("bbox_head.gfl_cls.weight", "head.cls_logits.weight").shape[0]
    take("bbox_head.gfl_cls.bias", "head.cls_logits.bias")
    for kind in ("weight", "bias"):
        take(f"bbox_head.gfl_reg.{kind}", f"head.bbox_pred.{kind}")
    for i in range(_NUM_LEVELS):
        take(f"bbox_head.scales.{i}.scale", f"head.scales.{i}.scale")
    dgqp_fields: dict[str, Any] = {"dgqp": dgqp}
    if dgqp:
        first = take(f"{_DGQP}.0.weight", "head.dgqp.0.weight")
        for key, target in ((f"{_DGQP}.0.bias", "head.dgqp.0.bias"), (f"{_DGQP}.2.weight", "head.dgqp.2.weight"),
                            (f"{_DGQP}.2.bias", "head.dgqp.2.bias")):
            take(key, target)
        if first.shape[1] % 4 or first.shape[1] // 4 < 2:
            raise MMDetConversionError(
                f"{_DGQP}.0.weight takes {first.shape[1]} channels; GFLV2's DGQP takes 4 * (topk + 1) (add_mean=True)"
            )
        dgqp_fields.update(dgqp_topk=first.shape[1] // 4 - 1, dgqp_hidden=first.shape[0])
    return dict(num_classes=num_classes, **FAMILIES["gfl"].mmdet_config(reg_max=reg_max, **towers, **dgqp_fields))


def convert_mmdet_gfl(state_dict_or_path: dict[str, Any] | str | os.PathLike, **kwargs: Any) -> DynamicATSS:
    """`convert_mmdet` for mmdetection GFL (and GFocalV2 GFLV2) checkpoints (refuses other heads)."""
    return convert_mmdet(state_dict_or_path, expected_family="gfl", **kwargs)
