"""The registered constructors. Each only names a variant; `_build` does the work (timm's pattern)."""

from __future__ import annotations

from typing import Any

from ..config import BackboneConfig, HeadConfig, ModelConfig, apply_overrides
from ..registry import load_pretrained_tag, register_model
from .detector import DynamicATSS


def _base_config(backbone: str, dcn: bool) -> ModelConfig:
    # The published Dynamic ATSS models: combined IoUs + QFL + IoU branch (paper, Tables II and IV).
    return ModelConfig(
        backbone=BackboneConfig(name=backbone, dcn=dcn),
        head=HeadConfig(dcn_last_conv=dcn, quality="iou"),
    )


def _build(
    variant: str, trunk: str, dcn: bool, pretrained: bool = False, pretrained_tag: str | None = None,
    /, **kwargs: Any,
) -> DynamicATSS:
    if pretrained:  # weights: the registry's entry for the tag (a Hub repo, or a public checkpoint to convert)
        return load_pretrained_tag(f"{variant}.{pretrained_tag}" if pretrained_tag else variant, **kwargs)
    backbone_pretrained = kwargs.pop("backbone_pretrained", False)
    config = apply_overrides(_base_config(trunk, dcn), kwargs)
    return DynamicATSS(config, backbone_pretrained=backbone_pretrained)


def _build_mmdet_atss(
    variant: str, trunk: str, pretrained: bool = False, pretrained_tag: str | None = None, /, **kwargs: Any,
) -> DynamicATSS:
    """Plain ATSS as mmdetection trains it (anchor IoUs only, focal loss, centerness; its conventions)."""
    if pretrained:
        return load_pretrained_tag(f"{variant}.{pretrained_tag}" if pretrained_tag else variant, **kwargs)
    from ..convert.mmdet import mmdet_atss_config  # noqa: PLC0415  (the converter's config, one definition)

    backbone_pretrained = kwargs.pop("backbone_pretrained", False)
    config = apply_overrides(mmdet_atss_config(BackboneConfig(name=trunk)), kwargs)
    return DynamicATSS(config, backbone_pretrained=backbone_pretrained)


@register_model
def dynamic_atss_r50(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Dynamic ATSS, ResNet-50 FPN (paper: 40.3 AP on COCO test-dev, 1x)."""
    return _build("dynamic_atss_r50", "resnet50", False, pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_atss_r101(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Dynamic ATSS, ResNet-101 FPN (paper: 44.7 AP on COCO test-dev, 2x multi-scale)."""
    return _build("dynamic_atss_r101", "resnet101", False, pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_atss_r50_dcn(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Dynamic ATSS, ResNet-50-DCN FPN (paper: 44.4 AP on COCO test-dev, 1x)."""
    return _build("dynamic_atss_r50_dcn", "resnet50", True, pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_atss_r101_dcn(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Dynamic ATSS, ResNet-101-DCN FPN (paper: 47.3 AP on COCO test-dev, 2x multi-scale)."""
    return _build("dynamic_atss_r101_dcn", "resnet101", True, pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_atss_x101_32x8d(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Dynamic ATSS, ResNeXt-101 32x8d FPN."""
    return _build("dynamic_atss_x101_32x8d", "resnext101_32x8d", False, pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_atss_x101_64x4d(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Dynamic ATSS, ResNeXt-101 64x4d FPN."""
    return _build("dynamic_atss_x101_64x4d", "resnext101_64x4d", False, pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_atss_x101_32x8d_dcn(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Dynamic ATSS, ResNeXt-101 32x8d-DCN FPN."""
    return _build("dynamic_atss_x101_32x8d_dcn", "resnext101_32x8d", True, pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def dynamic_atss_x101_64x4d_dcn(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Dynamic ATSS, ResNeXt-101 64x4d-DCN FPN."""
    return _build("dynamic_atss_x101_64x4d_dcn", "resnext101_64x4d", True, pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def atss_r50(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Plain ATSS, ResNet-50 FPN, mmdetection's conventions (`atss_r50.mmdet_coco_1x`: its 39.4 AP COCO weights)."""
    return _build_mmdet_atss("atss_r50", "resnet50", pretrained, kwargs.pop("pretrained_tag", None), **kwargs)


@register_model
def atss_r101(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """Plain ATSS, ResNet-101 FPN, mmdetection's conventions (`atss_r101.mmdet_coco_1x`: its 41.5 AP COCO weights)."""
    return _build_mmdet_atss("atss_r101", "resnet101", pretrained, kwargs.pop("pretrained_tag", None), **kwargs)
