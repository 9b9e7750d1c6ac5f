"""`dynamic-atss convert`: convert an mmdetection checkpoint (ATSS, VFNet, ...: any head family with a registered mapping) into a dynamic-atss
model folder, and optionally push it.

    dynamic-atss convert atss_r50_fpn_1x_coco_20200209-985f7bd0.pth --out out/atss_r50_1x_mmdet
    dynamic-atss convert atss_r101_fpn_1x_coco.pth --out out/atss_r101 --push org/atss-r101-1x-coco \\
        --metrics '{"dataset": "coco", "split": "val2017", "AP": ...}'

    dynamic-atss convert atss_r50_fpn_1x_coco_20200209-985f7bd0.pth --tag atss_r50.mmdet_coco_1x --out DIR

`--tag` is the manual route of `dynamic_atss.create(TAG, pretrained=True)` (for a machine that cannot download):
the file's SHA-256 must start with the tag's published prefix, and the folder gets the tag's published metrics
and description, as the automatic conversion writes them.

The checkpoint is read with torch.load(weights_only=True) (or as .safetensors); nothing else is unpickled.
The model keeps mmdetection's conventions (ATSS: anchor offset 0, no ReLU before P7, score cls x centerness) and
the plain detector's training settings (anchor IoUs only); see dynamic_atss/convert/mmdet.py (and
mmdet_<family>.py) for the mapping and the differences.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..hub import push_model_dir
from ..registry import get_pretrained_cfg
from .mmdet import convert_mmdet
from ..files import sha256_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dynamic-atss convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="mmdetection checkpoint (.pth) or .safetensors state dict")
    parser.add_argument("--out", required=True, type=Path, help="output folder (config.json, model.safetensors, README.md)")
    parser.add_argument("--push", metavar="ORG/NAME", default=None, help="also push the folder to this Hub repo")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--backbone", default=None, help="expected timm backbone (checked; inferred by default)")
    parser.add_argument("--dcn", default=None, action=argparse.BooleanOptionalAction, help="expected DCN (checked)")
    parser.add_argument("--class-names", type=Path, default=None,
                        help="text file, one class name per line (default: the checkpoint's meta, if any)")
    parser.add_argument("--tag", default=None, metavar="MODEL.TAG",
                        help="a URL tag of the model index (atss_r50.mmdet_coco_1x): check the file's hash, use its metrics")
    parser.add_argument("--metrics", default=None, help='JSON, e.g. \'{"dataset": "coco", "split": "val2017", "AP": 39.4}\'')
    parser.add_argument("--license", default="apache-2.0", help="license in the model card (mmdetection: apache-2.0)")
    parser.add_argument("--token", default=None)
    parser.add_argument("--endpoint", default=None)
    args = parser.parse_args(argv)

    class_names = None
    if args.class_names is not None:
        class_names = [line.strip() for line in args.class_names.read_text().splitlines() if line.strip()]
    metrics = json.loads(args.metrics) if args.metrics else None
    description, family = None, None
    if args.tag:
        cfg = get_pretrained_cfg(args.tag)
        if not cfg.url or not cfg.hash_prefix:
            raise SystemExit(f"--tag {args.tag}: not a URL entry of the model index (no url / hash_prefix)")
        digest = sha256_file(args.checkpoint)
        if not digest.startswith(cfg.hash_prefix):
            raise SystemExit(f"{args.checkpoint}: SHA-256 {digest[:16]}... does not start with {cfg.hash_prefix}, the "
                             f"published hash of {cfg.url}: another or an incomplete file")
        metrics = metrics or dict(cfg.metrics) or None
        description, family = f"Converted with dynamic-atss from {cfg.url}: {cfg.description}", cfg.family
    model = convert_mmdet(args.checkpoint, backbone=args.backbone, dcn=args.dcn, class_names=class_names,
                          expected_family=family)
    config = model.config
    kind = f"`{config.head.kind}`-family"  # the head family the checkpoint holds
    description = description or (
        f"Converted from the mmdetection {kind} checkpoint `{args.checkpoint.name}` with `dynamic-atss convert`: "
        f"plain {kind} weights with mmdetection's conventions. Fine-tune it with the combined IoUs by setting "
        "`assigner.pred_weight` (see the dynamic-atss docs).")
    recipe = {"name": f"mmdetection:{args.checkpoint.stem}", "source": f"mmdetection {kind} checkpoint",
              "checkpoint": args.checkpoint.name}
    model.save_pretrained(args.out, recipe=recipe, metrics=metrics, repo_id=args.push, license=args.license,
                          tags=["mmdetection", "converted"], description=description)
    print(f"converted {args.checkpoint} -> {args.out}: backbone {config.backbone.name}"
          f"{' + DCN' if config.backbone.dcn else ''}, {config.num_classes} classes"
          f"{'' if config.class_names else ' (unnamed)'}")
    if args.push:
        info = push_model_dir(args.out, args.push, private=args.private or None, token=args.token,
                              endpoint=args.endpoint,
                              commit_message=f"Convert mmdetection checkpoint {args.checkpoint.name}")
        print(f"pushed to {args.push}: commit {info.oid}\n  {info.commit_url}")
    return 0
