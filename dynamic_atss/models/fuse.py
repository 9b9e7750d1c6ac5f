"""An inference-only fast path: fold BatchNorm into convolutions, fuse ReLUs and residual adds, pack weights.

`fuse_for_inference(model)` rewrites a model in place (and returns it) so that it computes the same
outputs (to float rounding, ~1e-5 relative) with less work:

1. **BatchNorm folding.** Every `FrozenBatchNorm2d` / eval-mode `BatchNorm2d` (and timm's
   `BatchNormAct2d` / `FrozenBatchNormAct2d`, whose activation is kept) that directly consumes the output of a
   convolution is folded into that convolution (`w' = w * s`, `b' = (b - mean) * s + beta` with
   `s = gamma / sqrt(var + eps)`) and replaced by `nn.Identity`. This covers timm ResNet stems (plain and deep),
   the three conv/bn pairs of every bottleneck, `downsample` branches, and the DCNv2 convs of the DCN models
   (their weight is scaled and a bias added, which `deform_conv2d` adds after the modulated sum).
   Producer/consumer pairs are found by running the model once on a small input with forward hooks (a
   BatchNorm is folded only if every one of its inputs was produced by the same conv, and every output of
   that conv went to it), so no module naming convention is assumed.
2. **Activation fusion.** An `nn.ReLU` that consumes a (folded) conv's output is fused into the conv.
   Residual blocks of timm ResNets (`Bottleneck`, `BasicBlock` without SE / drop-path) are wrapped so that
   the last conv also adds the shortcut and applies the final ReLU in one kernel.
3. **CPU kernels.** On CPU (float32), every `nn.Conv2d` becomes a `FusedConv2d` that runs oneDNN's fused
   `mkldnn._convolution_pointwise` kernel with a weight packed once into oneDNN's blocked layout (instead of
   re-packing the weight on every call, which dominates on the small P6/P7 levels) and the ReLU / add+ReLU
   as post-ops. Elsewhere (CUDA, autograd, other dtypes) it falls back to `F.conv2d` + the same epilogue.
4. **Winograd** F(2x2, 3x3) for the wide 3x3 / stride-1 convs (head towers, FPN outputs, ResNet stages 3-4)
   on CPU: 2.25x fewer multiply-adds for half of the network's work; float32 rounding differences only.
5. **channels_last** memory format for the parameters (and hence the activations), which oneDNN and cuDNN
   prefer; the head's outputs then flatten without a copy.

`verify=True` (default) checks the rewritten model against the original on a random input and raises if they
differ, so a pattern this module does not understand can never silently change the outputs.

Measured on 2 shared CPU cores (AMD EPYC, torch 2.14, R-50 at 800x1216, batch 1, random weights): 3.5 s
unfused -> 2.4 s with 1-3 and 5 -> 2.05 s with Winograd too; torchvision FCOS R-50 FPN: 3.4-3.5 s.

The fused model is for inference: its parameters are frozen (`requires_grad=False`) and its `state_dict` no
longer has the BatchNorm entries; load weights first, then fuse. Folding is exact in real arithmetic; in float32
outputs change by rounding only (tests: ~1e-5 relative).
"""

from __future__ import annotations

import copy
import math
import threading
import warnings
from collections import OrderedDict
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from .dcn import ModulatedDeformConv2d

__all__ = [
    "FusedConv2d", "FusedResidualBlock", "fold_conv_bn", "fuse_for_inference", "has_mkldnn_fusion",
    "winograd_conv3x3", "winograd_weight",
]

_CONVS = (nn.Conv2d, ModulatedDeformConv2d)


