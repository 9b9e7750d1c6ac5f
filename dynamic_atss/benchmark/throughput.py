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

CLI: ``python benchmarks/throughput.py --help`` or ``python -m dynamic_atss benchmark speed --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import dataclasses
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .timing import timed_method

__all__ = ["Result", "build_ours", "build_peer", "main", "parse_args", "run", "format_markdown"]

PEERS = ("fcos", "retinanet")
MODES = ("inference", "raw", "train")
QUICK_MODEL_KWARGS: dict[str, Any] = {
    "backbone": "test_resnet", "fpn_channels": 32, "head.channels": 32, "head.num_groups": 8,
}  # fmt: skip


# ----------------------------------------------------------------------------------------------- models
def parse_size(text: str) -> tuple[int, int]:
    """'800x1216' -> (800, 1216) (height x width); '512' -> (512, 512)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX*,]\s*(\d+))?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must look like HEIGHTxWIDTH (e.g. 800x1216), got {text!r}")
    height = int(match.group(1))
    width = int(match.group(2) or height)
    if height < 32 or width < 32:
        raise argparse.ArgumentTypeError(f"size {text!r}: both sides must be >= 32")
    return height, width


SUFFIXES = ("opt", "opt-bf16", "onnx", "bf16")  # all inference variants: their training step is their base model's


def _split_spec(spec: str) -> tuple[str, set[str]]:
    """'r50+onnx' -> ('r50', {'onnx'})."""
    name, *options = spec.split("+")
    unknown = set(options) - set(SUFFIXES)
    if unknown or not name or len(options) > 1:
        raise ValueError(f"model {spec!r}: the suffixes are '+opt' / '+opt-bf16' (optimize_for_inference, float32 / "
                         f"bfloat16), '+onnx' (ONNX Runtime) or '+bf16' (bfloat16 autocast), one at a time; got {options}")
    return name, set(options)


def build_ours(name: str, num_classes: int = 80, overrides: dict[str, Any] | None = None) -> nn.Module:
    """Our model with random weights: a registered name (``r50``, ``dynamic_atss_r101_dcn``) with config
    overrides, or saved weights (``local-dir:/path``, ``hf-hub:org/name``, or a folder path)."""
    from ..factory import create  # noqa: PLC0415

    if name.startswith(("local-dir:", "hf-hub:")) or os.path.isdir(name):
        source = name if name.startswith(("local-dir:", "hf-hub:")) else f"local-dir:{name}"
        return create(source)
    return create(name, pretrained=False, num_classes=num_classes, **(overrides or {}))


def build_peer(kind: str, num_classes: int = 80, backbone: str = "resnet50", **kwargs: Any) -> nn.Module:
    """torchvision's FCOS / RetinaNet R-50 FPN configured as their users run them from ImageNet weights.

    ``fcos_resnet50_fpn(weights=None, weights_backbone=None, trainable_backbone_layers=3)`` would NOT give that
    model: without backbone weights torchvision switches to trainable ``BatchNorm2d`` and trains every layer
    (and warns that ``trainable_backbone_layers`` is ignored). With ImageNet weights its builders do exactly
    what this function does (``resnet50(norm_layer=FrozenBatchNorm2d)``, ``_resnet_fpn_extractor(backbone, 3,
    returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))``), here with random weights.
    ``kwargs`` go to ``FCOS`` / ``RetinaNet`` (``min_size``, ``max_size``, ...); ``score_thresh`` defaults to 0.05.
    """
    from torchvision.models import resnet  # noqa: PLC0415
    from torchvision.models.detection import FCOS, RetinaNet  # noqa: PLC0415
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor  # noqa: PLC0415
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7  # noqa: PLC0415
    from torchvision.ops.misc import FrozenBatchNorm2d  # noqa: PLC0415

    classes = {"fcos": FCOS, "retinanet": RetinaNet}
    if kind not in classes:
        raise ValueError(f"unknown peer {kind!r}; choose from {sorted(classes)}")
    if not backbone.startswith("resnet") or not hasattr(resnet, backbone):
        raise ValueError(f"peer backbone must be a torchvision ResNet (resnet18 ... resnet152), got {backbone!r}")
    trunk = getattr(resnet, backbone)(weights=None, norm_layer=FrozenBatchNorm2d)
    body = _resnet_fpn_extractor(trunk, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    kwargs.setdefault("score_thresh", 0.05)
    return classes[kind](body, num_classes, **kwargs)


def _set_input_size(model: nn.Module, height: int, width: int) -> None:
    """min_size / max_size such that a height x width input is processed at its own size."""
    if hasattr(model, "transform"):  # torchvision
        model.transform.min_size = (min(height, width),)
        model.transform.max_size = max(height, width)
    else:
        model.config.min_size = min(height, width)
        model.config.max_size = max(height, width)


def _set_cls_prior(model: nn.Module, prior: float) -> None:
    bias = -math.log((1 - prior) / prior)
    if hasattr(model, "head") and hasattr(model.head, "classification_head"):  # torchvision
        layer = model.head.classification_head.cls_logits
    else:
        layer = model.head.cls_logits
    with torch.no_grad():
        layer.bias.fill_(bias)


# ----------------------------------------------------------------------------------------------- memory
_LIBC = None


def _malloc_trim() -> None:
    global _LIBC
    if sys.platform != "linux":
        return
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
        return int(match.group(1)) if match else None
    except OSError:
        return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: reset VmHWM to the current RSS
        return True
    except OSError:
        return False


class _RssSampler:
    """Fallback without /proc/self/clear_refs: sample the RSS with psutil every `interval` s in a thread."""

    def __init__(self, interval: float = 0.002) -> None:
        import psutil  # noqa: PLC0415

        self._process = psutil.Process()
        self.interval = interval
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def measure_peak_memory(step: Callable[[], Any], device: torch.device) -> tuple[float | None, str]:
    """Peak memory of one call of `step`, in MiB, and what was measured."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_memory_allocated"
    _malloc_trim()
    if _reset_peak_rss():
        base = _proc_status_kib("VmRSS")
        step()
        peak = _proc_status_kib("VmHWM")
        if base is not None and peak is not None:
            return max(peak - base, 0) / 1024, "peak_rss_delta"
    try:
        with _RssSampler() as sampler:
            base = sampler.peak
            step()
        return max(sampler.peak - base, 0) / 2**20, "peak_rss_delta_sampled"
    except ImportError:
        pass
    import resource  # noqa: PLC0415

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024  # bytes on macOS, KiB on Linux
    return (after - before) * scale, "process_max_rss_increase_lower_bound"


