"""The registered constructors. Each only names a variant; `_build` does the work (timm's pattern)."""

from __future__ import annotations

from typing import Any

from ..config import BackboneConfig, HeadConfig, ModelConfig, apply_overrides
from ..registry import get_pretrained_cfg, register_model
from .detector import DynamicATSS


def _atss_config(backbone: str, dcn: bool) -> ModelConfig:
    # The published Dynamic ATSS models: combined IoUs + QFL + IoU branch (paper, Tables II and IV).
    return ModelConfig(
        backbone=BackboneConfig(name=backbone, dcn=dcn),
        head=HeadConfig(kind="atss", dcn_last_conv=dcn, quality="iou"),
    )


def _build(
    variant: str, base_config: ModelConfig, pretrained: bool = False, pretrained_tag: str | None = None,
    /, **kwargs: Any,
) -> DynamicATSS:
    """The one builder behind every constructor: `base_config` with dotted `kwargs` overrides, or the
    variant's published weights when `pretrained`."""
    if pretrained:
        cfg = get_pretrained_cfg(f"{variant}.{pretrained_tag}" if pretrained_tag else variant)
        if not cfg.hf_hub_id:
            raise RuntimeError(
                f"{cfg.name} has no published weights yet. Train them with "
                f"`accelerate launch train.py --config configs/{cfg.recipe}.yaml`, or load weights you have with "
                "dynamic_atss.create('local-dir:/path/to/model') or create('hf-hub:org/name')"
            )
        from ..hub import load_pretrained  # noqa: PLC0415

        kwargs.pop("backbone_pretrained", None)  # the checkpoint holds the backbone too
        revision = f"@{cfg.revision}" if cfg.revision else ""
        return load_pretrained(f"hf-hub:{cfg.hf_hub_id}{revision}", **kwargs)
    backbone_pretrained = kwargs.pop("backbone_pretrained", False)
    config = apply_overrides(base_config, kwargs)
    return DynamicATSS(config, backbone_pretrained=backbone_pretrained)


