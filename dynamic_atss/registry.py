"""The tables of the zoo, timm-style: registered model names (and short aliases), the backbone tokens of those
names, `name.tag` pretrained weights, the converters that can load other libraries' weights, and the errors that
say what exists. (Where saved weights are, `hf-hub:` / `local-dir:` / a folder, is `dynamic_atss.locations`.)
Nothing here builds or loads a model (that is `dynamic_atss.factory`), and this module imports nothing else of the package
but `errors` (the base class of the user-input errors).

The weights are listed in `model_index.json`, one entry per `name.tag`, as data:

- published dynamic-atss weights: `hf_hub_id` + pinned `revision` (a Hub repo written by `push_to_hub`);
- another library's public checkpoint: `url` + `hash_prefix` (its published SHA-256 prefix) + `converter`
  (`mmdet_<family>`, see `available_converters`), downloaded, converted and cached on first use
  (`dynamic_atss/convert/url.py`);
- with `metrics` (the AP published for those weights, and by whom), `description` (how they were trained) and
  `family` (the head family they need). Entries of a family this version does not have yet are listed, and
  `create()` on them says the family is not available yet.

`register_pretrained()` adds entries at run time (tests, private mirrors). Registering a model name twice is an
error, as for every registry of the package (head families, mmdetection head mappings).
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import UserInputError

if TYPE_CHECKING:  # pragma: no cover
    from .config import ModelConfig

_PREFIX = "dynamic_atss_"
# Short backbone tokens of the registered model names -> timm names (shared by every family's variants).
BACKBONES: dict[str, str] = {
    "r50": "resnet50", "r101": "resnet101", "x101_32x4d": "resnext101_32x4d", "x101_32x8d": "resnext101_32x8d",
    "x101_64x4d": "resnext101_64x4d",
}
INDEX_FILE = Path(__file__).with_name("model_index.json")
# The recipe that turns converted ATSS weights into Dynamic ATSS (combined-IoU assigner, short schedule).
FINETUNE_RECIPE = "configs/dynamic_atss_r50_from_mmdet_atss.yaml"


@dataclass
class PretrainedCfg:
    """Metadata of one set of weights (`name.tag`)."""

    model: str  # registered constructor name, e.g. "dynamic_atss_r50"
    tag: str  # e.g. "coco_1x"
    hf_hub_id: str | None = None  # published dynamic-atss weights; None: not published
    revision: str | None = None  # pinned commit of the Hub repo
    url: str | None = None  # another library's checkpoint, converted on first use
    hash_prefix: str | None = None  # its published SHA-256 prefix (mmdetection: the last 8 hex of the file name)
    converter: str | None = None  # name in available_converters()
    family: str = "atss"  # head family the weights need
    recipe: str | None = None  # configs/<recipe>.yaml that trained it (dynamic-atss recipes)
    description: str = ""  # how the weights were trained, by whom
    metrics: dict[str, Any] = field(default_factory=dict)  # e.g. {"split": "val2017", "AP": 39.4, "source": ...}

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    @property
    def has_weights(self) -> bool:
        """Weights exist somewhere (a Hub repo or a URL), whether or not this version can load them yet."""
        return bool(self.hf_hub_id or self.url)


class UnknownModelError(UserInputError, ValueError):
    """A model name that is neither registered nor a folder; the message lists the closest names."""


class NoPretrainedWeightsError(UserInputError, RuntimeError):
    """`pretrained=True` on a model or tag that has no weights; the message lists what is available."""


class UnknownTagError(UserInputError, ValueError):
    """`name.tag` with a tag that the model index does not list for that model; the message lists its tags."""


class FamilyNotAvailableError(UserInputError, NotImplementedError):
    """Weights of a head family (or converter) that this version of the library does not have yet."""


@dataclass(frozen=True)
class ModelEntry:
    """A registered model name: its head family, backbone token ("r101", "x101_32x8d") and DCN flag (which rank
    the nearest weights in error messages), and the function that returns its `ModelConfig`."""

    name: str
    family: str
    trunk: str
    dcn: bool
    config: Callable[[], ModelConfig]
    doc: str = ""


_MODELS: dict[str, ModelEntry] = {}
_PRETRAINED: dict[str, PretrainedCfg] = {}
_DEFAULT_TAG: dict[str, str] = {}
_CONVERTERS: dict[str, Callable[..., Any]] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add a model name (`register_family` adds every `HeadFamily` variant); a name registered twice raises."""
    if entry.name in _MODELS:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _MODELS[entry.name] = entry
    return entry