# ----------------------------------------------------------------------------------------------- runners
@dataclasses.dataclass
class Contestant:
    name: str
    kind: str  # "ours" or "peer"
    model: Any  # inference model: an nn.Module, or an OnnxRuntimeDetector (+onnx)
    train_model: nn.Module | None  # the PyTorch model for the training step (None: same as model)
    variant: str = ""  # "" or one of SUFFIXES: inference-only variants share their base's training step


def _random_targets(batch: int, height: int, width: int, num_boxes: int, num_classes: int, device: torch.device,
                    generator: torch.Generator) -> list[dict[str, Tensor]]:
    targets = []
    for _ in range(batch):
        wh = torch.rand(num_boxes, 2, generator=generator) * 0.45 + 0.05  # 5% .. 50% of the side
        wh = wh * torch.tensor([width, height])
        xy = torch.rand(num_boxes, 2, generator=generator) * (torch.tensor([width, height]) - wh)
        boxes = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(0, num_classes, (num_boxes,), generator=generator)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return targets


def _autocast(device: torch.device, amp: bool, bf16: bool = False):
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _raw_forward(model: nn.Module) -> Callable[[Tensor], Any]:
    if hasattr(model, "forward_raw"):
        return model.forward_raw

    def forward(x: Tensor) -> Any:  # torchvision: the network without transform / post-processing
        features = model.backbone(x)
        return model.head(list(features.values()))

    return forward


