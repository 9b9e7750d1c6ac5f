"""The one door to a model: `create(name, pretrained=False, **kwargs)` and `load_model(name, **kwargs)`.

Every entry point builds or loads through here (the constructors of `zoo.py`, `predict`, `export`, the
benchmarks, the trainer's `init_from`, the demo), one direction: factory -> registry (tables) + hub (folders,
Hub repos) + convert (URL weights) + models (the network). Names understood:

- a registered name or alias (`"r50"`, `"dynamic_atss_r101_dcn"`, `"atss_r50"`): its family's config with dotted
  overrides and random weights, or with `pretrained=True` the weights of its default tag;
- `"name.tag"` (`"atss_r50.mmdet_coco_1x"`): those weights (`pretrained` is implied), from their Hub repo or
  converted from their URL on first use;
- `"hf-hub:org/name[@revision]"`, `"local-dir:/path"` or a path to an existing folder holding `config.json` +
  `model.safetensors` (a registered name wins over a folder of the same name: use `"./name"` or
  `"local-dir:name"` for the folder).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import apply_overrides
from .convert.url import load_url_weights
from .hub import load_pretrained
from .hub.folder import ModelFolderNotFoundError, NotAModelFolderError
from .locations import parse_location
from .models.detector import DynamicATSS
from .registry import (
    NoPretrainedWeightsError, converter_available, family_not_available, get_pretrained_cfg, is_registered,
    model_entry, split_name, what_is_available,
)

__all__ = ["create", "load_model", "load_pretrained_tag"]


def load_pretrained_tag(name: str, **kwargs: Any) -> DynamicATSS:
    """The model with the weights of `name` ('model' for its default tag, or 'model.tag').

    `kwargs`: `num_classes`, load-time config overrides, and for Hub weights `cache_dir`, `local_files_only`,
    `force_download`, `token`, `endpoint`; for URL weights `cache_dir`, `local_files_only`, `force_download`,
    `progress`.
    """
    cfg = get_pretrained_cfg(name)
    kwargs.pop("backbone_pretrained", None)  # the checkpoint holds the backbone too
    if cfg.hf_hub_id:
        revision = f"@{cfg.revision}" if cfg.revision else ""
        model = load_pretrained(f"hf-hub:{cfg.hf_hub_id}{revision}", **kwargs)
        model.pretrained_info["tag"] = cfg.name
        return model
    if cfg.url:
        if not converter_available(cfg):
            raise family_not_available(cfg)
        return load_url_weights(cfg, **kwargs)
    raise NoPretrainedWeightsError(
        f"{cfg.name} has no published weights yet: no checkpoint of it has been trained and published.\n"
        + what_is_available(cfg.model, cfg.recipe)
    )


def create(name: str | os.PathLike, pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
    """The one way to build or load a model (names: see the module docstring).

    The model is returned in train mode whatever `pretrained` is and wherever its weights come from, as timm's
    `create_model` and torchvision's builders return it (a fresh `nn.Module`): call `model.eval()` to detect.
    (`DynamicATSS.from_pretrained` / `load_pretrained`, the Hugging Face-style loaders, return eval mode.)

    `kwargs`: `num_classes`, `min_size`, `max_size`, `backbone="<timm name>"`, `backbone_pretrained`, and any
    config field as a dotted key (`**{"head.quality": "centerness"}`); for saved weights only the load-time
    fields (`dynamic_atss.hub.LOAD_TIME_OVERRIDES`), plus the download options of `load_pretrained_tag`.
    """
    name = os.fspath(name)
    registered = is_registered(name)
    if name.startswith(("hf-hub:", "local-dir:")) or (not registered and parse_location(name)):
        kwargs.pop("backbone_pretrained", None)
        return load_pretrained(name, **kwargs).train()
    if not registered and (os.sep in name or name.startswith((".", "~"))):  # a path, not a model name
        path = Path(name).expanduser()
        if path.is_file():
            raise NotAModelFolderError(
                f"{name} is a file: give the model folder (config.json + model.safetensors, as save_pretrained "
                "writes it); convert an mmdetection .pth first with `dynamic-atss convert FILE --out DIR`"
            )
        raise ModelFolderNotFoundError(f"model folder not found: {name} (nor is it a registered model name)")
    model, tag = split_name(name)
    if tag is not None:
        pretrained = True
    entry = model_entry(model)
    if pretrained:
        return load_pretrained_tag(f"{model}.{tag}" if tag else model, **kwargs).train()
    if entry is None:  # indexed weights of a family without a constructor here
        raise family_not_available(get_pretrained_cfg(model))
    backbone_pretrained = kwargs.pop("backbone_pretrained", False)
    return DynamicATSS(apply_overrides(entry.config(), kwargs), backbone_pretrained=backbone_pretrained)


def load_model(name: str | os.PathLike, **kwargs: Any) -> DynamicATSS:
    """`create(name, pretrained=True, **kwargs)`: a model with weights (a tag, a name's default tag, a Hub repo or
    a folder); a name nobody has published weights of raises `NoPretrainedWeightsError` saying what exists."""
    return create(name, pretrained=True, **kwargs)
