"""Winograd F(4x4, 3x3) convolutions on CPU: the 3x3 convolutions of the head towers, the FPN and the ResNet
stages at about half the arithmetic of a direct convolution, in inference and in training.

Why hand-written: a 3x3 convolution with 256 channels is compute-bound on a CPU, and oneDNN (PyTorch's CPU
convolution) has no Winograd kernels, so fp32 CPU speed cannot come from layout or fusion alone. Winograd's
minimal filtering algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016)
computes each 4x4 output tile from a 6x6 input tile with 36 multiplications per (input, output) channel pair
instead of 144. Here the tile transforms are small matrix products and the 36 channel-mixing products one batched
`torch.bmm`, all public torch. The backward pass is Winograd too (a custom `torch.autograd.Function`): the input
gradient is the same convolution with the flipped, transposed filters, and the filter gradient is a batched
product of transformed input tiles and transformed output-gradient tiles. Results equal the direct convolution up
to float32 rounding (relative error ~1e-5; tests compare with `F.conv2d`, forward and backward). cuDNN makes the
same choice on GPUs, where this module stays out of the way.

Tiles are processed in bands of tile rows so that one band's transformed tiles (36 x tiles x channels) stay in
the CPU caches, in per-thread buffers reused across calls (fresh multi-megabyte buffers are new pages from the
OS on every call: a page fault per 4 KiB).

`enable_winograd(model)` switches every eligible convolution (3x3, stride 1, padding 1, dilation 1, one group,
enough channels to gain) to this path; a module keeps its class's other behaviour (`FoldingConv2d` still folds
its BatchNorm first), its parameters and its state-dict keys. A call falls back to the direct convolution when the
input is not a float32 CPU tensor, is a map of fewer than `MIN_PIXELS` pixels, under autocast, or while tracing /
exporting (exporters see a plain convolution). `disable_winograd(model)` switches back. The detector enables it
by default (`DynamicATSS`).
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterator
from fractions import Fraction
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .fold import FoldingConv2d, is_tracing, tensor_version

__all__ = ["WinogradConv2d", "WinogradFoldingConv2d", "disable_winograd", "enable_winograd", "is_eligible",
           "release_workspace", "winograd_conv3x3", "winograd_matrices", "winograd_weight"]

TILE = 4  # output tile side m of F(m x m, 3x3)
N = TILE + 2  # input tile side n
# Interpolation points of F(4x4, 3x3), with infinity (Lavin & Gray, section 4.2): they keep float32 errors small.
_POINTS = (0, 1, -1, 2, -2)
_BAND_TILES = 400  # tiles per band (all images of the batch): ~15 MB of transformed tiles at 256 channels


@cache
def winograd_matrices() -> tuple[Tensor, Tensor, Tensor]:
    """(B^T (6 x 6), G (6 x 3), A^T (4 x 6)) of F(4x4, 3x3) in float64, built exactly (rationals) by the
    Toom-Cook construction from the points p = 0, 1, -1, 2, -2 and infinity: A^T[i, j] = p_j^i;
    G[j, k] = p_j^k / prod_{l != j}(p_j - p_l); row j of B^T = the coefficients of prod_{l != j}(x - p_l), the last
    row those of prod_l (x - p_l) (the point at infinity)."""
    points = [Fraction(p) for p in _POINTS]

    def coefficients(roots: list[Fraction]) -> list[Fraction]:  # of prod (x - root), lowest power first
        poly = [Fraction(1)]
        for root in roots:
            poly = [(poly[k - 1] if k else 0) - root * (poly[k] if k < len(poly) else 0) for k in range(len(poly) + 1)]
        return poly + [Fraction(0)] * (N - len(poly))

    input_t = [coefficients([q for q in points if q != p]) for p in points] + [coefficients(points)]
    filter_t = [[p**k / math.prod((p - q for q in points if q != p), start=Fraction(1)) for k in range(3)]
                for p in points] + [[Fraction(0), Fraction(0), Fraction(1)]]
    output_t = [[p**i for p in points] + [Fraction(int(i == TILE - 1))] for i in range(TILE)]
    return tuple(torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64)
                 for rows in (input_t, filter_t, output_t))


@cache
def _transforms(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(B^T, G (x) G, A^T) in `dtype` on `device`, made once per (device, dtype) (every layer call uses them; never
    written to). G (x) G is 36 x 9: row a * 6 + b, column i * 3 + j holds G[a, i] G[b, j]."""
    with torch.inference_mode(False):  # normal tensors, usable by autograd even when first made in inference mode
        input_t, filter_t, output_t = (m.to(device, dtype) for m in winograd_matrices())
        return input_t, torch.kron(filter_t, filter_t), output_t


