"""`optimize_for_inference(model, dtype=None)`: a fast CPU inference snapshot of a detector.

    fast = dynamic_atss.optimize_for_inference(model)                        # float32
    fast = dynamic_atss.optimize_for_inference(model, dtype=torch.bfloat16)  # bfloat16 network
    detections = fast(images)          # same call and output as model.eval()(images)
    raw = fast.forward_raw(x)          # same as model.forward_raw(x), float32 outputs

The default path (`model.eval(); model(images)`) computes from the parameters and buffers the model holds at
each call and keeps nothing derived from them. The snapshot trades that for speed, explicitly: it is a new module
that owns a prepared copy of the weights, made once:

- every BatchNorm whose input is the output of a convolution and nothing else (timm ResNet stems and blocks,
  `nn.Sequential` chains) is fused into that convolution with torch's `fuse_conv_bn_weights` (computed in
  float64) and replaced by `nn.Identity` (frozen BatchNorms always; trainable `nn.BatchNorm2d` with their running
  statistics, as in eval mode);
- parameters are channels_last (CPU convolutions get channels_last inputs from `forward_raw`; filters in the
  same layout are not converted at each call), `requires_grad=False`, eval mode;
- with `dtype=torch.bfloat16` the network (backbone, FPN, head) runs in bfloat16: the normalised input is cast
  inside, the raw outputs come back as float32, and resizing, anchors, decoding and NMS stay in float32.
  Deformable convolutions (torchvision's kernels have no bfloat16 CPU version) stay float32, each wrapped in
  `Float32` (cast in, cast back). This is fast only on CPUs with native bfloat16 instructions (AVX512-BF16 /
  AMX, Arm BF16); elsewhere it warns.

Because it is a snapshot, later changes to the source model's weights do not reach it: make a new one. A forward
hook on a fused convolution of the snapshot sees the convolution's output with its BatchNorm already applied, and
the fused BatchNorm is an `nn.Identity` (hooks on the source model behave as on plain modules).
"""

from __future__ import annotations

import copy
import platform
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["Float32", "InferenceSnapshot", "fuse_conv_batch_norms", "has_native_bfloat16", "optimize_for_inference"]

_DTYPES = (torch.float32, torch.bfloat16)


def _timm_resnet_parents() -> tuple[type, ...]:
    try:
        from timm.models._features import FeatureListNet  # noqa: PLC0415
        from timm.models.resnet import BasicBlock, Bottleneck, ResNet  # noqa: PLC0415
    except ImportError:  # pragma: no cover - timm layout change: nothing fused, still correct
        return ()
    return BasicBlock, Bottleneck, ResNet, FeatureListNet


def _conv_bn_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv name, BN name) children of `module` whose forward feeds the conv's output to the BN and nowhere else."""
    children = dict(module.named_children())
    if isinstance(module, nn.Sequential):
        names = list(children)
        return list(zip(names, names[1:]))
    if isinstance(module, _timm_resnet_parents()):
        # timm's ResNet stem, Bottleneck and BasicBlock run `x = self.convN(x); x = self.bnN(x)`; FeatureListNet
        # (features_only) runs the stem's children in registration order and returns the outputs of
        # `return_layers` as features as well (a conv returned as a feature is not fused).
        returned = getattr(module, "return_layers", {})
        return [(f"conv{s}", f"bn{s}") for s in ("", "1", "2", "3") if f"conv{s}" not in returned]
    return []


def _fusable(bn: nn.Module | None) -> bool:
    """A frozen BatchNorm, or a plain `nn.BatchNorm2d` in eval mode with running statistics."""
    if isinstance(bn, FrozenBatchNorm2d):
        return True
    return type(bn) is nn.BatchNorm2d and not bn.training and bn.running_mean is not None


def fuse_conv_batch_norms(root: nn.Module) -> int:
    """Fuse in place every (plain `nn.Conv2d`, BatchNorm) pair that `root`'s forward chains directly: the conv gets
    the fused weight and bias (`torch.nn.utils.fusion.fuse_conv_bn_weights`, in float64), the BatchNorm becomes
    `nn.Identity`. `root` must be in eval mode (a trainable BatchNorm is fused with its running statistics).
    Returns how many pairs were fused."""
    count = 0
    for module in list(root.modules()):
        children = dict(module.named_children())
        for conv_name, bn_name in _conv_bn_pairs(module):
            conv, bn = children.get(conv_name), children.get(bn_name)
            while isinstance(conv, nn.Sequential) and len(conv):  # a Sequential's output is its last module's
                conv = conv[-1]  # (timm's deep stems: conv1 = Sequential(conv, bn, act, conv, bn, act, conv))
            if type(conv) is not nn.Conv2d or not _fusable(bn):
                continue
            with torch.no_grad():
                weight, bias = fuse_conv_bn_weights(
                    conv.weight.double(), None if conv.bias is None else conv.bias.double(),
                    bn.running_mean.double(), bn.running_var.double(), bn.eps,
                    None if bn.weight is None else bn.weight.double(), None if bn.bias is None else bn.bias.double(),
                )
            conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
            setattr(module, bn_name, nn.Identity())
            children[bn_name] = module.get_submodule(bn_name)
            count += 1
    return count


