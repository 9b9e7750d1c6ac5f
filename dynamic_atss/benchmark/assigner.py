"""Benchmark of the combined-IoU assigner (a script that prints numbers, not a test).

Default problem: 8 images x 50 GTs, R-50 anchors of an 800x1216 padded input (strides 8..128, one anchor of
side 8*stride per location: 20267 anchors), CPU. Rows:

- batched, combined IoUs (pred_weight=1, anchor_weight=1): one call for the whole batch;
- batched, anchor-only (pred_weight=0, predictions still passed, as the detector's training step does);
- per-image loop, combined / anchor-only: the same assigner called once per image (B=1);
- per-image dense (original ATSS code style): per image, the full N x G IoU and distance matrices.

    dynamic-atss benchmark assigner [--repeats 7] [--threads 2] [--device cpu] [--json out.json] [--train-step]

`--train-step` also times an R-50 training step (batch 2, 512x512, random weights) with combined vs
anchor-only assignment for each head family in `--train-models` (default: ATSS `r50` and GFLV2 `gflv2_r50`),
with the time per step spent in the assigner and in decoding the predicted boxes it uses
(`head.assignment_boxes`: delta decoding for ATSS, the softmax integral of 4 x 17 bins for GFLV2).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torchvision.ops import box_iou

from ..config import AnchorConfig
from ..detection.anchors import AnchorGenerator, BoxCoder
from ..detection.assigner import CombinedIoUAssigner
from .timing import timed_method


def make_problem(batch: int, num_gt: int, height: int, width: int, device: torch.device, seed: int = 0):
    config = AnchorConfig()
    sizes = [(math.ceil(height / s), math.ceil(width / s)) for s in config.strides]
    anchors, num_per_level = AnchorGenerator(config)(sizes, device)
    gen = torch.Generator().manual_seed(seed)
    side = torch.exp(torch.empty(batch, num_gt, 2).uniform_(math.log(12), math.log(500), generator=gen))
    side = torch.minimum(side, torch.tensor([width - 2.0, height - 2.0]))
    xy = torch.rand(batch, num_gt, 2, generator=gen) * (torch.tensor([width, height]) - side)
    gt = torch.cat([xy, xy + side], dim=-1).to(device)
    mask = torch.ones(batch, num_gt, dtype=torch.bool, device=device)
    deltas = (torch.randn(batch, anchors.shape[0], 4, generator=gen) * 0.5).to(device)
    pred = BoxCoder().decode(deltas, anchors)
    return anchors, num_per_level, gt, mask, pred, sizes


def dense_atss_per_image(anchors, num_per_level, gt, mask, pred, topk=9, margin=0.01):
    """Per-image assignment the way the original ATSS code writes it (dense N x G), combined IoUs."""
    out = []
    ac = (anchors[:, :2] + anchors[:, 2:]) / 2
    for b in range(gt.shape[0]):
        boxes = gt[b][mask[b]]
        num_anchors, num_gt = anchors.shape[0], boxes.shape[0]
        aiou = box_iou(anchors, boxes)
        piou = box_iou(pred[b], boxes)
        gc = (boxes[:, :2] + boxes[:, 2:]) / 2
        dist = (ac[:, None, :] - gc[None, :, :]).pow(2).sum(-1).sqrt()
        cands, start = [], 0
        for n in num_per_level:
            k = min(topk, n)
            cands.append(dist[start:start + n].topk(k, dim=0, largest=False).indices + start)
            start += n
        cand = torch.cat(cands, dim=0)  # (K, G)
        cols = torch.arange(num_gt, device=anchors.device)
        ca, cp = aiou[cand, cols], piou[cand, cols]
        thr = ca.mean(0) + ca.std(0) + cp.mean(0) + cp.std(0)
        is_pos = (ca + cp) >= thr[None]
        cx, cy = ac[cand, 0], ac[cand, 1]
        inside = torch.stack([cx - boxes[:, 0], cy - boxes[:, 1], boxes[:, 2] - cx, boxes[:, 3] - cy]).amin(0) > margin
        is_pos &= inside
        ciou = torch.full((num_gt, num_anchors), -math.inf, device=anchors.device)
        flat = (cand + cols * num_anchors).flatten()[is_pos.flatten()]
        ciou.view(-1)[flat] = (aiou + piou).t().contiguous().view(-1)[flat]
        best, index = ciou.max(dim=0)
        out.append(torch.where(best > -math.inf, index, -1))
    return torch.stack(out)


def timeit(fn: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return times


def bench_assigner(args, device: torch.device) -> list[dict]:
    anchors, num_per_level, gt, mask, pred, sizes = make_problem(args.batch, args.num_gt, args.height, args.width, device)
    combined = CombinedIoUAssigner(pred_weight=1.0, anchor_weight=1.0)
    anchor_only = CombinedIoUAssigner(pred_weight=0.0, anchor_weight=1.0)

    def batched(assigner, shapes=sizes):
        return lambda: assigner(anchors, num_per_level, gt, mask, pred, level_shapes=shapes)

    def per_image(assigner, shapes=sizes):
        return lambda: [assigner(anchors, num_per_level, gt[b:b + 1], mask[b:b + 1], pred[b:b + 1], level_shapes=shapes)
                        for b in range(gt.shape[0])]

    # Sanity: the per-image loop and the full search give the same assignment as the batched windowed call.
    reference = combined(anchors, num_per_level, gt, mask, pred, level_shapes=sizes).gt_index
    assert torch.equal(torch.cat([r.gt_index for r in per_image(combined)()]), reference)
    assert torch.equal(combined(anchors, num_per_level, gt, mask, pred).gt_index, reference)

    rows = [
        ("batched, combined", batched(combined)),
        ("batched, anchor-only (pred_weight=0)", batched(anchor_only)),
        ("batched, combined, full distance search (no level_shapes)", batched(combined, None)),
        ("per-image loop (B=1 calls), combined", per_image(combined)),
        ("per-image loop (B=1 calls), anchor-only", per_image(anchor_only)),
        ("per-image loop (B=1 calls), combined, full distance search", per_image(combined, None)),
        ("per-image dense N x G (original ATSS style), combined",
         lambda: dense_atss_per_image(anchors, num_per_level, gt, mask, pred)),
    ]
    results = []
    for name, fn in rows:
        times = timeit(fn, args.repeats, device)
        results.append({"name": name, "median_ms": statistics.median(times), "min_ms": min(times), "times_ms": times})
        print(f"  {name}: median {results[-1]['median_ms']:.1f} ms", file=sys.stderr)
    return results


def bench_train_step(args, device: torch.device) -> list[dict] | None:
    results = []
    for model_name in args.train_models.split(","):
        rows = _bench_train_step_model(args, device, model_name)
        if rows is None:
            return None
        results += rows
    return results


def _bench_train_step_model(args, device: torch.device, model_name: str) -> list[dict] | None:
    from ..factory import create  # noqa: PLC0415

    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 512, 512, generator=gen).to(device) for _ in range(2)]
    targets = []
    for _ in range(2):
        xy = torch.rand(8, 2, generator=gen) * 350
        wh = 16 + torch.rand(8, 2, generator=gen) * 140
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                        "labels": torch.randint(0, 80, (8,), generator=gen).to(device)})
    results = []
    for name, pred_weight in ((f"train step {model_name} 2x512x512, combined", 1.0),
                              (f"train step {model_name} 2x512x512, anchor-only", 0.0)):
        try:  # the same weights (seed) with the assignment set through the config
            torch.manual_seed(0)
            model = create(model_name, min_size=512, max_size=512, **{"assigner.pred_weight": pred_weight})
        except Exception as error:  # the model is written by someone else; do not fail the assigner benchmark
            print(f"--train-step skipped: dynamic_atss.create({model_name!r}) is not available "
                  f"({type(error).__name__}: {error})", file=sys.stderr)
            return None
        model.to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]

        def step():
            losses = model(images, targets)
            sum(losses.values()).backward()
            for p in params:
                p.grad = None

        with timed_method(CombinedIoUAssigner, "__call__") as assign, \
                timed_method(type(model.head), "assignment_boxes") as decode:
            times = timeit(step, args.train_repeats, device)
        assigner_ms = assign.total_ms / (args.train_repeats + 1)
        decode_ms = decode.total_ms / (args.train_repeats + 1)
        results.append({"name": name, "median_ms": statistics.median(times), "min_ms": min(times),
                        "times_ms": times, "assigner_ms_per_step": assigner_ms, "decode_ms_per_step": decode_ms})
        print(f"  {name}: median {results[-1]['median_ms']:.0f} ms (assigner {assigner_ms:.1f} ms, decode "
              f"{decode_ms:.1f} ms)", file=sys.stderr)
    return results


def run(args: argparse.Namespace) -> int:
    """Time the assigner (and with `args.train_step` a training step) as `dynamic-atss benchmark assigner` asks;
    prints Markdown tables (and writes `args.json`)."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    elif args.train_step:
        torch.set_num_threads(2)
    device = torch.device(args.device)

    results = bench_assigner(args, device)
    loop = next(r for r in results if r["name"].startswith("per-image loop") and r["name"].endswith("combined"))
    train = bench_train_step(args, device) if args.train_step else None

    header = (f"Assigner, {args.batch} images x {args.num_gt} GTs, {args.height}x{args.width} input "
              f"({sum(make_problem(1, 1, args.height, args.width, device)[1])} anchors), {device.type}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}, median of {args.repeats}")
    print(f"\n{header}\n")
    print("| implementation | median ms | min ms | speed-up vs per-image loop (combined) |")
    print("|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['name']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {loop['median_ms'] / r['median_ms']:.2f}x |")
    if train:
        print(f"\nTraining step (R-50, batch 2, 512x512, forward + backward, median of {args.train_repeats})\n")
        print("| assignment | step median ms | step min ms | assigner ms / step | predicted-box decode ms / step |")
        print("|---|---:|---:|---:|---:|")
        for r in train:
            print(f"| {r['name']} | {r['median_ms']:.0f} | {r['min_ms']:.0f} | {r['assigner_ms_per_step']:.1f} | "
                  f"{r['decode_ms_per_step']:.1f} |")
    if args.json:
        payload = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "machine": platform.machine(), "assigner": results, "train_step": train}
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"\nwrote {args.json}")
    return 0
