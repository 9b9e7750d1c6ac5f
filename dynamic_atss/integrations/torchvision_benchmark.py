"""Study: torchvision FCOS / RetinaNet trained with torchvision's assignment vs the combined-IoU drop-in.

One recipe for the three assignments of a family: a tiny 3-level backbone (strides 8, 16, 32; `TinyBackbone`), torchvision's own
FCOS / RetinaNet heads, losses and post-processing, trained from scratch on the embedded synthetic dataset
(`SyntheticShapes`, square images), AdamW with linear warm-up and cosine decay, batch 8; COCO AP on the synthetic
held-out ("val") split with the package's evaluator. Three assignments per family:

- `torchvision`: the model as torchvision builds it (FCOS: centre sampling + scale ranges; RetinaNet: IoU 0.5/0.4);
- `combined`: `use_combined_iou_assignment(model)` (pred_weight=1, anchor_weight=1);
- `atss`: `use_combined_iou_assignment(model, pred_weight=0)` (plain ATSS on torchvision's anchors).

    python benchmarks/torchvision_assignment.py [--families fcos retinanet] [--seeds 0 1 2] [--iterations 1500]
        [--json runs.json]

Single-threaded (`torch.set_num_threads(1)`) unless `--threads`; prints a markdown table (mean and per-seed AP).
The README's numbers: `--families fcos` (1500 iterations) and `--families retinanet --iterations 1000`.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead

from ..data.synthetic import SyntheticShapes
from ..evaluation import evaluate_detections, evaluator_for
from .torchvision import use_combined_iou_assignment

FAMILIES = ("fcos", "retinanet")
#: assignment name -> options of `use_combined_iou_assignment` (None: torchvision's own)
ASSIGNMENTS: dict[str, dict[str, float] | None] = {
    "torchvision": None,
    "combined": {"pred_weight": 1.0, "anchor_weight": 1.0},
    "atss": {"pred_weight": 0.0, "anchor_weight": 1.0},
}
STRIDES = (8, 16, 32)


class TinyBackbone(nn.Module):
    """A small from-scratch conv net with torchvision's backbone contract: `out_channels` and an ordered dict of
    3 feature maps (B, C, H/8, W/8), (B, C, H/16, W/16), (B, C, H/32, W/32)."""

    def __init__(self, out_channels: int = 32) -> None:
        super().__init__()
        self.out_channels = out_channels

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

        c = out_channels
        self.stem = nn.Sequential(block(3, c // 2), block(c // 2, c), block(c, c))  # stride 8
        self.down = nn.ModuleList([block(c, c), block(c, c)])  # strides 16, 32

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        x = self.stem(images)
        features = OrderedDict(p3=x)
        for level, block in enumerate(self.down, start=4):
            x = block(x)
            features[f"p{level}"] = x
        return features


def build_model(family: str, num_classes: int, image_size: int, channels: int = 32) -> FCOS | RetinaNet:
    """torchvision's FCOS / RetinaNet on a `TinyBackbone` (3 levels, strides 8, 16, 32), images kept at `image_size`
    (no resize). FCOS: torchvision's default head and anchors (one point per location, box side = stride).
    RetinaNet: torchvision's v2 head (`retinanet_resnet50_fpn_v2`: GroupNorm, GIoU box loss) and 3 scales x
    3 ratios per location from 2 x stride (torchvision's 4 x stride is sized for 800 px images: at 128 px the
    12 px objects would never reach its IoU 0.4; with 4 x stride and the v1 head the torchvision baseline stayed
    below 1 AP in a 400-iteration trial)."""
    backbone = TinyBackbone(channels)
    common = {"min_size": image_size, "max_size": image_size, "detections_per_img": 100}
    if family == "fcos":
        anchors = AnchorGenerator(tuple((s,) for s in STRIDES), ((1.0,),) * len(STRIDES))
        return FCOS(backbone, num_classes, anchor_generator=anchors, **common)
    if family == "retinanet":
        sizes = tuple((2 * s, int(2 * s * 2 ** (1 / 3)), int(2 * s * 2 ** (2 / 3))) for s in STRIDES)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(STRIDES))
        head = RetinaNetHead(channels, anchors.num_anchors_per_location()[0], num_classes,
                             norm_layer=partial(nn.GroupNorm, 32))
        head.regression_head._loss_type = "giou"  # as torchvision's retinanet_resnet50_fpn_v2 sets it
        return RetinaNet(backbone, num_classes, anchor_generator=anchors, head=head, **common)
    raise ValueError(f"unknown family {family!r}; use one of {FAMILIES}")


@dataclass
class Recipe:
    """The one training recipe of the study."""

    image_size: int = 128
    train_images: int = 512
    val_images: int = 100
    iterations: int = 1500
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    channels: int = 32
    max_objects: int = 6


def _samples(dataset: SyntheticShapes) -> list[tuple[Tensor, dict]]:
    """Rendered once: (float (3, H, W) image, plain-tensor target) pairs."""
    samples = []
    for i in range(len(dataset)):
        image, target = dataset[i]
        samples.append((image.as_subclass(Tensor), {"boxes": target["boxes"].as_subclass(Tensor),
                                                   "labels": target["labels"], "image_id": target["image_id"]}))
    return samples


def train_and_evaluate(family: str, assignment: str, seed: int, recipe: Recipe,
                       train: list[tuple[Tensor, dict]] | None = None, val: SyntheticShapes | None = None,
                       ) -> dict[str, float]:
    """Train one model from scratch with `recipe` and return its val metrics (AP, AP50, ...) and `seconds`."""
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"unknown assignment {assignment!r}; use one of {list(ASSIGNMENTS)}")
    kwargs = {"image_size": recipe.image_size, "max_objects": recipe.max_objects}
    if train is None:
        train = _samples(SyntheticShapes(recipe.train_images, split="train", **kwargs))
    if val is None:
        val = SyntheticShapes(recipe.val_images, split="val", **kwargs)
    torch.manual_seed(seed)
    model = build_model(family, val.num_classes, recipe.image_size, recipe.channels)
    options = ASSIGNMENTS[assignment]
    if options is not None:
        use_combined_iou_assignment(model, **options)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)

    def lr_factor(step: int) -> float:
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - recipe.warmup) / max(1, recipe.iterations - recipe.warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    order = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    batches: list[int] = []
    for _ in range(recipe.iterations):
        if len(batches) < recipe.batch_size:
            batches += torch.randperm(len(train), generator=order).tolist()
        picked, batches = batches[:recipe.batch_size], batches[recipe.batch_size:]
        images = [train[i][0] for i in picked]
        targets = [{"boxes": train[i][1]["boxes"], "labels": train[i][1]["labels"]} for i in picked]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{family}/{assignment}/seed {seed}: non-finite loss {losses}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        schedule.step()
    model.eval()
    loader = [list(zip(*_samples_batch)) for _samples_batch in _chunks(_samples(val), recipe.batch_size)]
    metrics = evaluate_detections(model, loader, evaluator_for(val)).evaluate()
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def format_results(results: dict[str, dict[str, list[float]]], seeds: Sequence[int]) -> str:
    """Markdown table: family, assignment, mean AP, per-seed AP (AP in %, COCO AP@[.5:.95])."""
    lines = ["| model | assignment | mean AP | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|---:|" + "---:|" * len(seeds)]
    for key, runs in results.items():
        family, assignment = key.split("/")
        per_seed = " | ".join(f"{100 * ap:.1f}" for ap in runs["AP"])
        lines.append(f"| {family} | {assignment} | {100 * statistics.mean(runs['AP']):.1f} | {per_seed} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynamic_atss.integrations.torchvision_benchmark",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--assignments", nargs="+", choices=list(ASSIGNMENTS), default=list(ASSIGNMENTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=Recipe.iterations)
    parser.add_argument("--train-images", type=int, default=Recipe.train_images)
    parser.add_argument("--val-images", type=int, default=Recipe.val_images)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write every run's metrics here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = Recipe(iterations=args.iterations, train_images=args.train_images, val_images=args.val_images)
    kwargs = {"image_size": recipe.image_size, "max_objects": recipe.max_objects}
    train = _samples(SyntheticShapes(recipe.train_images, split="train", **kwargs))
    val = SyntheticShapes(recipe.val_images, split="val", **kwargs)
    print(f"recipe {asdict(recipe)}; torch {torch.__version__}, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}", flush=True)
    results: dict[str, dict[str, list[float]]] = {}
    for family in args.families:
        for assignment in args.assignments:
            runs = results.setdefault(f"{family}/{assignment}", {"AP": [], "AP50": [], "seconds": []})
            for seed in args.seeds:
                metrics = train_and_evaluate(family, assignment, seed, recipe, train, val)
                for name in runs:
                    runs[name].append(metrics[name])
                print(f"{family:9s} {assignment:11s} seed {seed}: AP {100 * metrics['AP']:.1f} "
                      f"AP50 {100 * metrics['AP50']:.1f} ({metrics['seconds']:.0f} s)", flush=True)
    print(format_results(results, args.seeds))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"recipe": asdict(recipe), "seeds": args.seeds, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
