"""`dynamic-atss predict IMAGES... --model NAME_OR_PATH --out DIR`: PNGs with boxes coloured by class + JSON.

IMAGES are files, folders (their images, not recursing) or glob patterns (`"photos/**/*.jpg"`, quoted so the
program expands them). Files that are not images (by extension) in a folder or glob are skipped, with one
warning; a file that cannot be read is reported at the end without stopping the others, and the exit status
is then 1. Images are read with their EXIF orientation applied (boxes are in the frame viewers show).

Drawings keep the inputs' folder structure below DIR, so two inputs with the same file name never overwrite
each other; `detections.json` names the drawing of each image. Nothing is written over a file this run did not
create: an --out that would replace an input is refused, and one that would replace an earlier run's files is
refused unless --overwrite.

`--format coco` also writes `coco_results.json` in the COCO results format (image_id, category_id, bbox as
x, y, w, h, score): image ids are taken from --annotations (matched by file name) when given, else from the file
names (COCO's `000000397133.jpg` is image 397133); category ids are the model's (label + 1 when it has none).

`--model` is anything `dynamic_atss.create()` loads with weights: a tag (`atss_r50.mmdet_coco_1x`), a model
name with weights, `hf-hub:org/name`, or a saved model folder. A model name without weights (`r50`) is refused
(its detections would be those of random weights) unless `--random_weights` is given.

The network runs as `dynamic_atss.optimize_for_inference(model)` (BatchNorms fused into the convolutions,
channels_last; `--precision bfloat16` for the bfloat16 snapshot, fast on CPUs with native bfloat16); `--plain`
runs the model as loaded instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import UserInputError
from . import CommandParser, check_device, load_model_arg, positive_int, run_command, score_threshold

OLD_NAMES = {"--allow_random_weights": "--random_weights", "--dtype": "--precision", "--batch": "--batch_size"}


def build_parser() -> CommandParser:
    parser = CommandParser("predict", description=__doc__, aliases=OLD_NAMES)
    parser.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--model", required=True,
                        help="a tag with weights (atss_r50.mmdet_coco_1x), hf-hub:org/name or a model folder")
    parser.add_argument("--out", default="predictions", help="output folder (drawings + detections.json)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files an earlier run wrote into --out (inputs are never replaced)")
    parser.add_argument("--threshold", type=score_threshold, default=0.3,
                        help="score threshold in [0, 1] for the drawings and the JSON")
    parser.add_argument("--max_detections", type=positive_int, default=100,
                        help="at most this many detections per image (the best-scoring ones)")
    parser.add_argument("--format", choices=("json", "coco"), default="json",
                        help="json: detections.json only; coco: also coco_results.json (COCO results format)")
    parser.add_argument("--annotations", default=None,
                        help="COCO annotation file whose `images` give the image ids of --format coco "
                             "(default: the ids are the file names' numbers)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")
    parser.add_argument("--batch_size", type=positive_int, default=2, help="images per forward pass")
    parser.add_argument("--random_weights", action="store_true",
                        help="accept a model name without weights (random detections: for testing the pipeline)")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="dtype of the network in the optimize_for_inference snapshot")
    parser.add_argument("--plain", action="store_true",
                        help="run the model as loaded, without optimize_for_inference (float32 only)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def run(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.plain and args.precision != "float32":
        parser.error("--precision bfloat16 needs the optimize_for_inference snapshot: drop --plain")
    if args.annotations and args.format != "coco":
        parser.error("--annotations gives the image ids of --format coco: add --format coco")

    import torch  # noqa: PLC0415  (after parsing: --help stays fast)
    from tqdm.auto import tqdm  # noqa: PLC0415

    from ..inference.optimize import optimize_for_inference  # noqa: PLC0415
    from ..inference.predict import (  # noqa: PLC0415
        RESULTS_NAME, check_outputs, coco_results, drawing_names, expand_inputs, image_ids_from_names, predict_files,
    )

    device = check_device(args.device)
    paths, skipped, failures = expand_inputs(args.images)
    if skipped:
        shown = ", ".join(str(p) for p in skipped[:5]) + (f", ... ({len(skipped)} in all)" if len(skipped) > 5 else "")
        print(f"warning: skipped {len(skipped)} file(s) that are not images: {shown}", file=sys.stderr)
    if not paths:  # (inputs that fail next to readable ones are reported at the end, with exit status 1)
        shown = "; ".join(f"{item}: {problem}" for item, problem in failures[:3])
        more = f"; ... ({len(failures)} inputs in all)" if len(failures) > 3 else ""
        raise UserInputError(f"{shown}{more}; give image files, folders of images or glob patterns")
    out = Path(args.out)
    drawings = [out / name for name in drawing_names(paths)]
    files = [out / RESULTS_NAME] + ([out / "coco_results.json"] if args.format == "coco" else [])
    check_outputs(out, drawings + files, paths, args.overwrite)
    image_ids = image_ids_from_names(paths, args.annotations) if args.format == "coco" else None

    model = load_model_arg(args.model, args.random_weights).to(device)
    if not args.plain:
        model = optimize_for_inference(model, torch.bfloat16 if args.precision == "bfloat16" else None)
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(paths), unit="image", desc="predict", disable=args.no_progress, file=sys.stderr) as bar:
        results, failed = predict_files(model, paths, drawings, args.threshold, args.batch_size, device,
                                        args.max_detections, bar.update)
    (out / RESULTS_NAME).write_text(json.dumps(results, indent=2))
    print(f"wrote {len(results)} image(s) with boxes and {out / RESULTS_NAME}")
    if image_ids is not None:
        by_image = {result["image"]: result["detections"] for result in results}
        kept = [(image_id, by_image[str(path)]) for image_id, path in zip(image_ids, paths) if str(path) in by_image]
        label_to_cat_id = getattr(model.config, "label_to_cat_id", None)
        rows = coco_results([found for _, found in kept], [image_id for image_id, _ in kept], label_to_cat_id)
        (out / "coco_results.json").write_text(json.dumps(rows))
        print(f"wrote {out / 'coco_results.json'} ({len(rows)} detections, COCO results format)")
    failed = failures + failed
    if failed:
        print(f"error: {len(failed)} input(s) failed:", file=sys.stderr)
        for item, problem in failed:
            print(f"  {item}: {problem}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """`dynamic-atss predict ...` under the command-line error rule (see `dynamic_atss.cli`)."""
    return run_command("predict", run, sys.argv[1:] if argv is None else argv)