def has_mkldnn_fusion() -> bool:
    """Whether this PyTorch build has oneDNN's fused CPU convolution (`torch.ops.mkldnn._convolution_pointwise`)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._convolution_pointwise  # noqa: B018
        torch._C._nn.mkldnn_reorder_conv2d_weight  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


# ----------------------------------------------------------------------------------------------- BN folding
def _bn_classes() -> tuple[type, ...]:
    classes: list[type] = [nn.BatchNorm2d, FrozenBatchNorm2d]
    try:
        from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d  # noqa: PLC0415

        classes += [BatchNormAct2d, FrozenBatchNormAct2d]
    except ImportError:  # pragma: no cover - old timm
        pass
    return tuple(classes)


def _bn_scale_shift(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """(scale, shift) with bn(x) == x * scale + shift per channel (eval mode)."""
    running_mean, running_var = bn.running_mean, bn.running_var
    if running_mean is None or running_var is None:
        raise ValueError(f"{type(bn).__name__} without running statistics cannot be folded")
    weight = bn.weight if getattr(bn, "weight", None) is not None else torch.ones_like(running_var)
    bias = bn.bias if getattr(bn, "bias", None) is not None else torch.zeros_like(running_mean)
    eps = bn.eps
    scale = weight.double() * (running_var.double() + eps).rsqrt()
    shift = bias.double() - running_mean.double() * scale
    return scale, shift


@torch.no_grad()
def fold_conv_bn(conv: nn.Module, bn: nn.Module) -> None:
    """Fold `bn` (eval-mode statistics) into `conv` (an `nn.Conv2d` or `ModulatedDeformConv2d`) in place.

    Computed in float64 and cast back, so folding adds no error beyond the final rounding.
    """
    scale, shift = _bn_scale_shift(bn)
    weight = conv.weight
    if weight.shape[0] != scale.shape[0]:
        raise ValueError(f"cannot fold {type(bn).__name__}({scale.shape[0]}) into a conv with {weight.shape[0]} outputs")
    new_weight = (weight.double() * scale.view(-1, 1, 1, 1)).to(weight.dtype)
    old_bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
    new_bias = (old_bias * scale + shift).to(weight.dtype)
    weight.copy_(new_weight)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias.to(weight.device), requires_grad=weight.requires_grad)
    else:
        conv.bias.copy_(new_bias)


# ----------------------------------------------------------------------------------------------- Winograd
# F(2x2, 3x3) (Lavin & Gray 2016): a 3x3 / stride-1 convolution as 16 matrix products on 2x2 output tiles,
# 2.25x fewer multiply-adds than direct convolution, at float32 rounding error (~1e-6 relative). The input and
# output transforms are additions over strided views (channels_last: the channel axis stays contiguous), the
# 16 products one `torch.bmm`; tiles are processed in chunks so that the temporaries stay in cache.
_WINOGRAD_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_WORKSPACE = threading.local()


def winograd_weight(weight: Tensor) -> Tensor:
    """(K, C, 3, 3) conv weight -> (16, C, K) transformed weight `G w G^T` (computed in float64)."""
    g = torch.tensor(_WINOGRAD_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ai,kcij,bj->abck", g, weight.detach().double(), g)
    return u.reshape(16, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def _workspace(name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    buffers = getattr(_WORKSPACE, "buffers", None)
    if buffers is None:
        buffers = _WORKSPACE.buffers = {}
    numel = math.prod(shape)
    key = (name, like.device, like.dtype)
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: usable both inside and outside inference_mode
            buffer = buffers[key] = torch.empty(numel, device=like.device, dtype=like.dtype)
    return buffer[:numel].view(shape)


def winograd_conv3x3(x: Tensor, u: Tensor, bias: Tensor | None = None, relu: bool = False,
                     chunk_tiles: int = 1024) -> Tensor:
    """`conv2d(x, w, bias, stride=1, padding=1)` (+ ReLU) with `u = winograd_weight(w)`; returns channels_last.

    Inference only (writes into per-thread workspace buffers with `out=`: no autograd).
    """
    n, c, h, w = x.shape
    k = u.shape[2]
    th, tw = (h + 1) // 2, (w + 1) // 2
    wp = 2 * tw + 2
    xp = _workspace("input", (n, 2 * th + 2, wp, c), x)  # zero-padded NHWC copy of the input
    xp[:, 0].zero_()
    xp[:, h + 1:].zero_()
    xp[:, :, 0].zero_()
    xp[:, :, w + 1:].zero_()
    xp[:, 1:h + 1, 1:w + 1].copy_(x.permute(0, 2, 3, 1))
    out = torch.empty(n, 2 * th, 2 * tw, k, device=x.device, dtype=x.dtype)
    rows_per_chunk = max(1, chunk_tiles // (n * tw))
    for r0 in range(0, th, rows_per_chunk):
        rows = min(th, r0 + rows_per_chunk) - r0
        src = xp[:, 2 * r0: 2 * r0 + 2 * rows + 2]
        d = [src[:, i: i + 2 * rows: 2] for i in range(4)]  # (n, rows, wp, c)
        # input transform B^T d B, first over tile rows, then over tile columns
        r = _workspace("rows", (4, n, rows, wp, c), x)
        torch.sub(d[0], d[2], out=r[0])
        torch.add(d[1], d[2], out=r[1])
        torch.sub(d[2], d[1], out=r[2])
        torch.sub(d[1], d[3], out=r[3])
        v = _workspace("v", (16, n, rows, tw, c), x)
        for a in range(4):
            e = [r[a][:, :, j: j + 2 * tw: 2] for j in range(4)]
            torch.sub(e[0], e[2], out=v[4 * a])
            torch.add(e[1], e[2], out=v[4 * a + 1])
            torch.sub(e[2], e[1], out=v[4 * a + 2])
            torch.sub(e[1], e[3], out=v[4 * a + 3])
        tiles = n * rows * tw
        m = _workspace("m", (16, tiles, k), x)
        torch.bmm(v.view(16, tiles, c), u, out=m)
        if bias is not None:
            m[5].add_(bias)  # A^T e_11 A is all ones: the bias reaches every output of the tile
        m = m.view(16, n, rows, tw, k)
        # output transform A^T m A
        t = _workspace("t", (2, 4, n, rows, tw, k), x)
        for b in range(4):
            torch.add(m[b], m[4 + b], out=t[0, b])
            t[0, b].add_(m[8 + b])
            torch.sub(m[4 + b], m[8 + b], out=t[1, b])
            t[1, b].sub_(m[12 + b])
        o = out[:, 2 * r0: 2 * r0 + 2 * rows]
        for a in range(2):
            even, odd = o[:, a::2, 0::2], o[:, a::2, 1::2]
            torch.add(t[a, 0], t[a, 1], out=even)
            even.add_(t[a, 2])
            torch.sub(t[a, 1], t[a, 2], out=odd)
            odd.sub_(t[a, 3])
        if relu:
            o.clamp_min_(0)
    if 2 * th != h or 2 * tw != w:
        out = out[:, :h, :w].contiguous()
    return out.permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------------- fused conv
class FusedConv2d(nn.Conv2d):
    """`nn.Conv2d` + an optional fused epilogue: `"relu"`, or (via `forward_add_relu`) `relu(conv(x) + other)`.

    On CPU in float32 without autograd it runs oneDNN's fused kernel with a packed weight; otherwise
    `F.conv2d` followed by the same epilogue. Outputs of the oneDNN path are channels_last. Parameter names are
    those of `nn.Conv2d`, so weights load unchanged.

    Packed weights are cached per input shape (at most `max_packed` shapes per conv, least recently used first
    out; re-packed if the weight changes), because oneDNN's best weight layout depends on the input shape.
    """

    max_packed = 8
    winograd_min_pixels = 600  # below this output size direct convolution wins (P6 / P7)

    def __init__(self, *args: Any, activation: str = "none", prepack: bool = True, winograd: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if activation not in ("none", "relu"):
            raise ValueError(f"activation must be 'none' or 'relu', got {activation!r}")
        self.activation = activation
        self.prepack = prepack
        self._packed: OrderedDict[tuple, Tensor] = OrderedDict()
        self.winograd = False
        self._winograd_weight: tuple[tuple, Tensor] | None = None
        self.set_winograd(winograd)

    def winograd_eligible(self) -> bool:
        return (
            self.kernel_size == (3, 3) and self.stride == (1, 1) and self.dilation == (1, 1)
            and self.padding == (1, 1) and self.groups == 1 and self.padding_mode == "zeros"
        )

    def set_winograd(self, enabled: bool) -> None:
        """Use Winograd F(2x2, 3x3) on the CPU fast path (3x3, stride 1, padding 1, no groups only)."""
        self.winograd = bool(enabled) and self.winograd_eligible()

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, activation: str = "none", prepack: bool = True) -> FusedConv2d:
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.__dict__.update({k: v for k, v in conv.__dict__.items() if k not in ("_parameters", "_buffers", "_modules")})
        fused._parameters = dict(conv._parameters)
        fused._buffers = dict(conv._buffers)
        fused._modules = dict(conv._modules)
        fused.activation = activation
        fused.prepack = prepack
        fused._packed = OrderedDict()
        fused.winograd = False
        fused._winograd_weight = None
        return fused

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation}" + (", winograd" if self.winograd else "")

    # The oneDNN path ------------------------------------------------------------------------------
    def _use_mkldnn(self, x: Tensor) -> bool:
        return (
            self.prepack
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and self.weight.device.type == "cpu"
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)  # "same" / "valid" strings: use F.conv2d
            and x.dim() == 4
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
            and _MKLDNN_FUSION
        )

    def _packed_weight(self, x: Tensor) -> Tensor:
        # oneDNN picks the blocked weight layout from the input shape too (e.g. the 256-channel 3x3 convs of
        # the head get one layout at 100x152 and another at 25x38); a weight packed for the wrong layout is
        # re-ordered on every call, which is slower than not packing. So pack per input shape (a small LRU:
        # the shared head sees one shape per FPN level).
        weight = self.weight
        key = (tuple(x.shape), weight.data_ptr(), weight._version)
        packed = self._packed.get(key)
        if packed is None:
            with torch.no_grad():
                packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    weight.detach().contiguous().to_mkldnn(), list(self.padding), list(self.stride),
                    list(self.dilation), self.groups, list(x.shape),
                )
            self._packed[key] = packed
            while len(self._packed) > self.max_packed:
                self._packed.popitem(last=False)
        else:
            self._packed.move_to_end(key)
        return packed

    def _bias(self) -> Tensor | None:
        return None if self.bias is None else self.bias.detach()

    def _winograd_u(self) -> Tensor:
        weight = self.weight
        key = (weight.data_ptr(), weight._version)
        if self._winograd_weight is None or self._winograd_weight[0] != key:
            self._winograd_weight = (key, winograd_weight(weight))
        return self._winograd_weight[1]

    def forward(self, x: Tensor) -> Tensor:
        if self.winograd and self._use_mkldnn(x) and x.shape[-2] * x.shape[-1] >= self.winograd_min_pixels:
            return winograd_conv3x3(x, self._winograd_u(), self._bias(), self.activation == "relu")
        if self._use_mkldnn(x):
            return torch.ops.mkldnn._convolution_pointwise(
                x, self._packed_weight(x), self._bias(), list(self.padding), list(self.stride),
                list(self.dilation), self.groups, self.activation, [], "",
            )
        y = self._conv_forward(x, self.weight, self.bias)
        return F.relu(y, inplace=True) if self.activation == "relu" else y

    def forward_add_relu(self, x: Tensor, other: Tensor) -> Tensor:
        """`relu(conv(x) + other)` (this module's own activation is not applied)."""
        if self._use_mkldnn(x) and other.shape[0] == x.shape[0] and other.dtype == x.dtype and not other.requires_grad:
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, other, self._packed_weight(x), self._bias(), list(self.padding), list(self.stride),
                list(self.dilation), self.groups, "add", None, "relu", [], "",
            )
        y = self._conv_forward(x, self.weight, self.bias)
        return F.relu(y + other, inplace=True)


