"""The registered constructors. Each only names a variant; `_build` does the work (timm's pattern)."""

from __future__ import annotations

from typing import Any

from ..config import (
    AnchorConfig, AssignerConfig, BackboneConfig, ConventionConfig, HeadConfig, LossConfig, ModelConfig, apply_overrides,
)
from ..registry import load_pretrained_tag, register_model
from .detector import DynamicATSS


def _atss_config(backbone: str, dcn: bool) -> ModelConfig:
    # The published Dynamic ATSS models: combined IoUs + QFL + IoU branch (paper, Tables II and IV).
    return ModelConfig(
        backbone=BackboneConfig(name=backbone, dcn=dcn),
        head=HeadConfig(kind="atss", dcn_last_conv=dcn, quality="iou"),
    )


def _mmdet_atss_config(backbone: str) -> ModelConfig:
    # Plain ATSS as mmdetection trains it (anchor IoUs only, focal loss, centerness; anchors at offset 0, P7 from
    # P6 without ReLU, score cls x centerness, no conv bias before GroupNorm): what convert_mmdet_atss builds
    # from its checkpoints (tests/test_url_weights.py checks that the two agree).
    return ModelConfig(
        backbone=BackboneConfig(name=backbone),
        head=HeadConfig(kind="atss", conv_bias=False, quality="centerness"),
        anchors=AnchorConfig(center_offset=0.0),
        conventions=ConventionConfig(relu_before_p7=False, score_sqrt=False, pre_nms_rank_by_joint=False),
        assigner=AssignerConfig(pred_weight=0.0, anchor_weight=1.0),
        loss=LossConfig(cls_loss="focal"),
    )


def _build(
    variant: str, base_config: ModelConfig, pretrained: bool = False, pretrained_tag: str | None = None,
    /, **kwargs: Any,
) -> DynamicATSS:
    """The one builder behind every constructor: `base_config` with dotted `kwargs` overrides, or the
    variant's published weights when `pretrained`."""
    if pretrained:  # the registry's entry for the tag: a Hub repo, or a public checkpoint converted on first use
        return load_pretrained_tag(f"{variant}.{pretrained_tag}" if pretrained_tag else variant, **kwargs)
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


