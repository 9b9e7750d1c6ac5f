"""Training configuration: dataclasses read from a YAML recipe plus `--section.key value` overrides.

A recipe mirrors `TrainConfig` (sections are nested mappings) and may start from one `base: other.yaml`
(relative to itself) whose values it overrides key by key. The architecture is a registry name plus dotted
`ModelConfig` overrides:

    model: r50
    model_overrides: {assigner.pred_weight: 0.0, loss.cls_loss: focal, head.quality: centerness}

Recipes ship inside the package (`dynamic_atss/configs/`): `load_config("demo_cpu")` finds one by name,
`load_config("my/recipe.yaml")` by path. Every value, model overrides included, goes through the typed
converter of `dynamic_atss.typed` (the one `ModelConfig` uses): floats in any notation, `null`, tuples and
`Literal` choices are checked, and misspelt keys name the closest field, all before any data or model is
built. `None` for `mixed_precision` / `grad_accum` means "not set here": Accelerate's own settings
(`accelerate launch --mixed_precision bf16 --gradient_accumulation_steps 4`, `accelerate config`) decide.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..config import ModelConfig
from ..typed import ConfigError, closest, convert_dotted, field_rows, from_dict, resolve_dotted

RECIPES_DIR = Path(__file__).resolve().parent.parent / "configs"
# Experiment trackers Accelerate knows (`accelerate.utils.LoggerType`), listed here to keep config loading fast.
_TRACKERS = ("all", "tensorboard", "wandb", "trackio", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab")


@dataclass
class DataConfig:
    kind: Literal["synthetic", "coco", "hf"] = "synthetic"
    # the dataset's name in the model card; default: the Hub dataset id, the COCO folder's name, synthetic-shapes
    name: str | None = None
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
    check_images: bool = True  # scan image headers and sizes before training (fast; errors name the file)
    skip_unreadable: bool = False  # drop images that fail the scan (one warning lists them) instead of stopping
    flip_prob: float = 0.5
    photometric: bool = False
    num_workers: int = 2

    def __post_init__(self) -> None:
        if self.name is None:
            self.name = default_dataset_name(self)


def default_dataset_name(data: DataConfig) -> str | None:
    """What a model card calls the training data: the Hub dataset id (or a local dataset folder's name), the name
    of the folder holding a COCO folder's images and annotations (`data/coco` -> "coco"), or `synthetic-shapes`.
    Only a name, never a path: cards are published."""
    if data.kind == "synthetic":
        return "synthetic-shapes"
    if data.kind == "hf":
        return (Path(data.source).name if Path(data.source).exists() else data.source) if data.source else None
    paths = [Path(p).expanduser().absolute() for p in (data.train_images, data.train_annotations) if p]
    if not paths:
        return None
    root = Path(os.path.commonpath(paths))
    return root.name or None


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
    grad_accum: int | None = None  # None: Accelerate's setting (accelerate launch/config), default 1
    mixed_precision: Literal["no", "fp16", "bf16", "fp8"] | None = None  # None: Accelerate's setting
    output_dir: str = "outputs/run"
    seed: int = 0
    log_every: int = 20
    eval_every: int = 0  # iterations; 0 = only at the end
    eval_limit: int | None = None  # evaluate on the first N validation images
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    max_bad_steps: int = 10  # consecutive non-finite losses before stopping
    push_to_hub: str | None = None
    tracker: str = "auto"  # auto (tensorboard if installed), none, or Accelerate log_with names: wandb,mlflow

    def __post_init__(self) -> None:
        self.model_overrides = check_model_overrides(self.model_overrides)
        for name in ("batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.grad_accum is not None and self.grad_accum < 1:
            raise ConfigError(f"grad_accum must be >= 1 (or null for Accelerate's setting), got {self.grad_accum}")
        if self.optim.max_iters < 1:
            raise ConfigError(f"optim.max_iters must be >= 1, got {self.optim.max_iters}")
        for name in self.trackers:
            if name not in _TRACKERS:
                raise ConfigError(
                    f"tracker: unknown tracker {name!r}{closest(name, _TRACKERS)}; use auto, none or a comma-separated "
                    f"list of {list(_TRACKERS)}"
                )

    @property
    def trackers(self) -> list[str]:
        """Accelerate `log_with` names; [] for none. `auto` -> tensorboard when it is installed."""
        value = self.tracker.strip().lower()
        if value == "none":
            return []
        if value == "auto":
            import importlib.util  # noqa: PLC0415

            return ["tensorboard"] if importlib.util.find_spec("tensorboard") is not None else []
        return [name.strip() for name in value.split(",") if name.strip()]


def check_model_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Dotted `ModelConfig` overrides with each value converted to its field's type (errors name the key)."""
    checked = {}
    for key, value in (overrides or {}).items():
        if key == "backbone" and isinstance(value, str):  # `create()`'s shortcut for backbone.name
            checked[key] = value
            continue
        checked[key] = convert_dotted(ModelConfig, key, value, where="model override")
    return checked


def list_recipes() -> list[str]:
    """Names of the packaged recipes (`load_config(name)`); shared `_base` files are left out."""
    found = (p.relative_to(RECIPES_DIR).with_suffix("").as_posix() for p in RECIPES_DIR.rglob("*.yaml"))
    return sorted(name for name in found if not Path(name).name.startswith("_"))


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: an existing path, or a packaged recipe name (`demo_cpu`, `ablations/table1_qfl`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path).removesuffix(".yaml").removeprefix("configs/")
    packaged = RECIPES_DIR / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    names = list_recipes()
    raise FileNotFoundError(
        f"config {str(name_or_path)!r} is neither a file nor a packaged recipe{closest(name, names)}; "
        f"packaged recipes: {names}"
    )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (a path or a packaged recipe name; the defaults when None) and apply `key=value`
    overrides (`optim.lr=1e-3`, `data.num_workers=0`, `model_overrides.assigner.pred_weight=0`)."""
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        recipe = find_recipe(path)
        data = _read_yaml(recipe)
        where = str(recipe)
    return config_from_dict(data, overrides, where=where)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe may name one `base:` file (relative to itself) whose values it overrides, key by key."""
    if path.resolve() in seen:
        raise ConfigError(f"config {path}: circular `base:` chain {[str(p) for p in seen]}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping of TrainConfig fields, got {type(data).__name__}")
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
    """A `TrainConfig` from nested mappings (as in YAML), after `key=value` overrides; values stay text until
    the typed conversion, so `--optim.lr 1e-3` and `lr: 1e-3` are read alike."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        key = key.strip().removeprefix("--")
        if key.startswith("model_overrides."):
            data["model_overrides"] = dict(data.get("model_overrides") or {})
            data["model_overrides"][key.removeprefix("model_overrides.")] = raw
            continue
        resolve_dotted(TrainConfig, key, where="override")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = raw
    try:
        return from_dict(TrainConfig, data, path="")
    except ConfigError as e:
        raise ConfigError(f"{where}{' with overrides' if overrides else ''}: {e}") from None


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_help() -> str:
    """Every field with its type and default (`--help`), the model overrides included."""
    lines = []
    for name, type_name, default, comment in field_rows(TrainConfig):
        if name == "model_overrides":
            continue
        lines.append(_help_line(name, type_name, default, comment))
    lines.append("\nmodel_overrides (ModelConfig fields; the defaults below are ModelConfig's, each registry model "
                 "sets its own):")
    for name, type_name, default, comment in field_rows(ModelConfig, "model_overrides."):
        lines.append(_help_line(name, type_name, default, comment))
    return "\n".join(lines)


def _help_line(name: str, type_name: str, default: Any, comment: str) -> str:
    text = f"  --{name} {type_name.upper() if type_name in ('int', 'float', 'str', 'bool') else type_name}"
    text = f"{text:<58} default: {default!r}"
    return f"{text}  # {comment}" if comment else text