_MKLDNN_FUSION = has_mkldnn_fusion()


class FusedResidualBlock(nn.Module):
    """A timm ResNet `Bottleneck` / `BasicBlock` after folding: its convs (ReLUs fused where possible) and the
    last conv doing `relu(conv(x) + shortcut)` in one kernel. Submodule names are the block's own (`conv1`,
    `act2`, ..., `downsample`), so the state dict keys do not change."""

    def __init__(self, block: nn.Module, steps: list[tuple[str, str | None]], last: str) -> None:
        super().__init__()
        names = {n for step in steps for n in step if n} | {last, "downsample"}
        for name, child in block.named_children():
            if name in names:
                self.add_module(name, child)
        self.steps = list(steps)  # (conv, activation module or None) before the last conv
        self.last = last
        self.has_downsample = getattr(block, "downsample", None) is not None

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.downsample(x) if self.has_downsample else x
        y = x
        for conv, act in self.steps:
            y = getattr(self, conv)(y)
            if act is not None:
                y = getattr(self, act)(y)
        return getattr(self, self.last).forward_add_relu(y, shortcut)


# ----------------------------------------------------------------------------------------------- tracing
def _is_identity_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Identity) or (isinstance(module, nn.Dropout) and not module.training)


def _trace_producers(model: nn.Module, run: Callable[[], Any]) -> tuple[dict[str, set], dict[str, list], dict[str, int]]:
    """Run `run()` with hooks on the leaf modules. Returns, per module name, the set of producers of its input
    (module names, or None for "not produced by a hooked module", e.g. by functional code or modified in place
    since), the list of consumers of its outputs, and its call count. Runs under `no_grad` (not
    `inference_mode`, whose tensors have no version counter)."""
    producer_of: dict[int, tuple[str, int]] = {}  # id(tensor) -> (module name, tensor version when produced)
    inputs_from: dict[str, set] = {}
    consumers: dict[str, list] = {}
    calls: dict[str, int] = {}
    keep: list[Tensor] = []  # keep traced tensors alive so that ids are not reused
    handles = []

    def pre_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0] if args else None
            producer = None
            if isinstance(x, Tensor) and id(x) in producer_of:
                source, version = producer_of[id(x)]
                # Modified in place since (e.g. `x += shortcut` in a residual block): no longer that module's output.
                producer = source if x._version == version else None
            inputs_from.setdefault(name, set()).add(producer)
            if producer is not None:
                consumers.setdefault(producer, []).append(name)

        return hook

    def post_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, Tensor):
                producer_of[id(output)] = (name, output._version)
                keep.append(output)

        return hook

    for name, module in model.named_modules():
        if next(module.children(), None) is not None and not isinstance(module, ModulatedDeformConv2d):
            continue  # containers
        if _is_identity_like(module):
            continue  # returns its input object: transparent to the data-flow trace
        handles.append(module.register_forward_pre_hook(pre_hook(name)))
        handles.append(module.register_forward_hook(post_hook(name)))
    try:
        with torch.inference_mode(False), torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return inputs_from, consumers, calls


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _default_runner(model: nn.Module, example_input: Tensor | None) -> tuple[Callable[[], Any], Tensor]:
    if example_input is None:
        if not hasattr(model, "forward_raw"):
            raise ValueError("pass example_input= for a model without forward_raw")
        anchors = getattr(getattr(model, "config", None), "anchors", None)
        side = 2 * max(getattr(anchors, "strides", (128,))) if anchors is not None else 256
        generator = torch.Generator().manual_seed(0)
        # 256 x 288 for the standard strides: P3 (32 x 36) is large enough for the Winograd path to be verified
        example_input = torch.randn(1, 3, side, side + 32, generator=generator)
    param = next(model.parameters(), None)
    if param is not None:
        example_input = example_input.to(param.device, param.dtype)
    forward = model.forward_raw if hasattr(model, "forward_raw") else model
    return (lambda: forward(example_input)), example_input


