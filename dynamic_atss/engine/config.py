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
built, and every number is checked against its range (`check_ranges`). `None` for `mixed_precision` means
"not set here": Accelerate's own setting (`accelerate launch --mixed_precision bf16`, `accelerate config`)
decides. `None` for `grad_accum` means 1, unless the launcher sets ACCELERATE_GRADIENT_ACCUMULATION_STEPS
(`accelerate launch --gradient_accumulation_steps 4` does so with DeepSpeed only); a recipe value that differs
from the launcher's is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from ..config import ModelConfig, convert_override, family_option_rows
from ..errors import UserInputError
from ..typed import ConfigError, closest, field_rows, from_dict, resolve_dotted

class RecipeNotFoundError(UserInputError, FileNotFoundError):
    """`--config` (or a recipe's `base:`) names neither a file nor a packaged recipe."""


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
    check_images: bool = True  # scan headers, sizes, end markers first (fast); corrupt pixel data is found at load
    skip_unreadable: bool = False  # leave out images failing the scan; one failing to decode later: next one, reported
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
class EmaConfig:
    """An exponential moving average of the weights (`dynamic_atss.engine.ema`): evaluated, saved and pushed
    instead of the last iterate when enabled."""

    enabled: bool = False
    decay: float = 0.9998  # per optimizer step once warmed up (mmdetection's ExpMomentumEMA: momentum 0.0002)
    tau: float = 2000.0  # warm-up, in optimizer steps: update n uses decay * (1 - exp(-n / tau))


@dataclass
class TrainConfig:
    model: str = "r50"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # "local-dir:/path" | "hf-hub:org/name" to fine-tune saved weights
    backbone_pretrained: bool = True  # timm ImageNet weights (needs the Hub or a local cache)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    batch_size: int = 2  # per process
    grad_accum: int | None = None  # None: $ACCELERATE_GRADIENT_ACCUMULATION_STEPS (DeepSpeed launches) or 1
    mixed_precision: Literal["no", "fp16", "bf16", "fp8"] | None = None  # None: Accelerate's setting
    output_dir: str = "outputs/run"
    seed: int = 0
    log_every: int = 20
    eval_every: int = 0  # iterations; 0 = only at the end
    eval_limit: int | None = None  # evaluate on the first N validation images
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    max_bad_steps: int = 10  # consecutive non-finite losses before stopping
    save_best: bool | None = None  # keep OUTPUT_DIR/best/ (highest AP of the evaluations); None: on when eval_every > 0
    push_to_hub: str | None = None
    push_best: bool = False  # push OUTPUT_DIR/best/ instead of the final model (when a best one exists)
    tracker: str = "auto"  # auto (tensorboard if installed), none, or Accelerate log_with names: wandb,mlflow

    @property
    def keeps_best(self) -> bool:
        """Whether `OUTPUT_DIR/best/` is kept: `save_best`, or when unset, periodic evaluation being on."""
        return bool(self.eval_every) if self.save_best is None else self.save_best

    def __post_init__(self) -> None:
        self.model_overrides = check_model_overrides(self.model_overrides)
        check_ranges(self)
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


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: math.isfinite(v) and v >= low


def _positive(v: Any) -> bool:
    return math.isfinite(v) and v > 0


def _fraction(v: Any) -> bool:
    return 0 <= v <= 1


