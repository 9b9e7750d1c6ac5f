"""Plain dataclasses that fully describe a Dynamic ATSS model.

`ModelConfig` is JSON round-trippable (`to_dict` / `from_dict`) so that a model can be rebuilt from the
`config.json` stored beside its weights. Defaults follow the authors' released code (see docs/method.md);
converted mmdetection checkpoints flip the `conventions` fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from .typed import ConfigError, closest, convert, field_rows, field_types, from_dict as _typed_from_dict, resolve_dotted

WeightSchedule = Union[float, Literal["up", "down"]]


@dataclass
class BackboneConfig:
    """A timm backbone used with `features_only=True`, returning C3, C4, C5."""

    name: str = "resnet50"
    out_indices: tuple[int, ...] = (2, 3, 4)
    dcn: bool = False  # DCNv2 in the 3x3 conv of every bottleneck of stages 2-4 (ResNet family only)
    dcn_stages: tuple[int, ...] = (2, 3, 4)  # with dcn: the ResNet stages (layer2-4) that get it
    frozen_stages: int = 1  # -1: nothing, 0: stem, 1: stem + stage 1, ... (timm feature_info order)
    norm: Literal["frozen_bn", "bn"] = "frozen_bn"
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  # extra kwargs for timm.create_model


@dataclass
class FamilyOptions:
    """Base of a head family's own options: a dataclass declared in the family's module
    (`detection/heads/<kind>.py`, e.g. `GFLOptions`) and named by its `HeadFamily`, with the fields only that family
    reads, their defaults and (in `__post_init__`) their allowed values.

    A field is set with the dotted key `head.<name>` (e.g. `head.reg_max`), or `loss.<name>` when declared with
    `loss_option` (e.g. `loss.dfl_weight`); `HeadConfig.options` stores the ones set away from their defaults.
    """


def loss_option(default: Any) -> Any:
    """A `FamilyOptions` field that is a loss setting: set with `loss.<name>` rather than `head.<name>`."""
    return field(default=default, metadata={"section": "loss"})


# head kind -> its options dataclass; filled by `detection.heads.base.register_family` (this module is below it).
FAMILY_OPTIONS: dict[str, type[FamilyOptions]] = {}


def option_key(option: dataclasses.Field) -> str:
    """The dotted key users set a `FamilyOptions` field with: "head.reg_max", "loss.dfl_weight", ..."""
    return f"{option.metadata.get('section', 'head')}.{option.name}"


def _option_fields(kind: str) -> dict[str, dataclasses.Field]:
    return {option.name: option for option in dataclasses.fields(FAMILY_OPTIONS[kind])}


def option_owners(name: str) -> list[str]:
    """The registered families (kinds) that have an option called `name`, in registration order."""
    return [kind for kind in FAMILY_OPTIONS if name in _option_fields(kind)]


def normalise_options(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """`options` for head family `kind`: each converted to its field's type and checked by the family's options
    dataclass; those at their defaults left out. Another family's option at its default is left out (configs
    written before the options moved into the families hold every family's); set away from its default it is
    refused naming its family (it would do nothing)."""
    own = _option_fields(kind)
    own_types = field_types(FAMILY_OPTIONS[kind])
    kept: dict[str, Any] = {}
    for name, value in options.items():
        if name in own:
            converted = convert(value, own_types[name], option_key(own[name]))
            if converted != own[name].default:
                kept[name] = converted
            continue
        owners = option_owners(name)
        if not owners:
            known = sorted(option_key(option) for option in own.values())
            raise ConfigError(
                f"head.options: {name!r} is no option of any head family{closest(name, own)}; head.kind={kind!r} "
                f"has {known}"
            )
        foreign = _option_fields(owners[0])[name]
        value = convert(value, field_types(FAMILY_OPTIONS[owners[0]])[name], option_key(foreign))
        if value != foreign.default:
            raise ConfigError(
                f"{option_key(foreign)}={value!r} has no effect with head.kind={kind!r}: it is an option of the "
                f"{' / '.join(repr(o) for o in owners)} head family; leave it at its default ({foreign.default!r})"
            )
    FAMILY_OPTIONS[kind](**kept)  # the family's checks across its fields (allowed values)
    return kept


def family_option_rows(prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """`(dotted key, type, default, comment)` of every registered family's options, as `typed.field_rows` gives
    for the shared fields (for `--help`); an option several families have is listed once, naming them."""
    rows: dict[str, tuple[str, str, Any, str]] = {}
    for kind, options in FAMILY_OPTIONS.items():
        for (key, type_name, default, comment), option in zip(field_rows(options), dataclasses.fields(options)):
            key = prefix + option_key(option)
            owners = " / ".join(option_owners(option.name))
            rows.setdefault(key, (key, type_name, default, f"{owners} family" + (f": {comment}" if comment else "")))
    return list(rows.values())


@dataclass
class HeadConfig:
    kind: str = "atss"  # the head family (detection/heads/): "atss", ...
    channels: int = 256
    num_convs: int = 4
    num_groups: int = 32  # GroupNorm groups in the towers
    conv_bias: bool = True  # authors' code: True; mmdetection: False (GN follows)
    dcn_last_conv: bool = False  # DCNv2 in the last conv of each tower (DCN models)
    prior_prob: float = 0.01
    # The family's own options set away from their defaults (its `FamilyOptions`, e.g. {"reg_max": 8}); set them
    # with their dotted keys (`head.reg_max`, `loss.dfl_weight`) and read them with `family_options()`.
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind in FAMILY_OPTIONS:  # else checked when the head is built (its family registers first)
            self.options = normalise_options(self.kind, self.options)

    def family_options(self) -> FamilyOptions:
        """This head family's options dataclass, every field set (defaults where `options` has none)."""
        if self.kind not in FAMILY_OPTIONS:
            raise ValueError(
                f"head.kind={self.kind!r} is not a known head family; known: {sorted(FAMILY_OPTIONS)} "
                "(a family registers itself with register_family in dynamic_atss/detection/heads/)"
            )
        return FAMILY_OPTIONS[self.kind](**normalise_options(self.kind, self.options))