def _matrices(like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return _transforms(like.device, like.dtype)


def winograd_weight(weight: Tensor) -> Tensor:
    """(K, C, 3, 3) filters -> (36, C, K) transformed filters `G w G^T`, in the weight's dtype (float32 rounding
    of G adds ~1e-7 relative error)."""
    if weight.dim() != 4 or weight.shape[-2:] != (3, 3):
        raise ValueError(f"Winograd F(4x4, 3x3) needs (K, C, 3, 3) filters, got {tuple(weight.shape)}")
    out_channels, channels = weight.shape[:2]
    # one (36 x 9) @ (9 x C * K) product lands directly in the (36, C, K) layout the channel products want
    flat = weight.permute(2, 3, 1, 0).reshape(9, channels * out_channels)
    return (_matrices(weight)[1] @ flat).view(N * N, channels, out_channels)


class _Workspace(threading.local):
    """Per-thread scratch buffers, reused across calls and layers (no autograd: they are written in place)."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype], Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        numel = math.prod(shape)
        buffer = self.buffers.get((name, like.dtype))
        if buffer is None or buffer.numel() < numel:
            with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
                buffer = self.buffers[(name, like.dtype)] = torch.empty(numel, dtype=like.dtype)
        return buffer[:numel].view(shape)


_WORKSPACE = _Workspace()


class _Geometry:
    """The tiling of an (N, C, H, W) input: ceil(H / 4) x ceil(W / 4) output tiles, processed in bands of tile
    rows; `padded` is the input as (N, H', W', C) with one zero row / column before and enough after for whole
    6x6 tiles."""

    def __init__(self, x: Tensor) -> None:
        self.batch, self.channels, self.height, self.width = x.shape
        self.tiles_h, self.tiles_w = -(-self.height // TILE), -(-self.width // TILE)
        self.padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, TILE * self.tiles_w + 1 - self.width,
                                                    1, TILE * self.tiles_h + 1 - self.height))
        self.band = max(1, _BAND_TILES // (self.batch * self.tiles_w))

    def bands(self) -> Iterator[tuple[int, int, int]]:
        """(first tile row, tile rows, tiles) of each band."""
        for row in range(0, self.tiles_h, self.band):
            rows = min(self.band, self.tiles_h - row)
            yield row, rows, self.batch * rows * self.tiles_w

    def transformed_input(self, row: int, rows: int, count: int, input_t: Tensor) -> Tensor:
        """B^T d B of the band's 6x6 input tiles d: (36, tiles, C), in the workspace buffer "a"."""
        padded, channels = self.padded, self.channels
        s_n, s_h, s_w, s_c = padded.stride()
        tiles = padded.as_strided((N, N, self.batch, rows, self.tiles_w, channels),
                                  (s_h, s_w, s_n, TILE * s_h, TILE * s_w, s_c),
                                  padded.storage_offset() + row * TILE * s_h)  # overlapping: a view
        tiles = _WORKSPACE.get("a", tiles.shape, padded).copy_(tiles)
        # over the tile's rows, then its columns
        half = torch.matmul(input_t, tiles.view(N, -1), out=_WORKSPACE.get("b", (N, N * count * channels), padded))
        out = _WORKSPACE.get("a", (N, N, count * channels), padded)
        return torch.matmul(input_t, half.view(N, N, -1), out=out).view(N * N, count, channels)


def _convolve(x: Tensor, transformed_weight: Tensor, bias: Tensor | None) -> Tensor:
    """The forward kernel, without autograd: (N, C, H, W) -> (N, K, H, W) channels_last."""
    geometry = _Geometry(x)
    out_channels = transformed_weight.shape[2]
    input_t, _, output_t = _matrices(x)
    # (N, K, H', W') channels_last, written through its (N, H', W', K) view; what is returned is never a view
    # (the autograd Function's output may then be modified in place, e.g. by an in-place ReLU)
    result = torch.empty(geometry.batch, out_channels, TILE * geometry.tiles_h, TILE * geometry.tiles_w,
                         dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    out = result.permute(0, 2, 3, 1)
    for row, rows, count in geometry.bands():
        transformed = geometry.transformed_input(row, rows, count, input_t)
        products = torch.bmm(transformed, transformed_weight, out=_WORKSPACE.get("b", (N * N, count, out_channels), x))
        # A^T m A, over the tile's columns then its rows: (4 columns p, 4 rows q, tiles * K)
        half = torch.matmul(output_t, products.view(N, N, -1), out=_WORKSPACE.get("a", (N, TILE, count * out_channels), x))
        tiles = torch.matmul(output_t, half.transpose(0, 1), out=_WORKSPACE.get("b", (TILE, TILE, count * out_channels), x))
        # (p, q, N, rows, tiles_w, K) -> (N, rows, q, tiles_w, p, K): the band of `out`
        tiles = tiles.view(TILE, TILE, geometry.batch, rows, geometry.tiles_w, out_channels).permute(2, 3, 1, 4, 0, 5)
        destination = out[:, TILE * row:TILE * (row + rows)].view(tiles.shape)
        if bias is None:
            destination.copy_(tiles)
        else:
            torch.add(tiles, bias, out=destination)
    if out.shape[1:3] != (geometry.height, geometry.width):
        return result[:, :, :geometry.height, :geometry.width].contiguous(memory_format=torch.channels_last)
    return result


def _weight_gradient(x: Tensor, grad_out: Tensor) -> Tensor:
    """d loss / d w (K, C, 3, 3) of `conv(x, w)` from its output gradient (N, K, H, W), without autograd:
    sum over tiles of (B^T d B)^T (A dY A^T) per transform position, then G^T . G back to 3x3."""
    geometry = _Geometry(x)
    out_channels = grad_out.shape[1]
    input_t, _, output_t = _matrices(x)
    output = output_t.T.contiguous()  # A (6 x 4)
    # (N, 4 * tiles_h, 4 * tiles_w, K): zero gradient where the tiles overhang the image
    grad = F.pad(grad_out.permute(0, 2, 3, 1), (0, 0, 0, TILE * geometry.tiles_w - geometry.width,
                                               0, TILE * geometry.tiles_h - geometry.height))
    s_n, s_h, s_w, s_c = grad.stride()
    transformed_grad_weight = x.new_zeros(N * N, geometry.channels, out_channels)
    for row, rows, count in geometry.bands():
        transformed = geometry.transformed_input(row, rows, count, input_t)
        tiles = grad.as_strided((TILE, TILE, geometry.batch, rows, geometry.tiles_w, out_channels),
                                (s_h, s_w, s_n, TILE * s_h, TILE * s_w, s_c), grad.storage_offset() + row * TILE * s_h)
        tiles = _WORKSPACE.get("c", tiles.shape, x).copy_(tiles)  # (q rows, p columns, ...)
        half = torch.matmul(output, tiles.view(TILE, -1), out=_WORKSPACE.get("d", (N, TILE * count * out_channels), x))
        grad_products = torch.matmul(output, half.view(N, TILE, -1), out=_WORKSPACE.get("c", (N, N, count * out_channels), x))
        transformed_grad_weight.baddbmm_(transformed.transpose(1, 2), grad_products.view(N * N, count, out_channels))
    # dw[k, c, i, j] = sum_ab G[a, i] G[b, j] dU[a, b, c, k]
    grad_weight = _matrices(x)[1].T @ transformed_grad_weight.view(N * N, -1)  # (9, C * K)
    return grad_weight.view(3, 3, geometry.channels, out_channels).permute(3, 2, 0, 1).contiguous()


def _winograd_pays_for_filter_gradient(x: Tensor, weight: Tensor) -> bool:
    """The filter gradient accumulates 36 x C x K values however few the tiles: with fewer tiles than C * K / 512
    (e.g. 512 channels at 25 x 38) the direct one is faster (benchmarks/winograd.py)."""
    tiles = x.shape[0] * -(-x.shape[2] // TILE) * -(-x.shape[3] // TILE)
    return tiles * 512 >= weight.shape[0] * weight.shape[1]


class _WinogradConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _convolve(x, winograd_weight(weight), bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # noqa: ANN001
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:  # the same convolution with the flipped, transposed filters
            grad_x = _convolve(grad_out, winograd_weight(weight.flip(2, 3).transpose(0, 1)), None)
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_gradient(x, grad_out) if _winograd_pays_for_filter_gradient(x, weight) else \
                torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, padding=1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias


def winograd_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                     transformed_weight: Tensor | None = None) -> Tensor:
    """`F.conv2d(x, weight, bias, stride=1, padding=1)` by Winograd F(4x4, 3x3); differentiable.

    x: (N, C, H, W), any memory format (channels_last avoids a copy); weight: (K, C, 3, 3); bias: (K,) or None;
    transformed_weight: `winograd_weight(weight)` when cached by the caller (used only without gradients).
    Returns (N, K, H, W) in channels_last memory format.
    """
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[-2:] != (3, 3) or weight.shape[1] != x.shape[1]:
        raise ValueError(f"winograd_conv3x3 needs x (N, C, H, W) and weight (K, C, 3, 3); got x {tuple(x.shape)}, "
                         f"weight {tuple(weight.shape)}")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return _WinogradConv3x3.apply(x, weight, bias)
    with torch.no_grad():
        return _convolve(x, winograd_weight(weight) if transformed_weight is None else transformed_weight, bias)


# Measured on a 2-core AVX-512 CPU (benchmarks/winograd.py), quiet machine: 256 -> 256 channels 2.0x faster than
# oneDNN's direct convolution, 512 -> 512 1.8x, 128 -> 128 1.4x, 256 -> 80 (a classifier) 1.2x, 64 -> 64 2x slower;
# when other jobs share the CPU caches, 1.3-1.5x, 1.5x, 0.8x, 0.6x and 0.45x. On small maps the tile transforms
# cost more than they save (256 -> 256 at 13 x 19: even; at 7 x 10: 2x slower).
MIN_IN_CHANNELS = 128
MIN_OUT_CHANNELS = 128
MIN_PIXELS = 256


def is_eligible(conv: nn.Module, min_in_channels: int = MIN_IN_CHANNELS,
                min_out_channels: int = MIN_OUT_CHANNELS) -> bool:
    """A plain 3x3 / stride 1 / padding 1 convolution with enough input and output channels to gain."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.dilation == (1, 1)
        and conv.padding in ((1, 1), "same") and conv.groups == 1 and conv.padding_mode == "zeros"
        and conv.in_channels >= min_in_channels and conv.out_channels >= min_out_channels
    )


class WinogradConv2d(nn.Conv2d):
    """`nn.Conv2d` whose convolution (`_conv_forward`, the step `nn.Conv2d` and `FoldingConv2d` both go through)
    runs by Winograd on CPU float32 inputs; same parameters and state dict. `enable_winograd` switches to it."""

    _winograd_cache: tuple[tuple, Tensor] | None = None

    def _transformed(self, weight: Tensor) -> Tensor | None:
        if torch.is_grad_enabled() and weight.requires_grad:
            self._winograd_cache = None  # training this conv: its weight changes every step
            return None
        # the same tensor object (a dead weak reference never matches: a new tensor at a freed address is
        # another weight), unchanged in place
        version = tensor_version(weight)
        cache = self._winograd_cache
        if cache is None or cache[0][0]() is not weight or cache[0][1] != version or version is None:
            with torch.no_grad():
                self._winograd_cache = ((weakref.ref(weight), version), winograd_weight(weight).contiguous())
        return self._winograd_cache[1]

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if (input.device.type != "cpu" or input.dtype != torch.float32 or weight.dtype != torch.float32
                or input.dim() != 4 or input.shape[-2] * input.shape[-1] < MIN_PIXELS
                or torch.is_autocast_enabled("cpu") or is_tracing()):
            return super()._conv_forward(input, weight, bias)
        return winograd_conv3x3(input, weight, bias, transformed_weight=self._transformed(weight))


class WinogradFoldingConv2d(WinogradConv2d, FoldingConv2d):
    """A backbone convolution that folds its frozen BatchNorm (`FoldingConv2d`), by Winograd."""


# the classes switched (a subclass with other forward semantics is left alone), and back
_WINOGRAD_CLASS: dict[type, type] = {nn.Conv2d: WinogradConv2d, FoldingConv2d: WinogradFoldingConv2d}
_DIRECT_CLASS = {winograd: direct for direct, winograd in _WINOGRAD_CLASS.items()}


def enable_winograd(root: nn.Module, min_in_channels: int = MIN_IN_CHANNELS,
                    min_out_channels: int = MIN_OUT_CHANNELS) -> int:
    """Switch every eligible convolution in `root` to Winograd (see the module docstring); returns how many."""
    count = 0
    for module in root.modules():
        if type(module) in _WINOGRAD_CLASS and is_eligible(module, min_in_channels, min_out_channels):
            module.__class__ = _WINOGRAD_CLASS[type(module)]
            count += 1
    return count


def disable_winograd(root: nn.Module) -> int:
    """Switch every Winograd convolution in `root` back to its direct class; returns how many."""
    count = 0
    for module in root.modules():
        if type(module) in _DIRECT_CLASS:
            module.__class__ = _DIRECT_CLASS[type(module)]
            module.__dict__.pop("_winograd_cache", None)
            count += 1
    return count


def release_workspace() -> None:
    """Free this thread's scratch buffers (tens of MB after a large input; they are reallocated on next use)."""
    _WORKSPACE.buffers.clear()