def model_entry(name: str) -> ModelEntry | None:
    """The entry of a registered name or alias ('r50' -> dynamic_atss_r50), None if there is none."""
    return _MODELS.get(_canonical(name))


def register_converter(name: str, converter: Callable[..., Any]) -> None:
    """Add a converter under its model_index.json name (`dynamic_atss.convert` adds `mmdet_<family>` when a
    family's mmdetection head mapping registers); a name registered twice raises."""
    if name in _CONVERTERS:
        raise ValueError(f"converter {name!r} is registered twice")
    _CONVERTERS[name] = converter


def available_converters() -> dict[str, Callable[..., Any]]:
    """Converter name (model_index.json "converter") -> checkpoint dict -> (ModelConfig, state dict)."""
    return dict(_CONVERTERS)


def register_pretrained(cfg: PretrainedCfg, default: bool = False) -> None:
    """Add (or replace) a weights entry; `default` makes it what `pretrained=True` picks for its model."""
    _PRETRAINED[cfg.name] = cfg
    if default or cfg.model not in _DEFAULT_TAG:
        _DEFAULT_TAG[cfg.model] = cfg.tag


def _load_index() -> None:
    entries = json.loads(INDEX_FILE.read_text())["weights"]
    for entry in entries:
        register_pretrained(PretrainedCfg(**entry))


def list_pretrained_cfgs() -> list[PretrainedCfg]:
    """Every weights entry, in index order."""
    return list(_PRETRAINED.values())


def _canonical(name: str) -> str:
    """'r50' / 'dynamic_atss_r50' -> 'dynamic_atss_r50' (unknown names are returned unchanged)."""
    if name in _MODELS:
        return name
    return _PREFIX + name if _PREFIX + name in _MODELS else name


def converter_available(cfg: PretrainedCfg) -> bool:
    return cfg.converter in available_converters()


def _loadable(cfg: PretrainedCfg) -> bool:
    """This version can load these weights (published on the Hub, or at a URL with an available converter).

    Saved and converted weights carry their own config, so no registered constructor is needed to load them."""
    return bool(cfg.hf_hub_id) or (bool(cfg.url) and converter_available(cfg))


def family_not_available(cfg: PretrainedCfg) -> FamilyNotAvailableError:
    available = ", ".join(c.name for c in _PRETRAINED.values() if _loadable(c)) or "none"
    return FamilyNotAvailableError(
        f"{cfg.name} ({cfg.description or cfg.family}) needs the '{cfg.family}' head family"
        + (f" and its converter {cfg.converter!r}" if cfg.converter else "")
        + f", which are not available in this version of dynamic-atss yet; the model index lists the tag so that it "
        f"loads as soon as they land. Weights you can load today: {available}"
    )


def split_name(name: str) -> tuple[str, str | None]:
    """'r50.coco_1x' -> ('dynamic_atss_r50', 'coco_1x'); raises with the closest names if unknown."""
    model, _, tag = name.partition(".")
    model = _canonical(model)
    if model not in _MODELS:
        if any(cfg.model == model for cfg in _PRETRAINED.values()):
            return model, tag or None  # weights of a family without a constructor here: loadable by tag, if at all
        asked = name.partition(".")[0]
        # matched against the full names and their short aliases ("r50"), reported as the full names, once each
        aliases = {full: full for full in _MODELS}
        aliases |= {full[len(_PREFIX):]: full for full in _MODELS if full.startswith(_PREFIX)}
        matches = difflib.get_close_matches(asked, list(aliases), n=8, cutoff=0.4)
        close = list(dict.fromkeys(aliases[match] for match in matches))[:4]
        hint = f"; closest: {close}" if close else ""
        looks_like_path = os.sep in name or name.startswith((".", "~"))
        where = " (and no such folder)" if looks_like_path else ""
        raise UnknownModelError(f"unknown model {name!r}{where}{hint}. See dynamic_atss.list_models()")
    return model, tag or None


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The weights entry for 'model' (its default tag) or 'model.tag'."""
    model, tag = split_name(name)
    tag = tag or _DEFAULT_TAG.get(model)
    key = f"{model}.{tag}"
    if tag is None:  # a model nobody has published weights of (no entry at all)
        raise NoPretrainedWeightsError(
            f"{model} has no published weights yet: no checkpoint of it has been trained and published.\n"
            + what_is_available(model)
        )
    if key not in _PRETRAINED:
        known = sorted(k for k in _PRETRAINED if k.startswith(model + "."))
        raise UnknownTagError(
            f"no pretrained tag {key!r}; the model index lists {known or 'none'} for {model} "
            "(every loadable tag: dynamic_atss.list_models(pretrained=True))"
        )
    return _PRETRAINED[key]


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Registered model names matching a wildcard pattern (matched against both the full name and the alias).

    With `pretrained=True`, lists the `name.tag` entries whose weights this version can load (published on the
    Hub, or a public checkpoint with its converter) instead.
    """
    if pretrained:
        names = [k for k, cfg in _PRETRAINED.items() if _loadable(cfg)]
    else:
        names = list(_MODELS)
    return sorted(
        n for n in names if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n.removeprefix(_PREFIX), pattern)
    )