def make_step(contestant: Contestant, mode: str, height: int, width: int, batch: int, args: argparse.Namespace,
              device: torch.device) -> Callable[[], Any]:
    """A zero-argument callable running one inference / raw / train step (synchronised on CUDA)."""
    generator = torch.Generator().manual_seed(args.seed)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    bf16 = contestant.variant == "bf16"
    onnx = contestant.variant == "onnx"
    if mode == "inference":
        model = contestant.model
        _set_input_size(model.model if onnx else model.eval(), height, width)
        images = [torch.rand(3, height, width, generator=generator).to(device) for _ in range(batch)]

        def step() -> Any:
            with torch.inference_mode(), _autocast(device, args.amp, bf16):
                out = model(images)
            sync()
            return out

        return step

    if mode == "raw":
        model = contestant.model
        padded = (math.ceil(height / 32) * 32, math.ceil(width / 32) * 32)
        x = torch.randn(batch, 3, *padded, generator=generator).to(device).contiguous(memory_format=memory_format)
        forward = model.run_raw if onnx else _raw_forward(model.eval())

        def step() -> Any:
            with torch.inference_mode(), _autocast(device, args.amp, bf16):
                out = forward(x)
            sync()
            return out

        return step

    if mode == "train":
        model = (contestant.train_model or contestant.model).train()
        _set_input_size(model, height, width)
        images = [torch.rand(3, height, width, generator=generator).to(device) for _ in range(batch)]
        targets = _random_targets(batch, height, width, args.num_boxes, args.num_classes, device, generator)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")

        assigner = getattr(model, "assigner", None)  # ours: time the label assignment inside the step
        assign_s: list[float] = []

        def step() -> Any:
            optimizer.zero_grad(set_to_none=True)
            timing = timed_method(type(assigner), "__call__", sync) if assigner is not None else contextlib.nullcontext()
            with _autocast(device, args.amp), timing as clock:
                losses = model(images, targets)
                loss = sum(losses.values())
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            sync()
            if clock is not None:
                assign_s.append(clock.total_ms / 1000)
            return loss.detach()

        step.assign_s = assign_s  # type: ignore[attr-defined]  # per call, warm-up calls included
        return step

    raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")


# ----------------------------------------------------------------------------------------------- results
@dataclasses.dataclass
class Result:
    model: str
    kind: str
    mode: str
    height: int
    width: int
    batch_size: int
    iters: int
    latencies_s: list[float]
    cpu_s: list[float]
    peak_mem_mb: float | None = None
    mem_kind: str | None = None
    assign_s: list[float] = dataclasses.field(default_factory=list)  # train: the assigner's seconds per step

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_s)

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies_s)
        if len(data) == 1:
            return data[0]
        position = (len(data) - 1) * q / 100
        low, high = math.floor(position), math.ceil(position)
        return data[low] + (data[high] - data[low]) * (position - low)

    def to_dict(self) -> dict[str, Any]:
        mean = statistics.fmean(self.latencies_s)
        return {
            "model": self.model, "kind": self.kind, "mode": self.mode, "height": self.height, "width": self.width,
            "batch_size": self.batch_size, "iters": self.iters,
            "images_per_s": self.batch_size / mean,
            "images_per_s_p50": self.batch_size / self.p50,
            "latency_ms": {
                "p50": 1e3 * self.p50, "p90": 1e3 * self.percentile(90), "mean": 1e3 * mean,
                "min": 1e3 * min(self.latencies_s), "max": 1e3 * max(self.latencies_s),
            },
            "cv": statistics.pstdev(self.latencies_s) / mean if mean > 0 else 0.0,
            "cpu_s_per_iter": statistics.median(self.cpu_s) if self.cpu_s else None,
            "peak_mem_mb": self.peak_mem_mb,
            "mem_kind": self.mem_kind,
            "assigner_share": statistics.median(self.assign_s) / self.p50 if self.assign_s else None,
            "latencies_ms": [1e3 * t for t in self.latencies_s],
        }  # fmt: skip


def compute_ratios(results: list[Result]) -> list[dict[str, Any]]:
    """Our speed / each peer's, per (mode, size, batch): images/s from median latencies (> 1: we are faster)."""
    ratios = []
    for ours in (r for r in results if r.kind == "ours"):
        for peer in (r for r in results if r.kind == "peer"):
            if (peer.mode, peer.height, peer.width, peer.batch_size) != (ours.mode, ours.height, ours.width, ours.batch_size):
                continue
            ratios.append({
                "model": ours.model, "peer": peer.model, "mode": ours.mode, "height": ours.height,
                "width": ours.width, "batch_size": ours.batch_size, "speedup": peer.p50 / ours.p50,
                "speedup_min": min(peer.latencies_s) / min(ours.latencies_s),
                "cpu_time_ratio": (statistics.median(peer.cpu_s) / statistics.median(ours.cpu_s))
                if ours.cpu_s and peer.cpu_s and statistics.median(ours.cpu_s) > 0 else None,
            })  # fmt: skip
    return ratios


