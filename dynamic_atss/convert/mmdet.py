"""Checkpoint converters: mmdetection (3.x, and 2.x, same keys) dense detectors -> `DynamicATSS`.

The backbone and neck mapping is shared; each head family registers its head mapping with
`@register_mmdet_head(marker_key, family)` (the ATSS one is below, others in `convert/mmdet_<family>.py`).

    from dynamic_atss.convert import convert_mmdet_atss
    model = convert_mmdet_atss("atss_r50_fpn_1x_coco_20200209-985f7bd0.pth")   # or a state dict, or .safetensors
    model.save_pretrained("atss_r50_fpn_1x_coco")                               # then `dynamic-atss push`

The command-line version is `dynamic-atss convert CHECKPOINT --out DIR [--push org/name]`.

Key mapping (mmdetection `ATSS` with `ResNet` + `FPN(start_level=1, add_extra_convs="on_output", num_outs=5)`
+ `ATSSHead`, i.e. `atss_r50_fpn_1x_coco` / `atss_r101_fpn_1x_coco`):

| mmdetection                                   | dynamic-atss                                        |
|-----------------------------------------------|-----------------------------------------------------|
| `backbone.*` (conv1, bn1, layer1-4, downsample) | `backbone.trunk.*` (timm ResNet, same names)      |
| `backbone.*.num_batches_tracked`              | dropped (FrozenBatchNorm2d has no counter)          |
| `backbone.layerN.i.conv2.conv_offset.*` (DCNv2) | `backbone.trunk.layerN.i.conv2.conv_offset.*`     |
| `neck.lateral_convs.{0,1,2}.conv.*`           | `fpn.fpn.inner_blocks.{0,1,2}.0.*`                  |
| `neck.fpn_convs.{0,1,2}.conv.*`               | `fpn.fpn.layer_blocks.{0,1,2}.0.*`                  |
| `neck.fpn_convs.3.conv.*` (P6, on P5)         | `fpn.fpn.extra_blocks.p6.*`                         |
| `neck.fpn_convs.4.conv.*` (P7, on P6)         | `fpn.fpn.extra_blocks.p7.*`                         |
| `bbox_head.cls_convs.{i}.conv.weight`         | `head.cls_tower.{3i}.weight` (no bias)              |
| `bbox_head.cls_convs.{i}.gn.*`                | `head.cls_tower.{3i+1}.*`                           |
| `bbox_head.reg_convs.*`                       | `head.box_tower.*` (same pattern)                   |
| `bbox_head.atss_cls / atss_reg / atss_centerness` | `head.cls_logits / bbox_pred / quality`         |
| `bbox_head.scales.{i}.scale`                  | `head.scales.{i}.scale`                             |

Every source tensor must be used (leftovers are an error naming them) and every tensor of the model must be
filled (strict load). The backbone (depth, bottleneck or basic block, ResNeXt groups, DCN stages) is inferred
from the keys: layer3 with 6 bottlenecks is `resnet50`, with 23 `resnet101`; DCN from `conv_offset` keys
(any of mmdetection's `stage_with_dcn` patterns -> `backbone.dcn_stages`, e.g. (2, 3, 4) for `dconv_c3-c5`, (3, 4)
for `dconv_c4-c5`); DCNv1 layers
(18 offset channels) load into our DCNv2 layers with a constant mask of exactly 1 (`_deform_v1_as_modulated`).

Conventions: where mmdetection and the authors' code (this library's default) differ, the converted config
takes mmdetection's, so that the converted model computes what it computed in mmdetection:

- anchors: mmdetection centres anchors at `(x, y) * stride` (`center_offset=0.0`); the authors' code at
  `(x + 0.5, y + 0.5) * stride` (0.5). Converted: `anchors.center_offset = 0.0`.
- P7: mmdetection's FPN applies P7 = conv(P6) (`relu_before_extra_convs=False`); the authors' code
  conv(relu(P6)). Converted: `conventions.relu_before_p7 = False`.
- score: mmdetection ranks by `cls * centerness`; the authors' code by `sqrt(cls * quality)`.
  Converted: `conventions.score_sqrt = False` (same ranking within an image, different values and
  thresholds across images). mmdetection also picks each level's pre-NMS top 1000 by the cls score alone,
  the authors' code by cls x quality: `conventions.pre_nms_rank_by_joint = False`.
- head convs: mmdetection's `ConvModule` drops the conv bias before GroupNorm (`head.conv_bias = False`);
  the quality branch is centerness (`head.quality = "centerness"`).
- box width: the authors' code (maskrcnn-benchmark) adds +1 to box widths ("TO_REMOVE"); mmdetection 2.x+
  and this library do not, so nothing changes for mmdetection checkpoints.
- input: mmdetection's ATSS configs normalise RGB (`bgr_to_rgb=True`) with mean (123.675, 116.28, 103.53) and
  std (58.395, 57.12, 57.375) on 0-255, which equals our ImageNet mean/std on 0-1 RGB images. Older
  "caffe"-style configs (BGR, mean subtraction only, std 1) are not what these checkpoints use; if a checkpoint
  carries `data_preprocessor.mean/std` buffers, they are used (divided by 255).
- training: the checkpoints are plain ATSS, so the config says so (`assigner.pred_weight = 0`,
  `loss.cls_loss = "focal"`); set `assigner.pred_weight = 1.0` (and e.g. `loss.cls_loss = "qfl"`) to fine-tune
  it as Dynamic ATSS. Test settings match mmdetection's (score > 0.05, top 1000 per level, NMS 0.6, 100 per image).

Not inferable from a state dict, and assumed as in mmdetection's ATSS configs: ResNet `style="pytorch"`
(stride on the 3x3 conv), GroupNorm with 32 groups in the head (override `head.num_groups`), P6 computed from
the P5 output (`add_extra_convs="on_output"`; "on_input", from C5, is detected from the shapes and refused).

Files are read with `torch.load(path, map_location="cpu", weights_only=True)` only (or safetensors): a
checkpoint holding other pickled objects is refused rather than unpickled.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

from ..config import BackboneConfig, ModelConfig, apply_overrides
from ..detection.heads import FAMILIES
from ..hub import StateDictMismatchError, build_model_from_state_dict
from ..registry import register_converter

if TYPE_CHECKING:  # pragma: no cover
    from ..models.detector import DynamicATSS

__all__ = [
    "MMDET_HEADS", "convert_gn_towers", "convert_mmdet", "convert_mmdet_atss", "convert_mmdet_state_dict",
    "infer_mmdet_backbone",
    "load_checkpoint_file", "register_mmdet_head", "tower_convs",
]

# (block, layers, groups, base width) -> timm name, for the standard channel widths (64, 128, 256, 512)
_STANDARD_RESNETS: dict[tuple[str, tuple[int, ...], int, int], str] = {
    ("basic", (2, 2, 2, 2), 1, 64): "resnet18",
    ("basic", (3, 4, 6, 3), 1, 64): "resnet34",
    ("bottleneck", (3, 4, 6, 3), 1, 64): "resnet50",
    ("bottleneck", (3, 4, 23, 3), 1, 64): "resnet101",
    ("bottleneck", (3, 8, 36, 3), 1, 64): "resnet152",
    ("bottleneck", (3, 4, 6, 3), 32, 4): "resnext50_32x4d",
    ("bottleneck", (3, 4, 23, 3), 32, 4): "resnext101_32x4d",
    ("bottleneck", (3, 4, 23, 3), 32, 8): "resnext101_32x8d",
    ("bottleneck", (3, 4, 23, 3), 64, 4): "resnext101_64x4d",
}
_STANDARD_PLANES = (64, 128, 256, 512)
_NUM_LEVELS = 5


class MMDetConversionError(ValueError):
    """The checkpoint is not an mmdetection checkpoint of a head family this converter understands."""


# ---------------------------------------------------------------------------------------------- reading
def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects: safetensors, or `torch.load(weights_only=True)`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # noqa: PLC0415

        return dict(load_file(str(path), device="cpu"))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle errors come in many types
        raise MMDetConversionError(
            f"{path}: could not be read with torch.load(weights_only=True) ({type(error).__name__}: {error}). "
            "Only tensors and plain containers are read; this converter never unpickles other objects. If you "
            "trust the file, extract its weights elsewhere, e.g. "
            "`torch.save(torch.load(p, weights_only=False)['state_dict'], 'state_dict.pth')`, and convert that "
            "(or pass the state dict itself)."
        ) from None


def _unwrap(checkpoint: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    if not isinstance(checkpoint, dict):
        raise MMDetConversionError(f"expected a state dict or a checkpoint dict, got {type(checkpoint).__name__}")
    meta = checkpoint.get("meta") if isinstance(checkpoint.get("meta"), dict) else {}
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, dict):
        raise MMDetConversionError("checkpoint['state_dict'] is not a mapping")
    tensors = OrderedDict()
    others = []
    for key, value in state_dict.items():
        if isinstance(value, Tensor):
            tensors[key] = value
        elif key not in ("meta", "optimizer", "message_hub", "param_schedulers"):
            others.append(key)
    if others and "state_dict" in checkpoint:
        raise MMDetConversionError(f"state_dict entries that are not tensors: {others[:10]}")
    if not tensors:
        raise MMDetConversionError("no tensors found: pass an mmdetection checkpoint or its state_dict")
    if all(key.startswith("module.") for key in tensors):  # saved from a DistributedDataParallel wrapper
        tensors = OrderedDict((key[len("module."):], value) for key, value in tensors.items())
    return tensors, meta


def _class_names_from_meta(meta: dict[str, Any]) -> list[str] | None:
    dataset_meta = meta.get("dataset_meta")
    names = dataset_meta.get("classes") if isinstance(dataset_meta, dict) else None
    if names is None:
        names = meta.get("CLASSES")  # mmdetection 2.x
    if names is None:
        return None
    return [str(name) for name in names]


# ---------------------------------------------------------------------------------------------- inference
def _indices(keys: list[str], prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for key in keys if (m := pattern.match(key))})


def infer_mmdet_backbone(state_dict: dict[str, Tensor]) -> tuple[BackboneConfig, dict[str, Any]]:
    """Infer the timm backbone (and DCN) from mmdetection ResNet / ResNeXt keys and shapes."""
    keys = list(state_dict)
    if "backbone.conv1.weight" not in state_dict:
        stem = [k for k in keys if k.startswith("backbone.stem.")]
        hint = " (a deep stem, ResNetV1d: not supported)" if stem else ""
        raise MMDetConversionError(f"no backbone.conv1.weight: not an mmdetection ResNet backbone{hint}")
    bottleneck = "backbone.layer1.0.conv3.weight" in state_dict
    block = "bottleneck" if bottleneck else "basic"
    layers, planes, dcn_stages = [], [], []
    groups, base_width = 1, 64
    for stage in range(1, 5):
        blocks = _indices(keys, f"backbone.layer{stage}.")
        if not blocks or blocks != list(range(len(blocks))):
            raise MMDetConversionError(f"backbone.layer{stage}: blocks {blocks}; expected 0..n-1 (a 4-stage ResNet)")
        layers.append(len(blocks))
        last_conv = "conv3" if bottleneck else "conv2"
        out_channels = state_dict[f"backbone.layer{stage}.0.{last_conv}.weight"].shape[0]
        planes.append(out_channels // 4 if bottleneck else out_channels)
        with_offset = [f"backbone.layer{stage}.{i}.conv2.conv_offset.weight" in state_dict for i in blocks]
        if any(with_offset) and not all(with_offset):
            raise MMDetConversionError(f"backbone.layer{stage}: DCN in only some blocks; not supported")
        dcn_stages.append(all(with_offset))
        if bottleneck and stage == 1:
            conv2 = state_dict["backbone.layer1.0.conv2.weight"]
            width = conv2.shape[0]
            groups = width // conv2.shape[1]
            base_width = width // groups * 64 // planes[0]
    stem_width = state_dict["backbone.conv1.weight"].shape[0]
    if stem_width != 64 or tuple(state_dict["backbone.conv1.weight"].shape[1:]) != (3, 7, 7):
        raise MMDetConversionError(
            f"backbone.conv1.weight has shape {tuple(state_dict['backbone.conv1.weight'].shape)}; timm ResNets have a "
            "7x7 stem with 64 channels (64, 3, 7, 7)"
        )
    info = {"block": block, "layers": tuple(layers), "planes": tuple(planes), "groups": groups,
            "base_width": base_width, "stem_width": stem_width, "dcn": any(dcn_stages)}
    name = None
    if tuple(planes) == _STANDARD_PLANES:
        name = _STANDARD_RESNETS.get((block, tuple(layers), groups, base_width))
    if name is not None:
        timm_kwargs: dict[str, Any] = {}
    else:  # a non-standard ResNet (e.g. a reduced test network): the generic timm ResNet with explicit sizes
        name = "resnet50" if bottleneck else "resnet18"
        timm_kwargs = {"layers": list(layers), "channels": list(planes)}
        if bottleneck:
            timm_kwargs.update(cardinality=groups, base_width=base_width)
    info["name"] = name
    stages_with_dcn = tuple(i + 1 for i, with_dcn in enumerate(dcn_stages) if with_dcn)
    return BackboneConfig(name=name, dcn=any(dcn_stages), dcn_stages=stages_with_dcn or (2, 3, 4), frozen_stages=1,
                          norm="frozen_bn",
                          timm_kwargs=timm_kwargs), info


# ---------------------------------------------------------------------------------------------- conversion

# A mask logit whose sigmoid is exactly 1.0 in float32 (1 + exp(-30) rounds to 1).
_MASK_ONE_LOGIT = 30.0


def _deform_v1_as_modulated(converted: dict[str, Tensor]) -> None:
    """DCNv1 layers (mmcv `DCN`, e.g. mmdetection's GFL dconv models: `conv_offset` predicts 2*k*k offsets) ->
    this library's DCNv2 layers (2*k*k offsets, then k*k mask logits; mmcv's DCNv2 offsets are the same first
    2*k*k channels): zero mask weights and a mask bias of 30, so the mask is sigmoid(30) = 1.0 exactly in float32
    and the layer computes what the DCNv1 layer did. (Fine-tuning such a layer barely moves its mask: the sigmoid
    is saturated.)"""
    for key in [k for k in converted if k.endswith("conv_offset.weight")]:
        weight = converted[key]
        points = weight.shape[-1] * weight.shape[-2]
        if weight.shape[0] != 2 * points:
            continue  # already DCNv2 (3*k*k)
        bias_key = key[: -len("weight")] + "bias"
        converted[key] = torch.cat([weight, weight.new_zeros(points, *weight.shape[1:])])
        converted[bias_key] = torch.cat([converted[bias_key], converted[bias_key].new_full((points,), _MASK_ONE_LOGIT)])


# ---------------------------------------------------------------------------------------------- heads
HeadConverter = Callable[[dict[str, Tensor], Callable[[str, "str | None"], Tensor]], dict[str, Any]]
# marker key (a tensor only that mmdetection head has) -> (head family, converter). A converter pops the head's
# tensors with `take(src, dst)` and returns the ModelConfig fields of the family (num_classes, head, anchors,
# conventions, assigner, loss) as mmdetection's config for that detector sets them.
MMDET_HEADS: dict[str, tuple[str, HeadConverter]] = {}


def register_mmdet_head(marker: str, family: str) -> Callable[[HeadConverter], HeadConverter]:
    """Decorator: convert checkpoints that hold `marker` with the decorated function (family `family`); a marker
    registered twice is an error. The family's first mapping also registers the converter `mmdet_<family>` with
    the registry (what `model_index.json` entries name): its indexed checkpoints then load by URL."""

    def wrap(fn: HeadConverter) -> HeadConverter:
        if marker in MMDET_HEADS:
            raise ValueError(f"mmdetection head marker {marker!r} is registered twice ({MMDET_HEADS[marker][0]}, {family})")
        if family not in {known for known, _ in MMDET_HEADS.values()}:
            register_converter(f"mmdet_{family}", _family_converter(family))
        MMDET_HEADS[marker] = (family, fn)
        return fn

    return wrap


def _family_converter(family: str) -> Callable[[dict[str, Any]], tuple[ModelConfig, dict[str, Tensor]]]:
    def convert(checkpoint: dict[str, Any]) -> tuple[ModelConfig, dict[str, Tensor]]:
        return convert_mmdet_state_dict(checkpoint, expected_family=family)

    convert.__name__ = convert.__qualname__ = f"mmdet_{family}"
    return convert


def _find_head(state_dict: dict[str, Tensor]) -> tuple[str, tuple[str, HeadConverter]]:
    found = [(marker, entry) for marker, entry in MMDET_HEADS.items() if marker in state_dict]
    if len(found) != 1:
        heads = sorted({k.split(".")[1] for k in state_dict if k.startswith("bbox_head.") and k.count(".") >= 2})
        raise MMDetConversionError(
            f"no supported mmdetection head found (bbox_head modules: {heads or 'none'}); supported heads are "
            f"recognised by {sorted(MMDET_HEADS)} ({', '.join(sorted({f for f, _ in MMDET_HEADS.values()}))})"
        )
    return found[0]


def tower_convs(remaining: dict[str, Tensor], take: Callable[[str, "str | None"], Tensor], source: str,
                target: str, num_convs: int) -> None:
    """mmdetection `ConvModule` towers (`{source}.{i}.conv.*`, `.gn.*`) -> `conv_gn_tower` (`{target}.{3i}.*`,
    `{target}.{3i+1}.*`). Anything else (e.g. a BatchNorm `bn.`) stays in `remaining` and is reported."""
    for i in range(num_convs):
        prefix = f"{source}.{i}."
        for key in [k for k in remaining if k.startswith(prefix)]:
            rest = key[len(prefix):]
            if rest.startswith("conv."):
                take(key, f"{target}.{3 * i}.{rest[len('conv.'):]}")
            elif rest.startswith("gn."):
                take(key, f"{target}.{3 * i + 1}.{rest[len('gn.'):]}")


def convert_gn_towers(remaining: dict[str, Tensor], take: Callable[[str, "str | None"], Tensor],
                      head_class: str) -> dict[str, Any]:
    """The two GN towers of mmdetection's dense heads (`bbox_head.cls_convs` / `reg_convs`: `stacked_convs` x
    `ConvModule(conv, GN)`, DCNv2 in the last conv with `dcn_on_last_conv`) -> `head.cls_tower` / `head.box_tower`.

    Checks them (errors name `head_class` and the missing tensors), takes their tensors and returns the
    `HeadConfig` fields they determine: channels, num_convs, conv_bias (mmdetection drops the bias before GN),
    dcn_last_conv."""
    keys = list(remaining)
    num_convs = len(_indices(keys, "bbox_head.cls_convs."))
    if num_convs == 0 or len(_indices(keys, "bbox_head.reg_convs.")) != num_convs:
        raise MMDetConversionError(f"bbox_head: expected as many cls_convs as reg_convs ({head_class} stacked_convs)")
    required = [f"bbox_head.{tower}.{i}.{part}" for tower in ("cls_convs", "reg_convs") for i in range(num_convs)
                for part in ("conv.weight", "gn.weight", "gn.bias")]
    missing = [key for key in required if key not in remaining]
    if missing:
        raise MMDetConversionError(f"missing tensor(s) of an mmdetection {head_class}: {', '.join(missing)}")
    offsets = [i for i in range(num_convs) if f"bbox_head.cls_convs.{i}.conv.conv_offset.weight" in remaining]
    if offsets not in ([], [num_convs - 1]):
        raise MMDetConversionError(f"bbox_head: DCN in tower convs {offsets}; supported: none or the last one")
    fields = dict(channels=remaining["bbox_head.cls_convs.0.conv.weight"].shape[0], num_convs=num_convs,
                  conv_bias="bbox_head.cls_convs.0.conv.bias" in remaining, dcn_last_conv=bool(offsets))
    tower_convs(remaining, take, "bbox_head.cls_convs", "head.cls_tower", num_convs)
    tower_convs(remaining, take, "bbox_head.reg_convs", "head.box_tower", num_convs)
    return fields


@register_mmdet_head("bbox_head.atss_centerness.weight", "atss")
def _convert_atss_head(remaining: dict[str, Tensor], take: Callable[[str, "str | None"], Tensor]) -> dict[str, Any]:
    """mmdetection `ATSSHead` -> the "atss" family (plain ATSS: anchor IoUs only, focal loss, centerness)."""
    towers = convert_gn_towers(remaining, take, "ATSSHead")
    required = [f"bbox_head.{name}.{kind}" for name in ("atss_cls", "atss_reg", "atss_centerness")
                for kind in ("weight", "bias")]
    required += [f"bbox_head.scales.{i}.scale" for i in range(_NUM_LEVELS)]
    missing = [key for key in required if key not in remaining]
    if missing:
        raise MMDetConversionError(f"missing tensor(s) of an mmdetection ATSSHead: {', '.join(missing)}")
    outputs = {}
    for name, target in (("atss_cls", "cls_logits"), ("atss_reg", "bbox_pred"), ("atss_centerness", "quality")):
        for kind in ("weight", "bias"):
            outputs[f"{target}.{kind}"] = take(f"bbox_head.{name}.{kind}", f"head.{target}.{kind}")
    if outputs["bbox_pred.weight"].shape[0] != 4:
        raise MMDetConversionError("bbox_head.atss_reg predicts more than one anchor per location; only 1 is supported")
    for i in range(_NUM_LEVELS):
        take(f"bbox_head.scales.{i}.scale", f"head.scales.{i}.scale")
    return dict(num_classes=outputs["cls_logits.weight"].shape[0], **FAMILIES["atss"].mmdet_config(**towers))


def convert_mmdet_state_dict(
    checkpoint: dict[str, Any],
    *,
    backbone: str | None = None,
    dcn: bool | None = None,
    class_names: list[str] | None = None,
    expected_family: str | None = None,
    **overrides: Any,
) -> tuple[ModelConfig, OrderedDict[str, Tensor]]:
    """mmdetection detector state dict (or `{"state_dict": ..., "meta": ...}`) -> (ModelConfig, our state dict).

    The head family is recognised from the keys (`MMDET_HEADS`); `expected_family` ("atss", ...) refuses others.
    `backbone` / `dcn`: what you expect (checked against what the keys say; inferred when None).
    `class_names`: names for the checkpoint's classes (default: `meta.dataset_meta.classes` or `meta.CLASSES`).
    `overrides`: dotted config overrides applied to the converted config (e.g. `**{"head.num_groups": 16}`).
    """
    source, meta = _unwrap(checkpoint)
    remaining = OrderedDict(source)
    converted: OrderedDict[str, Tensor] = OrderedDict()

    def take(src: str, dst: str | None) -> Tensor:
        tensor = remaining.pop(src)
        if dst is not None:
            converted[dst] = tensor
        return tensor

    # ---- backbone
    backbone_config, info = infer_mmdet_backbone(source)
    if backbone is not None and backbone != backbone_config.name:
        raise MMDetConversionError(
            f"backbone={backbone!r} was requested but the checkpoint holds a {info['block']} ResNet with "
            f"layers {info['layers']}, widths {info['planes']}, groups {info['groups']}, i.e. {backbone_config.name!r}"
        )
    if dcn is not None and bool(dcn) != backbone_config.dcn:
        raise MMDetConversionError(
            f"dcn={dcn} was requested but the checkpoint's backbone {'has' if backbone_config.dcn else 'has no'} "
            "DCN (conv_offset) layers"
        )
    for key in [k for k in remaining if k.startswith("backbone.")]:
        take(key, None if key.endswith("num_batches_tracked") else "backbone.trunk." + key[len("backbone."):])
    _deform_v1_as_modulated(converted)

    # ---- neck
    keys = list(remaining)
    laterals = _indices(keys, "neck.lateral_convs.")
    outputs = _indices(keys, "neck.fpn_convs.")
    if laterals != [0, 1, 2] or outputs != [0, 1, 2, 3, 4]:
        raise MMDetConversionError(
            f"neck: lateral_convs {laterals}, fpn_convs {outputs}; expected FPN(start_level=1, num_outs=5, "
            "add_extra_convs='on_output') as in mmdetection's ATSS configs: lateral_convs 0-2, fpn_convs 0-4"
        )
    missing = [f"neck.{kind}.{i}.conv.{part}" for kind, levels in (("lateral_convs", 3), ("fpn_convs", 5))
               for i in range(levels) for part in ("weight", "bias")]
    missing = [key for key in missing if key not in remaining]
    if missing:
        raise MMDetConversionError(f"missing tensor(s) of an mmdetection FPN: {', '.join(missing)}")
    normed = [k for k in keys if k.startswith("neck.") and (".bn." in k or ".gn." in k)]
    if normed:
        raise MMDetConversionError(f"neck with normalisation layers is not supported: {normed[:4]}")
    fpn_channels = remaining["neck.lateral_convs.0.conv.weight"].shape[0]
    p6_in = remaining["neck.fpn_convs.3.conv.weight"].shape[1]
    if p6_in != fpn_channels:
        raise MMDetConversionError(
            f"neck.fpn_convs.3 takes {p6_in} channels: P6 is computed from C5 (add_extra_convs='on_input'); "
            "this library computes P6 from the P5 output ('on_output', mmdetection's ATSS configs)"
        )
    for i in range(3):
        for kind in ("weight", "bias"):
            take(f"neck.lateral_convs.{i}.conv.{kind}", f"fpn.fpn.inner_blocks.{i}.0.{kind}")
            take(f"neck.fpn_convs.{i}.conv.{kind}", f"fpn.fpn.layer_blocks.{i}.0.{kind}")
    for i, level in ((3, "p6"), (4, "p7")):
        for kind in ("weight", "bias"):
            take(f"neck.fpn_convs.{i}.conv.{kind}", f"fpn.fpn.extra_blocks.{level}.{kind}")

    # ---- head (the family's converter)
    marker, (family, convert_head) = _find_head(remaining)
    if expected_family is not None and family != expected_family:
        raise MMDetConversionError(
            f"the checkpoint holds an mmdetection {family} head ({marker}), not {expected_family}; "
            f"use dynamic_atss.convert.convert_mmdet (any supported family)"
        )
    head_fields = convert_head(remaining, take)

    # ---- input normalisation buffers (present in some mmdetection 3.x checkpoints)
    image_mean, image_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    if "data_preprocessor.mean" in remaining:
        image_mean = tuple(float(v) / 255 for v in take("data_preprocessor.mean", None).flatten())
    if "data_preprocessor.std" in remaining:
        image_std = tuple(float(v) / 255 for v in take("data_preprocessor.std", None).flatten())

    if remaining:
        raise MMDetConversionError(
            f"{len(remaining)} tensor(s) of the checkpoint were not converted (not part of an mmdetection "
            f"ResNet-FPN model with a {family} head): {', '.join(list(remaining)[:20])}"
        )

    num_classes = head_fields["num_classes"]
    if class_names is None:
        class_names = _class_names_from_meta(meta)
        if class_names is not None and len(class_names) != num_classes:
            class_names = None  # meta from another dataset than the head: better unnamed than wrong
    config = ModelConfig(
        class_names=list(class_names) if class_names is not None else None,
        backbone=backbone_config,
        fpn_channels=fpn_channels,
        image_mean=image_mean,  # type: ignore[arg-type]
        image_std=image_std,  # type: ignore[arg-type]
        **head_fields,
    )
    if overrides:
        config = apply_overrides(config, overrides)
    return config, converted


def convert_mmdet(
    state_dict_or_path: dict[str, Any] | str | os.PathLike,
    *,
    backbone: str | None = None,
    dcn: bool | None = None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    expected_family: str | None = None,
    **overrides: Any,
) -> DynamicATSS:
    """An mmdetection checkpoint (path, `.safetensors`, state dict or `{"state_dict", "meta"}`) of a supported
    head family (ATSS, ...) -> DynamicATSS. `expected_family` refuses a checkpoint of another family.

    `backbone` ("resnet50", "resnet101", ...) and `dcn` are checked against the checkpoint (inferred when None).
    `num_classes` different from the checkpoint's re-initialises the classification layer for fine-tuning
    (with a warning), like `from_pretrained`; `class_names` then names the new classes. `overrides` are dotted
    config overrides (e.g. `**{"head.num_groups": 16}` for a non-standard head). Returns the model in eval mode.
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        source_name = str(state_dict_or_path)
        checkpoint = load_checkpoint_file(state_dict_or_path)
    else:
        source_name = "mmdetection state dict"
        checkpoint = state_dict_or_path
    new_label_set = num_classes is not None
    config, converted = convert_mmdet_state_dict(
        checkpoint, backbone=backbone, dcn=dcn, class_names=None if new_label_set else class_names,
        expected_family=expected_family, **overrides
    )
    load_overrides: dict[str, Any] = {}
    if new_label_set and class_names is not None:
        load_overrides["class_names"] = list(class_names)
        if num_classes == config.num_classes:
            config = apply_overrides(config, load_overrides)
            load_overrides = {}
    try:
        return build_model_from_state_dict(
            config, converted, num_classes=num_classes, overrides=load_overrides,
            source=f"converted {source_name}",
        )
    except StateDictMismatchError as error:
        raise StateDictMismatchError(
            f"{error} (names are this library's; mmdetection's are mapped as in dynamic_atss.convert's docstring)"
        ) from None


def convert_mmdet_atss(state_dict_or_path: dict[str, Any] | str | os.PathLike, **kwargs: Any) -> DynamicATSS:
    """`convert_mmdet` for mmdetection ATSS checkpoints (refuses other heads)."""
    return convert_mmdet(state_dict_or_path, expected_family="atss", **kwargs)
