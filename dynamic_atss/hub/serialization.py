"""The saved-model format: `config.json` schema and strict state-dict loading.

`config.json` is `{"architecture": "DynamicATSS", "format_version": 2, "library_version": "...",
"model": ModelConfig.to_dict(), "recipe": {...} | null, "metrics": {...} | null}` plus what the Hugging Face
ecosystem reads: `model_type` ("dynamic_atss", the type `dynamic_atss.integrations.transformers` registers) and
`id2label` / `label2id` (from the class names, which live in the model config: `model.class_names`). Folders
written before these keys existed still load; `auto_map`, `architectures` and `transformers_version` (which
transformers' own tools add) are accepted and ignored. format_version 1 (before 2, which keeps a head family's own
options in `model.head.options`) held every family's fields flat in `model.head` / `model.loss`: still read. Weights are `model.safetensors` only (nothing is ever unpickled).

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

from ..config import ModelConfig, apply_overrides, config_value, convert_override
from ..errors import UserInputError
from ..typed import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ..models.detector import DynamicATSS

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
PREPROCESSOR_NAME = "preprocessor_config.json"  # what transformers' AutoImageProcessor reads
ARCHITECTURE = "DynamicATSS"
FORMAT_VERSION = 2  # 2: a head family's own options in `model.head.options` (1: flat in `head` / `loss`)
LIBRARY_NAME = "dynamic-atss"
CLASSIFIER_PREFIX = "head.cls_logits."
MODEL_TYPE = "dynamic_atss"  # transformers' `model_type` (dynamic_atss.integrations.transformers registers it)
_CONFIG_KEYS = {"architecture", "format_version", "library_version", "model", "recipe", "metrics"}
# Keys of the Hugging Face ecosystem: written (the first three) or tolerated (the others), never needed to load.
_HF_CONFIG_KEYS = {"model_type", "id2label", "label2id", "auto_map", "architectures", "transformers_version"}

# Config keys that may change at load time: they do not change the tensors, only how the model is used.
# A key ending in "." allows that whole section.
LOAD_TIME_OVERRIDES = (
    "min_size", "max_size", "size_divisible", "class_names", "test.", "assigner.", "loss.",
    "backbone.frozen_stages", "conventions.score_sqrt", "conventions.pre_nms_rank_by_joint",
)

# ---------------------------------------------------------------------------------------------- errors
class StateDictMismatchError(UserInputError, RuntimeError):
    """Weights that do not fit the model described by the config (missing / unexpected / mis-shaped tensors)."""


class ConfigFormatError(UserInputError, ValueError):
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
    id2label = label_names(config)
    return {
        "architecture": ARCHITECTURE,
        "format_version": FORMAT_VERSION,
        "library_version": _library_version(),
        "model_type": MODEL_TYPE,
        "id2label": {str(i): name for i, name in enumerate(id2label)},
        "label2id": {name: i for i, name in enumerate(id2label)},
        "model": config.to_dict(),
        "recipe": _json_ready(recipe, "recipe") if recipe is not None else None,
        "metrics": _json_ready(metrics, "metrics") if metrics is not None else None,
    }


def preprocessor_config() -> dict[str, Any]:
    """`preprocessor_config.json`: the image processor `dynamic_atss.integrations.transformers` registers (images
    to RGB floats in [0, 1]; the model resizes and normalises them itself, from its config)."""
    return {"image_processor_type": "DynamicATSSImageProcessor", "do_rescale": True, "rescale_factor": 1 / 255,
            "do_resize": False, "do_normalize": False}


def label_names(config: ModelConfig) -> list[str]:
    """One name per class: `class_names`, or transformers' `LABEL_<i>` for unnamed classes."""
    return list(config.class_names) if config.class_names else [f"LABEL_{i}" for i in range(config.num_classes)]


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
    unknown = sorted(set(data) - _CONFIG_KEYS - _HF_CONFIG_KEYS)
    if unknown:
        raise ConfigFormatError(
            f"{source}: unknown top-level field(s) {unknown}; known fields: {sorted(_CONFIG_KEYS | _HF_CONFIG_KEYS)}"
        )
    if data.get("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise ConfigFormatError(f"{source}: model_type is {data['model_type']!r}, expected {MODEL_TYPE!r}")
    if "model" not in data:
        raise ConfigFormatError(f"{source}: missing the 'model' section (the ModelConfig)")
    for key in ("recipe", "metrics"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ConfigFormatError(f"{source}: '{key}' must be an object or null, got {type(data[key]).__name__}")
    try:
        config = ModelConfig.from_dict(data["model"])
    except (TypeError, ValueError) as error:
        raise ConfigFormatError(f"{source}: {error}") from None
    id2label = data.get("id2label")
    if id2label is not None and (not isinstance(id2label, dict) or len(id2label) != config.num_classes):
        raise ConfigFormatError(
            f"{source}: id2label must map each of the model's {config.num_classes} class indices to a name, got "
            f"{id2label!r}"
        )
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


class FixedFieldMismatchError(ConfigError):
    """A load-time override of a field fixed by the checkpoint (it shapes the network) with another value."""


def _is_load_time_field(key: str) -> bool:
    return any(key == allowed or (allowed.endswith(".") and key.startswith(allowed)) for allowed in LOAD_TIME_OVERRIDES)


def _check_overrides(config: ModelConfig, overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """`overrides` less the fixed fields that only restate the checkpoint's value.

    A recipe written for one architecture may be used with `init_from` as long as it agrees with the checkpoint:
    a fixed field (one that shapes the network) given the checkpoint's own value is accepted and dropped; one
    with another value raises `FixedFieldMismatchError` naming the field, the checkpoint's value and the one asked.
    """
    kept: dict[str, Any] = {}
    differing = []
    for key, value in overrides.items():
        if _is_load_time_field(key):
            kept[key] = value
            continue
        field_key = "backbone.name" if key == "backbone" and isinstance(value, str) else key
        requested = convert_override(field_key, value, where="model override")
        saved = config_value(config, field_key)
        if requested != saved:
            differing.append(f"{field_key}: checkpoint {saved!r}, requested {requested!r}")
    if differing:
        raise FixedFieldMismatchError(
            f"cannot override {differing} when loading saved weights from {source}: these fields shape the network "
            "and are fixed by the checkpoint's config.json (leave them out, or give the checkpoint's value). "
            f"Allowed at load time: num_classes=, and {list(LOAD_TIME_OVERRIDES)} (a trailing '.' means any key of "
            "that section, e.g. 'test.score_thresh')"
        )
    return kept


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
    overrides = _check_overrides(config, overrides, source)
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