# (dotted key, test of the value, what the value must be). `None` values (unset) are not tested.
_RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("batch_size", _at_least(1), ">= 1 (images per process and step)"),
    ("grad_accum", _at_least(1), ">= 1, or null for the launcher's setting (1 when it sets none)"),
    ("seed", lambda v: 0 <= v < 2**32, "in [0, 2**32) (NumPy's seed range)"),
    ("log_every", _at_least(1), ">= 1"),
    ("eval_every", _at_least(0), ">= 0 (0: evaluate at the end only)"),
    ("eval_limit", _at_least(1), ">= 1, or null for the whole validation set"),
    ("checkpoint_every", _at_least(0), ">= 0 (0: no checkpoints)"),
    ("keep_checkpoints", _at_least(0), ">= 0 (0: keep all)"),
    ("max_bad_steps", _at_least(1), ">= 1"),
    ("data.num_train", _at_least(1), ">= 1"),
    ("data.num_val", _at_least(0), ">= 0"),
    ("data.image_size", lambda v: len(v) == 2 and min(v) >= 1, "two sizes >= 1, [height, width]"),
    ("data.flip_prob", _fraction, "in [0, 1]"),
    ("data.num_workers", _at_least(0), ">= 0 (0: load in the main process)"),
    ("optim.lr", _positive, "a finite number > 0"),
    ("optim.base_batch_size", _at_least(1), ">= 1"),
    ("optim.momentum", _fraction, "in [0, 1]"),
    ("optim.weight_decay", _at_least(0), "a finite number >= 0"),
    ("optim.warmup_iters", _at_least(0), ">= 0 (0: no warm-up)"),
    ("optim.warmup_factor", lambda v: 0 < v <= 1, "in (0, 1] (the warm-up's starting fraction of the LR)"),
    ("optim.max_iters", _at_least(1), ">= 1"),
    ("optim.steps", lambda v: all(s >= 1 for s in v) and all(a < b for a, b in zip(v, v[1:])),
     "iterations >= 1 in increasing order, e.g. [60000, 80000]"),
    ("optim.gamma", _positive, "a finite number > 0 (the LR factor at each of optim.steps, e.g. 0.1)"),
    ("optim.grad_clip", _positive, "a finite number > 0, or null for no clipping"),
    ("ema.decay", lambda v: 0 <= v < 1, "in [0, 1) (e.g. 0.9998: an average over about 5000 steps)"),
    ("ema.tau", _positive, "a finite number > 0 (the warm-up, in optimizer steps)"),
)


def check_ranges(config: TrainConfig) -> None:
    """Raise `ConfigError` naming the key, its value and the valid range for the first numeric field out of its
    range. LR steps at or past `optim.max_iters` are allowed (a run shortened with `--optim.max_iters` keeps the
    recipe's steps), with a warning naming the drops that will not happen."""
    for key, valid, requirement in _RANGES:
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        if value is not None and not valid(value):
            raise ConfigError(f"{key} = {value!r} is out of range: it must be {requirement}; set --{key} accordingly")
    unreached = [step for step in config.optim.steps if step >= config.optim.max_iters]
    if unreached:
        warnings.warn(
            f"optim.steps {unreached} are at or past optim.max_iters = {config.optim.max_iters}: those learning-rate "
            "drops will not happen in this run (set --optim.steps to schedule them)", UserWarning, stacklevel=2,
        )


def _register_head_families() -> None:
    """The head families declare their own options (`head.reg_max`, ...) in their modules: import them (torch)."""
    from ..detection import heads  # noqa: F401, PLC0415


def check_model_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Dotted `ModelConfig` overrides with each value converted to its field's type (errors name the key)."""
    _register_head_families()
    checked = {}
    for key, value in (overrides or {}).items():
        if key == "backbone" and isinstance(value, str):  # `create()`'s shortcut for backbone.name
            checked[key] = value
            continue
        checked[key] = convert_override(key, value, where="model override")
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
    raise RecipeNotFoundError(
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
        raise RecipeNotFoundError(f"config {path}: base file {base_path} does not exist")
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
    """Every field with its type and default (`--help`), the model overrides included. The head families' own
    options are listed when their modules are loaded (they import torch, which `--help` does not)."""
    lines = []
    for name, type_name, default, comment in field_rows(TrainConfig):
        if name == "model_overrides":
            continue
        lines.append(_help_line(name, type_name, default, comment))
    lines.append("\nmodel_overrides (ModelConfig fields; the defaults below are ModelConfig's, each registry model "
                 "sets its own):")
    for name, type_name, default, comment in field_rows(ModelConfig, "model_overrides.") + family_option_rows(
            "model_overrides."):
        lines.append(_help_line(name, type_name, default, comment))
    if not family_option_rows():
        lines.append("  --model_overrides.head.<option> / loss.<option>: the head family's own options (head.quality, "
                     "head.reg_max, loss.dfl_weight, ...), declared in dynamic_atss/detection/heads/<family>.py")
    return "\n".join(lines)


def _help_line(name: str, type_name: str, default: Any, comment: str) -> str:
    text = f"  --{name} {type_name.upper() if type_name in ('int', 'float', 'str', 'bool') else type_name}"
    text = f"{text:<58} default: {default!r}"
    return f"{text}  # {comment}" if comment else text
