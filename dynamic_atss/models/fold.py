"""BatchNorm folding by default: a frozen BatchNorm that follows a conv costs nothing when no gradient is needed.

The backbone's BatchNorms are frozen (`FrozenBatchNorm2d`: fixed statistics and affine), so
`bn(conv(x)) == conv'(x)` with `w' = w * s` and `b' = b_conv * s + (beta - mean * s)`,
`s = gamma / sqrt(var + eps)`. In a ResNet-50 at 800x1216 the BatchNorms are ~20% of the CPU time of the
network (two full passes over every conv output); folding removes them.

`fold_frozen_batch_norms(module)` swaps each (conv, frozen BN) pair that timm's ResNet family and
`nn.Sequential` chain directly (conv output -> BN, nothing else) for a `FoldingConv2d` / `FoldableFrozenBatchNorm2d`
pair with the same parameters and buffers, so state dicts, `requires_grad` and training are unchanged:

- when the conv's output needs no gradient (`torch.no_grad()` / `inference_mode()`, or a frozen stage in
  training), the conv runs once with the folded weight (cached until a weight or statistic changes in place,
  or moves) and the BN passes that exact output through (it checks the tensor's identity, so it can never skip
  the normalisation of anything else);
- otherwise (gradients flow through the conv) both run as before; the BN as one `F.batch_norm` kernel
  rather than torchvision's two elementwise passes.

Tracing for export (`torch.export`, `torch.compile`, `torch.onnx`) sees the plain conv + BN: exporters and
ONNX Runtime fold BatchNorm themselves.
"""

from __future__ import annotations

import weakref
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["FoldableFrozenBatchNorm2d", "FoldingConv2d", "fold_frozen_batch_norms", "is_tracing", "tensor_version"]


def tensor_version(tensor: Tensor) -> int | None:
    """The tensor's in-place modification counter, or None where it is unavailable (then caches keyed on it
    never hit). `Tensor._version` is not a documented API: this is the one place that reads it."""
    if tensor.is_inference():
        return -1  # inference tensors cannot be modified in place outside inference mode and have no counter
    version = getattr(tensor, "_version", None)
    return version if isinstance(version, int) else None


def is_tracing() -> bool:
    """Whether a tracer (`torch.compile`, `torch.export`, TorchScript) is running: cached tensors and in-place
    shortcuts must not leak into its graph."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)()  # torch >= 2.5
    return exporting or torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()


class FoldableFrozenBatchNorm2d(FrozenBatchNorm2d):
    """torchvision's `FrozenBatchNorm2d` (same buffers and state dict) that passes through the output of the
    `FoldingConv2d` it was folded into, and otherwise normalises in one `F.batch_norm` kernel."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps)
        self._folded_output: weakref.ref | None = None  # set by the conv for the one tensor it already normalised

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """(scale, shift), each (C,), with bn(x) == x * scale + shift per channel; float64."""
        scale = self.weight.double() * (self.running_var.double() + self.eps).rsqrt()
        return scale, self.bias.double() - self.running_mean.double() * scale

    def forward(self, x: Tensor) -> Tensor:
        folded, self._folded_output = self._folded_output, None
        if folded is not None and folded() is x:
            return x
        if is_tracing():
            return super().forward(x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class FoldingConv2d(nn.Conv2d):
    """`nn.Conv2d` that, when its output needs no gradient, applies the following frozen BatchNorm itself
    (folded weight and bias, cached) and tells that BatchNorm to pass its output through."""

    _bn: list[FoldableFrozenBatchNorm2d] | None = None
    _folded: tuple[tuple, Tensor, Tensor] | None = None  # (key, folded weight, folded bias)

    def attach(self, bn: FoldableFrozenBatchNorm2d) -> None:
        # A plain attribute, not a submodule: the BN stays where it is in the module tree and the state dict.
        self._bn = [bn]
        self._folded = None

    def _folded_weight_bias(self, x: Tensor) -> tuple[Tensor, Tensor]:
        bn = self._bn[0]
        weight = self.weight
        # the weight in the input's layout: oneDNN would otherwise reorder it on every call
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        tensors = (weight, self.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        key = tuple((t.data_ptr(), tensor_version(t)) for t in tensors if t is not None) + (weight.dtype, memory_format)
        if self._folded is None or self._folded[0] != key or None in (v for _, v in key[:-2]):
            with torch.no_grad():
                scale, shift = bn.scale_shift()
                folded_weight = (weight.double() * scale.view(-1, 1, 1, 1)).to(weight.dtype)
                conv_bias = self.bias.double() if self.bias is not None else torch.zeros_like(shift)
                folded_bias = (conv_bias * scale + shift).to(weight.dtype)
            self._folded = (key, folded_weight.contiguous(memory_format=memory_format), folded_bias)
        return self._folded[1], self._folded[2]

    def forward(self, x: Tensor) -> Tensor:
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)
        )
        if self._bn is None or needs_grad or is_tracing():
            if needs_grad:
                self._folded = None  # training this conv: its weight changes every step, free the cache
            return super().forward(x)
        weight, bias = self._folded_weight_bias(x)
        out = self._conv_forward(x, weight, bias)
        self._bn[0]._folded_output = weakref.ref(out)
        return out


def _timm_resnet_parents() -> tuple[type, ...]:
    try:
        from timm.models._features import FeatureListNet  # noqa: PLC0415
        from timm.models.resnet import BasicBlock, Bottleneck, ResNet  # noqa: PLC0415
    except ImportError:  # pragma: no cover - timm layout change: nothing folded, still correct
        return ()
    return BasicBlock, Bottleneck, ResNet, FeatureListNet


def _pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv name, BN name) children of `module` where the forward feeds the conv's output straight to the BN."""
    children = dict(module.named_children())
    if isinstance(module, nn.Sequential):
        names = list(children)
        return list(zip(names, names[1:]))
    if isinstance(module, _timm_resnet_parents()):
        # timm's ResNet stem, Bottleneck and BasicBlock run `x = self.convN(x); x = self.bnN(x)`; FeatureListNet
        # (features_only) runs the stem's children in registration order.
        return [(f"conv{s}", f"bn{s}") for s in ("", "1", "2", "3")]
    return []


def fold_frozen_batch_norms(root: nn.Module) -> int:
    """Swap every (plain `nn.Conv2d`, torchvision `FrozenBatchNorm2d`) pair that `root`'s forward chains
    directly for the folding pair (same parameters, buffers and state-dict keys). Returns how many."""
    count = 0
    for module in list(root.modules()):
        children = dict(module.named_children())
        for conv_name, bn_name in _pairs(module):
            conv, bn = children.get(conv_name), children.get(bn_name)
            if type(conv) is not nn.Conv2d or type(bn) is not FrozenBatchNorm2d:
                continue
            new_conv = FoldingConv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, conv.bias is not None, conv.padding_mode, device="meta",
            )
            new_conv.weight, new_conv.bias = conv.weight, conv.bias
            new_conv.train(conv.training)
            new_bn = FoldableFrozenBatchNorm2d(bn.weight.shape[0], bn.eps)
            for name, buffer in bn.named_buffers(recurse=False):
                setattr(new_bn, name, buffer)
            new_conv.attach(new_bn)
            setattr(module, conv_name, new_conv)
            setattr(module, bn_name, new_bn)
            children[conv_name], children[bn_name] = new_conv, new_bn
            count += 1
    return count