@dataclass
class AnchorConfig:
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    octave_scale: float = 8.0  # anchor side = octave_scale * stride
    center_offset: float = 0.5  # fraction of the stride; authors' code 0.5, mmdetection 0.0


@dataclass
class ConventionConfig:
    """Conventions on which the authors' code and mmdetection disagree."""

    relu_before_p7: bool = True  # authors' code: P7 = conv(relu(P6)); mmdetection: P7 = conv(P6)
    score_sqrt: bool = True  # final score sqrt(cls * quality) (authors) vs cls * quality (mmdetection)
    pre_nms_rank_by_joint: bool = True  # per-level top-k by cls * quality (authors) vs by cls (mmdetection)


@dataclass
class AssignerConfig:
    topk: int = 9
    pred_weight: WeightSchedule = 1.0  # 0 -> plain ATSS; "up" -> iter / max_iter (Table III)
    anchor_weight: WeightSchedule = 1.0  # 0 -> predicted IoUs only; "down" -> 1 - iter / max_iter
    center_margin: float = 0.01  # anchor centre must lie this far inside the GT box


@dataclass
class LossConfig:
    cls_loss: Literal["focal", "qfl", "vfl"] = "qfl"
    box_weight: float = 2.0  # GIoU (refined box for VFNet)
    # The families' own loss settings (`loss.dfl_weight`, ...) are options of their family (`HeadConfig.options`).


@dataclass
class TestConfig:
    __test__ = False  # not a pytest test class

    score_thresh: float = 0.05
    pre_nms_topk: int = 1000  # per level
    nms_thresh: float = 0.6
    max_detections: int = 100


TEST_PRESETS: dict[str, TestConfig] = {
    "eval": TestConfig(score_thresh=0.05, max_detections=100),
    "vis": TestConfig(score_thresh=0.3, max_detections=100),
}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model, without its weights."""

    num_classes: int = 80
    class_names: list[str] | None = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn_channels: int = 256
    head: HeadConfig = field(default_factory=HeadConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    conventions: ConventionConfig = field(default_factory=ConventionConfig)
    assigner: AssignerConfig = field(default_factory=AssignerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    test: TestConfig = field(default_factory=lambda: dataclasses.replace(TEST_PRESETS["eval"]))
    # Input transform (inside the model, like torchvision's GeneralizedRCNNTransform).
    min_size: int | tuple[int, ...] = 800  # a tuple is sampled from in train mode (multi-scale)
    max_size: int = 1333
    size_divisible: int = 32
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} entries but num_classes={self.num_classes}; "
                "pass one name per class"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys are an error naming them (a config from another model).

        Also reads the layout written before the head families owned their options (`config.json`
        format_version 1): every family's fields flat in `head` / `loss` (`"head": {"reg_max": 16, ...}`)."""
        return _from_dict(cls, _family_options_moved(data), path="config")


