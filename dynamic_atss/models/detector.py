"""The detector: preprocess -> timm backbone -> FPN -> head family -> (head.loss | post-process).

It knows no head family by name: `config.head.kind` picks one (detection/heads/), which owns its raw outputs,
priors, box decoding, label assignment call, losses and scores. The detector holds the assigner (built from
`config.assigner`) and hands it to the head's `loss`; its forward keeps no state between calls.
"""

from __future__ import annotations

import dataclasses
import math
import random

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TEST_PRESETS, ModelConfig
from ..detection.assigner import CombinedIoUAssigner
from ..detection.heads import Targets, build_head
from ..detection.postprocess import postprocess
from ..hub import HubMixin
from .backbone import TimmBackbone
from .fpn import FPN


class DynamicATSS(HubMixin, nn.Module):
    """A dense one-stage detector with the combined-IoU assigner, in torchvision's detection calling convention.

    - `model.train(); model(images, targets)` -> the loss parts of the head family, e.g. `{"loss_cls",
      "loss_box", "loss_quality"}` for ATSS (`sum(losses.values())` is the training loss);
      `model(images, targets, progress=p, return_stats=True)` -> `(losses, stats)`: `progress` (iter / max_iter,
      default 0.0) drives the "up" / "down" assigner weights, `stats` are that step's label-assignment statistics.
      Forward is pure: it reads the parameters and buffers only and writes no attribute.
    - `model.eval(); model(images)` -> per image `{"boxes": (N,4) xyxy, "scores": (N,), "labels": (N,)}`,
      boxes in that image's own pixel coordinates.

    `images` is a list of (3, H, W) float tensors in [0, 1], of any sizes (a (B, 3, H, W) tensor works too);
    `targets` a list of `{"boxes": (G, 4) float xyxy in the image's pixels, "labels": (G,) int64}`.
    Resizing (`min_size` / `max_size`), normalisation and padding to a multiple of `size_divisible`
    happen inside, like torchvision's `GeneralizedRCNNTransform`.
    """

    def __init__(self, config: ModelConfig, backbone_pretrained: bool = False) -> None:
        super().__init__()
        self.config = config
        self.backbone = TimmBackbone(config.backbone, pretrained=backbone_pretrained)
        self.fpn = FPN(self.backbone.out_channels, config.fpn_channels, config.conventions.relu_before_p7)
        self.head = build_head(config)
        self.assigner = CombinedIoUAssigner.from_config(config.assigner)
        self.register_buffer("image_mean", torch.tensor(config.image_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(config.image_std).view(-1, 1, 1), persistent=False)
        expected = list(self.backbone.strides) + [self.backbone.strides[-1] * 2, self.backbone.strides[-1] * 4]
        if expected != list(config.anchors.strides):
            raise ValueError(
                f"backbone {config.backbone.name!r} gives strides {self.backbone.strides} for out_indices "
                f"{config.backbone.out_indices}, so the FPN levels have strides {expected}, but "
                f"anchors.strides is {list(config.anchors.strides)}; pick out_indices with strides 8, 16, 32"
            )

    # ------------------------------------------------------------------ presets
    def set_test_preset(self, name: str) -> DynamicATSS:
        """Switch the inference thresholds: "eval" (score > 0.05, 100 detections) or "vis" (higher threshold)."""
        if name not in TEST_PRESETS:
            raise ValueError(f"unknown test preset {name!r}; choose one of {sorted(TEST_PRESETS)}")
        self.config.test = dataclasses.replace(TEST_PRESETS[name])
        return self

    # ------------------------------------------------------------------ raw network
    def forward_raw(self, x: Tensor) -> tuple[list[Tensor], ...]:
        """(B, 3, H, W) normalised, padded input -> the head family's raw outputs: one list per name in
        `model.head.output_names`, each holding a (B, k, H_l, W_l) tensor per level P3..P7 (for ATSS: cls
        logits (B, C, ...), box deltas (B, 4, ...), quality logits (B, 1, ...))."""
        if x.device.type == "cpu" and not torch.compiler.is_compiling():
            # oneDNN's convolutions are ~1.15x faster on channels_last activations (the layout then propagates
            # through the whole network; the parameters keep theirs, so state dicts stay contiguous)
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.fpn(self.backbone(x)))

    # ------------------------------------------------------------------ transform
    def _check_images(self, images: list[Tensor] | Tensor) -> list[Tensor]:
        if isinstance(images, Tensor):
            if images.dim() == 3:
                raise ValueError("images must be a list of (3, H, W) tensors or a (B, 3, H, W) tensor; got one (3, H, W) tensor: wrap it in a list")
            images = list(images.unbind(0))
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ValueError("images must be a non-empty list of (3, H, W) float tensors in [0, 1]")
        for index, image in enumerate(images):
            if not isinstance(image, Tensor):
                raise TypeError(f"image {index}: expected a torch.Tensor, got {type(image).__name__}")
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"image {index}: expected shape (3, H, W), got {tuple(image.shape)}")
            if not image.is_floating_point():
                raise ValueError(
                    f"image {index}: expected a float tensor in [0, 1], got dtype {image.dtype}; "
                    "convert with image.float() / 255"
                )
            if image.shape[1] == 0 or image.shape[2] == 0:
                raise ValueError(f"image {index}: has a zero side, shape {tuple(image.shape)}")
        if not self.training:
            # Images in 0..255 (or already normalised) give wrong boxes silently. One host read per batch, in
            # inference only: detection synchronises at its end anyway, while a training step keeps its one sync.
            extremes = torch.stack([torch.stack(torch.aminmax(image.detach())) for image in images]).float().cpu()
            for index, (low, high) in enumerate(extremes.tolist()):
                if low != low or high != high:  # NaN: every comparison below would be False
                    raise ValueError(f"image {index}: holds NaN (not-a-number) values; expected floats in [0, 1]")
                if high > 1.5 or low < -0.5:
                    fix = "pass the images unnormalised: the model subtracts its own mean and divides by its std" \
                        if low < -0.5 else "divide 0-255 images by 255 (image.float() / 255)"
                    raise ValueError(f"image {index}: values in [{low:g}, {high:g}], expected floats in [0, 1]; {fix}")
        return list(images)

    def _target_size(self, height: int, width: int) -> tuple[int, int]:
        min_size = self.config.min_size
        if isinstance(min_size, (tuple, list)):
            # Multi-scale training samples a shorter side per image; evaluation uses the largest.
            min_size = random.choice(min_size) if self.training else max(min_size)
        scale = min(min_size / min(height, width), self.config.max_size / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def normalize(self, images: Tensor) -> Tensor:
        """(..., 3, H, W) in [0, 1] -> normalised by the model's `image_mean` / `image_std`."""
        return (images - self.image_mean) / self.image_std

    def preprocess(
        self, images: list[Tensor] | Tensor, normalize: bool = True
    ) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        """The one input transform (the model, ONNX Runtime and export share it): check, resize, normalise (unless
        `normalize=False`: a graph that normalises inside gets the resized [0, 1] images) and pad with zeros.
        Returns the batch (B, 3, H', W'), the resized sizes (B, 2) as (height, width) (int64, on the CPU), and
        the original sizes."""
        images = self._check_images(images)
        original_sizes = [(int(img.shape[1]), int(img.shape[2])) for img in images]
        resized = []
        for image, (height, width) in zip(images, original_sizes):
            size = self._target_size(height, width)
            image = image.to(self.image_mean.device, self.image_mean.dtype)
            if size != (height, width):
                image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            resized.append(self.normalize(image) if normalize else image)
        divisor = self.config.size_divisible
        pad_h = int(math.ceil(max(img.shape[1] for img in resized) / divisor) * divisor)
        pad_w = int(math.ceil(max(img.shape[2] for img in resized) / divisor) * divisor)
        batch = resized[0].new_zeros(len(resized), 3, pad_h, pad_w)
        for slot, image in zip(batch, resized):
            slot[:, : image.shape[1], : image.shape[2]].copy_(image)
        # on the CPU: the sizes are host data (reading them back from a GPU would wait for the GPU's queue)
        sizes = torch.tensor([img.shape[1:] for img in resized])
        return batch, sizes, original_sizes

    # ------------------------------------------------------------------ forward
    def forward(
        self, images: list[Tensor] | Tensor, targets: list[dict[str, Tensor]] | None = None, *,
        progress: float = 0.0, return_stats: bool = False,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]] | tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Train mode: the loss parts (with `return_stats=True`, `(losses, assignment statistics)`); `progress`
        (iter / max_iter in [0, 1], default 0.0) is the training progress the dynamic assigner weights follow.
        Eval mode: per image detections. See the class docstring for shapes."""
        if self.training and targets is None:
            raise ValueError("in train mode, model(images, targets) needs targets; call model.eval() for inference")
        batch, sizes, original_sizes = self.preprocess(images)
        raw = self.forward_raw(batch)
        if not self.training:
            return self.detections_from_raw(raw, sizes, original_sizes)
        scales = [(h / oh, w / ow) for (h, w), (oh, ow) in zip(sizes.tolist(), original_sizes)]
        targets = Targets(*self._prepare_targets(targets, scales, batch.device))
        losses, stats = self.head.loss(raw, targets, self.assigner, progress)
        return (losses, stats) if return_stats else losses

    def detections_from_raw(
        self, raw: tuple[list[Tensor], ...], sizes: Tensor, original_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Post-processing: `forward_raw`'s outputs and `preprocess`'s sizes -> per image detections in that
        image's own pixels (what `model.eval(); model(images)` returns; also used by exported runtimes)."""
        feature_sizes = [tuple(level.shape[-2:]) for level in raw[0]]
        anchors, num_per_level = self.head.priors(feature_sizes, raw[0][0].device)
        detections = postprocess(
            self.head, self.head.flatten(raw), list(anchors.split(num_per_level)),
            list(self.config.anchors.strides), sizes, self.config.test,
        )
        for det, (height, width), (orig_h, orig_w) in zip(detections, sizes.tolist(), original_sizes):
            ratio = det["boxes"].new_tensor([orig_w / width, orig_h / height, orig_w / width, orig_h / height])
            det["boxes"] = det["boxes"] * ratio
        return detections

    def _prepare_targets(
        self, targets: list[dict[str, Tensor]], scales: list[tuple[float, float]], device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Validate, rescale to the resized images and pad: boxes (B, G, 4), labels (B, G), mask (B, G) on `device`.

        The work happens where the targets are (the trainer keeps them on the host, where the checks need no
        host-device synchronisation); the padded results are then copied to `device` without waiting for it."""
        if len(targets) != len(scales):
            raise ValueError(f"got {len(scales)} images but {len(targets)} targets")
        max_gt = max((len(t["boxes"]) for t in targets), default=0)
        home = next((t["boxes"].device for t in targets if isinstance(t["boxes"], Tensor)), torch.device("cpu"))
        gt_boxes = torch.zeros(len(targets), max_gt, 4, device=home)
        gt_labels = torch.zeros(len(targets), max_gt, dtype=torch.int64, device=home)
        gt_mask = torch.zeros(len(targets), max_gt, dtype=torch.bool, device=home)
        checked = []
        for index, target in enumerate(targets):
            boxes = torch.as_tensor(target["boxes"], dtype=torch.float32, device=home).reshape(-1, 4)
            labels = torch.as_tensor(target["labels"], device=home).reshape(-1)
            if len(labels) != len(boxes):
                raise ValueError(f"image {index}: {len(boxes)} boxes but {len(labels)} labels")
            if labels.is_floating_point():
                raise ValueError(f"image {index}: labels must be integers (int64), got {labels.dtype}")
            checked.append((boxes, labels))
        # One check for the whole batch (a host-device synchronisation only for targets on a device); the loop
        # below only names the culprit.
        flags = [self._bad_boxes(b).any() | self._bad_labels(l).any() for b, l in checked if len(b)]
        if flags and bool(torch.stack(flags).any()):
            for index, (boxes, labels) in enumerate(checked):
                bad = self._bad_boxes(boxes)
                if bad.any():
                    box_index = int(bad.nonzero()[0])
                    raise ValueError(
                        f"image {index}: box {box_index} {boxes[box_index].tolist()} is not finite or has zero or "
                        "negative width/height; boxes must be xyxy with x2 > x1 and y2 > y1 (the data pipeline "
                        "drops such boxes with a warning)"
                    )
                out_of_range = self._bad_labels(labels)
                if out_of_range.any():
                    raise ValueError(
                        f"image {index}: label {int(labels[out_of_range][0])} is outside [0, {self.config.num_classes}); "
                        "labels must be contiguous class indices (map dataset category ids first)"
                    )
        for index, ((boxes, labels), (scale_h, scale_w)) in enumerate(zip(checked, scales)):
            n = len(boxes)
            gt_boxes[index, :n] = boxes * boxes.new_tensor([scale_w, scale_h, scale_w, scale_h])
            gt_labels[index, :n] = labels
            gt_mask[index, :n] = True
        return tuple(t.to(device, non_blocking=True) for t in (gt_boxes, gt_labels, gt_mask))

    @staticmethod
    def _bad_boxes(boxes: Tensor) -> Tensor:
        return ~torch.isfinite(boxes).all(1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])

    def _bad_labels(self, labels: Tensor) -> Tensor:
        return (labels < 0) | (labels >= self.config.num_classes)
