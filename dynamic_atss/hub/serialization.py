"""The saved-model format: `config.json` schema and strict state-dict loading.

`config.json` is `{"architecture": "DynamicATSS", "format_version": 1, "library_version": "...",
"model": ModelConfig.to_dict(), "recipe": {...} | null, "metrics": {...} | null}`; the class names live in the
model config (`model.class_names`). Weights are `model.safetensors` only (nothing is ever unpickled).

Loading is strict: a missing or unexpected tensor, or one whose shape differs from the model that
`config.json` describes, is an error naming it. The one exception is fine-tuning on another label set:
`num_classes=N` different from the checkpoint's re-initialises the classification layer (`head.cls_logits.*`,
like a fresh head: N(0, 0.01) weights, prior-probability bias), with a warning, and resets `class_names`.
Rebuilding never downloads ImageNet backbone weights.

This module imports no model code: the class to rebuild is looked up by `config.json`'s `architecture` among
the classes registered with `register_model_class` (which `HubMixin` does for `DynamicATSS`).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..config import ModelConfig, apply_overrides

if TYPE_CHECKING:  # pragma: no cover
    from ..models.detector import DynamicATSS

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
ARCHITECTURE = "DynamicATSS"
FORMAT_VERSION = 1
LIBRARY_NAME = "dynamic-atss"
CLASSIFIER_PREFIX = "head.cls_logits."
_CONFIG_KEYS = {"architecture", "format_version", "library_version", "model", "recipe", "metrics"}

# Config keys that may change at load time: they do not change the tensors, only how the model is used.
# A key ending in "." allows that whole section.
LOAD_TIME_OVERRIDES = (
    "min_size", "max_size", "size_divisible", "class_names", "test.", "assigner.", "loss.",
    "backbone.frozen_stages", "conventions.score_sqrt", "conventions.pre_nms_rank_by_joint",
)

# ---------------------------------------------------------------------------------------------- errors
class StateDictMismatchError(RuntimeError):
    """Weights that do not fit the model described by the config (missing / unexpected / mis-shaped tensors)."""


class ConfigFormatError(ValueError):
    """A `config.json` this version cannot read (unknown fields, other architecture, newer format)."""


# ---------------------------------------------------------------------------------------------- helpers
def _library_version() -> str:
    from .._version import __version__  # noqa: PLC0415

    return __version__

def _format_names(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _json_ready(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} must be JSON-serialisable (dicts, lists, str, numbers): {error}") from error


# ---------------------------------------------------------------------------------------------- config.json
def config_to_json(
    config: ModelConfig, recipe: dict[str, Any] | str | None = None, metrics: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The `config.json` document for a model config."""
    if isinstance(recipe, str):
        recipe = {"name": recipe}
    return {
        "architecture": ARCHITECTURE,
        "format_version": FORMAT_VERSION,
        "library_version": _library_version(),
        "model": config.to_dict(),
        "recipe": _json_ready(recipe, "recipe") if recipe is not None else None,
        "metrics": _json_ready(metrics, "metrics") if metrics is not None else None,
    }