def _flatten(output: Any) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for v in output.values() for t in _flatten(v)]
    if isinstance(output, (list, tuple)):
        return [t for v in output for t in _flatten(v)]
    return []


# ----------------------------------------------------------------------------------------------- entry point
@torch.no_grad()
def fuse_for_inference(
    model: nn.Module,
    *,
    channels_last: bool | None = None,
    prepack: bool | None = None,
    fuse_activations: bool = True,
    example_input: Tensor | None = None,
    verify: bool = True,
    rtol: float = 1e-3,
    inplace: bool = True,
    winograd: bool | int | None = None,
) -> nn.Module:
    """Rewrite `model` for fast inference (see the module docstring) and return it (in eval mode).

    Args:
        channels_last: convert parameters to channels_last; default: yes (helps with oneDNN and cuDNN).
        prepack: use oneDNN's fused kernels with packed weights on CPU; default: when this build has them.
        fuse_activations: fuse ReLUs (and residual add + ReLU) into the convs.
        example_input: input for the data-flow trace and the check; default for `DynamicATSS`: a random
            (1, 3, 256, 288) image batch through `forward_raw`.
        verify: compare `forward_raw` (or `model(example_input)`) before and after; `RuntimeError` if any
            output differs by more than `rtol` relative to its largest magnitude.
        inplace: rewrite `model` itself (default) or a deep copy.
        winograd: on the CPU fast path, run the 3x3 / stride-1 convs with at least this many input and output
            channels (`True` / default `None`: 256, i.e. the head towers, the FPN outputs and the 3x3 convs of
            ResNet stages 3-4) as Winograd F(2x2, 3x3) on outputs of >= `FusedConv2d.winograd_min_pixels`
            pixels: 2.25x fewer multiply-adds, float32 rounding differences only (~1e-6 relative per conv).
            `False`: direct convolution everywhere.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    channels_last = True if channels_last is None else channels_last
    prepack = _MKLDNN_FUSION if prepack is None else (prepack and _MKLDNN_FUSION)
    run, example_input = _default_runner(model, example_input)
    reference = [t.detach().clone() for t in _flatten(run())] if verify else None

    modules = dict(model.named_modules())
    inputs_from, consumers, calls = _trace_producers(model, run)
    bn_classes = _bn_classes()

    # 1. fold BN into the conv that feeds it (only when that conv feeds nothing else).
    folded: dict[str, str] = {}  # bn name -> conv name
    for name, module in modules.items():
        if not isinstance(module, bn_classes) or name not in inputs_from:
            continue
        if isinstance(module, nn.BatchNorm2d) and module.training:
            continue
        producers = inputs_from[name]
        if len(producers) != 1:
            continue
        (conv_name,) = producers
        conv = modules.get(conv_name) if conv_name is not None else None
        if not isinstance(conv, _CONVS) or set(consumers.get(conv_name, [])) != {name}:
            continue
        if calls.get(conv_name) != calls.get(name):
            continue
        fold_conv_bn(conv, module)
        act = getattr(module, "act", None)  # timm BatchNormAct2d: keep drop + act
        drop = getattr(module, "drop", None)
        if act is not None and not isinstance(act, nn.Identity):
            replacement: nn.Module = nn.Sequential(drop, act) if drop is not None and not _is_identity_like(drop) else act
        else:
            replacement = nn.Identity()
        _set_module(model, name, replacement)
        folded[name] = conv_name

    # 2. ReLU modules fed by a plain conv (directly, or through a folded BN): fuse into the conv.
    relu_of: dict[str, str] = {}  # conv name -> relu name
    if fuse_activations:
        for name, module in modules.items():
            if not isinstance(module, nn.ReLU) or name not in inputs_from or len(inputs_from[name]) != 1:
                continue
            (source,) = inputs_from[name]
            conv_name = folded.get(source, source)
            if source in folded:
                if set(consumers.get(source, [])) != {name}:
                    continue
            elif set(consumers.get(source or "", [])) != {name}:
                continue
            conv = modules.get(conv_name) if conv_name is not None else None
            if type(conv) is not nn.Conv2d or calls.get(conv_name) != calls.get(name):
                continue
            relu_of[conv_name] = name
            _set_module(model, name, nn.Identity())

    # 3. plain convs -> FusedConv2d (same parameters).
    if winograd is None:
        winograd = True
    min_channels = 256 if winograd is True else int(winograd)
    for name, module in list(model.named_modules()):
        if type(module) is nn.Conv2d:
            fused = FusedConv2d.from_conv(module, "relu" if name in relu_of else "none", prepack)
            if winograd and prepack:
                fused.set_winograd(min(module.in_channels, module.out_channels) >= min_channels)
            _set_module(model, name, fused)

    # 4. timm residual blocks: last conv does add + ReLU.
    if fuse_activations:
        _fuse_residual_blocks(model, folded, relu_of)

    if channels_last:
        model.to(memory_format=torch.channels_last)
    for param in model.parameters():
        param.requires_grad_(False)

    if verify:
        outputs = [t.detach() for t in _flatten(run())]
        _check_close(reference, outputs, rtol)
    model.fused_for_inference = True  # marker: BN entries are gone from the state dict, do not save as a checkpoint
    return model


def _fuse_residual_blocks(model: nn.Module, folded: dict[str, str], relu_of: dict[str, str]) -> None:
    try:
        from timm.models.resnet import BasicBlock, Bottleneck  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return
    folded_convs = set(folded.values())
    for name, block in list(model.named_modules()):
        if type(block) is Bottleneck:
            inner, last, last_act = [("conv1", "act1"), ("conv2", "act2")], "conv3", "act3"
        elif type(block) is BasicBlock:
            inner, last, last_act = [("conv1", "act1")], "conv2", "act2"
        else:
            continue
        prefix = name + "." if name else ""
        steps = []
        for conv, act in inner:
            act_module = getattr(block, act)
            if isinstance(act_module, nn.Identity):  # fused into the conv
                steps.append((conv, None))
            elif isinstance(getattr(block, conv), _CONVS) and isinstance(act_module, nn.ReLU):
                steps.append((conv, act))  # e.g. a DCN conv: its ReLU stays a module
            else:
                steps = None
                break
        last_conv = getattr(block, last)
        ok = (
            steps is not None
            and getattr(block, "se", None) is None
            and getattr(block, "drop_path", None) is None
            and all(isinstance(getattr(block, e, nn.Identity()), nn.Identity) for e in ("drop_block", "aa"))
            and all(isinstance(getattr(block, "bn" + c[-1], nn.Identity()), nn.Identity) for c, _ in inner)
            and isinstance(last_conv, FusedConv2d)
            and last_conv.activation == "none"
            and prefix + last in folded_convs
            and isinstance(getattr(block, "bn" + last[-1], None), nn.Identity)
            and type(getattr(block, last_act)) is nn.ReLU
        )
        if ok:
            _set_module(model, name, FusedResidualBlock(block, steps, last))


def _check_close(reference: list[Tensor], outputs: list[Tensor], rtol: float) -> None:
    if len(reference) != len(outputs):
        raise RuntimeError(f"fuse_for_inference changed the number of outputs ({len(reference)} -> {len(outputs)})")
    for index, (ref, out) in enumerate(zip(reference, outputs)):
        if ref.shape != out.shape:
            raise RuntimeError(f"fuse_for_inference changed output {index}'s shape {tuple(ref.shape)} -> {tuple(out.shape)}")
        ref, out = ref.double(), out.double()
        scale = ref.abs().max().clamp(min=1e-6)
        error = float((ref - out).abs().max() / scale)
        if not error <= rtol:
            raise RuntimeError(
                f"fuse_for_inference changed output {index} by {error:.2e} relative (tolerance {rtol:g}); "
                "a conv/BN pattern was not understood. Call it with verify=False to inspect, and report the model."
            )
    if not reference:
        warnings.warn("fuse_for_inference: the model returned no tensors to verify", stacklevel=3)
