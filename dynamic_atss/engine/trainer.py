"""The Accelerate training loop: DDP, mixed precision, accumulation, clipping, logging, eval, checkpoints.

Runs the same under `dynamic-atss train ...` (one process) and `accelerate launch -m dynamic_atss train ...`
(many). What it guarantees:

* the LR schedule advances once per optimizer step, whatever the number of processes or the gradient
  accumulation, and continues exactly on resume (the scheduler is stepped here, not by Accelerate);
* Accelerate's launch settings (processes, mixed precision) decide unless the recipe sets them; gradient
  accumulation is the recipe's `grad_accum` (`accelerate launch --gradient_accumulation_steps` reaches the
  script only with DeepSpeed, and a different value is refused); the effective values are printed at the start
  and written to `train_config.json`;
* one run per output folder (a lock, and a refusal to mix with another run), verified checkpoints;
* a fast data scan before the model is built; a warning when a logged window has no positive anchor;
* a batch with non-finite inputs is skipped before the forward, and a non-finite loss restores the BatchNorm
  running statistics the forward changed, so a bad batch never touches the model's state; the data position
  is counted in batches read (saved in each checkpoint), so a skipped batch moves on like any other;
* under `data.skip_unreadable`, an image that passed the scan but fails to decode when loaded is replaced by
  the next readable one (the same on every process and on resume) and reported;
* user mistakes (config, data, resume path, output folder, Hub repo) are found before the output folder is
  made the run's own (`engine.output.start_run`); `--resume` drops the log rows of the steps it re-runs;
  a run that fails leaves no lock, and a full disk while checkpointing keeps the previous checkpoint;
* SIGTERM / SIGINT finish the optimizer step in progress (every process agrees on the step, in the step's one
  all-reduce), write a checkpoint, unlock the folder and end with exit status 143 / 130 (`--resume latest`
  continues bit-identically on CPU);
* `ema.enabled`: an EMA of the weights (`engine.ema`) is evaluated, saved and pushed; `save_best` keeps
  `OUTPUT_DIR/best/`; the end of the run draws `OUTPUT_DIR/plots/` (`dynamic_atss.plots`).

The loop is `_prepare_run` -> `_train_steps` (`_micro_batch`, `_after_optimizer_step` per batch) -> `_finish`
(or `_stop` after a signal), carrying one `_Run`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    GradientAccumulationPlugin,
    broadcast_object_list,
    gather_object,
    set_seed,
)
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import DatasetError, DatasetFileNotFoundError, build_dataset, build_transforms, collate_fn
from ..data.checks import ImageSubset, check_categories, scan_dataset
from ..evaluation import evaluate_detections, evaluator_for, format_per_class_table, format_table
from ..errors import UserInputError
from ..factory import create
from ..hub.card import CARD_FIGURES
from ..hub.serialization import CARD_NAME
from ..plots import EVAL_DIR, PLOTS_DIR, plot_run, write_evaluation
from ..visualize import draw_detections, save_png
from ..typed import ConfigError
from .checkpoint import STATE_FILE, flatten, list_checkpoints, load_checkpoint, resolve_resume, save_checkpoint
from .config import DataConfig, TrainConfig, config_to_dict
from .ema import EMA_FILE, build_ema, load_ema, update_ema
from .output import claim_output_dir, start_run
from .schedule import build_optimizer, build_scheduler, scaled_lr


class NonFiniteLossError(RuntimeError):
    """Raised after `max_bad_steps` consecutive steps with NaN/inf inputs or loss."""


class DataCheckError(DatasetError):
    """The up-front data scan found images that cannot be used, or nothing to learn from."""


# Set in a sample's target when an image failed to load: the problems (the trainer reports them, or stops).
UNREADABLE_KEY = "unreadable"


class StopSignals:
    """Within `with StopSignals() as stops:`, SIGTERM (what SLURM and Kubernetes send before killing a job) and
    SIGINT (Ctrl-C) are recorded in `stops.received` instead of ending the process; the trainer finishes its
    optimizer step, writes a checkpoint and stops. Repeated signals change nothing: launchers (`accelerate launch`,
    torchrun) forward the signal they got to their workers, which got it already from SLURM or the terminal, and
    wait for them; SIGKILL stops a run at once. Handlers can only be installed from the main thread; elsewhere (a
    notebook's worker thread) nothing changes."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._record) for sig in self.SIGNALS}
        return self

    def _record(self, signum: int, frame: Any) -> None:
        self.received = self.received or signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGINT / SIGTERM to the main process (a Ctrl-C reaches the whole process group), so
    that the step in progress can finish reading its batch."""
    for sig in StopSignals.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class SeededAugmentation(torch.utils.data.Dataset):
    """Makes a dataset's random augmentations a pure function of (seed, epoch, index).

    torchvision's transforms draw from the global torch RNG, and data loaders fetch ahead, so without this a
    resumed run would flip different images than the uninterrupted one. Set `epoch` before each epoch
    (loader workers must not be persistent, so they pick the new value up).

    An image that fails to load (a corrupt data chunk the header scan cannot see) is never raised here: an
    error raised in a loader worker reaches the main process wrapped in a traceback text. The sample's target
    names the problem under `UNREADABLE_KEY` instead, and the trainer stops with it, or, with
    `skip_unreadable`, the image is replaced by the next index that loads. The replacement depends on the index
    only, so every process keeps its batch size and a resumed run reads the same samples.
    """

    def __init__(self, dataset: Any, seed: int, skip_unreadable: bool = False) -> None:
        self.dataset, self.seed, self.epoch, self.skip_unreadable = dataset, seed, 0, skip_unreadable

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        problems = []
        for offset in range(len(self.dataset) if self.skip_unreadable else 1):
            candidate = (index + offset) % len(self.dataset)
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(hash((self.seed, self.epoch, candidate)) % 2**63)
                    image, target = self.dataset[candidate]
            except (DatasetError, DatasetFileNotFoundError) as error:
                problems.append(str(error))
                if not self.skip_unreadable:
                    break
                continue
            return image, ({**target, UNREADABLE_KEY: problems} if problems else target)
        return torch.zeros(3, 1, 1), {UNREADABLE_KEY: problems, "unusable": True}


def build_datasets(config: DataConfig, seed: int) -> tuple[Any, Any | None]:
    """Train and validation datasets of the configured kind, with train / eval transforms (through the one
    dataset factory, `dynamic_atss.data.build_dataset`)."""
    train_tf = build_transforms(train=True, flip_prob=config.flip_prob, photometric=config.photometric)
    eval_tf = build_transforms(train=False)
    if config.kind == "synthetic":
        train = build_dataset("synthetic", num_images=config.num_train, image_size=config.image_size, seed=seed,
                              split="train", transforms=train_tf)
        val = build_dataset("synthetic", num_images=config.num_val, image_size=config.image_size, seed=seed, split="val",
                            transforms=eval_tf)
        return train, (val if config.num_val > 0 else None)
    if config.kind == "coco":
        if not config.train_images or not config.train_annotations:
            raise ConfigError("data.kind=coco needs data.train_images and data.train_annotations")
        train = build_dataset("coco", image_dir=config.train_images, ann_file=config.train_annotations, transforms=train_tf,
                              keep_empty=config.keep_empty)
        val = None
        if config.val_images and config.val_annotations:
            val = build_dataset("coco", image_dir=config.val_images, ann_file=config.val_annotations, transforms=eval_tf)
        return train, val
    if config.kind == "hf":
        if not config.source:
            raise ConfigError("data.kind=hf needs data.source (a Hub dataset name, save_to_disk folder or Parquet path)")
        train = build_dataset("hf", source=config.source, split=config.train_split, box_format=config.box_format,
                              transforms=train_tf)
        val = None
        if config.val_split:
            val = build_dataset("hf", source=config.source, split=config.val_split, box_format=config.box_format,
                                transforms=eval_tf)
        return train, val
    raise ConfigError(f"unknown data.kind {config.kind!r}; choose synthetic, coco or hf")


def build_model(config: TrainConfig, num_classes: int, class_names: list[str]) -> torch.nn.Module:
    overrides = dict(config.model_overrides)
    if config.init_from:
        return create(config.init_from, pretrained=True, num_classes=num_classes, class_names=list(class_names), **overrides)
    return create(
        config.model, num_classes=num_classes, backbone_pretrained=config.backbone_pretrained,
        class_names=list(class_names), **overrides,
    )


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Any, accelerator: Accelerator, batch_size: int,
             limit: int | None = None, num_workers: int = 0) -> dict[str, Any]:
    """COCO AP of `model` on `dataset` (all processes take part; the main process gets the metrics)."""
    return _evaluate(model, dataset, accelerator, batch_size, limit, num_workers)[0]


@torch.no_grad()
def _evaluate(model: torch.nn.Module, dataset: Any, accelerator: Accelerator, batch_size: int,
              limit: int | None = None, num_workers: int = 0) -> tuple[dict[str, Any], Any]:
    """(metrics, the evaluator holding the detections) of `model` on `dataset`."""
    if limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    loader = accelerator.prepare(DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn, num_workers=num_workers))
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(loader), desc="eval", disable=not accelerator.is_main_process, leave=False)
    evaluator = evaluate_detections(model, loader, evaluator_for(dataset), accelerator, progress=bar)
    bar.close()
    metrics = evaluator.evaluate(per_class=True) if accelerator.is_main_process else {}
    model.train(was_training)
    return metrics, evaluator


# What `accelerate launch --gradient_accumulation_steps N` sets for the script -- with DeepSpeed only: Accelerate
# 1.16 does not pass the flag on to plain DDP / CPU / one-process launches (`utils/launch.py`).
GRAD_ACCUM_ENV = "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"


def make_accelerator(config: TrainConfig) -> Accelerator:
    """An Accelerator in which the recipe's `mixed_precision` wins only when it is set; otherwise Accelerate's own
    (`accelerate launch` flags, `accelerate config`, environment) decides. Gradient accumulation: the recipe's
    `grad_accum`, else `$ACCELERATE_GRADIENT_ACCUMULATION_STEPS`, else 1; both set and different is refused."""
    kwargs: dict[str, Any] = {}
    if config.mixed_precision is not None:
        kwargs["mixed_precision"] = config.mixed_precision
    launcher = os.environ.get(GRAD_ACCUM_ENV, "").strip()
    if config.grad_accum is not None and launcher and launcher != str(config.grad_accum):
        raise ConfigError(
            f"grad_accum = {config.grad_accum} in the recipe but the launcher sets {GRAD_ACCUM_ENV}={launcher} "
            "(accelerate launch --gradient_accumulation_steps): set one of them, or both to the same value"
        )
    if config.grad_accum is not None:  # a plugin, because a plain int would lose to the launcher's env variable
        kwargs["gradient_accumulation_plugin"] = GradientAccumulationPlugin(num_steps=config.grad_accum)
    trackers = config.trackers
    if trackers:
        kwargs.update(log_with=trackers, project_dir=config.output_dir)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not _has_accelerator_device():
        # Launched as N processes (torchrun, or a launcher that does not set ACCELERATE_USE_CPU) on a machine
        # without GPUs: Accelerate would run N independent one-process trainings into the same folder. Train
        # the CPU processes together (gloo) instead.
        kwargs["cpu"] = True
    accelerator = Accelerator(dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True), **kwargs)
    if accelerator.num_processes != world_size:
        raise RuntimeError(
            f"launched as {world_size} processes but Accelerate set up {accelerator.num_processes}; check the launch "
            "(accelerate launch --multi_gpu --num_processes N, or ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N)"
        )
    return accelerator


def _has_accelerator_device() -> bool:
    if torch.cuda.is_available():
        return True
    accel = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, XPU, MPS, ... in one place
    return bool(accel is not None and accel.is_available())


def effective_settings(accelerator: Accelerator, config: TrainConfig) -> dict[str, Any]:
    """What this launch actually trains with (after Accelerate's settings), for the log and train_config.json."""
    grad_accum = accelerator.gradient_accumulation_steps
    total = config.batch_size * accelerator.num_processes * grad_accum
    return {
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "device": str(accelerator.device),
        "mixed_precision": str(accelerator.mixed_precision),
        "grad_accum": grad_accum,
        "batch_size_per_process": config.batch_size,
        "total_batch_size": total,
        "lr": scaled_lr(config.optim, total),
        "trackers": config.trackers,
    }


def _describe(effective: dict[str, Any], config: TrainConfig) -> str:
    e = effective
    scaling = (f"optim.lr {config.optim.lr:g} x {e['total_batch_size']}/{config.optim.base_batch_size}"
               if config.optim.scale_lr else "optim.scale_lr off")
    return (f"effective settings: {e['num_processes']} process(es) ({e['distributed_type']}, {e['device']}), "
            f"mixed precision {e['mixed_precision']}, gradient accumulation {e['grad_accum']} -> total batch "
            f"{e['batch_size_per_process']} x {e['num_processes']} x {e['grad_accum']} = {e['total_batch_size']} "
            f"images per optimizer step, lr {e['lr']:g} ({scaling})")


def _main_decides(accelerator: Accelerator, decide: Any) -> Any:
    """Run `decide()` on the main process only and give every process its result (or its error message)."""
    result: list[Any] = [None, None]
    if accelerator.is_main_process:
        try:
            result = [decide(), None]
        except Exception as e:  # noqa: BLE001  (re-raised below, on every process)
            result = [None, e]
    if accelerator.num_processes > 1:
        result = broadcast_object_list(result)
    if result[1] is not None:
        raise result[1]
    return result[0]


def check_data(train_set: Any, val_set: Any | None, config: DataConfig, accelerator: Accelerator) -> tuple[Any, Any]:
    """The up-front scan (see `dynamic_atss.data.checks`): print a summary line per split, stop on unusable
    images unless `data.skip_unreadable`, stop when the training set has no box to learn from."""
    check_categories(train_set, val_set)  # val is scored through the model's (the training set's) categories

    def scan() -> dict[str, Any]:
        return {name: scan_dataset(ds, name, check_images=config.check_images)
                for name, ds in (("train", train_set), ("val", val_set)) if ds is not None}

    reports = _main_decides(accelerator, scan)
    kept = {}
    for name, ds in (("train", train_set), ("val", val_set)):
        if ds is None:
            kept[name] = None
            continue
        report = reports[name]
        accelerator.print(report.summary())
        if report.bad:
            listing = "\n  ".join(problem for _, problem in report.bad)
            if not config.skip_unreadable:
                raise DataCheckError(
                    f"{len(report.bad)} image(s) of the {name} set cannot be used:\n  {listing}\nfix or remove them, "
                    "or set data.skip_unreadable: true to train without them"
                )
            if accelerator.is_main_process:
                warnings.warn(f"data.skip_unreadable: leaving out {len(report.bad)} image(s) of the {name} set:\n  "
                              f"{listing}", UserWarning, stacklevel=2)
            bad = {index for index, _ in report.bad}
            ds = ImageSubset(ds, [i for i in range(len(ds)) if i not in bad])
        if len(ds) == 0:
            raise DataCheckError(f"no usable image left in the {name} set")
        if name == "train" and report.num_boxes == 0:
            raise DataCheckError(
                f"the training set has no box to learn from: {report.num_images} images, {report.num_empty} without a "
                f"box ({len(report.crowd_only)} with only crowd regions); every anchor would be background. Check the "
                "annotation file (annotations, category ids, iscrowd flags)"
            )
        if name == "val" and report.num_boxes == 0 and accelerator.is_main_process:
            warnings.warn("the validation set has no box: its AP is undefined", UserWarning, stacklevel=2)
        kept[name] = ds
    return kept["train"], kept["val"]


_RUNNING_STAT_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm2d)


def _norm_buffers(model: nn.Module) -> list[torch.Tensor]:
    """Running statistics the norm layers in training mode update during a forward (timm's BatchNormAct2d
    subclasses nn.BatchNorm2d; frozen BatchNorm has buffers but never updates them)."""
    return [buffer for module in model.modules()
            if isinstance(module, _RUNNING_STAT_NORMS) and module.training and module.track_running_stats
            for buffer in module.buffers(recurse=False)]


def _agree(accelerator: Accelerator, flag: bool | torch.Tensor, stop_signal: int) -> tuple[bool, int]:
    """(`flag` holds on every process, the stop signal some process received -- SIGTERM before SIGINT -- or 0):
    one all-reduce, so every process takes the same decisions at the same step."""
    device = accelerator.device
    value = torch.stack([torch.as_tensor(flag, dtype=torch.float32, device=device).reshape(()),
                         torch.tensor(float(stop_signal == signal.SIGTERM), device=device),
                         torch.tensor(float(stop_signal == signal.SIGINT), device=device)])
    all_ok, term, interrupt = accelerator.reduce(value, reduction="sum").tolist()
    stop = signal.SIGTERM if term else signal.SIGINT if interrupt else 0
    return all_ok >= accelerator.num_processes, int(stop)


def _finite_images(images: list[torch.Tensor]) -> torch.Tensor:
    """A 0-dim bool tensor on the images' device (no host synchronisation)."""
    return torch.stack([torch.isfinite(image).all() for image in images]).all()


def _finite_targets(targets: list[dict[str, Any]]) -> bool:
    """Whether every box is finite; the targets are host tensors (the loader does not move them)."""
    return all(bool(torch.isfinite(torch.as_tensor(t["boxes"])).all()) for t in targets)


def _without_boxes(target: dict[str, Any]) -> dict[str, Any]:
    return {**target, "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}


def train(config: TrainConfig, resume: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train per `config`; returns a summary (final metrics, paths, timing, effective settings, and
    `push_error` / `push_command` when `push_to_hub` failed after the model was saved).

    `resume`: "latest" or a checkpoint folder; `overwrite`: replace what a previous run left in the output folder.
    Everything a user can get wrong (Hub repo and token, output folder, resume checkpoint, data, model) is
    checked before the output folder is made this run's own.
    """
    accelerator = make_accelerator(config)
    set_seed(config.seed)
    output_dir = Path(config.output_dir)
    config_dict = config_to_dict(config)
    effective = effective_settings(accelerator, config)
    accelerator.print(_describe(effective, config))
    checkpoints_dir = output_dir / "checkpoints"
    if config.push_to_hub:
        from ..hub.push import check_push_access  # noqa: PLC0415

        _main_decides(accelerator, lambda: check_push_access(config.push_to_hub))

    held: dict[str, Any] = {}  # the lock lives on the main process only

    def claim() -> tuple[str | None, list[str]]:
        held["lock"] = lock = claim_output_dir(output_dir, config_dict, resume=bool(resume), overwrite=overwrite)
        try:
            path, skipped = (None, [])
            if resume:
                path, skipped = resolve_resume(resume, checkpoints_dir, config_dict, effective["total_batch_size"])
        except BaseException:
            lock.release()
            raise
        return (str(path) if path else None), skipped

    resume_path, skipped = _main_decides(accelerator, claim)
    lock = held.get("lock")
    try:
        for reason in skipped:
            if accelerator.is_main_process:
                warnings.warn(f"--resume {resume}: skipping unreadable checkpoint {reason}", UserWarning, stacklevel=2)
        return _train(accelerator, config, config_dict, effective, output_dir, resume_path, overwrite)
    finally:
        if lock is not None:
            lock.release()


def _data_position(resume_path: str | None, step: int, grad_accum: int, steps_per_epoch: int) -> tuple[int, int]:
    """(epoch, batches of it already read) to continue from: what the checkpoint recorded, or, for a checkpoint
    written before positions were recorded, what the step count gives when no batch was skipped."""
    position = None
    if resume_path:
        position = json.loads((Path(resume_path) / STATE_FILE).read_text()).get("data_position")
    epoch, consumed = (position["epoch"], position["batch"]) if position else divmod(step * grad_accum, steps_per_epoch)
    return (epoch + 1, 0) if consumed >= steps_per_epoch else (epoch, consumed)


def _truncate_log(log_path: Path, step: int) -> None:
    """Keep the log rows up to `step` (a resumed run writes the later ones again); a torn last line goes too."""
    if not log_path.is_file():
        return
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    log_path.write_text("".join(f"{line}\n" for line in kept))


@dataclass
class _Run:
    """What the training loop carries from one batch to the next (and what a checkpoint records of it)."""

    model: nn.Module  # as prepared by Accelerate (DDP-wrapped with several processes)
    raw_model: nn.Module
    optimizer: Any
    scheduler: Any
    loader: DataLoader
    train_set: SeededAugmentation
    val_set: Any | None
    log_path: Path
    state: dict[str, Any]  # the run's config and effective settings, saved in every checkpoint
    step: int = 0
    epoch: int = 0
    consumed: int = 0  # batches of `epoch` already read
    bad_steps: int = 0
    unreadable: set[str] = field(default_factory=set)
    window_positives: torch.Tensor | None = None
    window_start: int = 1
    metrics: dict[str, Any] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)
    stops: StopSignals = field(default_factory=StopSignals)  # the signals this process received
    stop_signal: int = 0  # the signal every process agreed to stop on (0: none)
    ema: AveragedModel | None = None  # the average of the weights (`ema.enabled`): evaluated and saved instead
    best: dict[str, Any] | None = None  # {"step", "AP"} of OUTPUT_DIR/best/ (`save_best`)

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated, saved and pushed: the EMA weights when on, else the trained ones."""
        return self.ema.module if self.ema is not None else self.raw_model


def _prepare_run(accelerator: Accelerator, config: TrainConfig, config_dict: dict[str, Any], effective: dict[str, Any],
                 output_dir: Path, resume_path: str | None, overwrite: bool) -> _Run:
    """Data, model, optimizer, loader and schedule, restored from `resume_path` when given; the output folder
    becomes the run's own once the config, data and model are known good."""
    train_set, val_set = build_datasets(config.data, config.seed)
    if len(train_set) == 0:
        raise DataCheckError("the training dataset is empty; check the data section of the config")
    train_set, val_set = check_data(train_set, val_set, config.data, accelerator)
    model = build_model(config, train_set.num_classes, train_set.class_names)
    state = {"config": config_dict, "effective": effective}
    _main_decides(accelerator, lambda: start_run(output_dir, state, overwrite))
    if config.trackers:
        accelerator.init_trackers("dynamic_atss", config=_tracker_config(config_dict, effective))
    optimizer = build_optimizer(model, config.optim, effective["total_batch_size"])
    seeded_train_set = SeededAugmentation(train_set, config.seed, skip_unreadable=config.data.skip_unreadable)
    loader = DataLoader(
        seeded_train_set, batch_size=config.batch_size, shuffle=True, collate_fn=collate_fn, drop_last=True,
        num_workers=config.data.num_workers, worker_init_fn=_ignore_stop_signals,
    )
    # The scheduler is not prepared: Accelerate would step it once per process per step. The loader's batches stay
    # on the host: the images go to the device below, the targets are checked on the host by the model (no
    # host-device synchronisation) and copied to the device by it.
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader, device_placement=[True, True, False])
    ema = build_ema(accelerator.unwrap_model(model), config.ema.decay, config.ema.tau) if config.ema.enabled else None
    log_path = output_dir / "log.jsonl"
    step, best = 0, None
    if resume_path:
        step = load_checkpoint(accelerator, Path(resume_path))
        best = json.loads((Path(resume_path) / STATE_FILE).read_text()).get("best")
        if ema is not None:
            load_ema(ema, Path(resume_path) / EMA_FILE)
        if accelerator.is_main_process:
            _truncate_log(log_path, step)
        accelerator.print(f"resumed from {resume_path} (step {step})")
    scheduler = build_scheduler(optimizer.optimizer, config.optim, start_step=step)
    if len(loader) == 0:
        raise ConfigError(f"batch_size={config.batch_size} is larger than the training set ({len(train_set)} images)")
    # The data position is counted in batches read, not derived from `step`: a skipped batch is read once.
    epoch, consumed = _data_position(resume_path, step, accelerator.gradient_accumulation_steps, len(loader))
    return _Run(model=model, raw_model=accelerator.unwrap_model(model), optimizer=optimizer, scheduler=scheduler,
                loader=loader, train_set=seeded_train_set, val_set=val_set, log_path=log_path, state=state, step=step,
                epoch=epoch, consumed=consumed, window_positives=torch.zeros((), device=accelerator.device),
                window_start=step + 1, ema=ema, best=best)


def _take_unreadable(targets: list[dict[str, Any]], run: _Run, skip_unreadable: bool) -> None:
    """Stop on a sample that failed to load, or (under `data.skip_unreadable`) warn once per unreadable image."""
    for target in targets:
        if target.get("unusable"):
            raise DataCheckError(
                f"{target[UNREADABLE_KEY][0]}; fix or remove it, or set data.skip_unreadable: true to train "
                "on the next readable image instead" if not skip_unreadable else
                f"data.skip_unreadable: no image of the training set can be read; the first: "
                f"{target[UNREADABLE_KEY][0]}"
            )
        for problem in target.pop(UNREADABLE_KEY, ()):
            if problem not in run.unreadable:
                run.unreadable.add(problem)
                warnings.warn(f"data.skip_unreadable: {problem}; training on the next readable image "
                              "instead", UserWarning, stacklevel=1)


def _micro_batch(accelerator: Accelerator, config: TrainConfig, run: _Run, images: list[torch.Tensor],
                 targets: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
    """Forward, backward and (at the end of an accumulation) the optimizer step of one batch; None when the
    batch was skipped for non-finite inputs or loss (the model, its running statistics included, unchanged)."""
    # Non-finite boxes would make the model refuse the batch: it runs without them (every process runs its
    # forward, so the processes stay in step) and the batch is skipped below.
    targets_finite = _finite_targets(targets)
    if not targets_finite:
        targets = [_without_boxes(target) for target in targets]
    images = [image.to(accelerator.device, non_blocking=True) for image in images]
    norm_stats = [buffer.clone() for buffer in _norm_buffers(run.raw_model)]
    # progress drives the "up"/"down" assigner weights; the step's assignment statistics come back
    losses, assign_stats = run.model(images, targets, progress=run.step / config.optim.max_iters, return_stats=True)
    loss = sum(losses.values())  # the model returns the parts (torchvision convention)
    inputs_finite = _finite_images(images) & targets_finite
    loss_finite = torch.isfinite(loss.detach())
    # the step's one host-device synchronisation: an all-reduce, so every process decides alike (and stops alike)
    all_finite, stop_signal = _agree(accelerator, inputs_finite & loss_finite, run.stops.received)
    run.stop_signal = run.stop_signal or stop_signal
    if all_finite:
        run.bad_steps = 0
        run.window_positives += assign_stats["num_pos"].detach().float()
        accelerator.backward(loss)
        if config.optim.grad_clip and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(run.model.parameters(), config.optim.grad_clip)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        return losses, assign_stats
    if not bool(inputs_finite):
        problem = "non-finite input values"
    elif not bool(loss_finite):
        problem = f"non-finite loss {loss.item()}"
    else:
        problem = "non-finite input values or loss on another process"
    with torch.no_grad():  # undo what the forward did to the running statistics (a NaN image too)
        for buffer, saved in zip(_norm_buffers(run.raw_model), norm_stats):
            buffer.copy_(saved)
    run.bad_steps += 1
    run.optimizer.zero_grad(set_to_none=True)
    warnings.warn(f"step {run.step + 1}: {problem}; skipping this batch (the model is unchanged)", stacklevel=1)
    if run.bad_steps >= config.max_bad_steps:
        raise NonFiniteLossError(
            f"{run.bad_steps} consecutive batches with non-finite inputs or loss (last at step {run.step + 1}); "
            "lower optim.lr, enable optim.grad_clip, or check the data"
        )
    return None


def _log_step(accelerator: Accelerator, run: _Run, losses: dict[str, torch.Tensor], stats: dict[str, torch.Tensor],
              lr: float, progress: tqdm) -> None:
    """One row of `log.jsonl` (and of the trackers), and the warning for a window without positive anchors."""
    record = _log_record(accelerator, losses, stats, lr, run.step, run.start)
    positives = float(accelerator.reduce(run.window_positives.reshape(1), reduction="sum").item())
    if positives == 0 and accelerator.is_main_process:
        warnings.warn(
            f"steps {run.window_start}-{run.step}: no positive anchor in any image; the model only learns "
            "background. Check that the annotations have boxes (not only empty or crowd images) and "
            "that min_size / anchors suit the object sizes", UserWarning, stacklevel=1,
        )
    run.window_positives.zero_()
    run.window_start = run.step + 1
    progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
    if accelerator.is_main_process:
        with run.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
    accelerator.log(record, step=run.step)


def _after_optimizer_step(accelerator: Accelerator, config: TrainConfig, run: _Run, output_dir: Path,
                          losses: dict[str, torch.Tensor], stats: dict[str, torch.Tensor], progress: tqdm) -> None:
    """Advance the schedule and the step count; log, checkpoint and evaluate when their turn comes."""
    lr = run.scheduler.get_last_lr()[0]  # the LR this optimizer step used
    run.scheduler.step()  # once per optimizer step, on every process
    run.step += 1
    progress.update(1)
    if run.ema is not None:  # once per optimizer step, gradient accumulation or not
        update_ema(run.ema, run.raw_model)
    max_steps = config.optim.max_iters
    if run.step % config.log_every == 0 or run.step == max_steps:
        _log_step(accelerator, run, losses, stats, lr, progress)
    if config.checkpoint_every and run.step % config.checkpoint_every == 0:
        _save_checkpoint(accelerator, config, run, output_dir)
    if run.val_set is not None and config.eval_every and run.step % config.eval_every == 0 and run.step < max_steps:
        run.metrics = _evaluate_and_log(accelerator, config, run, output_dir)


def _save_checkpoint(accelerator: Accelerator, config: TrainConfig, run: _Run, output_dir: Path) -> Path:
    position = {"epoch": run.epoch, "batch": run.consumed}
    tensors = {EMA_FILE: run.ema.state_dict()} if run.ema is not None else None
    return save_checkpoint(accelerator, output_dir / "checkpoints", run.step, config.keep_checkpoints,
                           {**run.state, "data_position": position, "best": run.best}, tensors)


def _train_steps(accelerator: Accelerator, config: TrainConfig, run: _Run, output_dir: Path) -> None:
    """The loop over epochs and batches, up to `optim.max_iters` optimizer steps."""
    max_steps = config.optim.max_iters
    progress = tqdm(total=max_steps, initial=run.step, desc="train", disable=not accelerator.is_main_process,
                    dynamic_ncols=True)
    with progress:  # closed on an error too, so that the error's line starts on a line of its own
        _epochs(accelerator, config, run, output_dir, progress)


def _epochs(accelerator: Accelerator, config: TrainConfig, run: _Run, output_dir: Path, progress: tqdm) -> None:
    max_steps = config.optim.max_iters
    run.start = time.perf_counter()
    run.model.train()
    while run.step < max_steps and not run.stop_signal:
        run.loader.set_epoch(run.epoch)
        run.train_set.epoch = run.epoch
        epoch_loader = accelerator.skip_first_batches(run.loader, run.consumed) if run.consumed else run.loader
        for images, targets in epoch_loader:
            run.consumed += 1
            _take_unreadable(targets, run, config.data.skip_unreadable)
            with accelerator.accumulate(run.model):
                done = _micro_batch(accelerator, config, run, images, targets)
            if done is None or not accelerator.sync_gradients:
                continue
            _after_optimizer_step(accelerator, config, run, output_dir, *done, progress)
            if run.step >= max_steps or run.stop_signal:  # a stop waits for the end of an optimizer step
                break
        else:  # the epoch was read to its end
            run.epoch, run.consumed = run.epoch + 1, 0


def _finish(accelerator: Accelerator, config: TrainConfig, run: _Run, output_dir: Path) -> dict[str, Any]:
    """Final evaluation, the saved model (and its push): the run's summary."""
    train_seconds = time.perf_counter() - run.start
    if run.val_set is not None:
        run.metrics = _evaluate_and_log(accelerator, config, run, output_dir, final=True)
    model_dir = output_dir / "model"
    unreadable = run.unreadable
    if accelerator.num_processes > 1:  # each process saw its own share of the images
        unreadable = set(gather_object(sorted(unreadable)))
    accelerator.wait_for_everyone()
    summary = {"step": run.step, "metrics": run.metrics, "model_dir": str(model_dir), "train_seconds": train_seconds,
               "log": str(run.log_path), "effective": run.state["effective"], "unreadable_images": sorted(unreadable),
               "ema": run.ema is not None, "best": run.best}
    if accelerator.is_main_process:
        _save_model(run, config, model_dir, run.metrics, "final")
        summary["plots"] = _figures(run, output_dir, [model_dir] + ([output_dir / "best"] if run.best else []))
        pushed = output_dir / "best" if config.push_best and run.best else model_dir
        if config.push_to_hub:
            from ..hub.push import push_later_command, push_model_dir  # noqa: PLC0415

            try:
                push_model_dir(pushed, config.push_to_hub)
            except Exception as error:  # noqa: BLE001  (the trained model is saved: say how to push it later)
                summary["push_error"] = f"pushing to {config.push_to_hub} failed ({type(error).__name__}: {error})"
                summary["push_command"] = push_later_command(pushed, config.push_to_hub)
    accelerator.end_training()
    return summary


def _train(accelerator: Accelerator, config: TrainConfig, config_dict: dict[str, Any], effective: dict[str, Any],
           output_dir: Path, resume_path: str | None, overwrite: bool) -> dict[str, Any]:
    with StopSignals() as stops:
        run = _prepare_run(accelerator, config, config_dict, effective, output_dir, resume_path, overwrite)
        run.stops = stops
        _train_steps(accelerator, config, run, output_dir)
        if run.stop_signal:
            return _stop(accelerator, config, run, output_dir)
    return _finish(accelerator, config, run, output_dir)


def _stop(accelerator: Accelerator, config: TrainConfig, run: _Run, output_dir: Path) -> dict[str, Any]:
    """After a SIGTERM / SIGINT: a checkpoint of the finished step; the summary says how to continue."""
    saved = [p for p in list_checkpoints(output_dir / "checkpoints") if p.name == f"checkpoint-{run.step:08d}"]
    checkpoint = saved[0] if saved else _save_checkpoint(accelerator, config, run, output_dir)
    name = signal.Signals(run.stop_signal).name
    accelerator.end_training()
    return {"step": run.step, "metrics": {}, "log": str(run.log_path), "effective": run.state["effective"],
            "stopped": {"signal": name, "step": run.step, "checkpoint": str(checkpoint)},
            "exit_status": 128 + run.stop_signal, "unreadable_images": sorted(run.unreadable)}


def _tracker_config(config_dict: dict[str, Any], effective: dict[str, Any]) -> dict[str, Any]:
    """The full config, flattened to scalars (TensorBoard's hparams take only int/float/str/bool)."""
    flat = flatten({**config_dict, "effective": effective})
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in flat.items()}


def _log_record(accelerator: Accelerator, losses: dict[str, torch.Tensor], stats: dict[str, torch.Tensor],
                lr: float, step: int, start: float) -> dict[str, float]:
    values = {k: v.detach().float() for k, v in losses.items()}
    values["loss"] = sum(values.values())
    values.update({f"assign/{k}": v.detach().float() for k, v in stats.items()})
    names = sorted(values)
    reduced = accelerator.reduce(torch.stack([values[n] for n in names]), reduction="mean")
    record = {"step": step, **{n: float(v) for n, v in zip(names, reduced.tolist())}}
    record["lr"] = lr
    record["time"] = time.perf_counter() - start
    return record


def _headline(metrics: dict[str, Any]) -> dict[str, float] | None:
    return {k: v for k, v in metrics.items() if isinstance(v, float)} or None


def _saved_metrics(metrics: dict[str, Any], data: DataConfig) -> dict[str, Any] | None:
    """The headline metrics with the dataset and split they were measured on (the model card labels them so)."""
    headline = _headline(metrics)
    if headline is None:
        return None
    split = {"coco": Path(data.val_images or "val").name, "hf": data.val_split, "synthetic": "val"}[data.kind]
    return {"dataset": data.name, "split": split, **headline}


def _save_model(run: _Run, config: TrainConfig, directory: Path, metrics: dict[str, Any], checkpoint: str) -> None:
    """Save the evaluated model (EMA weights when on) as a loadable folder, written beside and renamed into place
    so that a stop while saving never leaves half a folder; config.json records the iteration, which weights
    and which checkpoint (`final`, `best`) it holds, and the model card says so."""
    saved = _saved_metrics(metrics, config.data)
    facts = {"step": run.step, "weights": "ema" if run.ema is not None else "trained", "checkpoint": checkpoint}
    tmp = directory.with_name(f".tmp-{directory.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    run.eval_model.save_pretrained(tmp, recipe=run.state["config"], metrics={**saved, **facts} if saved else facts)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


EXAMPLE_SIZE, EXAMPLE_SCORE = 512, 0.5  # the card's example image: its longer side at least, the score drawn


def _figures(run: _Run, output_dir: Path, model_dirs: list[Path]) -> list[str]:
    """OUTPUT_DIR/plots/ (curves, assignment dynamics, evaluation figures) and one validation image with its
    detections; the curves, the dynamics and the example go into each saved model folder too (the model card
    shows them). Without matplotlib: a warning, and no figure."""
    try:
        paths = plot_run(output_dir)
    except UserInputError as error:  # matplotlib is not installed
        warnings.warn(f"no figures: {error}", UserWarning, stacklevel=2)
        return []
    if run.val_set is not None:
        image, _ = run.val_set[0]
        model = run.eval_model.eval()
        with torch.no_grad():
            detections = model([image.to(next(model.parameters()).device)])[0]
        names = list(getattr(run.eval_model.config, "class_names", None) or []) or None
        example = output_dir / PLOTS_DIR / "example.png"
        # small images are enlarged so that the labels stay readable; only confident detections are drawn
        scale = max(1.0, EXAMPLE_SIZE / max(image.shape[-2:]))
        image = torch.nn.functional.interpolate(image[None], scale_factor=scale, mode="bilinear")[0]
        detections = {**{k: v.cpu() for k, v in detections.items()}, "boxes": detections["boxes"].cpu() * scale}
        save_png(draw_detections(image, detections, names, score_thresh=EXAMPLE_SCORE), example)
        paths.append(example)
    from ..hub.push import regenerated_card  # noqa: PLC0415

    for model_dir in model_dirs:
        (model_dir / PLOTS_DIR).mkdir(exist_ok=True)
        for path in paths:
            if path.name in CARD_FIGURES:
                shutil.copyfile(path, model_dir / PLOTS_DIR / path.name)
        (model_dir / CARD_NAME).write_text(regenerated_card(model_dir), encoding="utf-8")  # now with the figures
    return [str(p) for p in paths]


def _evaluate_and_log(accelerator: Accelerator, config: TrainConfig, run: _Run, output_dir: Path,
                      final: bool = False) -> dict[str, Any]:
    """COCO AP of the evaluated model (`eval/*` in the log) and, with EMA on, of the trained weights too
    (`eval_raw/*`); a new highest AP replaces OUTPUT_DIR/best/ (`save_best`); the `final` evaluation's detections
    are kept in OUTPUT_DIR/eval/ (for the figures). Returns the evaluated model's metrics."""
    record: dict[str, Any] = {"step": run.step}
    models = [("eval", run.eval_model)] + ([("eval_raw", run.raw_model)] if run.ema is not None else [])
    for prefix, model in models:
        metrics, evaluator = _evaluate(model, run.val_set, accelerator, config.batch_size, config.eval_limit)
        record.update({f"{prefix}/{k}": v for k, v in (_headline(metrics) or {}).items()})
        if prefix == "eval":
            evaluated = metrics
            if final and accelerator.is_main_process:
                write_evaluation(evaluator, output_dir / EVAL_DIR)
    if accelerator.is_main_process and len(record) > 1:
        with run.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        accelerator.log(record, step=run.step)
    ap = _main_decides(accelerator, lambda: evaluated.get("AP"))
    if config.keeps_best and ap is not None and (run.best is None or ap > run.best["AP"]):
        run.best = {"step": run.step, "AP": ap}
        if accelerator.is_main_process:
            _save_model(run, config, output_dir / "best", evaluated, "best")
    return evaluated


def final_report(summary: dict[str, Any], title: str = "COCO AP on the validation set", per_class: bool = False) -> str:
    """The end-of-run text shared by `train` and `demo`: the COCO table in percent and where the model is."""
    if summary.get("stopped"):
        stopped = summary["stopped"]
        return (f"stopped by {stopped['signal']} after step {stopped['step']}: checkpoint {stopped['checkpoint']} "
                "written, output folder unlocked. Continue with the same command and --resume latest")
    metrics = summary.get("metrics") or {}
    lines = []
    if metrics:
        lines += [f"{title} (step {summary['step']}):", format_table(metrics)]
        if per_class and "per_class" in metrics:
            lines.append(format_per_class_table(metrics["per_class"]))
    else:
        lines.append("no validation set: no COCO evaluation (set data.num_val / data.val_* to get one)")
    model_dir = summary["model_dir"]
    weights = " (EMA weights)" if summary.get("ema") else ""
    lines.append(f"model{weights}: {model_dir}  (load it with dynamic_atss.create('local-dir:{model_dir}'))")
    if summary.get("best"):
        best = summary["best"]
        lines.append(f"best: {Path(model_dir).parent / 'best'}  (iteration {best['step']}, AP {100 * best['AP']:.1f})")
    if summary.get("plots"):
        lines.append(f"figures: {Path(summary['plots'][0]).parent}  (redraw any time: dynamic-atss plot "
                     f"{Path(model_dir).parent})")
    if summary.get("unreadable_images"):
        problems = summary["unreadable_images"]
        lines.append(f"data.skip_unreadable: {len(problems)} image(s) failed to load and were replaced by the next "
                     "readable one:\n  " + "\n  ".join(problems))
    if summary.get("push_error"):
        lines.append(f"{summary['push_error']}. The model is saved; push it later with:\n  {summary['push_command']}")
    return "\n".join(lines)
