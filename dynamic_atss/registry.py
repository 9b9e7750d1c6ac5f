"""A timm-style registry: named constructors, short aliases, `name.tag` pretrained weights, one `create()`.

The weights are listed in `model_index.json`, one entry per `name.tag`, as data:

- published dynamic-atss weights: `hf_hub_id` + pinned `revision` (a Hub repo written by `push_to_hub`);
- another library's public checkpoint: `url` + `hash_prefix` (its published SHA-256 prefix) + `converter`
  (`mmdet_<family>`, see `dynamic_atss.convert.available_converters`), downloaded, converted and cached on first use
  (`dynamic_atss/convert/url.py`);
- with `metrics` (the AP published for those weights, and by whom), `description` (how they were trained) and
  `family` (the head family they need). Entries of a family this version does not have yet are listed, and
  `create()` on them says the family is not available yet.

`register_pretrained()` adds entries at run time (tests, private mirrors).
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from .errors import UserInputError

_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_PREFIX = "dynamic_atss_"
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
    converter: str | None = None  # name in dynamic_atss.convert.available_converters()
    family: str = "atss"  # head family the weights need
    recipe: str | None = None  # configs/<recipe>.yaml that trained it (dynamic-atss recipes)
    description: str = ""  # how the weights were trained, by whom
    dataset: str = "coco"
    metrics: dict[str, Any] = field(default_factory=dict)  # e.g. {"split": "val2017", "AP": 39.4, "source": ...}
    notes: str = ""

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


class FamilyNotAvailableError(NotImplementedError):
    """Weights of a head family (or converter) that this version of the library does not have yet."""


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


def list_pretrained_cfgs() -> list[PretrainedCfg]:
    """Every weights entry, in index order."""
    return list(_PRETRAINED.values())


def _canonical(name: str) -> str:
    """'r50' / 'dynamic_atss_r50' -> 'dynamic_atss_r50' (unknown names are returned unchanged)."""
    if name in _MODEL_ENTRYPOINTS:
        return name
    return _PREFIX + name if _PREFIX + name in _MODEL_ENTRYPOINTS else name


def _converter_available(cfg: PretrainedCfg) -> bool:
    from .convert import available_converters  # noqa: PLC0415  (lazy: convert imports the hub and the models)

    return cfg.converter in available_converters()


def _loadable(cfg: PretrainedCfg) -> bool:
    """This version can load these weights (published on the Hub, or at a URL with an available converter).

    Saved and converted weights carry their own config, so no registered constructor is needed to load them."""
    return bool(cfg.hf_hub_id) or (bool(cfg.url) and _converter_available(cfg))


def _family_not_available(cfg: PretrainedCfg) -> FamilyNotAvailableError:
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
    if model not in _MODEL_ENTRYPOINTS:
        if any(cfg.model == model for cfg in _PRETRAINED.values()):
            return model, tag or None  # weights of a family without a constructor here: loadable by tag, if at all
        candidates = list(_MODEL_ENTRYPOINTS) + [n[len(_PREFIX):] for n in _MODEL_ENTRYPOINTS]
        close = difflib.get_close_matches(name.partition(".")[0], candidates, n=4, cutoff=0.4)
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
            + _what_is_available(model)
        )
    if key not in _PRETRAINED:
        known = sorted(k for k in _PRETRAINED if k.startswith(model + "."))
        raise ValueError(
            f"no pretrained tag {key if tag else model!r}; tags for {model}: {known or 'none'}.\n"
            + _what_is_available(model)
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
        names = list(_MODEL_ENTRYPOINTS)
    return sorted(
        n for n in names if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n.removeprefix(_PREFIX), pattern)
    )


# ---------------------------------------------------------------------------------------------- weights
_BACKBONE_TOKEN = re.compile(r"^(r\d+|x\d+(_\d+x\d+d)?)$")


def _backbone_tokens(model: str) -> tuple[str, bool]:
    """'dynamic_atss_r101_dcn' -> ('r101', True); 'atss_x101_32x8d' -> ('x101_32x8d', False)."""
    rest = model.removeprefix(_PREFIX)
    rest = re.sub(r"^(dynamic_)?(atss|gflv2|gfl|vfnet)_", "", rest)
    dcn = rest.endswith("_dcn")
    return rest.removesuffix("_dcn"), dcn


def _family_of(model: str) -> str:
    """The head family a registered model name belongs to (its `head.kind`), from the name alone: building the
    model to read its config would be far slower than this error path deserves."""
    match = re.search(r"(?:^|_)(atss|gflv2|gfl|vfnet)_", model)
    return {"gflv2": "gfl"}.get(match.group(1), match.group(1)) if match else "atss"


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


def _what_is_available(model: str, recipe: str | None = None) -> str:
    nearest = _nearest_weights(model)
    lines = []
    if nearest:
        lines.append("COCO weights you can load today:")
        calls = [f"create({c.name!r}, pretrained=True)" for c in nearest]
        width = max(len(call) for call in calls)
        lines += [f"    {call:<{width}}  # {_describe(c)}" for call, c in zip(calls, nearest)]
        plain = "plain ATSS, not Dynamic ATSS" if _family_of(model) == "atss" else (
            "plain detectors (anchor IoUs only), not their combined-IoU versions")
        lines.append(
            f"Those are {plain}. To get combined-IoU weights, fine-tune one with the combined-IoU "
            f"assigner (one GPU, short schedule):\n    accelerate launch train.py --config {FINETUNE_RECIPE} "
            "--push-to-hub org/name\n(its `init_from:` names the converted tag; set `init_from` and `model` for "
            "another backbone). `--push-to-hub` shares the result; `python hub/push.py --model OUT/model --repo "
            f"org/name --update-index {model}.TAG` pins it in the model index."
        )
    pending = sorted({c.family for c in _PRETRAINED.values() if c.has_weights and not _loadable(c)})
    if pending:
        lines.append(f"Public COCO weights of the {', '.join(pending)} families are indexed too and load once those "
                     "families are available (dynamic_atss.registry.list_pretrained_cfgs()).")
    if recipe:
        lines.append(f"Or train from ImageNet weights: accelerate launch train.py --config configs/{recipe}.yaml")
    lines.append("Weights you already have: create('path/to/folder') or create('hf-hub:org/name').")
    return "\n".join(lines)


def load_pretrained_tag(name: str, **kwargs: Any) -> nn.Module:
    """The model with the weights of `name` ('model' for its default tag, or 'model.tag').

    `kwargs`: `num_classes`, load-time config overrides, and for Hub weights `cache_dir`, `local_files_only`,
    `force_download`, `token`, `endpoint`; for URL weights `cache_dir`, `local_files_only`, `force_download`,
    `progress`.
    """
    cfg = get_pretrained_cfg(name)
    kwargs.pop("backbone_pretrained", None)  # the checkpoint holds the backbone too
    if cfg.hf_hub_id:
        from .hub import load_pretrained  # noqa: PLC0415

        revision = f"@{cfg.revision}" if cfg.revision else ""
        model = load_pretrained(f"hf-hub:{cfg.hf_hub_id}{revision}", **kwargs)
        model.pretrained_info["tag"] = cfg.name
        return model
    if cfg.url:
        if not _converter_available(cfg):
            raise _family_not_available(cfg)
        from .convert import load_url_weights  # noqa: PLC0415

        return load_url_weights(cfg, **kwargs)
    raise NoPretrainedWeightsError(
        f"{cfg.name} has no published weights yet: no checkpoint of it has been trained and published.\n"
        + _what_is_available(cfg.model, cfg.recipe)
    )


def create(name: str | os.PathLike, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The one way to build or load a model.

    `name`:
    - a registered name or alias (`"r50"`, `"dynamic_atss_r101_dcn"`, `"atss_r50"`): random weights, or with
      `pretrained=True` the weights of its default tag;
    - `"name.tag"` (`"atss_r50.mmdet_coco_1x"`): those weights (`pretrained` is implied);
    - `"hf-hub:org/name[@revision]"`, `"local-dir:/path"` or a path to an existing folder holding
      `config.json` + `model.safetensors` (a registered name wins over a folder of the same name: use
      `"./name"` or `"local-dir:name"` for the folder).
    `kwargs`: `num_classes`, `min_size`, `max_size`, `backbone="<timm name>"`, `backbone_pretrained`, and any
    config field as a dotted key (`**{"head.quality": "centerness"}`); for saved weights only the load-time
    fields (`dynamic_atss.hub.LOAD_TIME_OVERRIDES`), plus the download options of `load_pretrained_tag`.
    """
    name = os.fspath(name)
    registered = _canonical(name.partition(".")[0]) in _MODEL_ENTRYPOINTS
    if name.startswith(("hf-hub:", "local-dir:")) or (not registered and _is_folder(name)):
        from .hub import load_pretrained  # noqa: PLC0415

        kwargs.pop("backbone_pretrained", None)
        return load_pretrained(name, **kwargs)
    if not registered and (os.sep in name or name.startswith((".", "~"))):  # a path, not a model name
        path = Path(name).expanduser()
        if path.is_file():
            raise ValueError(
                f"{name} is a file: give the model folder (config.json + model.safetensors, as save_pretrained "
                "writes it); convert an mmdetection .pth first with `python hub/convert_mmdet.py FILE --out DIR`"
            )
        raise FileNotFoundError(f"model folder not found: {name} (nor is it a registered model name)")
    model, tag = split_name(name)
    if tag is not None:
        pretrained = True
    if model not in _MODEL_ENTRYPOINTS:  # indexed weights of a family without a constructor (e.g. GFL, VFNet)
        if pretrained:
            return load_pretrained_tag(name, **kwargs)
        raise _family_not_available(get_pretrained_cfg(model))
    return _MODEL_ENTRYPOINTS[model](pretrained=pretrained, pretrained_tag=tag, **kwargs)


def _is_folder(name: str) -> bool:
    return Path(name).expanduser().is_dir()


_load_index()