def has_native_bfloat16() -> bool | None:
    """Whether this CPU has bfloat16 arithmetic instructions (x86 AVX512-BF16 / AMX-BF16, Arm BF16); None where
    it cannot be told (no /proc/cpuinfo)."""
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return True  # Apple M2 and later; M1 lacks it but cannot be told apart without private APIs
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


class Float32(nn.Module):
    """Runs `module` in float32 inside a lower-precision network: tensor arguments cast to float32, the output cast
    back to the first argument's dtype (for layers without lower-precision kernels, such as deformable convs)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.float()

    def forward(self, x: Tensor, *args: Tensor | None) -> Tensor:
        args = tuple(a.float() if isinstance(a, Tensor) else a for a in args)
        return self.module(x.float(), *args).to(x.dtype)


def _keep_deformable_convs_float32(root: nn.Module) -> None:
    from ..ops.dcn import DeformConv2d, ModulatedDeformConv2d  # noqa: PLC0415

    for module in list(root.modules()):
        for name, child in module.named_children():
            if isinstance(child, (DeformConv2d, ModulatedDeformConv2d)):
                setattr(module, name, Float32(child))


class InferenceSnapshot(nn.Module):
    """A detector prepared for inference by `optimize_for_inference`: a snapshot of the source model's weights at
    the time it was made (changes to the source do not reach it: make a new one).

    Called like the model in eval mode: `snapshot(images)` -> per image `{"boxes", "scores", "labels"}`
    (float32 boxes and scores), `snapshot.forward_raw(x)` -> the raw per-level outputs (float32), `config`,
    `preprocess`, `detections_from_raw` and `set_test_preset` as on the model. It holds no state that changes
    between calls (thread-safe, picklable, deep-copyable). It cannot be trained: `train()` raises.

    `model`: the prepared copy (fused, channels_last, `dtype` network); `dtype`: the network's dtype.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    @property
    def config(self):  # noqa: ANN201 - the model's ModelConfig
        return self.model.config

    def train(self, mode: bool = True) -> InferenceSnapshot:
        if mode:
            raise RuntimeError("an inference snapshot cannot be trained: train the source model and call "
                               "optimize_for_inference(model) again")
        return super().train(False)

    def set_test_preset(self, name: str) -> InferenceSnapshot:
        """The model's `set_test_preset` (inference thresholds)."""
        self.model.set_test_preset(name)
        return self

    def preprocess(self, images: list[Tensor] | Tensor) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        """The model's `preprocess` (float32): resize, normalise, pad."""
        return self.model.preprocess(images)

    def detections_from_raw(self, raw: tuple[list[Tensor], ...], sizes: Tensor,
                            original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """The model's post-processing (float32)."""
        return self.model.detections_from_raw(raw, sizes, original_sizes)

    def forward_raw(self, x: Tensor) -> tuple[list[Tensor], ...]:
        """(B, 3, H, W) normalised, padded input -> the raw per-level outputs, float32 (as `model.forward_raw`)."""
        raw = self.model.forward_raw(x.to(self.dtype))
        return tuple([level.float() for level in output] for output in raw)

    def forward(self, images: list[Tensor] | Tensor) -> list[dict[str, Tensor]]:
        """Images as for the model -> per image `{"boxes": (N, 4), "scores": (N,), "labels": (N,)}`."""
        batch, sizes, original_sizes = self.model.preprocess(images)
        return self.model.detections_from_raw(self.forward_raw(batch), sizes, original_sizes)


def optimize_for_inference(model: nn.Module, dtype: torch.dtype | None = None) -> InferenceSnapshot:
    """A fast inference snapshot of `model` (a `DynamicATSS`): a new module that owns a prepared deep copy of the
    weights (BatchNorms fused into their convolutions, channels_last parameters, no gradients, eval mode) and is
    called like the model in eval mode. `dtype`: None or torch.float32, or torch.bfloat16 (the network in
    bfloat16; inputs cast inside, outputs float32).

    It is a snapshot: changes to `model`'s weights after this call do not reach it; call
    `optimize_for_inference(model)` again. `model` itself is not changed. See `dynamic_atss/inference/optimize.py`.
    """
    if isinstance(model, InferenceSnapshot):
        raise TypeError("optimize_for_inference: this is already a snapshot; pass the source model")
    if not all(hasattr(model, name) for name in ("forward_raw", "preprocess", "detections_from_raw", "config")):
        raise TypeError(f"optimize_for_inference expects a dynamic_atss detector, got {type(model).__name__}")
    dtype = torch.float32 if dtype is None else dtype
    if dtype not in _DTYPES:
        raise ValueError(f"optimize_for_inference: dtype must be None, torch.float32 or torch.bfloat16, got {dtype}")
    if dtype == torch.bfloat16:
        device = next(model.parameters()).device
        if device.type == "cpu" and has_native_bfloat16() is False:
            warnings.warn("this CPU has no native bfloat16 instructions (AVX512-BF16 / AMX / Arm BF16): the "
                          "bfloat16 snapshot will be slower than the float32 one; use dtype=None", UserWarning,
                          stacklevel=2)
    prepared = copy.deepcopy(model).eval().requires_grad_(False)
    fuse_conv_batch_norms(prepared)
    for part in (prepared.backbone, prepared.fpn, prepared.head):  # not the float32 pre-processing buffers
        part.to(dtype=dtype, memory_format=torch.channels_last)
    if dtype != torch.float32:
        _keep_deformable_convs_float32(prepared)
    return InferenceSnapshot(prepared, dtype).eval()