@register_model
def dynamic_atss_r50(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Dynamic ATSS, ResNet-50 FPN (paper: 40.3 AP on COCO test-dev, 1x)."""
    return _build("dynamic_atss_r50", _atss_config("resnet50", False), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_atss_r101(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Dynamic ATSS, ResNet-101 FPN (paper: 44.7 AP on COCO test-dev, 2x multi-scale)."""
    return _build("dynamic_atss_r101", _atss_config("resnet101", False), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_atss_r50_dcn(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Dynamic ATSS, ResNet-50-DCN FPN (paper: 44.4 AP on COCO test-dev, 1x)."""
    return _build("dynamic_atss_r50_dcn", _atss_config("resnet50", True), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_atss_r101_dcn(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Dynamic ATSS, ResNet-101-DCN FPN (paper: 47.3 AP on COCO test-dev, 2x multi-scale)."""
    return _build("dynamic_atss_r101_dcn", _atss_config("resnet101", True), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_atss_x101_32x8d(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Dynamic ATSS, ResNeXt-101 32x8d FPN."""
    return _build("dynamic_atss_x101_32x8d", _atss_config("resnext101_32x8d", False), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_atss_x101_64x4d(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Dynamic ATSS, ResNeXt-101 64x4d FPN."""
    return _build("dynamic_atss_x101_64x4d", _atss_config("resnext101_64x4d", False), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_atss_x101_32x8d_dcn(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Dynamic ATSS, ResNeXt-101 32x8d-DCN FPN."""
    return _build("dynamic_atss_x101_32x8d_dcn", _atss_config("resnext101_32x8d", True), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_atss_x101_64x4d_dcn(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Dynamic ATSS, ResNeXt-101 64x4d-DCN FPN."""
    return _build("dynamic_atss_x101_64x4d_dcn", _atss_config("resnext101_64x4d", True), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


# ==================================================================================================== GFL family
# GFL / GFLV2 (detection/heads/gfl.py, whose docstring states these defaults): mmdetection's GFL settings
# (= the GFL / GFLV2 authors'): no tower conv bias, anchors centred at (x, y) * stride, no ReLU before P7.
# `gfl_*` / `gflv2_*` assign with anchor IoUs only (pred_weight 0); `dynamic_*` with combined IoUs.


def _gfl_config(backbone: str, dcn: bool, dgqp: bool, combined_ious: bool) -> ModelConfig:
    config = ModelConfig(
        backbone=BackboneConfig(name=backbone, dcn=dcn),
        head=HeadConfig(kind="gfl", conv_bias=False, reg_max=16, dgqp=dgqp, dgqp_topk=4, dgqp_hidden=64),
    )
    return apply_overrides(config, {
        "anchors.center_offset": 0.0, "conventions.relu_before_p7": False,
        "assigner.pred_weight": 1.0 if combined_ious else 0.0, "assigner.anchor_weight": 1.0,
        "loss.cls_loss": "qfl", "loss.box_weight": 2.0, "loss.dfl_weight": 0.25,
    })


@register_model
def gfl_r50(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFL (v1), anchor IoUs only; ResNet-50 FPN."""
    return _build("gfl_r50", _gfl_config("resnet50", False, False, False), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def gfl_r101(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFL (v1), anchor IoUs only; ResNet-101 FPN."""
    return _build("gfl_r101", _gfl_config("resnet101", False, False, False), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def gfl_r101_dcn(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFL (v1), anchor IoUs only; ResNet-101-DCN FPN."""
    return _build("gfl_r101_dcn", _gfl_config("resnet101", True, False, False), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def gfl_x101_32x8d(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFL (v1), anchor IoUs only; ResNeXt-101 32x8d FPN."""
    return _build("gfl_x101_32x8d", _gfl_config("resnext101_32x8d", False, False, False), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def gfl_x101_64x4d(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFL (v1), anchor IoUs only; ResNeXt-101 64x4d FPN."""
    return _build("gfl_x101_64x4d", _gfl_config("resnext101_64x4d", False, False, False), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_gfl_r50(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFL (v1) with combined IoUs; ResNet-50 FPN."""
    return _build("dynamic_gfl_r50", _gfl_config("resnet50", False, False, True), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_gfl_r101(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFL (v1) with combined IoUs; ResNet-101 FPN."""
    return _build("dynamic_gfl_r101", _gfl_config("resnet101", False, False, True), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_gfl_r101_dcn(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFL (v1) with combined IoUs; ResNet-101-DCN FPN."""
    return _build("dynamic_gfl_r101_dcn", _gfl_config("resnet101", True, False, True), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_gfl_x101_32x8d(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFL (v1) with combined IoUs; ResNeXt-101 32x8d FPN."""
    return _build("dynamic_gfl_x101_32x8d", _gfl_config("resnext101_32x8d", False, False, True), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_gfl_x101_64x4d(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFL (v1) with combined IoUs; ResNeXt-101 64x4d FPN."""
    return _build("dynamic_gfl_x101_64x4d", _gfl_config("resnext101_64x4d", False, False, True), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def gflv2_r50(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFLV2, anchor IoUs only (Table V baseline); ResNet-50 FPN (paper: 40.6 AP val2017, 1x)."""
    return _build("gflv2_r50", _gfl_config("resnet50", False, True, False), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def gflv2_r101(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFLV2, anchor IoUs only (Table V baseline); ResNet-101 FPN."""
    return _build("gflv2_r101", _gfl_config("resnet101", False, True, False), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def gflv2_r101_dcn(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFLV2, anchor IoUs only (Table V baseline); ResNet-101-DCN FPN."""
    return _build("gflv2_r101_dcn", _gfl_config("resnet101", True, True, False), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def gflv2_x101_32x8d(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFLV2, anchor IoUs only (Table V baseline); ResNeXt-101 32x8d FPN."""
    return _build("gflv2_x101_32x8d", _gfl_config("resnext101_32x8d", False, True, False), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def gflv2_x101_64x4d(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFLV2, anchor IoUs only (Table V baseline); ResNeXt-101 64x4d FPN."""
    return _build("gflv2_x101_64x4d", _gfl_config("resnext101_64x4d", False, True, False), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_gflv2_r50(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFLV2 with combined IoUs (Table V "+CIoUs"); ResNet-50 FPN (paper: 41.1 AP val2017, 1x)."""
    return _build("dynamic_gflv2_r50", _gfl_config("resnet50", False, True, True), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_gflv2_r101(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFLV2 with combined IoUs (Table V "+CIoUs"); ResNet-101 FPN."""
    return _build("dynamic_gflv2_r101", _gfl_config("resnet101", False, True, True), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_gflv2_r101_dcn(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFLV2 with combined IoUs (Table V "+CIoUs"); ResNet-101-DCN FPN."""
    return _build("dynamic_gflv2_r101_dcn", _gfl_config("resnet101", True, True, True), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_gflv2_x101_32x8d(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFLV2 with combined IoUs (Table V "+CIoUs"); ResNeXt-101 32x8d FPN."""
    return _build("dynamic_gflv2_x101_32x8d", _gfl_config("resnext101_32x8d", False, True, True), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_gflv2_x101_64x4d(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFLV2 with combined IoUs (Table V "+CIoUs"); ResNeXt-101 64x4d FPN."""
    return _build("dynamic_gflv2_x101_64x4d", _gfl_config("resnext101_64x4d", False, True, True), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)
