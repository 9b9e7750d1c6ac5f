"""Throughput of Dynamic ATSS against torchvision's FCOS and RetinaNet (R-50 FPN), measured in the same run.

For every model, input size and batch size on the current device it measures

* ``inference``: end to end, a list of (3, H, W) images in [0, 1] in, detections out (resize, normalise,
  pad, network, post-processing, NMS);
* ``raw``: the network alone on a normalised padded (B, 3, H, W) tensor (our ``forward_raw``; for the peers
  ``head(backbone(x))``);
* ``train``: one optimisation step (zero_grad, forward with random boxes, backward, SGD step); ours runs the
  combined-IoU assigner of its config;

and reports images/s, latency p50 / p90, CPU seconds per step (CPU runs; process time of all threads), peak memory
(CUDA ``max_memory_allocated``; on CPU the peak RSS increase during one step, from Linux's ``VmHWM`` after a reset,
else sampled with psutil) and our speed as a ratio to each peer's (from median latencies).

Fairness: the peers are built as their users run them from ImageNet weights (``FrozenBatchNorm2d``, stem + layer1
frozen, ``trainable_backbone_layers=3``; see `build_peer`), with random weights and ``score_thresh=0.05``; every
model gets ``min_size`` / ``max_size`` equal to the input's sides, so the same input is processed at the same size
by all. ``--amp`` / ``--channels-last`` / ``--compile`` apply to every model (options their users have too);
the model suffixes ``+opt`` / ``+opt-bf16`` (``r50+opt``: the float32 / bfloat16 inference snapshot of
`dynamic_atss.optimize_for_inference`: BatchNorms fused into the convolutions, channels_last), ``+onnx`` (the
network in ONNX Runtime, `dynamic_atss.inference`) and ``+bf16`` (the default path under bfloat16 autocast) only to
ours; these are inference variants, whose training step is their base model's. Calls of the different models are
interleaved round-robin, so slow drifts of a shared machine's load hit all of them alike.

Random weights produce almost no detections above the threshold, so post-processing is cheap for every model;
``--cls-prior 0.5`` sets every model's classification bias so that most anchors pass the threshold, the worst
case for post-processing.

The command is `dynamic-atss benchmark speed` (`dynamic_atss/cli/benchmark.py`); the contestants are built in
`peers.py`, measured by `measurement.py` and reported by `report.py`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .measurement import MODES, Contestant, environment, loadavg, make_step, measure_peak_memory, time_interleaved
from .peers import QUICK_MODEL_KWARGS, build_ours, build_peer, set_cls_prior, split_spec
from .report import Result, compute_ratios, format_markdown

__all__ = ["MODES", "run"]


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark described by `args` (see `parse_args`); returns the JSON-able report."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.amp and device.type != "cuda":
        warnings.warn("--amp is CUDA autocast (float16); ignored on CPU", stacklevel=2)
        args.amp = False
    torch.manual_seed(args.seed)
    load_start = loadavg()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    contestants: list[Contestant] = []
    overrides = dict(QUICK_MODEL_KWARGS) if args.quick else {}
    if args.backbone:
        overrides["backbone"] = args.backbone
    overrides.update(args.model_args or {})
    bases: dict[str, nn.Module] = {}
    for spec in args.models:
        name, options = split_spec(spec)
        variant = next(iter(options), "")
        if name not in bases:
            log(f"building {name} ...")
            base = build_ours(name, args.num_classes, overrides).to(device)
            if args.cls_prior is not None:
                set_cls_prior(base, args.cls_prior)
            bases[name] = base.to(memory_format=memory_format)
        base = bases[name]
        model: Any = base
        if variant == "onnx":
            if device.type != "cpu":
                raise ValueError(f"{spec}: the ONNX Runtime rows run on CPU; pass --device cpu")
            from ..inference import onnx_runtime  # noqa: PLC0415

            log(f"exporting {name} to ONNX ...")
            start = time.perf_counter()
            model = onnx_runtime(copy.deepcopy(base).eval(), threads=torch.get_num_threads())
            log(f"  exported and checked in {time.perf_counter() - start:.1f} s")
        if variant in ("opt", "opt-bf16"):
            from ..inference import optimize_for_inference  # noqa: PLC0415

            model = optimize_for_inference(base, torch.bfloat16 if variant == "opt-bf16" else None)
        contestants.append(Contestant(spec, "ours", model, base, variant))
    for peer in args.peers:
        log(f"building torchvision {peer} ({args.peer_backbone}) ...")
        model = build_peer(peer, args.num_classes, args.peer_backbone).to(device).to(memory_format=memory_format)
        if args.cls_prior is not None:
            set_cls_prior(model, args.cls_prior)
        contestants.append(Contestant(peer, "peer", model, None))
    if args.compile:
        for c in contestants:
            _compile(c)

    results: list[Result] = []
    for mode in args.modes:
        sizes = args.train_sizes if mode == "train" else args.sizes
        batches = args.train_batch_sizes if mode == "train" else args.batch_sizes
        # The training step of an inference variant (+opt, +onnx, ...) is its base's: measure it once, under the base name.
        group: list[Contestant] = []
        for c in contestants:
            if mode == "train" and c.variant:
                c = dataclasses.replace(c, name=c.name.split("+")[0], variant="")
            if all(o.name != c.name for o in group):
                group.append(c)
        for height, width in sizes:
            for batch in batches:
                log(f"{mode} {height}x{width} batch {batch}: {', '.join(c.name for c in group)}")
                steps = {c.name: make_step(c, mode, height, width, batch, args, device) for c in group}
                timings = time_interleaved(steps, args.warmup, args.iters, log)
                for c in group:
                    peak, kind = (None, None) if args.no_memory else measure_peak_memory(steps[c.name], device)
                    wall, cpu = timings[c.name]
                    assign = getattr(steps[c.name], "assign_s", [])[args.warmup: args.warmup + args.iters]
                    results.append(Result(c.name, c.kind, mode, height, width, batch, args.iters, wall,
                                          cpu if device.type == "cpu" else [], peak, kind, assign))
                del steps
                gc.collect()

    ratios = compute_ratios(results)
    markdown = format_markdown(results, ratios, args.peers)
    report = {
        "config": {
            "models": list(args.models), "peers": list(args.peers), "peer_backbone": args.peer_backbone,
            "modes": list(args.modes), "sizes": [list(s) for s in args.sizes],
            "batch_sizes": list(args.batch_sizes), "train_sizes": [list(s) for s in args.train_sizes],
            "train_batch_sizes": list(args.train_batch_sizes), "amp": args.amp,
            "channels_last": args.channels_last, "compile": args.compile,
            "warmup": args.warmup, "iters": args.iters, "quick": args.quick, "num_classes": args.num_classes,
            "num_boxes": args.num_boxes, "cls_prior": args.cls_prior, "model_overrides": overrides,
            "score_thresh": 0.05, "ratio": "our images/s over the peer's, from median latencies",
        },
        "environment": environment(device),
        "noise": {"loadavg_start": load_start, "loadavg_end": loadavg()},
        "results": [r.to_dict() for r in results],
        "ratios": ratios,
        "markdown": markdown,
    }  # fmt: skip
    return report


def _compile(contestant: Contestant) -> None:
    for model in {id(m): m for m in (contestant.model, contestant.train_model) if isinstance(m, nn.Module)}.values():
        if hasattr(model, "forward_raw"):
            model.forward_raw = torch.compile(model.forward_raw)
        else:
            model.backbone = torch.compile(model.backbone)
            model.head = torch.compile(model.head)