def format_markdown(results: list[Result], ratios: list[dict[str, Any]], peers: Sequence[str]) -> str:
    """One row per (model, mode, size, batch); `×fcos` etc.: our images/s over the peer's (median latencies)."""
    header = ["model", "mode", "input", "batch", "img/s", "p50 ms", "p90 ms", "CPU s/it", "peak MiB", "assigner"]
    header += [f"x{peer}" for peer in peers]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    index = {(r["model"], r["peer"], r["mode"], r["height"], r["width"], r["batch_size"]): r["speedup"] for r in ratios}
    for result in results:
        row = result.to_dict()
        cells = [
            result.model, result.mode, f"{result.height}x{result.width}", str(result.batch_size),
            f"{row['images_per_s_p50']:.3g}", f"{row['latency_ms']['p50']:.1f}", f"{row['latency_ms']['p90']:.1f}",
            "-" if row["cpu_s_per_iter"] is None else f"{row['cpu_s_per_iter']:.2f}",
            "-" if row["peak_mem_mb"] is None else f"{row['peak_mem_mb']:.0f}",
            "" if row["assigner_share"] is None else f"{100 * row['assigner_share']:.1f}%",
        ]
        for peer in peers:
            key = (result.model, peer, result.mode, result.height, result.width, result.batch_size)
            cells.append(f"{index[key]:.2f}" if key in index else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- main loop
def _time_interleaved(steps: dict[str, Callable[[], Any]], warmup: int, iters: int, log: Callable[[str], None]
                      ) -> dict[str, tuple[list[float], list[float]]]:
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
    timings: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in names}
    for i in range(iters):
        order = names[i % len(names):] + names[: i % len(names)]  # rotate who goes first
        for name in order:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            steps[name]()
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            timings[name][0].append(wall)
            timings[name][1].append(cpu)
        log(f"  iter {i + 1}/{iters}: " + ", ".join(f"{n} {timings[n][0][-1] * 1e3:.0f} ms" for n in names))
    return timings


def _environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": str(device), "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "processor": _cpu_name(),
    }  # fmt: skip
    with contextlib.suppress(ImportError):
        import torchvision  # noqa: PLC0415

        env["torchvision"] = torchvision.__version__
    with contextlib.suppress(ImportError):
        import timm  # noqa: PLC0415

        env["timm"] = timm.__version__
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor()


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark described by `args` (see `parse_args`); returns the JSON-able report."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.amp and device.type != "cuda":
        warnings.warn("--amp is CUDA autocast (float16); ignored on CPU", stacklevel=2)
        args.amp = False
    torch.manual_seed(args.seed)
    load_start = _loadavg()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    contestants: list[Contestant] = []
    overrides = dict(QUICK_MODEL_KWARGS) if args.quick else {}
    if args.backbone:
        overrides["backbone"] = args.backbone
    overrides.update(args.model_args or {})
    bases: dict[str, nn.Module] = {}
    for spec in args.models:
        name, options = _split_spec(spec)
        variant = next(iter(options), "")
        if name not in bases:
            log(f"building {name} ...")
            base = build_ours(name, args.num_classes, overrides).to(device)
            if args.cls_prior is not None:
                _set_cls_prior(base, args.cls_prior)
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
            _set_cls_prior(model, args.cls_prior)
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
                timings = _time_interleaved(steps, args.warmup, args.iters, log)
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
        "environment": _environment(device),
        "noise": {"loadavg_start": load_start, "loadavg_end": _loadavg()},
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


