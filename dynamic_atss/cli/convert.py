"""`dynamic-atss convert`: convert an mmdetection checkpoint (ATSS, VFNet, ...: any head family with a registered mapping) into a dynamic-atss
model folder, and optionally push it.

    dynamic-atss convert atss_r50_fpn_1x_coco_20200209-985f7bd0.pth --out out/atss_r50_1x_mmdet
    dynamic-atss convert atss_r101_fpn_1x_coco.pth --out out/atss_r101 --push_to_hub org/atss-r101-1x-coco \\
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

import json
import sys
from pathlib import Path

from ..errors import UserInputError
from . import CommandParser, run_command


def build_parser() -> CommandParser:
    parser = CommandParser("convert", description=__doc__, aliases={"--push": "--push_to_hub", "--repo": "--push_to_hub",
                                                                 "--no_dcn": "--dcn=false"})
    parser.add_argument("checkpoint", type=Path, help="mmdetection checkpoint (.pth) or .safetensors state dict")
    parser.add_argument("--out", required=True, type=Path, help="output folder (config.json, model.safetensors, README.md)")
    parser.add_argument("--push_to_hub", metavar="ORG/NAME", default=None, help="also push the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private (with --push_to_hub)")
    parser.add_argument("--backbone", default=None, help="expected timm backbone (checked; inferred by default)")
    parser.add_argument("--dcn", default=None, choices=("true", "false"),
                        help="expected DCN: true or false (checked; inferred by default)")
    parser.add_argument("--class_names", type=Path, default=None,
                        help="text file, one class name per line (default: the checkpoint's meta, if any)")
    parser.add_argument("--tag", default=None, metavar="MODEL.TAG",
                        help="a URL tag of the model index (atss_r50.mmdet_coco_1x): check the file's hash, use its metrics")
    parser.add_argument("--metrics", default=None, help='JSON, e.g. \'{"dataset": "coco", "split": "val2017", "AP": 39.4}\'')
    parser.add_argument("--license", default="apache-2.0", help="license in the model card (mmdetection: apache-2.0)")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in token / HF_TOKEN)")
    parser.add_argument("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    return parser


def read_class_names(path: Path) -> list[str]:
    """One class name per non-empty line of `path`; `UserInputError` naming --class_names if it cannot be read."""
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as error:
        raise UserInputError(f"--class_names {path}: cannot read it ({error.strerror or error})") from None


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not args.checkpoint.is_file():
        raise UserInputError(f"{args.checkpoint}: no such checkpoint file; give the mmdetection .pth (or "
                             ".safetensors) to convert")
    try:
        metrics = json.loads(args.metrics) if args.metrics else None
    except json.JSONDecodeError as error:
        raise UserInputError(f"--metrics: not JSON ({error})") from None
    class_names = read_class_names(args.class_names) if args.class_names is not None else None

    from ..convert.mmdet import MMDetConversionError, convert_mmdet  # noqa: PLC0415  (after parsing: --help stays fast)
    from ..files import sha256_file  # noqa: PLC0415
    from ..hub import push_model_dir  # noqa: PLC0415
    from ..registry import get_pretrained_cfg  # noqa: PLC0415

    description, family = None, None
    if args.tag:
        cfg = get_pretrained_cfg(args.tag)
        if not cfg.url or not cfg.hash_prefix:
            raise UserInputError(f"--tag {args.tag}: not a URL entry of the model index (no url / hash_prefix)")
        digest = sha256_file(args.checkpoint)
        if not digest.startswith(cfg.hash_prefix):
            raise UserInputError(f"{args.checkpoint}: SHA-256 {digest[:16]}... does not start with {cfg.hash_prefix}, "
                                 f"the published hash of {cfg.url}: another or an incomplete file")
        metrics = metrics or dict(cfg.metrics) or None
        description, family = f"Converted with dynamic-atss from {cfg.url}: {cfg.description}", cfg.family
    dcn = None if args.dcn is None else args.dcn == "true"
    try:
        model = convert_mmdet(args.checkpoint, backbone=args.backbone, dcn=dcn, class_names=class_names,
                              expected_family=family)
    except MMDetConversionError as error:  # the file is not a checkpoint this converter knows
        raise UserInputError(f"{args.checkpoint}: {error}") from None
    config = model.config
    kind = f"`{config.head.kind}`-family"  # the head family the checkpoint holds
    description = description or (
        f"Converted from the mmdetection {kind} checkpoint `{args.checkpoint.name}` with `dynamic-atss convert`: "
        f"plain {kind} weights with mmdetection's conventions. Fine-tune it with the combined IoUs by setting "
        "`assigner.pred_weight` (see the dynamic-atss docs).")
    recipe = {"name": f"mmdetection:{args.checkpoint.stem}", "source": f"mmdetection {kind} checkpoint",
              "checkpoint": args.checkpoint.name}
    model.save_pretrained(args.out, recipe=recipe, metrics=metrics, repo_id=args.push_to_hub, license=args.license,
                          tags=["mmdetection", "converted"], description=description)
    print(f"converted {args.checkpoint} -> {args.out}: backbone {config.backbone.name}"
          f"{' + DCN' if config.backbone.dcn else ''}, {config.num_classes} classes"
          f"{'' if config.class_names else ' (unnamed)'}")
    if args.push_to_hub:
        info = push_model_dir(args.out, args.push_to_hub, private=args.private or None, token=args.token,
                              endpoint=args.endpoint,
                              commit_message=f"Convert mmdetection checkpoint {args.checkpoint.name}")
        print(f"pushed to {args.push_to_hub}: commit {info.oid}\n  {info.commit_url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`dynamic-atss convert ...` under the command-line error rule (see `dynamic_atss.cli`)."""
    return run_command("convert", run, sys.argv[1:] if argv is None else argv)

