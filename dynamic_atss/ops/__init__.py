"""Kernels below the models and heads that use them (nothing here imports from the rest of the package)."""

from .dcn import DeformConv2d, ModulatedDeformConv2d, patch_resnet_dcn

__all__ = ["DeformConv2d", "ModulatedDeformConv2d", "patch_resnet_dcn"]
