"""Optimiser with the paper's recipe and the linear-warm-up + step learning-rate schedule (in iterations).

The schedule counts optimizer steps: the trainer steps it itself, once per real optimizer step (after the
last micro-batch of a gradient-accumulation window), on any number of processes. It is deliberately not
passed to `accelerator.prepare`, whose wrapper steps a scheduler once per process per step (N times too fast
on N processes when the schedule is written in optimizer steps).
"""

from __future__ import annotations

import bisect

import torch
from torch import nn

from .config import OptimConfig


def build_optimizer(model: nn.Module, config: OptimConfig, total_batch_size: int) -> torch.optim.Optimizer:
    """SGD (momentum 0.9, wd 1e-4) or AdamW; no weight decay on norms and biases (configurable).

    The learning rate is `config.lr * total_batch_size / base_batch_size` when `scale_lr` is set.
    """
    lr = scaled_lr(config, total_batch_size)
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_norm = isinstance(module, (nn.GroupNorm, nn.BatchNorm2d, nn.LayerNorm))
            skip = config.no_decay_norm_and_bias and (is_norm or name == "bias" or param.dim() <= 1)
            (no_decay if skip else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {config.name!r}; choose 'sgd' or 'adamw'")


def scaled_lr(config: OptimConfig, total_batch_size: int) -> float:
    """The linear scaling rule: `lr * total_batch_size / base_batch_size` (or `lr` without `scale_lr`)."""
    return config.lr * total_batch_size / config.base_batch_size if config.scale_lr else config.lr


def lr_factor(iteration: int, config: OptimConfig) -> float:
    """Linear warm-up from `warmup_factor` over `warmup_iters`, then x`gamma` at each of `steps`."""
    factor = config.gamma ** bisect.bisect_right(sorted(config.steps), iteration)
    if iteration < config.warmup_iters:
        alpha = iteration / config.warmup_iters
        factor *= config.warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig, start_step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR positioned at `start_step` (the number of optimizer steps already taken, e.g. on resume).

    On resume the optimizer's param groups come from the checkpoint and hold `initial_lr`, so the schedule
    continues from the base LR, not from the decayed one.
    """
    if start_step > 0:
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda iteration: lr_factor(iteration, config),
                                             last_epoch=start_step - 1)