# ----------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dynamic_atss benchmark speed",
        description="Images/s, latency and peak memory of Dynamic ATSS vs torchvision FCOS / RetinaNet (same run).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--models", nargs="+", default=None,
                        help="our models: registered names (r50, r101_dcn, ...), local-dir:/path or hf-hub:org/name; "
                             "suffixes (inference rows; the training row is the base model's): '+opt' / '+opt-bf16' "
                             "the float32 / bfloat16 snapshot of optimize_for_inference, '+onnx' the network in "
                             "ONNX Runtime (CPU; needs onnxruntime), '+bf16' the default path under bfloat16 "
                             "autocast (default on CPU: r50 r50+opt r50+opt-bf16)")
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS,
                        help="torchvision models measured in the same run (none: --peers with no value, or --no-peers)")
    parser.add_argument("--no-peers", action="store_true", help="measure only our models")
    parser.add_argument("--peer-backbone", default=None, help="ResNet of the peers (default resnet50; --quick: resnet18)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=None,
                        help="inference / raw input sizes HxW (default 800x1216; --quick: 128x128)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="inference / raw batch sizes (default 1)")
    parser.add_argument("--train-sizes", nargs="+", type=parse_size, default=None,
                        help="training-step input sizes (default 512x512; --quick: 128x128)")
    parser.add_argument("--train-batch-sizes", nargs="+", type=int, default=None, help="training batch sizes (default 2)")
    parser.add_argument("--backbone", default=None, help="timm backbone for our models (e.g. resnet18)")
    parser.add_argument("--model-args", type=json.loads, default=None,
                        help='JSON dict of config overrides for our models, e.g. \'{"head.num_convs": 2}\'')
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--num-boxes", type=int, default=8, help="random ground-truth boxes per image (train)")
    parser.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate of the training step")
    parser.add_argument("--cls-prior", type=float, default=None,
                        help="set every model's classification prior (e.g. 0.5: most anchors pass score_thresh, "
                             "the worst case for post-processing); default: as initialised (0.01)")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--amp", action="store_true", help="CUDA autocast (float16) for every model")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format for every model")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network of every model")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per model (default 1 on CPU, 5 on CUDA)")
    parser.add_argument("--iters", type=int, default=None, help="timed calls per model (default 5 on CPU, 30 on CUDA)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--quick", action="store_true",
                        help="seconds: tiny model (test_resnet trunk, 32 channels), peers on resnet18, 128x128, 3 iters")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", default=None, help="write the report (JSON) here")
    parser.add_argument("--markdown", dest="markdown_path", default=None, help="write the Markdown table here")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the table")
    args = parser.parse_args(argv)

    if args.no_peers:
        args.peers = []
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if args.models is None:  # the default path, and on CPU the float32 and bfloat16 snapshots next to it
        args.models = ["r50"] + (["r50+opt", "r50+opt-bf16"] if not cuda and not args.quick else [])
    if args.quick:
        args.sizes = args.sizes or [(128, 128)]
        args.train_sizes = args.train_sizes or [(128, 128)]
        args.peer_backbone = args.peer_backbone or "resnet18"
        args.warmup = 1 if args.warmup is None else args.warmup
        args.iters = 3 if args.iters is None else args.iters
    args.sizes = args.sizes or [(800, 1216)]
    args.train_sizes = args.train_sizes or [(512, 512)]
    args.batch_sizes = args.batch_sizes or [1]
    args.train_batch_sizes = args.train_batch_sizes or [2]
    args.peer_backbone = args.peer_backbone or "resnet50"
    args.warmup = (5 if cuda else 1) if args.warmup is None else args.warmup
    args.iters = (30 if cuda else 5) if args.iters is None else args.iters
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    if any(b < 1 for b in args.batch_sizes + args.train_batch_sizes):
        parser.error("batch sizes must be >= 1")
    if args.cls_prior is not None and not 0 < args.cls_prior < 1:
        parser.error("--cls-prior must be in (0, 1)")
    if args.model_args is not None and not isinstance(args.model_args, dict):
        parser.error("--model-args must be a JSON object")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    report = run(args, log)
    env = report["environment"]
    print(f"device: {env['device']} ({env.get('gpu') or env['processor']}), threads {env['threads']}, "
          f"torch {env['torch']}; load average {report['noise']['loadavg_start']} -> {report['noise']['loadavg_end']}")
    print(report["markdown"])
    if args.json_path:
        path = Path(args.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")
    if args.markdown_path:
        path = Path(args.markdown_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report["markdown"] + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
