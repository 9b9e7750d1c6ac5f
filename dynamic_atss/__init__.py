"""Dynamic ATSS: ATSS whose label assigner combines predicted and anchor IoUs, on timm backbones."""

from .config import (
    AnchorConfig,
    AssignerConfig,
    BackboneConfig,
    ConventionConfig,
    HeadConfig,
    LossConfig,
    ModelConfig,
    TestConfig,
)
from .models.detector import DynamicATSS
from .models.zoo import (
    atss_r50,
    atss_r101,
    dynamic_atss_r50,
    dynamic_atss_r50_dcn,
    dynamic_atss_r101,
    dynamic_atss_r101_dcn,
    dynamic_atss_x101_32x8d,
    dynamic_atss_x101_32x8d_dcn,
    dynamic_atss_x101_64x4d,
    dynamic_atss_x101_64x4d_dcn,
)
from .models.zoo import (  # VFNet family
    dynamic_vfnet_r50,
    dynamic_vfnet_r50_dcn,
    dynamic_vfnet_r101,
    dynamic_vfnet_r101_dcn,
    dynamic_vfnet_x101_32x8d,
    dynamic_vfnet_x101_64x4d,
    vfnet_r50,
    vfnet_r50_dcn,
    vfnet_r101,
    vfnet_r101_dcn,
    vfnet_x101_32x8d,
    vfnet_x101_64x4d,
)
from .hub import load_pretrained
from .registry import create, get_pretrained_cfg, list_models, register_pretrained

__version__ = "0.1.0"

__all__ = [
    "AnchorConfig", "AssignerConfig", "atss_r50", "atss_r101", "BackboneConfig", "ConventionConfig", "DynamicATSS", "HeadConfig",
    "LossConfig", "ModelConfig", "TestConfig", "create", "dynamic_atss_r50", "dynamic_atss_r50_dcn",
    "dynamic_atss_r101", "dynamic_atss_r101_dcn", "dynamic_atss_x101_32x8d", "dynamic_atss_x101_32x8d_dcn",
    "dynamic_atss_x101_64x4d", "dynamic_atss_x101_64x4d_dcn", "get_pretrained_cfg", "list_models", "load_pretrained",
    "register_pretrained",
]
__all__ += [  # VFNet family
    "dynamic_vfnet_r50", "dynamic_vfnet_r50_dcn", "dynamic_vfnet_r101", "dynamic_vfnet_r101_dcn",
    "dynamic_vfnet_x101_32x8d", "dynamic_vfnet_x101_64x4d", "vfnet_r50", "vfnet_r50_dcn", "vfnet_r101",
    "vfnet_r101_dcn", "vfnet_x101_32x8d", "vfnet_x101_64x4d",
]