# ---------------------------------------------------------------------------------------------- weights
def _backbone_tokens(model: str) -> tuple[str, bool]:
    """'dynamic_atss_r101_dcn' -> ('r101', True), from its entry; ('', False) for a name without one."""
    entry = _MODELS.get(model)
    return (entry.trunk, entry.dcn) if entry else ("", False)


def _family_of(model: str) -> str:
    """The head family (`head.kind`) of a model name: its entry's, else that of weights indexed under it."""
    entry = _MODELS.get(model)
    if entry:
        return entry.family
    return next((cfg.family for cfg in _PRETRAINED.values() if cfg.model == model), "atss")


def _nearest_weights(model: str, limit: int = 4) -> list[PretrainedCfg]:
    """Loadable weights closest to `model`: same head family first, then same backbone, DCN alike, higher AP."""
    trunk, dcn = _backbone_tokens(model)
    depth = trunk.split("_")[0]
    family = _family_of(model)

    def rank(cfg: PretrainedCfg) -> tuple[float, ...]:
        other_trunk, other_dcn = _backbone_tokens(cfg.model)
        return (-(cfg.family == family), -(other_trunk == trunk), -(other_trunk.split("_")[0] == depth),
                -(other_dcn == dcn), -float(cfg.metrics.get("AP") or 0))

    return sorted((cfg for cfg in _PRETRAINED.values() if _loadable(cfg)), key=rank)[:limit]


def _describe(cfg: PretrainedCfg) -> str:
    ap = cfg.metrics.get("AP")
    where = f"{cfg.metrics.get('split', 'COCO')}, published by {cfg.metrics.get('source', '?')}"
    return f"{cfg.description or cfg.name}" + (f"; {ap} box AP ({where})" if ap is not None else "")


def what_is_available(model: str, recipe: str | None = None) -> str:
    nearest = _nearest_weights(model)
    lines = []
    if nearest:
        lines.append("COCO weights you can load today:")
        calls = [f"create({c.name!r}, pretrained=True)" for c in nearest]
        width = max(len(call) for call in calls)
        lines += [f"    {call:<{width}}  # {_describe(c)}" for call, c in zip(calls, nearest)]
        # what the listed weights are (they may mix families), and the combined-IoU model a fine-tune becomes
        plain = "plain ATSS, not Dynamic ATSS" if {c.family for c in nearest} == {"atss"} else (
            "plain detectors (anchor IoUs only), not their combined-IoU versions")
        combined = model if model.startswith("dynamic_") or f"dynamic_{model}" not in _MODELS else f"dynamic_{model}"
        lines.append(
            f"Those are {plain}. To get combined-IoU weights, fine-tune one with the combined-IoU "
            f"assigner (one GPU, short schedule):\n    accelerate launch -m dynamic_atss train --config "
            f"{FINETUNE_RECIPE} --push-to-hub org/name\n(its `init_from:` names the converted tag; set `init_from` "
            "and `model` for another backbone). `--push-to-hub` shares the result; `dynamic-atss push --model "
            f"OUT/model --repo org/name --update-index {combined}.TAG` pins it in the model index."
        )
    pending = sorted({c.family for c in _PRETRAINED.values() if c.has_weights and not _loadable(c)})
    if pending:
        lines.append(f"Public COCO weights of the {', '.join(pending)} families are indexed too and load once those "
                     "families are available (dynamic_atss.registry.list_pretrained_cfgs()).")
    if recipe:
        lines.append(f"Or train from ImageNet weights: accelerate launch -m dynamic_atss train --config {recipe}")
    lines.append("Weights you already have: create('path/to/folder') or create('hf-hub:org/name').")
    return "\n".join(lines)


def is_registered(name: str) -> bool:
    """'r50', 'dynamic_atss_r50', 'r50.coco_1x': the part before the tag is a registered name or alias."""
    return _canonical(name.partition(".")[0]) in _MODELS


_load_index()
