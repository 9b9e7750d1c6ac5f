"""Dynamic ATSS: ATSS whose label assigner combines predicted and anchor IoUs, on timm backbones."""

from .config import (
    AnchorConfig, AssignerConfig, BackboneConfig, ConventionConfig, HeadConfig, LossConfig, ModelConfig, TestConfig,
)
from ._version import __version__
from . import convert  # noqa: F401  (the converters of other libraries' weights register with the registry)
from . import zoo
from .factory import create, load_model
from .hub import load_pretrained
from .inference.optimize import optimize_for_inference
from .models.detector import DynamicATSS
from .registry import get_pretrained_cfg, list_models, register_pretrained
from .zoo import *  # noqa: F403  (the registered constructors, one per head-family variant)


__all__ = [
    "AnchorConfig", "AssignerConfig", "BackboneConfig", "ConventionConfig", "DynamicATSS", "HeadConfig", "LossConfig",
    "ModelConfig", "TestConfig", "create", "get_pretrained_cfg", "list_models", "load_model", "load_pretrained",
    "optimize_for_inference", "register_pretrained", *zoo.__all__,
]
