"""The Accelerate training loop: DDP, mixed precision, accumulation, clipping, logging, eval, checkpoints.

Runs the same under `python train.py ...` (one process) and `accelerate launch train.py ...` (many).
"""

from __future__ import annotations

import importlib.util
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import CocoDetection, HFDetection, SyntheticShapes, build_transforms, collate_fn
from ..evaluation import CocoEvaluator
from ..registry import create
from .checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from .config import DataConfig, TrainConfig, config_to_dict
from .schedule import build_optimizer, build_scheduler


class NonFiniteLossError(RuntimeError):
    """Raised after `max_bad_steps` consecutive steps with a NaN/inf loss."""


class SeededAugmentation(torch.utils.data.Dataset):
    """Makes a dataset's random augmentations a pure function of (seed, epoch, index).

    torchvision's transforms draw from the global torch RNG, and data loaders fetch ahead, so without this a
    resumed run would flip different images than the uninterrupted one. Set `epoch` before each epoch
    (loader workers must not be persistent, so they pick the new value up).
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, self.epoch, index)) % 2**63)
            return self.dataset[index]


def build_datasets(config: DataConfig, seed: int) -> tuple[Any, Any | None]:
    """Train and validation datasets of the configured kind, with train / eval transforms."""
    train_tf = build_transforms(train=True, flip_prob=config.flip_prob, photometric=config.photometric)
    eval_tf = build_transforms(train=False)
    if config.kind == "synthetic":
        train = SyntheticShapes(config.num_train, config.image_size, seed=seed, split="train", transforms=train_tf)
        val = SyntheticShapes(config.num_val, config.image_size, seed=seed, split="val", transforms=eval_tf)
        return train, (val if config.num_val > 0 else None)
    if config.kind == "coco":
        if not config.train_images or not config.train_annotations:
            raise ValueError("data.kind=coco needs data.train_images and data.train_annotations")
        train = CocoDetection(config.train_images, config.train_annotations, transforms=train_tf, keep_empty=config.keep_empty)
        val = None
        if config.val_images and config.val_annotations:
            val = CocoDetection(config.val_images, config.val_annotations, transforms=eval_tf)
        return train, val
    if config.kind == "hf":
        if not config.source:
            raise ValueError("data.kind=hf needs data.source (a Hub dataset name, save_to_disk folder or Parquet path)")
        train = HFDetection(config.source, split=config.train_split, box_format=config.box_format, transforms=train_tf)
        val = None
        if config.val_split:
            val = HFDetection(config.source, split=config.val_split, box_format=config.box_format, transforms=eval_tf)
        return train, val
    raise ValueError(f"unknown data.kind {config.kind!r}; choose synthetic, coco or hf")


def build_model(config: TrainConfig, num_classes: int, class_names: list[str]) -> torch.nn.Module:
    overrides = dict(config.model_overrides)
    if config.init_from:
        return create(config.init_from, num_classes=num_classes, class_names=list(class_names), **overrides)
    return create(
        config.model, num_classes=num_classes, backbone_pretrained=config.backbone_pretrained,
        class_names=list(class_names), **overrides,
    )


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Any, accelerator: Accelerator, batch_size: int,
             limit: int | None = None, num_workers: int = 0) -> dict[str, Any]:
    """COCO AP of `model` on `dataset` (all processes take part; every process gets the metrics)."""
    if limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    loader = accelerator.prepare(DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn, num_workers=num_workers))
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    # A COCO folder's already-indexed ground truth, rather than re-indexing its dict at every evaluation.
    coco_gt = getattr(base, "coco", None) or base.to_coco_dict()
    evaluator = CocoEvaluator(coco_gt, base.label_to_cat_id, base.class_names)
    was_training = model.training
    model.eval()
    for images, targets in tqdm(loader, desc="eval", disable=not accelerator.is_main_process, leave=False):
        detections = model(images)
        evaluator.update([int(t["image_id"]) for t in targets], [{k: v.cpu() for k, v in d.items()} for d in detections])
    evaluator.gather(accelerator)
    metrics = evaluator.evaluate(per_class=True) if accelerator.is_main_process else {}
    model.train(was_training)
    return metrics


def _make_tracker_kwargs(config: TrainConfig) -> dict[str, Any]:
    if config.tracker == "none":
        return {}
    if config.tracker == "tensorboard" or importlib.util.find_spec("tensorboard") is not None:
        return {"log_with": "tensorboard", "project_dir": config.output_dir}
    return {}


def train(config: TrainConfig, resume: str | None = None) -> dict[str, Any]:
    """Train per `config`; returns a summary (final metrics, paths, timing)."""
    tracker_kwargs = _make_tracker_kwargs(config)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True), **tracker_kwargs,
    )
    set_seed(config.seed)
    output_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_config.json").write_text(json.dumps(config_to_dict(config), indent=2))
    if tracker_kwargs:
        accelerator.init_trackers("dynamic_atss", config={"batch_size": config.batch_size, "lr": config.optim.lr})

    train_set, val_set = build_datasets(config.data, config.seed)
    if len(train_set) == 0:
        raise ValueError("the training dataset is empty; check the data section of the config")
    model = build_model(config, train_set.num_classes, train_set.class_names)
    total_batch = config.batch_size * accelerator.num_processes * config.grad_accum
    optimizer = build_optimizer(model, config.optim, total_batch)
    scheduler = build_scheduler(optimizer, config.optim)
    seeded_train_set = SeededAugmentation(train_set, config.seed)
    loader = DataLoader(
        seeded_train_set, batch_size=config.batch_size, shuffle=True, collate_fn=collate_fn, drop_last=True,
        num_workers=config.data.num_workers,
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    raw_model = accelerator.unwrap_model(model)

    step = 0
    if resume:
        step = load_checkpoint(accelerator, resolve_resume(resume, output_dir / "checkpoints"))
        accelerator.print(f"resumed from step {step}")
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={config.batch_size} is larger than the training set ({len(train_set)} images)")
    max_steps = config.optim.max_iters
    log_path = output_dir / "log.jsonl"
    progress = tqdm(total=max_steps, initial=step, desc="train", disable=not accelerator.is_main_process, dynamic_ncols=True)
    bad_steps = 0
    metrics: dict[str, Any] = {}
    start = time.perf_counter()
    model.train()
    while step < max_steps:
        epoch, skip = divmod(step * config.grad_accum, steps_per_epoch)
        loader.set_epoch(epoch)
        seeded_train_set.epoch = epoch
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        for images, targets in epoch_loader:
            raw_model.train_progress = step / max_steps
            with accelerator.accumulate(model):
                losses = model(images, targets)
                loss = sum(losses.values())  # the model returns the parts (torchvision convention)
                # Every process must take the same decision, or DDP's gradient all-reduce would hang.
                finite = accelerator.reduce(torch.isfinite(loss.detach()).float(), reduction="sum")
                if finite.item() < accelerator.num_processes:
                    bad_steps += 1
                    optimizer.zero_grad(set_to_none=True)
                    warnings.warn(f"step {step}: non-finite loss {loss.item()}; skipping this step", stacklevel=1)
                    if bad_steps >= config.max_bad_steps:
                        raise NonFiniteLossError(
                            f"{bad_steps} consecutive steps with a non-finite loss (last at step {step}); "
                            "lower optim.lr, enable optim.grad_clip, or check the data"
                        )
                    continue
                bad_steps = 0
                accelerator.backward(loss)
                if config.optim.grad_clip and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)
            if step % config.log_every == 0 or step == max_steps:
                record = _log_record(accelerator, losses, raw_model.assign_stats, scheduler, step, start)
                progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
                if accelerator.is_main_process:
                    with log_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                accelerator.log(record, step=step)
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                save_checkpoint(accelerator, output_dir / "checkpoints", step, config.keep_checkpoints)
            if val_set is not None and config.eval_every and step % config.eval_every == 0 and step < max_steps:
                metrics = _evaluate_and_log(model, val_set, accelerator, config, step, log_path)
            if step >= max_steps:
                break
    progress.close()
    train_seconds = time.perf_counter() - start
    if val_set is not None:
        metrics = _evaluate_and_log(model, val_set, accelerator, config, step, log_path)
    model_dir = output_dir / "model"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        raw_model.save_pretrained(model_dir, recipe=config_to_dict(config), metrics=_headline(metrics))
        if config.push_to_hub:
            from ..hub import push_model_dir  # noqa: PLC0415

            push_model_dir(model_dir, config.push_to_hub)
    accelerator.end_training()
    return {"step": step, "metrics": metrics, "model_dir": str(model_dir), "train_seconds": train_seconds,
            "log": str(log_path)}


def _log_record(accelerator: Accelerator, losses: dict[str, torch.Tensor], stats: dict[str, torch.Tensor],
                scheduler: Any, step: int, start: float) -> dict[str, float]:
    values = {k: v.detach().float() for k, v in losses.items()}
    values["loss"] = sum(values.values())
    values.update({f"assign/{k}": v.detach().float() for k, v in stats.items()})
    names = sorted(values)
    reduced = accelerator.reduce(torch.stack([values[n] for n in names]), reduction="mean")
    record = {"step": step, **{n: float(v) for n, v in zip(names, reduced.tolist())}}
    record["lr"] = scheduler.get_last_lr()[0]
    record["time"] = time.perf_counter() - start
    return record


def _headline(metrics: dict[str, Any]) -> dict[str, float] | None:
    return {k: v for k, v in metrics.items() if isinstance(v, float)} or None


def _evaluate_and_log(model: torch.nn.Module, val_set: Any, accelerator: Accelerator, config: TrainConfig,
                      step: int, log_path: Path) -> dict[str, Any]:
    metrics = evaluate(model, val_set, accelerator, config.batch_size, config.eval_limit)
    if accelerator.is_main_process and metrics:
        record = {"step": step, **{f"eval/{k}": v for k, v in _headline(metrics).items()}}
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        accelerator.log(record, step=step)
    return metrics

