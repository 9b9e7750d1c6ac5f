"""The head contract: what a head family owns, and the table that maps `HeadConfig.kind` to a family.

The detector (`dynamic_atss.models.detector.DynamicATSS`) runs preprocess -> backbone -> FPN -> head, then

    train:  head.loss(raw, targets, assigner, progress)   -> (loss parts, assignment statistics)
    eval:   postprocess(head, ...)                         (detection/postprocess.py)

and knows no family by name. A family's `loss` runs one way, in its own module:

    loss_inputs(raw, targets)        flattened float32 outputs + the family's priors (anchors, strides, grids)
    -> assign(...)                   the family's detached predicted boxes (`assignment_boxes`) and the anchors
                                     -> the assigner it is given (`CombinedIoUAssigner`, shared by every family)
    -> targets -> losses             the family's own, {"loss_cls", "loss_box", ...}: the parts only

A family is one module under `detection/heads/` that subclasses `DenseHead`, declares its `HeadFamily`
(mmdetection settings, config checks, registered constructors, its options dataclass: the
`head.` / `loss.` settings only it reads, e.g. `GFLOptions.reg_max`) with `register_family`, and is imported by
`detection/heads/__init__.py`. Its priors are the shared anchor grid of `detection/anchors.py` (one square
anchor per location), which every family here names through `DenseHead.prior_generator`.

Conventions every family keeps, because code outside the family relies on them:
- one anchor per location; flattened outputs are ordered row-major over (y, x) per level, levels P3 -> P7,
  the order of `AnchorGenerator`;
- the classification conv is named `cls_logits` (its bias carries the prior): loading a checkpoint with a
  new label set re-initialises `head.cls_logits.*` only, and benchmarks set its prior;
- `loss` returns float32 scalars that keep every head output in the graph even without positives
  (DDP would otherwise wait forever for the missing gradients).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from ...config import (
    FAMILY_OPTIONS, AnchorConfig, AssignerConfig, ConventionConfig, FamilyOptions, HeadConfig, LossConfig, ModelConfig,
)
from ...ops.dcn import ModulatedDeformConv2d
from ...registry import ModelEntry, register_model
from ..anchors import AnchorGenerator
from ..assigner import AssignResult, CombinedIoUAssigner


class ScoreMaps(NamedTuple):
    """Per-level scores for post-processing, each (B, N_l, C).

    select: compared with `test.score_thresh` (candidates); rank: orders candidates for the per-level top-k;
    score: the detection score reported (and used by NMS). Families may return the same tensor thrice.
    """

    select: Tensor
    rank: Tensor
    score: Tensor


class Targets(NamedTuple):
    """Padded ground truth of a batch, in the resized images' pixels.

    boxes (B, G, 4) xyxy float32; labels (B, G) int64; mask (B, G) bool (False = padding).
    """

    boxes: Tensor
    labels: Tensor
    mask: Tensor


class LossInputs(NamedTuple):
    """What a family's `loss` computes from, all float32: flat {name: (B, N, k)} (levels concatenated);
    anchors (N, 4) xyxy and strides (N,) per anchor; num_per_level and level_shapes ((H, W) of each level's
    anchor grid, row-major); the padded targets."""

    flat: dict[str, Tensor]
    anchors: Tensor
    strides: Tensor
    num_per_level: list[int]
    level_shapes: list[tuple[int, int]]
    targets: Targets


Loss = TypeVar("Loss", bound=Callable[..., Any])


def float32_loss(loss: Loss) -> Loss:
    """Run a family's `loss` with autocast off (the head may have run in half precision; `loss_inputs`
    casts its outputs to float32)."""

    @functools.wraps(loss)
    def wrapper(self: DenseHead, raw: tuple[list[Tensor], ...], *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type=raw[0][0].device.type, enabled=False):
            return loss(self, raw, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class DenseHead(nn.Module):
    """Base class of a head family (see the module docstring for the contract).

    Subclasses set `output_names` (the names of the per-level lists `forward` returns, in order; also the
    output names of exported graphs) and `box_outputs` (the flattened entries `decode_boxes` reads), and
    implement `forward`, `decode_boxes`, `loss` and `detection_scores`. The priors are the shared anchor grid
    (`prior_generator`, detection/anchors.py) unless a family overrides `priors`.
    """

    kind: ClassVar[str] = ""
    family: ClassVar[HeadFamily]  # set by `register_family`
    output_names: tuple[str, ...] = ()  # per class, or per instance where the config adds an output (GFLV2)
    box_outputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.options = self.family.check(config)  # the family's own options (its `HeadFamily.options` dataclass)
        self.num_classes = config.num_classes
        self.num_levels = len(config.anchors.strides)
        self.strides = [float(s) for s in config.anchors.strides]
        self.prior_generator = AnchorGenerator(config.anchors)

    def priors(self, feature_sizes: list[tuple[int, int]], device: torch.device) -> tuple[Tensor, list[int]]:
        """The anchors (N, 4) xyxy of every level for these (H, W) feature sizes, and their count per level."""
        return self.prior_generator(feature_sizes, device)

    # ------------------------------------------------------------------ network
    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], ...]:
        """P3..P7 features, each (B, C_in, H_l, W_l) -> one list per entry of `output_names`, each list
        holding a (B, k, H_l, W_l) tensor per level."""
        raise NotImplementedError

    def flatten_level(self, outputs: tuple[Tensor, ...]) -> dict[str, Tensor]:
        """One level's raw outputs (B, k, H, W) -> {name: (B, H*W, k)}, row-major over (y, x)."""
        return {
            name: out.permute(0, 2, 3, 1).reshape(out.shape[0], -1, out.shape[1])
            for name, out in zip(self.output_names, outputs)
        }

    def flatten(self, raw: tuple[list[Tensor], ...]) -> list[dict[str, Tensor]]:
        """`forward`'s output -> per level, `flatten_level`."""
        return [self.flatten_level(level) for level in zip(*raw)]

    # ------------------------------------------------------------------ boxes
    def decode_boxes(self, flat: dict[str, Tensor], anchors: Tensor, strides: Tensor | float) -> Tensor:
        """Predicted boxes (..., 4) xyxy in float32 from the `box_outputs` entries of `flat` (..., k),
        their anchors (..., 4) and the anchors' strides (a number, or a tensor broadcasting to (...))."""
        raise NotImplementedError

    def assignment_boxes(self, flat: dict[str, Tensor], anchors: Tensor, strides: Tensor) -> Tensor:
        """The predicted boxes (B, N, 4) whose IoUs the combined-IoU assigner uses (detached)."""
        with torch.no_grad():
            return self.decode_boxes({k: flat[k].detach() for k in self.box_outputs}, anchors, strides)

    # ------------------------------------------------------------------ training
    def loss_inputs(self, raw: tuple[list[Tensor], ...], targets: Targets) -> LossInputs:
        """`forward`'s outputs and the padded targets -> `LossInputs` in float32, with this head's priors."""
        level_shapes = [tuple(level.shape[-2:]) for level in raw[0]]
        anchors, num_per_level = self.priors(level_shapes, raw[0][0].device)
        flat_levels = self.flatten(raw)
        flat = {name: torch.cat([level[name] for level in flat_levels], 1).float() for name in flat_levels[0]}
        strides = torch.repeat_interleave(
            torch.tensor(self.strides, dtype=torch.float32, device=anchors.device),
            torch.tensor(num_per_level, device=anchors.device),
        )
        targets = Targets(targets.boxes.float(), targets.labels, targets.mask)
        return LossInputs(flat, anchors.float(), strides, num_per_level, level_shapes, targets)

    def assign(self, inputs: LossInputs, assigner: Callable[..., AssignResult], progress: float) -> AssignResult:
        """Label assignment: the assigner with this head's detached predicted boxes (`assignment_boxes`), the
        anchors and the targets; progress = iter / max_iter drives Table III's dynamic weights."""
        pred_boxes = self.assignment_boxes(inputs.flat, inputs.anchors, inputs.strides)
        return assigner(inputs.anchors, inputs.num_per_level, inputs.targets.boxes, inputs.targets.mask, pred_boxes,
                        progress, inputs.level_shapes)

    def loss(
        self, raw: tuple[list[Tensor], ...], targets: Targets, assigner: CombinedIoUAssigner, progress: float = 0.0,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """One training step's losses: priors -> assignment -> targets -> losses (see the module docstring).

        raw: `forward`'s outputs; targets: padded, in the resized images' pixels; assigner: called as
        `CombinedIoUAssigner` is; progress: iter / max_iter, in [0, 1]. Returns ({"loss_cls", "loss_box", ...}
        float32 scalars, the parts whose sum is the training loss; the assignment statistics)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ inference
    def detection_scores(self, flat: dict[str, Tensor]) -> ScoreMaps:
        """One level's flattened outputs -> `ScoreMaps` (B, N_l, C) each."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for model cards: what this head is."""
        return f"{type(self).__name__}"


# ---------------------------------------------------------------------------------------------- families
@dataclass(frozen=True)
class Variant:
    """One registered constructor of a family: `name` (e.g. "dynamic_gflv2_r101_dcn"), its backbone token (a key
    of `dynamic_atss.registry.BACKBONES`), DCN backbone, whether it assigns with the combined IoUs (False: the
    family's own anchor-IoU assignment), `options` for the family's `config` (e.g. {"dgqp": True}) and the
    constructor's docstring."""

    name: str
    trunk: str
    dcn: bool = False
    combined_ious: bool = True
    doc: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def named(cls, prefix: str, backbone: str, combined_ious: bool, doc: str, **options: Any) -> Variant:
        """`prefix`_`backbone`, "dynamic_" first with the combined IoUs; a backbone token "r101_dcn" means DCN."""
        name = f"{'dynamic_' if combined_ious else ''}{prefix}_{backbone}"
        return cls(name, backbone.removesuffix("_dcn"), backbone.endswith("_dcn"), combined_ious, doc, options)


@dataclass(frozen=True)
class HeadFamily:
    """Everything about one head family outside its network, read by the zoo, the converters and the registry.

    kind: `HeadConfig.kind`; head: the `DenseHead` subclass; cls_losses: the `loss.cls_loss` values it trains
    with; mmdet_head / mmdet_conventions / mmdet_loss: the `HeadConfig`, `ConventionConfig` and `LossConfig`
    fields and the family's options that mmdetection's configs of this detector set (what a converted checkpoint
    computes with; `mmdet_config`); variant_config: `Variant` -> `ModelConfig` of a registered constructor;
    variants: those constructors. options: the family's own options dataclass (`FamilyOptions`, declared in its
    module), set with `head.<field>` / `loss.<field>` and stored in `HeadConfig.options`; another family's option
    set away from its default is refused (it would otherwise be ignored without a word).
    """

    kind: str
    head: type[DenseHead]
    cls_losses: tuple[str, ...]
    mmdet_head: dict[str, Any]
    mmdet_conventions: dict[str, Any]
    mmdet_loss: dict[str, Any]
    variant_config: Callable[[Variant], ModelConfig]
    variants: tuple[Variant, ...] = ()
    cls_loss_note: str = ""  # why only `cls_losses`, said with the error
    options: type[FamilyOptions] = FamilyOptions  # the fields only this family reads (e.g. GFL's `reg_max`)

    def mmdet_config(self, **head_fields: Any) -> dict[str, Any]:
        """The `ModelConfig` fields of this family as mmdetection sets them: `head` (mmdetection's head fields,
        then `head_fields`, e.g. what a converter read from a checkpoint), `anchors`, `conventions`, `assigner`
        (anchor IoUs only: mmdetection's detectors are the plain ones) and `loss`. Every mmdetection dense
        detector here centres its anchors at (x, y) * stride. Fields that are the family's options go to
        `head.options`."""
        shared_head = {f.name for f in dataclasses.fields(HeadConfig)}
        shared_loss = {f.name for f in dataclasses.fields(LossConfig)}
        head = {**self.mmdet_head, **head_fields}
        options = {k: v for k, v in {**head, **self.mmdet_loss}.items() if k not in shared_head | shared_loss}
        return dict(
            head=HeadConfig(kind=self.kind, options=options, **{k: v for k, v in head.items() if k in shared_head}),
            anchors=AnchorConfig(center_offset=0.0),
            conventions=ConventionConfig(**self.mmdet_conventions),
            assigner=AssignerConfig(pred_weight=0.0, anchor_weight=1.0),
            loss=LossConfig(**{k: v for k, v in self.mmdet_loss.items() if k in shared_loss}),
        )

    def check(self, config: ModelConfig) -> FamilyOptions:
        """Clear errors for settings every family checks the same way (raised when the head is built); returns
        the family's options (`config.head.options` checked against them, defaults filled in)."""
        loss = config.loss
        if loss.cls_loss not in self.cls_losses:
            raise ValueError(
                f"loss.cls_loss={loss.cls_loss!r} is not available for head.kind={self.kind!r}; use "
                + " or ".join(repr(c) for c in self.cls_losses) + (f" ({self.cls_loss_note})" if self.cls_loss_note else "")
            )
        return config.head.family_options()


FAMILIES: dict[str, HeadFamily] = {}  # head kind -> its family (its `head` is the module class)


def register_family(family: HeadFamily) -> HeadFamily:
    """Make `family.head` buildable with `HeadConfig(kind=family.kind)`, its spec readable (`FAMILIES`) and its
    variants' names known to the registry (`create(name)`, `list_models()`); a kind registered twice is an error."""
    if family.kind in FAMILIES:
        raise ValueError(f"head kind {family.kind!r} is registered twice ({FAMILIES[family.kind].head.__name__}, "
                         f"{family.head.__name__})")
    family.head.kind = family.kind
    family.head.family = family
    FAMILIES[family.kind] = family
    FAMILY_OPTIONS[family.kind] = family.options
    for variant in family.variants:
        register_model(ModelEntry(name=variant.name, family=family.kind, trunk=variant.trunk, dcn=variant.dcn,
                                  config=functools.partial(family.variant_config, variant), doc=variant.doc))
    return family


def build_head(config: ModelConfig) -> DenseHead:
    """The head family named by `config.head.kind`, built for `config`."""
    kind = config.head.kind
    if kind not in FAMILIES:
        raise ValueError(
            f"head.kind={kind!r} is not a known head family; known: {sorted(FAMILIES)} "
            "(a family registers itself with register_family in dynamic_atss/detection/heads/)"
        )
    return FAMILIES[kind].head(config)


# ---------------------------------------------------------------------------------------------- shared parts
class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level for the box outputs)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class GroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` that also normalises a group holding a single value (one image, one channel per group, a
    1x1 map: P7 of a small input when `head.num_groups == head.channels`). torch refuses that case ("Expected more
    than 1 value per channel when training", in eval mode too), a check meant for BatchNorm's batch statistics;
    the normalised value of a lone sample is exactly 0, so the output is the bias, and the gradients (0 for the
    input and the weight) are GroupNorm's. Same parameters and state-dict keys as `nn.GroupNorm`."""

    def forward(self, x: Tensor) -> Tensor:
        # eager only: on symbolic sizes (torch.export, torch.compile) the test would specialise the graph's shapes
        if not torch.compiler.is_compiling() and self._values_per_group(x) == 1:
            normalised = x * 0.0  # 0, and the gradient GroupNorm gives a lone value (0)
            if not self.affine:
                return normalised
            return normalised * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return super().forward(x)

    def _values_per_group(self, x: Tensor) -> int:
        """Eager sizes only: `torch.Size.numel` on symbolic sizes would specialise them."""
        return x.shape[0] * (x.shape[1] // self.num_groups) * x.shape[2:].numel()


def conv_gn_tower(config: HeadConfig, in_channels: int) -> nn.Sequential:
    """`num_convs` x (3x3 conv, GroupNorm, ReLU); DCNv2 in the last conv when `dcn_last_conv`.

    Module indices (conv 3i, GN 3i+1) are part of the checkpoint format: converters map to them.
    """
    layers: list[nn.Module] = []
    for i in range(config.num_convs):
        channels_in = in_channels if i == 0 else config.channels
        if config.dcn_last_conv and i == config.num_convs - 1:
            conv: nn.Module = ModulatedDeformConv2d(channels_in, config.channels, 3, 1, 1, bias=config.conv_bias)
        else:
            conv = nn.Conv2d(channels_in, config.channels, 3, 1, 1, bias=config.conv_bias)
        layers += [conv, GroupNorm(config.num_groups, config.channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def init_head_weights(head: nn.Module, prior_prob: float) -> None:
    """N(0, 0.01) weights and zero biases for every conv except DCN offset/mask convs (zero: a DCN starts as
    a plain conv); the prior bias -log((1 - p) / p) on `head.cls_logits`."""
    offset_convs = {id(m.conv_offset) for m in head.modules() if isinstance(m, ModulatedDeformConv2d)}
    for module in head.modules():
        if isinstance(module, (nn.Conv2d, ModulatedDeformConv2d)) and id(module) not in offset_convs:
            nn.init.normal_(module.weight, std=0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    nn.init.constant_(head.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))


def connected(loss: Tensor, *outputs: Tensor) -> Tensor:
    """`loss` plus 0 x the sum of `outputs`: every output stays in the graph even without positives."""
    for out in outputs:
        loss = loss + 0.0 * out.sum()
    return loss


def gather_positive(assignment: AssignResult, targets: Targets) -> dict[str, Any]:
    """The positives of an assignment: image / anchor / GT indices (P,), their labels (P,), GT boxes (P, 4),
    the detached predicted IoUs (P,) and anchor IoUs (P,)."""
    img_idx, anchor_idx = assignment.pos_mask.nonzero(as_tuple=True)
    gt_idx = assignment.gt_index[img_idx, anchor_idx]
    return {
        "img": img_idx,
        "anchor": anchor_idx,
        "labels": targets.labels[img_idx, gt_idx],
        "gt_boxes": targets.boxes[img_idx, gt_idx],
        "pred_iou": assignment.pred_iou[img_idx, anchor_idx],
        "anchor_iou": assignment.anchor_iou[img_idx, anchor_idx],
    }
