"""timm backbones with `features_only=True`: frozen BatchNorm, frozen early stages, optional DCNv2."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ..config import BackboneConfig
from ..ops.dcn import patch_resnet_dcn


class OneKernelFrozenBatchNorm2d(FrozenBatchNorm2d):
    """torchvision's `FrozenBatchNorm2d` (same buffers, state-dict keys and loading) computed by one
    `F.batch_norm` kernel in inference mode instead of torchvision's scale / shift passes over the input
    (~4% of R-50's CPU time). Like its parent it reads its buffers at every call and keeps nothing else."""

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every plain `nn.BatchNorm2d` by a frozen one (`OneKernelFrozenBatchNorm2d`, torchvision's
    `FrozenBatchNorm2d` layout), statistics included.

    timm's `BatchNormAct2d` (BN fused with an activation, used by e.g. EfficientNet) is handed to
    timm's own converter, which keeps the activation.
    """
    if type(module) in (nn.BatchNorm2d, nn.SyncBatchNorm):
        frozen = OneKernelFrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    if isinstance(module, nn.BatchNorm2d):  # subclasses such as timm's BatchNormAct2d
        return timm.layers.freeze_batch_norm_2d(module)
    for name, child in module.named_children():
        new_child = freeze_batch_norm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def freeze_stages(trunk: nn.Module, frozen_stages: int) -> None:
    """Freeze every parameter up to and including feature stage `frozen_stages` (timm feature_info order).

    For ResNets stage 0 is the stem (conv1/bn1) and stage 1 is `layer1`, so `frozen_stages=1` freezes
    stem + stage 1 as in the paper; -1 freezes nothing.
    """
    if frozen_stages < 0:
        return
    stage_modules = [info["module"] for info in trunk.feature_info.info]
    if frozen_stages >= len(stage_modules):
        raise ValueError(f"frozen_stages={frozen_stages} but the backbone has {len(stage_modules)} stages")
    last = stage_modules[frozen_stages]
    names = [name for name, _ in trunk.named_modules()]
    last_position = names.index(last)
    for position, (name, module) in enumerate(trunk.named_modules()):
        is_ancestor = name == "" or last.startswith(name + ".")
        inside = name == last or name.startswith(last + ".")
        if inside or (position < last_position and not is_ancestor):
            for param in module.parameters(recurse=False):
                param.requires_grad_(False)


class TimmBackbone(nn.Module):
    """Wraps `timm.create_model(name, features_only=True)`; `forward(x)` returns [C3, C4, C5].

    `trunk` is timm's feature extractor, so a state dict's backbone keys are timm's own
    (e.g. `backbone.trunk.layer1.0.conv1.weight`) and ImageNet weights map one to one.
    """

    def __init__(self, config: BackboneConfig, pretrained: bool = False) -> None:
        super().__init__()
        try:
            self.trunk = timm.create_model(
                config.name, pretrained=pretrained, features_only=True, out_indices=config.out_indices,
                **config.timm_kwargs,
            )
        except Exception as error:
            message = str(error)
            if "Unknown model" in message:
                raise ValueError(
                    f"unknown timm backbone {config.name!r}; see timm.list_models() for the available names"
                ) from error
            if "features_only" in message:
                raise ValueError(f"timm model {config.name!r} does not support features_only=True: {error}") from error
            if pretrained:
                raise RuntimeError(
                    f"could not load timm's ImageNet weights for backbone {config.name!r} "
                    f"({type(error).__name__}: {error}). The Hugging Face Hub may be unreachable: pass "
                    "backbone_pretrained=False, or put the weights in the local Hugging Face cache "
                    "(HF_HOME) and set HF_HUB_OFFLINE=1."
                ) from error
            raise
        if config.dcn:
            bad = [stage for stage in config.dcn_stages if stage not in (1, 2, 3, 4)]
            if bad or not config.dcn_stages:
                raise ValueError(f"backbone.dcn_stages={config.dcn_stages}: ResNet stages are 1-4 (layer1-layer4)")
            patch_resnet_dcn(self.trunk, tuple(f"layer{stage}" for stage in config.dcn_stages))
        if config.norm == "frozen_bn":
            freeze_batch_norm(self.trunk)
        freeze_stages(self.trunk, config.frozen_stages)
        self.out_channels: list[int] = self.trunk.feature_info.channels()
        self.strides: list[int] = self.trunk.feature_info.reduction()

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.trunk(x)
