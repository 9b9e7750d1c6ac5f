"""Training configuration: plain dataclasses, loaded from YAML with `--key value` overrides.

A YAML file mirrors `TrainConfig` (nested sections are nested mappings) and may start from one
`base: other.yaml` whose values it overrides; the model architecture is a registry name plus dotted
`ModelConfig` overrides, e.g.

    model: r50
    model_overrides: {assigner.pred_weight: 0.0, loss.cls_loss: focal, head.quality: centerness}
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass
class DataConfig:
    kind: Literal["synthetic", "coco", "hf"] = "synthetic"
    # synthetic: the embedded generator
    num_train: int = 2000
    num_val: int = 100
    image_size: tuple[int, int] = (320, 320)
    # coco: image folders and annotation files
    train_images: str | None = None
    train_annotations: str | None = None
    val_images: str | None = None
    val_annotations: str | None = None
    # hf: a Hub dataset name, a save_to_disk folder or a Parquet folder
    source: str | None = None
    train_split: str = "train"
    val_split: str | None = "validation"
    box_format: Literal["xywh", "xyxy"] = "xywh"
    # both
    keep_empty: bool = True
    flip_prob: float = 0.5
    photometric: bool = False
    num_workers: int = 2


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01  # for `base_batch_size` images per step; scaled linearly with the total batch
    base_batch_size: int = 16
    scale_lr: bool = True
    momentum: float = 0.9
    weight_decay: float = 1e-4
    no_decay_norm_and_bias: bool = True
    warmup_iters: int = 500
    warmup_factor: float = 1.0 / 3
    max_iters: int = 90_000  # 1x at batch 16
    steps: tuple[int, ...] = (60_000, 80_000)
    gamma: float = 0.1
    grad_clip: float | None = None  # max global grad norm


@dataclass
class TrainConfig:
    model: str = "r50"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # "local-dir:/path" | "hf-hub:org/name" to fine-tune saved weights
    backbone_pretrained: bool = True  # timm ImageNet weights (needs the Hub or a local cache)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 2  # per process
    grad_accum: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    output_dir: str = "outputs/run"
    seed: int = 0
    log_every: int = 20
    eval_every: int = 0  # iterations; 0 = only at the end
    eval_limit: int | None = None  # evaluate on the first N validation images
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    max_bad_steps: int = 10  # consecutive non-finite losses before stopping
    push_to_hub: str | None = None
    tracker: Literal["auto", "tensorboard", "none"] = "auto"


_SECTIONS = {"data": DataConfig, "optim": OptimConfig}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    kwargs = {}
    for key, value in values.items():
        if cls is TrainConfig and key in _SECTIONS:
            kwargs[key] = _build(_SECTIONS[key], value or {}, f"{where}.{key}")
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (or the defaults when `path` is None) and apply `key=value` overrides.

    Override keys are dotted (`optim.lr=0.005`, `data.num_workers=0`,
    `model_overrides.assigner.pred_weight=0`); values are parsed as YAML scalars.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist; see the recipes in configs/")
        data = _read_yaml(path)
    return config_from_dict(data, overrides, where=str(path or "defaults"))


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe may name one `base:` file (relative to itself) whose values it overrides, key by key."""
    if path.resolve() in seen:
        raise ValueError(f"config {path}: circular `base:` chain {[str(p) for p in seen]}")
    data = yaml.safe_load(path.read_text()) or {}
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = path.parent / base
    if not base_path.is_file():
        raise FileNotFoundError(f"config {path}: base file {base_path} does not exist")
    return _merge(_read_yaml(base_path, seen + (path.resolve(),)), data)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None, where: str = "config") -> TrainConfig:
    """A `TrainConfig` from nested mappings (as in YAML), after `key=value` overrides."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        if key.startswith("model_overrides."):
            data.setdefault("model_overrides", {})[key.removeprefix("model_overrides.")] = value
            continue
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return _build(TrainConfig, data, where=where)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
