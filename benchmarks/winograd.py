#!/usr/bin/env python
"""Winograd F(4x4, 3x3) vs oneDNN's direct convolution, per layer shape of Dynamic ATSS R-50, in one run.

    python benchmarks/winograd.py --threads 2             # the shapes of 800x1216 inference and 2 x 512² training
    python benchmarks/winograd.py --shapes 1x256x256x100x152 --iters 9

For each (N, C, K, H, W) it times, interleaved, the forward (inference mode), the input gradient and the filter
gradient of both, and prints the speed-ups (direct time / Winograd time, medians) and Winograd's relative error
against a float64 convolution. The thresholds in `dynamic_atss/models/winograd.py` (`MIN_IN_CHANNELS`,
`MIN_OUT_CHANNELS`) come from this table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dynamic_atss.models.winograd import _convolve, _weight_gradient, winograd_weight

# (N, C, K, H, W): R-50 stage 2-4 3x3 convs, FPN outputs and head towers / classifier at 800x1216, then 2 x 512²;
# 64 -> 64 (stage 1) is below the threshold, shown for the record
DEFAULT_SHAPES = [
    (1, 64, 64, 200, 304), (1, 128, 128, 100, 152), (1, 256, 256, 50, 76), (1, 512, 512, 25, 38),
    (1, 256, 256, 100, 152), (1, 256, 80, 100, 152), (1, 256, 256, 13, 19),
    (2, 256, 256, 64, 64), (2, 256, 256, 32, 32), (2, 256, 80, 64, 64),
]


def _median_ms(step: Callable[[], object], times: list[float]) -> None:
    start = time.perf_counter()
    step()
    times.append(1e3 * (time.perf_counter() - start))


def measure(shape: tuple[int, ...], iters: int) -> dict[str, float]:
    n, c, k, h, w = shape
    x = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(k, c, 3, 3) * (2 / (9 * c)) ** 0.5).contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(n, k, h, w).contiguous(memory_format=torch.channels_last)
    transformed, flipped = winograd_weight(weight), winograd_weight(weight.flip(2, 3).transpose(0, 1))
    steps = {
        "forward direct": lambda: F.conv2d(x, weight, padding=1),
        "forward winograd": lambda: _convolve(x, transformed, None),
        "input grad direct": lambda: torch.ops.aten.convolution_backward(
            grad_out, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False]),
        "input grad winograd": lambda: _convolve(grad_out, flipped, None),
        "filter grad direct": lambda: torch.ops.aten.convolution_backward(
            grad_out, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, False]),
        "filter grad winograd": lambda: _weight_gradient(x, grad_out),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    with torch.no_grad():
        for name, step in steps.items():  # warm-up
            step()
        for _ in range(iters):
            for name, step in steps.items():
                _median_ms(step, times[name])
        expected = F.conv2d(x.double(), weight.double(), padding=1)
        error = float((expected - _convolve(x, transformed, None).double()).abs().max() / expected.abs().max())
    result = {name: statistics.median(t) for name, t in times.items()}
    result["error"] = error
    return result


def parse_shape(text: str) -> tuple[int, ...]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 5:
        raise argparse.ArgumentTypeError(f"shape must be NxCxKxHxW, got {text!r}")
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=DEFAULT_SHAPES, help="NxCxKxHxW ...")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms are medians of {args.iters} "
          "interleaved calls; speed-up = direct / Winograd")
    print("| N x C -> K @ H x W | forward ms direct / Winograd | x | input grad x | filter grad x | rel. error |")
    print("|---|---|---|---|---|---|")
    for shape in args.shapes:
        r = measure(shape, args.iters)
        n, c, k, h, w = shape
        print(f"| {n} x {c} -> {k} @ {h} x {w} | {r['forward direct']:.1f} / {r['forward winograd']:.1f} | "
              f"{r['forward direct'] / r['forward winograd']:.2f} | "
              f"{r['input grad direct'] / r['input grad winograd']:.2f} | "
              f"{r['filter grad direct'] / r['filter grad winograd']:.2f} | {r['error']:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