_SHARED_FIELDS = {"head": field_types(HeadConfig), "loss": field_types(LossConfig)}


def _family_options_moved(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with the head families' options found flat in `head` / `loss` (the layout of format_version 1) moved
    into `head.options`, where `HeadConfig` checks them against its family. Other unknown keys stay (and are
    refused by name); before any family has registered, every non-shared key is taken for an option (checked
    when the head is built)."""
    if not isinstance(data, dict):
        return data
    moved: dict[str, Any] = {}
    sections = {}
    for section, shared in _SHARED_FIELDS.items():
        values = data.get(section)
        if not isinstance(values, dict):
            continue
        options = {name for name in values if name not in shared and (option_owners(name) or not FAMILY_OPTIONS)}
        if options:
            sections[section] = {name: value for name, value in values.items() if name not in options}
            moved.update({name: values[name] for name in options})
    if not moved:
        return data
    head = dict(sections.get("head", data.get("head") or {}))
    head["options"] = {**moved, **dict(head.get("options") or {})}
    return {**data, **sections, "head": head}


def _from_dict(cls: type, data: dict[str, Any], path: str) -> Any:
    """Typed conversion of a nested mapping into `cls` (see `dynamic_atss.typed`): every value is converted
    to its field's annotated type, unknown keys are an error naming the closest field."""
    return _typed_from_dict(cls, data, path)


def override_target(key: str, where: str = "config override") -> tuple[list[str], Any]:
    """Where the dotted `ModelConfig` key is stored in `to_dict()`'s mapping, and its type. A head family's option
    (`head.reg_max`, `loss.dfl_weight`, or `head.options.reg_max`) is stored in `head.options`; its type is the
    field's in the options dataclass of a registered family that has it."""
    section, _, name = key.partition(".")
    if section == "head" and name.startswith("options."):
        name = name.removeprefix("options.")
    elif section not in _SHARED_FIELDS or "." in name or name in _SHARED_FIELDS[section]:
        return key.split("."), resolve_dotted(ModelConfig, key, where)
    owners = [kind for kind in option_owners(name) if option_key(_option_fields(kind)[name]).startswith(section)
              or key.startswith("head.options.")]
    if not owners:
        names = set(_SHARED_FIELDS[section]) | {
            option.name for kind in FAMILY_OPTIONS for option in _option_fields(kind).values()
            if option_key(option).startswith(f"{section}.")
        }
        raise ConfigError(
            f"unknown {where} {key!r}: no key {name!r} in {section}{closest(name, names)}; known keys: {sorted(names)}"
        )
    return ["head", "options", name], field_types(FAMILY_OPTIONS[owners[0]])[name]


def convert_override(key: str, value: Any, where: str = "config override") -> Any:
    """`value` converted to the type of the dotted `ModelConfig` key (a head family's option included)."""
    return convert(value, override_target(key, where)[1], key)


def config_value(config: ModelConfig, key: str) -> Any:
    """The value `config` has for the dotted key (what `override_target` resolves): a head family's option reads
    the family's options, defaults included; another family's option has that family's default (no effect here)."""
    path, _ = override_target(key)
    if path[:2] == ["head", "options"]:
        options = config.head.family_options()
        if hasattr(options, path[2]):
            return getattr(options, path[2])
        return _option_fields(option_owners(path[2])[0])[path[2]].default
    node: Any = config
    for part in path:
        node = getattr(node, part)
    return node


def apply_overrides(config: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    """Return a copy of `config` with dotted overrides applied, e.g. {"head.quality": "centerness"}.

    Values are converted to the field's type (`"1e-3"` -> 0.001, `"null"` -> None, `[640, 800]` -> a tuple)
    and misspelt keys name the closest field, through the same typed machinery as the training config.
    A head family's option (`head.reg_max`, `loss.dfl_weight`) goes to `head.options` and is checked against the
    family of the resulting `head.kind`. Top-level shortcut used by `create()`: `backbone="<timm name>"` sets
    `backbone.name`.
    """
    data = config.to_dict()
    for key, value in overrides.items():
        if key == "backbone" and isinstance(value, str):
            key = "backbone.name"
        (*parents, leaf), tp = override_target(key)
        converted = convert(value, tp, key)
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = converted
    if "num_classes" in overrides and "class_names" not in overrides:
        names = data.get("class_names")
        if names is not None and len(names) != data["num_classes"]:
            data["class_names"] = None  # names of the old label set no longer apply
    return ModelConfig.from_dict(data)