@register_model
def atss_r50(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Plain ATSS, ResNet-50 FPN, mmdetection's conventions (`atss_r50.mmdet_coco_1x`: its 39.4 AP COCO weights)."""
    return _build("atss_r50", _mmdet_atss_config("resnet50"), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def atss_r101(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Plain ATSS, ResNet-101 FPN, mmdetection's conventions (`atss_r101.mmdet_coco_1x`: its 41.5 AP COCO weights)."""
    return _build("atss_r101", _mmdet_atss_config("resnet101"), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


# ==================================================================================================== GFL family
# GFL / GFLV2 (detection/heads/gfl.py, whose docstring states these defaults): mmdetection's GFL settings
# (= the GFL / GFLV2 authors'): no tower conv bias, anchors centred at (x, y) * stride, no ReLU before P7.
# `gfl_*` / `gflv2_*` assign with anchor IoUs only (pred_weight 0); `dynamic_*` with combined IoUs.


def _gfl_config(backbone: str, dcn: bool, dgqp: bool, combined_ious: bool, dcn_stages=(2, 3, 4)) -> ModelConfig:
    # score_sqrt / pre_nms_rank_by_joint are ATSS-family conventions (no effect here), set as the converter sets them.
    return ModelConfig(
        backbone=BackboneConfig(name=backbone, dcn=dcn, dcn_stages=dcn_stages),
        head=HeadConfig(kind="gfl", conv_bias=False, reg_max=16, dgqp=dgqp, dgqp_topk=4, dgqp_hidden=64),
        anchors=AnchorConfig(center_offset=0.0),
        conventions=ConventionConfig(relu_before_p7=False, score_sqrt=False, pre_nms_rank_by_joint=False),
        assigner=AssignerConfig(pred_weight=1.0 if combined_ious else 0.0, anchor_weight=1.0),
        loss=LossConfig(cls_loss="qfl", box_weight=2.0, dfl_weight=0.25),
    )


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
def gfl_x101_32x4d(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFL (v1), anchor IoUs only; ResNeXt-101 32x4d FPN (mmdetection's GFL X-101, `.mmdet_coco_2x_ms`: 45.9 AP)."""
    return _build("gfl_x101_32x4d", _gfl_config("resnext101_32x4d", False, False, False), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def gfl_x101_32x4d_dcn_c4(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """GFL (v1), anchor IoUs only; ResNeXt-101 32x4d FPN, DCN in stages 3-4 only (mmdetection's dconv-c4-c5)."""
    return _build("gfl_x101_32x4d_dcn_c4", _gfl_config("resnext101_32x4d", True, False, False, (3, 4)), pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


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


# ---------------------------------------------------------------------------------------------- VFNet family
# VarifocalNet (detection/heads/vfnet.py) with ATSS assignment: `vfnet_*` use anchor IoUs only (VFNet itself, Table V
# "VFNet"), `dynamic_vfnet_*` the combined IoUs (Table V "+CIoUs"). Conventions follow VarifocalNet's mmdetection
# configs: 3-conv towers without conv bias (GN follows), anchors centred at (x, y) * stride, P7 = conv(relu(P6)).
def _vfnet_config(backbone: str, dcn: bool, pred_weight: float) -> ModelConfig:
    return ModelConfig(
        backbone=BackboneConfig(name=backbone, dcn=dcn),
        head=HeadConfig(kind="vfnet", num_convs=3, conv_bias=False, dcn_last_conv=dcn),
        anchors=AnchorConfig(center_offset=0.0),
        conventions=ConventionConfig(relu_before_p7=True, score_sqrt=False, pre_nms_rank_by_joint=False),
        assigner=AssignerConfig(pred_weight=pred_weight),
        loss=LossConfig(cls_loss="vfl", vfl_alpha=0.75, focal_gamma=2.0, box_weight=2.0, box_init_weight=1.5),
    )


def _vfnet(variant: str, backbone: str, dcn: bool, pretrained: bool, kwargs: dict[str, Any]) -> DynamicATSS:
    config = _vfnet_config(backbone, dcn, pred_weight=1.0 if variant.startswith("dynamic_") else 0.0)
    return _build(variant, config, pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def vfnet_r50(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """VFNet, ResNet-50 FPN, ATSS assignment (paper, Table V: 41.3 AP on COCO val2017, 1x)."""
    return _vfnet("vfnet_r50", "resnet50", False, pretrained, kwargs)


@register_model
def dynamic_vfnet_r50(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """VFNet + combined IoUs, ResNet-50 FPN (paper, Table V: 41.6 AP on COCO val2017, 1x)."""
    return _vfnet("dynamic_vfnet_r50", "resnet50", False, pretrained, kwargs)


@register_model
def vfnet_r50_dcn(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """VFNet, ResNet-50-DCN FPN (DCNv2 in stages 2-4 and the last tower convs)."""
    return _vfnet("vfnet_r50_dcn", "resnet50", True, pretrained, kwargs)


@register_model
def dynamic_vfnet_r50_dcn(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """VFNet + combined IoUs, ResNet-50-DCN FPN."""
    return _vfnet("dynamic_vfnet_r50_dcn", "resnet50", True, pretrained, kwargs)


@register_model
def vfnet_r101(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """VFNet, ResNet-101 FPN."""
    return _vfnet("vfnet_r101", "resnet101", False, pretrained, kwargs)


@register_model
def dynamic_vfnet_r101(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """VFNet + combined IoUs, ResNet-101 FPN."""
    return _vfnet("dynamic_vfnet_r101", "resnet101", False, pretrained, kwargs)


@register_model
def vfnet_r101_dcn(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """VFNet, ResNet-101-DCN FPN."""
    return _vfnet("vfnet_r101_dcn", "resnet101", True, pretrained, kwargs)


@register_model
def dynamic_vfnet_r101_dcn(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """VFNet + combined IoUs, ResNet-101-DCN FPN."""
    return _vfnet("dynamic_vfnet_r101_dcn", "resnet101", True, pretrained, kwargs)


@register_model
def vfnet_x101_32x8d(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """VFNet, ResNeXt-101 32x8d FPN."""
    return _vfnet("vfnet_x101_32x8d", "resnext101_32x8d", False, pretrained, kwargs)


@register_model
def dynamic_vfnet_x101_32x8d(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """VFNet + combined IoUs, ResNeXt-101 32x8d FPN."""
    return _vfnet("dynamic_vfnet_x101_32x8d", "resnext101_32x8d", False, pretrained, kwargs)


@register_model
def vfnet_x101_64x4d(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """VFNet, ResNeXt-101 64x4d FPN."""
    return _vfnet("vfnet_x101_64x4d", "resnext101_64x4d", False, pretrained, kwargs)


@register_model
def dynamic_vfnet_x101_64x4d(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """VFNet + combined IoUs, ResNeXt-101 64x4d FPN."""
    return _vfnet("dynamic_vfnet_x101_64x4d", "resnext101_64x4d", False, pretrained, kwargs)
# ------------------------------------------------------------------------------------------ end VFNet family
