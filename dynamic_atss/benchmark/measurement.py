"""How `dynamic-atss benchmark speed` measures: one step per (model, mode, size, batch) as a zero-argument call,
calls of the different models interleaved round-robin, peak memory of one step (CUDA's allocator, or the peak
RSS increase from Linux's VmHWM, psutil sampling or getrusage), and the environment the numbers hold for."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import math
import os
import platform
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .peers import set_input_size
from .timing import timed_method

MODES = ("inference", "raw", "train")
__all__ = ["MODES", "Contestant", "environment", "loadavg", "make_step", "measure_peak_memory", "time_interleaved"]


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


def _no_grad_step(forward: Callable[[Any], Any], inputs: Any, autocast: Callable[[], Any], sync: Callable[[], None]
                  ) -> Callable[[], Any]:
    """One synchronised `forward(inputs)` under inference mode and `autocast()`, as a zero-argument callable."""

    def step() -> Any:
        with torch.inference_mode(), autocast():
            out = forward(inputs)
        sync()
        return out

    return step


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
        set_input_size(model.model if onnx else model.eval(), height, width)
        images = [torch.rand(3, height, width, generator=generator).to(device) for _ in range(batch)]
        return _no_grad_step(model, images, lambda: _autocast(device, args.amp, bf16), sync)

    if mode == "raw":
        model = contestant.model
        padded = (math.ceil(height / 32) * 32, math.ceil(width / 32) * 32)
        x = torch.randn(batch, 3, *padded, generator=generator).to(device).contiguous(memory_format=memory_format)
        forward = model.run_raw if onnx else _raw_forward(model.eval())
        return _no_grad_step(forward, x, lambda: _autocast(device, args.amp, bf16), sync)

    if mode == "train":
        model = (contestant.train_model or contestant.model).train()
        set_input_size(model, height, width)
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


# ----------------------------------------------------------------------------------------------- timing
def time_interleaved(steps: dict[str, Callable[[], Any]], warmup: int, iters: int, log: Callable[[str], None]
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


def environment(device: torch.device) -> dict[str, Any]:
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


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


