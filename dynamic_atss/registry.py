"""A timm-style registry: named constructors, short aliases, `name.tag` pretrained weights, one `create()`.

The published weights are listed in `model_index.json` (tag, Hub repo, pinned revision, recipe, COCO AP);
`register_pretrained()` adds entries at run time (tests, private mirrors).
"""

from __future__ import annotations

import difflib
import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_PREFIX = "dynamic_atss_"
INDEX_FILE = Path(__file__).with_name("model_index.json")


@dataclass
class PretrainedCfg:
    """Metadata of one set of weights (`name.tag`)."""

    model: str  # registered constructor name, e.g. "dynamic_atss_r50"
    tag: str  # e.g. "coco_1x"
    hf_hub_id: str | None = None  # None: not published yet
    revision: str | None = None  # pinned commit of the Hub repo
    recipe: str | None = None  # configs/<recipe>.yaml that trained it
    dataset: str = "coco"
    metrics: dict[str, Any] = field(default_factory=dict)  # e.g. {"split": "test-dev", "AP": 40.3}
    notes: str = ""

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"


_PRETRAINED: dict[str, PretrainedCfg] = {}
_DEFAULT_TAG: dict[str, str] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator for the constructors in `models/zoo.py`."""
    _MODEL_ENTRYPOINTS[fn.__name__] = fn
    return fn


def register_pretrained(cfg: PretrainedCfg, default: bool = False) -> None:
    """Add (or replace) a weights entry; `default` makes it what `pretrained=True` picks for its model."""
    _PRETRAINED[cfg.name] = cfg
    if default or cfg.model not in _DEFAULT_TAG:
        _DEFAULT_TAG[cfg.model] = cfg.tag


def _load_index() -> None:
    entries = json.loads(INDEX_FILE.read_text())["weights"]
    for entry in entries:
        register_pretrained(PretrainedCfg(**entry))


def _canonical(name: str) -> str:
    """'r50' / 'dynamic_atss_r50' -> 'dynamic_atss_r50' (unknown names are returned unchanged)."""
    if name in _MODEL_ENTRYPOINTS:
        return name
    return _PREFIX + name if _PREFIX + name in _MODEL_ENTRYPOINTS else name


def split_name(name: str) -> tuple[str, str | None]:
    """'r50.coco_1x' -> ('dynamic_atss_r50', 'coco_1x'); raises with the closest names if unknown."""
    model, _, tag = name.partition(".")
    model = _canonical(model)
    if model not in _MODEL_ENTRYPOINTS:
        candidates = list(_MODEL_ENTRYPOINTS) + [n[len(_PREFIX):] for n in _MODEL_ENTRYPOINTS]
        close = difflib.get_close_matches(name.partition(".")[0], candidates, n=4, cutoff=0.4)
        hint = f"; closest: {close}" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}. See dynamic_atss.list_models()")
    return model, tag or None


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The weights entry for 'model' (its default tag) or 'model.tag'."""
    model, tag = split_name(name)
    tag = tag or _DEFAULT_TAG.get(model)
    key = f"{model}.{tag}"
    if tag is None or key not in _PRETRAINED:
        known = sorted(k for k in _PRETRAINED if k.startswith(model + "."))
        raise ValueError(f"no pretrained tag {key!r}; tags for {model}: {known or 'none'}")
    return _PRETRAINED[key]


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Registered model names matching a wildcard pattern (matched against both the full name and the alias).

    With `pretrained=True`, lists `name.tag` entries that have published weights instead.
    """
    if pretrained:
        names = [k for k, cfg in _PRETRAINED.items() if cfg.hf_hub_id]
    else:
        names = list(_MODEL_ENTRYPOINTS)
    return sorted(
        n for n in names if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n.removeprefix(_PREFIX), pattern)
    )


def create(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The one way to build a model.

    `name`: a registered name or alias (`"r50"`, `"dynamic_atss_r101_dcn"`), optionally with a pretrained tag
    (`"r101_dcn.coco_2x_ms"`); or `"hf-hub:org/name[@revision]"` / `"local-dir:/path"` to load saved weights.
    `kwargs`: `num_classes`, `min_size`, `max_size`, `backbone="<timm name>"`, `backbone_pretrained`,
    and any config field as a dotted key (`**{"head.quality": "centerness"}`).
    """
    if name.startswith(("hf-hub:", "local-dir:")):
        from .hub import load_pretrained  # noqa: PLC0415

        return load_pretrained(name, **kwargs)
    model, tag = split_name(name)
    if tag is not None:
        pretrained = True
    return _MODEL_ENTRYPOINTS[model](pretrained=pretrained, pretrained_tag=tag, **kwargs)


_load_index()
