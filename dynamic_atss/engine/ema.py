"""An exponential moving average (EMA) of the weights, with the warm-up of mmdetection's `ExpMomentumEMA` and
ultralytics' `ModelEMA`, on `torch.optim.swa_utils.AveragedModel`.

Update n (one per optimizer step) moves every parameter and buffer (`use_buffers=True`: the BatchNorm running
statistics too) towards the model's by `1 - d(n)`, with `d(n) = decay * (1 - exp(-n / tau))`: early updates
follow the model closely, later ones average over about `1 / (1 - decay)` steps. The first update copies the
model. The decay of each update is `get_ema_multi_avg_fn(d(n))`, the library's EMA step; integer buffers
(BatchNorm's `num_batches_tracked`) are copied.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from safetensors.torch import load_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .checkpoint import CheckpointError


EMA_FILE = "ema.safetensors"  # in each checkpoint folder: the average and its update count


def load_ema(ema: AveragedModel, path: Path) -> None:
    """Restore the average a checkpoint saved (safetensors: nothing is unpickled)."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint was written without ema.enabled")
    state = load_file(str(path), device=str(ema.n_averaged.device))
    ema.load_state_dict(state)


def ema_decay(update: int, decay: float, tau: float) -> float:
    """The decay of update number `update` (1-based): `decay * (1 - exp(-update / tau))`."""
    return decay * (1.0 - math.exp(-update / tau))


def _warmed_up_ema(decay: float, tau: float) -> Any:
    """An `AveragedModel` `multi_avg_fn` whose decay ramps up with the number of updates."""

    @torch.no_grad()
    def update(ema_tensors: list[torch.Tensor], model_tensors: list[torch.Tensor], averaged: torch.Tensor) -> None:
        if not (torch.is_floating_point(ema_tensors[0]) or torch.is_complex(ema_tensors[0])):
            for ema_tensor, model_tensor in zip(ema_tensors, model_tensors):  # counters are not averaged
                ema_tensor.copy_(model_tensor)
            return
        # `averaged` updates are in the average already (the first was a copy): this is update averaged + 1
        get_ema_multi_avg_fn(ema_decay(int(averaged) + 1, decay, tau))(ema_tensors, model_tensors, averaged)

    return update


def build_ema(model: nn.Module, decay: float, tau: float) -> AveragedModel:
    """The EMA of `model` (a copy on the same device, in eval mode; `ema.module` is a model of the same class)."""
    ema = AveragedModel(model, multi_avg_fn=_warmed_up_ema(decay, tau), use_buffers=True)
    ema.module.eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: AveragedModel, model: nn.Module) -> None:
    """One update after an optimizer step. Under DDP the parameters agree on every process but each process's
    BatchNorm statistics saw its own images: the average's buffers are then taken from process 0 (whose buffers
    DDP gives every process at each forward), so the average is the same everywhere."""
    ema.update_parameters(model)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        buffers = [b for b in ema.module.buffers() if b.dtype == torch.float32]  # one collective for all of them
        if buffers:
            flat = torch.cat([b.reshape(-1) for b in buffers])
            dist.broadcast(flat, src=0)
            for buffer, values in zip(buffers, flat.split([b.numel() for b in buffers])):
                buffer.copy_(values.view_as(buffer))
