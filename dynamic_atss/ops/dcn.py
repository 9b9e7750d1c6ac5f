"""Deformable convolutions on `torchvision.ops.deform_conv2d`: modulated (DCNv2) with its own offsets, and ResNet
patching; plain (DCNv1) with offsets given by the caller (VFNet's star-shaped representation)."""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import deform_conv2d


class ModulatedDeformConv2d(nn.Module):
    """A drop-in replacement for a 3x3 `nn.Conv2d` that predicts its own offsets and mask (DCNv2).

    `weight` (and `bias`) keep the shapes and names of the conv they replace, so plain ResNet weights load
    unchanged. `conv_offset` predicts 2*k*k offsets and k*k mask logits; it is zero-initialised, so at
    initialisation the offsets are 0 and the mask is sigmoid(0) = 0.5 everywhere, as in the DCNv2 reference
    code that the published checkpoints were trained with. The parameter names follow mmcv's
    `ModulatedDeformConv2dPack` (`weight`, `bias`, `conv_offset.*`).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
        dilation: int = 1, groups: int = 1, bias: bool = False,
    ) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.conv_offset = nn.Conv2d(
            in_channels, 3 * kernel_size * kernel_size, kernel_size, stride=stride, padding=padding,
            dilation=dilation, bias=True,
        )
        nn.init.kaiming_uniform_(self.weight, a=1)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> ModulatedDeformConv2d:
        """Build a DCN that starts from `conv`'s weights (offsets 0, mask 0.5)."""
        kernel = conv.kernel_size[0]
        dcn = cls(
            conv.in_channels, conv.out_channels, kernel, conv.stride[0], conv.padding[0], conv.dilation[0],
            conv.groups, bias=conv.bias is not None,
        )
        with torch.no_grad():
            dcn.weight.copy_(conv.weight)
            if conv.bias is not None:
                dcn.bias.copy_(conv.bias)
        return dcn.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        offset_y_x, mask = torch.split(self.conv_offset(x), [2 * self.weight.shape[-1] ** 2, self.weight.shape[-1] ** 2], 1)
        # deform_conv2d has no half-precision CPU kernel and is numerically touchy in fp16: run it in the
        # dtype of the weights (autocast keeps those fp32).
        dtype = self.weight.dtype
        return deform_conv2d(
            x.to(dtype), offset_y_x.to(dtype), self.weight, self.bias, stride=self.stride, padding=self.padding,
            dilation=self.dilation, mask=mask.sigmoid().to(dtype),
        )

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight.shape)}, stride={self.stride}, padding={self.padding}"


def patch_resnet_dcn(trunk: nn.Module, stage_names: tuple[str, ...] = ("layer2", "layer3", "layer4")) -> int:
    """Replace the 3x3 conv (`conv2`) of every residual block in the given stages by DCNv2; returns the count.

    Works on timm ResNet / ResNeXt trunks (Bottleneck and BasicBlock both name that conv `conv2`).
    """
    count = 0
    for stage_name in stage_names:
        stage = getattr(trunk, stage_name, None)
        if stage is None:
            raise ValueError(
                f"DCN patching expects a ResNet-style trunk with a '{stage_name}' stage; "
                f"got {type(trunk).__name__}. Set backbone.dcn=False for this backbone."
            )
        for block in stage:
            conv = getattr(block, "conv2", None)
            if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                block.conv2 = ModulatedDeformConv2d.from_conv(conv)
                count += 1
    return count


class DeformConv2d(torchvision.ops.DeformConv2d):
    """torchvision's deformable convolution (DCNv1: offsets given by the caller, no mask), run in the dtype of
    its weights.

    `torchvision.ops.deform_conv2d` has no half-precision CPU kernel (and no CPU autocast rule), so under
    autocast the input and offsets are cast to the weights' dtype (float32), as `ModulatedDeformConv2d` does.
    Parameter names (`weight`, `bias`) are those of mmcv's `DeformConv2d` (VFNet's star-shaped convs).
    """

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        dtype = self.weight.dtype
        return super().forward(x.to(dtype), offset.to(dtype), None if mask is None else mask.to(dtype))
