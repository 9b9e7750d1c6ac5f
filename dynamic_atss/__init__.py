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
from .models.zoo import (  # GFL family
    gfl_r50,
    gfl_r101,
    gfl_r101_dcn,
    gfl_x101_32x8d,
    gfl_x101_64x4d,
    gfl_x101_32x4d,
    gfl_x101_32x4d_dcn_c4,
    dynamic_gfl_r50,
    dynamic_gfl_r101,
    dynamic_gfl_r101_dcn,
    dynamic_gfl_x101_32x8d,
    dynamic_gfl_x101_64x4d,
    gflv2_r50,
    gflv2_r101,
    gflv2_r101_dcn,
    gflv2_x101_32x8d,
    gflv2_x101_64x4d,
    dynamic_gflv2_r50,
    dynamic_gflv2_r101,
    dynamic_gflv2_r101_dcn,
    dynamic_gflv2_x101_32x8d,
    dynamic_gflv2_x101_64x4d,
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
from .inference.optimize import optimize_for_inference
from .registry import create, get_pretrained_cfg, list_models, register_pretrained

__version__ = "0.1.0"

__all__ = [
    "AnchorConfig", "AssignerConfig", "atss_r50", "atss_r101", "BackboneConfig", "ConventionConfig", "DynamicATSS", "HeadConfig",
    "LossConfig", "ModelConfig", "TestConfig", "create", "dynamic_atss_r50", "dynamic_atss_r50_dcn",
    "dynamic_atss_r101", "dynamic_atss_r101_dcn", "dynamic_atss_x101_32x8d", "dynamic_atss_x101_32x8d_dcn",
    "dynamic_atss_x101_64x4d", "dynamic_atss_x101_64x4d_dcn", "get_pretrained_cfg", "list_models", "load_pretrained",
    "optimize_for_inference", "register_pretrained",
]
__all__ += [  # GFL family
    "gfl_r50",
    "gfl_r101",
    "gfl_r101_dcn",
    "gfl_x101_32x8d",
    "gfl_x101_64x4d",
    "gfl_x101_32x4d",
    "gfl_x101_32x4d_dcn_c4",
    "dynamic_gfl_r50",
    "dynamic_gfl_r101",
    "dynamic_gfl_r101_dcn",
    "dynamic_gfl_x101_32x8d",
    "dynamic_gfl_x101_64x4d",
    "gflv2_r50",
    "gflv2_r101",
    "gflv2_r101_dcn",
    "gflv2_x101_32x8d",
    "gflv2_x101_64x4d",
    "dynamic_gflv2_r50",
    "dynamic_gflv2_r101",
    "dynamic_gflv2_r101_dcn",
    "dynamic_gflv2_x101_32x8d",
    "dynamic_gflv2_x101_64x4d",
]
__all__ += [  # VFNet family
    "dynamic_vfnet_r50", "dynamic_vfnet_r50_dcn", "dynamic_vfnet_r101", "dynamic_vfnet_r101_dcn",
    "dynamic_vfnet_x101_32x8d", "dynamic_vfnet_x101_64x4d", "vfnet_r50", "vfnet_r50_dcn", "vfnet_r101",
    "vfnet_r101_dcn", "vfnet_x101_32x8d", "vfnet_x101_64x4d",
]