def parse_config(data: Any, source: str = CONFIG_NAME) -> tuple[ModelConfig, dict[str, Any]]:
    """Validate a `config.json` document -> (ModelConfig, the whole document). Errors name `source`."""
    if not isinstance(data, dict):
        raise ConfigFormatError(f"{source}: expected a JSON object, got {type(data).__name__}")
    architecture = data.get("architecture")
    if architecture != ARCHITECTURE:
        raise ConfigFormatError(
            f"{source}: architecture is {architecture!r}, expected {ARCHITECTURE!r}. This folder or repo does not "
            "hold a dynamic-atss model (convert mmdetection checkpoints first: `dynamic-atss convert FILE --out DIR`)"
        )
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigFormatError(f"{source}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ConfigFormatError(
            f"{source}: format_version {version} was written by a newer dynamic-atss "
            f"(library_version {data.get('library_version')!r}); this is dynamic-atss {_library_version()}, which "
            f"reads format_version <= {FORMAT_VERSION}. Upgrade: pip install -U dynamic-atss"
        )
    unknown = sorted(set(data) - _CONFIG_KEYS)
    if unknown:
        raise ConfigFormatError(f"{source}: unknown top-level field(s) {unknown}; known fields: {sorted(_CONFIG_KEYS)}")
    if "model" not in data:
        raise ConfigFormatError(f"{source}: missing the 'model' section (the ModelConfig)")
    for key in ("recipe", "metrics"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ConfigFormatError(f"{source}: '{key}' must be an object or null, got {type(data[key]).__name__}")
    try:
        config = ModelConfig.from_dict(data["model"])
    except (TypeError, ValueError) as error:
        raise ConfigFormatError(f"{source}: {error}") from None
    return config, data


def read_config(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """Read and validate a `config.json` file (or the one inside a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigFormatError(f"{path}: not valid JSON ({error})") from None
    return parse_config(data, str(path))


def _check_overrides(overrides: dict[str, Any]) -> None:
    bad = [
        key for key in overrides
        if not any(key == allowed or (allowed.endswith(".") and key.startswith(allowed)) for allowed in LOAD_TIME_OVERRIDES)
    ]
    if bad:
        raise ValueError(
            f"cannot override {bad} when loading saved weights: these fields shape the network and are fixed by "
            f"the checkpoint's config.json. Allowed at load time: num_classes=, and {list(LOAD_TIME_OVERRIDES)} "
            "(a trailing '.' means any key of that section, e.g. 'test.score_thresh')"
        )


# ---------------------------------------------------------------------------------------------- state dicts
_MODEL_CLASSES: dict[str, type] = {}


def register_model_class(cls: type, architecture: str | None = None) -> type:
    """Make `cls` what `config.json`'s `architecture` (default: the class name) is rebuilt as.

    `HubMixin` calls this for each class that inherits it directly, so that this package never imports the
    model code (the dependency goes one way: models -> hub).
    """
    _MODEL_CLASSES[architecture or cls.__name__] = cls
    return cls


def registered_model_class(architecture: str = ARCHITECTURE) -> type:
    """The class registered for `architecture` (see `register_model_class`)."""
    try:
        return _MODEL_CLASSES[architecture]
    except KeyError:
        raise RuntimeError(
            f"no model class registered for architecture {architecture!r} (registered: {sorted(_MODEL_CLASSES)}); "
            "`import dynamic_atss` registers DynamicATSS"
        ) from None


def check_state_dict(
    expected: dict[str, Tensor], given: dict[str, Tensor], source: str, ignore_prefixes: tuple[str, ...] = ()
) -> None:
    """Raise `StateDictMismatchError` naming every missing, unexpected and mis-shaped tensor."""
    expected_keys = {k for k in expected if not k.startswith(ignore_prefixes)}
    given_keys = {k for k in given if not k.startswith(ignore_prefixes)}
    missing = sorted(expected_keys - given_keys)
    unexpected = sorted(given_keys - expected_keys)
    mismatched = sorted(
        f"{k}: checkpoint {tuple(given[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected_keys & given_keys
        if tuple(given[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_format_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_format_names(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} tensor(s) with another shape: {_format_names(mismatched)}")
    if problems:
        raise StateDictMismatchError(
            f"{source} does not match the model its config describes; " + "; ".join(problems) + ". The weights "
            "and config.json must come from the same model (save both with model.save_pretrained)."
        )


def build_model_from_state_dict(
    config: ModelConfig,
    state_dict: dict[str, Tensor],
    *,
    num_classes: int | None = None,
    overrides: dict[str, Any] | None = None,
    source: str = "checkpoint",
    model_class: type | None = None,
) -> DynamicATSS:
    """Build `DynamicATSS(config)` (no ImageNet download) and load `state_dict` strictly.

    `num_classes` different from `config.num_classes` keeps everything but the classification layer,
    which is re-initialised (with a warning); `overrides` are load-time config changes (`LOAD_TIME_OVERRIDES`).
    The model is returned in eval mode.
    """
    overrides = dict(overrides or {})
    overrides.pop("backbone_pretrained", None)  # the checkpoint holds the backbone: nothing to download
    if "num_classes" in overrides:
        if num_classes is not None and overrides["num_classes"] != num_classes:
            raise ValueError("num_classes given twice with different values")
        num_classes = overrides.pop("num_classes")
    _check_overrides(overrides)
    checkpoint_classes = config.num_classes
    reset_classifier = num_classes is not None and int(num_classes) != checkpoint_classes
    if reset_classifier:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        overrides["num_classes"] = int(num_classes)
    if overrides:
        config = apply_overrides(config, overrides)
    cls = model_class or registered_model_class()
    model = cls(config, backbone_pretrained=False)
    expected = model.state_dict()
    ignore = (CLASSIFIER_PREFIX,) if reset_classifier else ()
    check_state_dict(expected, state_dict, source, ignore_prefixes=ignore)
    to_load = {k: v for k, v in state_dict.items() if not k.startswith(ignore)} if ignore else state_dict
    result = model.load_state_dict(to_load, strict=not reset_classifier)
    if reset_classifier:
        leftover = [k for k in result.missing_keys if not k.startswith(CLASSIFIER_PREFIX)] + list(result.unexpected_keys)
        if leftover:  # pragma: no cover - check_state_dict already caught these
            raise StateDictMismatchError(f"{source}: could not load {leftover}")
        # head.cls_logits keeps the fresh initialisation the model was just built with (the head family's __init__).
        names = "" if "class_names" in overrides else " class_names were reset (pass class_names= to name the classes)."
        warnings.warn(
            f"{source}: num_classes={config.num_classes} differs from the checkpoint's {checkpoint_classes}, so the "
            f"classification layer ({CLASSIFIER_PREFIX}weight/bias) is newly initialised (N(0, 0.01), prior bias) and "
            f"must be trained; every other tensor comes from the checkpoint.{names}",
            UserWarning,
            stacklevel=3,
        )
    return model.eval()
