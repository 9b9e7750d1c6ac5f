"""Plain dataclasses that fully describe a Dynamic ATSS model.

`ModelConfig` is JSON round-trippable (`to_dict` / `from_dict`) so that a model can be rebuilt from the
`config.json` stored beside its weights. Defaults follow the authors' released code (see docs/method.md);
converted mmdetection checkpoints flip the `conventions` fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from .typed import convert_dotted, from_dict as _typed_from_dict

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
class HeadConfig:
    kind: str = "atss"  # the head family (detection/heads/): "atss", ...
    channels: int = 256
    num_convs: int = 4
    num_groups: int = 32  # GroupNorm groups in the towers
    conv_bias: bool = True  # authors' code: True; mmdetection: False (GN follows)
    dcn_last_conv: bool = False  # DCNv2 in the last conv of each tower (DCN models)
    quality: Literal["centerness", "iou"] = "iou"  # ATSS family: the quality branch
    prior_prob: float = 0.01
    # GFL / GFLV2 family: box sides as distributions over reg_max + 1 bins; DGQP = GFLV2's quality predictor
    reg_max: int = 16
    dgqp: bool = False
    dgqp_topk: int = 4
    dgqp_hidden: int = 64
    # VFNet family: which predicted boxes the combined-IoU assigner uses (see detection/heads/vfnet.py)
    assign_boxes: Literal["initial", "refined"] = "refined"


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
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    vfl_alpha: float = 0.75
    box_weight: float = 2.0  # GIoU (refined box for VFNet)
    quality_weight: float = 1.0
    dfl_weight: float = 0.25  # GFL: distribution focal loss
    box_init_weight: float = 1.5  # VFNet: GIoU of the initial box


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
        """Inverse of `to_dict`; unknown keys are an error naming them (a config from another model)."""
        return _from_dict(cls, data, path="config")


def _from_dict(cls: type, data: dict[str, Any], path: str) -> Any:
    """Typed conversion of a nested mapping into `cls` (see `dynamic_atss.typed`): every value is converted
    to its field's annotated type, unknown keys are an error naming the closest field."""
    return _typed_from_dict(cls, data, path)


def apply_overrides(config: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    """Return a copy of `config` with dotted overrides applied, e.g. {"head.quality": "centerness"}.

    Values are converted to the field's type (`"1e-3"` -> 0.001, `"null"` -> None, `[640, 800]` -> a tuple)
    and misspelt keys name the closest field, through the same typed machinery as the training config.
    Top-level shortcut used by `create()`: `backbone="<timm name>"` sets `backbone.name`.
    """
    data = config.to_dict()
    for key, value in overrides.items():
        if key == "backbone" and isinstance(value, str):
            key = "backbone.name"
        converted = convert_dotted(ModelConfig, key, value, where="config override")
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = converted
    if "num_classes" in overrides and "class_names" not in overrides:
        names = data.get("class_names")
        if names is not None and len(names) != data["num_classes"]:
            data["class_names"] = None  # names of the old label set no longer apply
    return ModelConfig.from_dict(data)
