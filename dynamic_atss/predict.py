"""`python -m dynamic_atss predict IMAGES... --model NAME_OR_PATH --out DIR`: PNGs with boxes + JSON.

IMAGES are files, folders (their images, not recursing) or glob patterns (`"photos/**/*.jpg"`, quoted so the
program expands them). Files that are not images (by extension) in a folder or glob are skipped, with one
warning; a file that cannot be read is reported at the end without stopping the others, and the exit status
is then 1. Drawings keep the inputs' folder structure below DIR, so two inputs with the same file name never
overwrite each other; `detections.json` names the drawing of each image. An --out that would write over one
of the inputs (`predict photos/ --out photos/` with PNG inputs) is refused before anything is written.

`--model` is anything `dynamic_atss.create()` loads with weights: a tag (`atss_r50.mmdet_coco_1x`), a model
name with weights, `hf-hub:org/name`, or a saved model folder. A model name without weights (`r50`) is refused
(its detections would be those of random weights) unless `--allow-random-weights` is given.

The network runs as `dynamic_atss.optimize_for_inference(model)` (BatchNorms fused into the convolutions,
channels_last; `--dtype bfloat16` for the bfloat16 snapshot, fast on CPUs with native bfloat16); `--plain` runs the
model as loaded instead.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import warnings
from pathlib import Path

import torch

from .data.coco import load_image
from .errors import UserInputError
from .factory import create
from .inference.optimize import optimize_for_inference
from .registry import NoPretrainedWeightsError
from .visualize import draw_detections, save_png


def load_model(name_or_path: str, device: str = "cpu", allow_random_weights: bool = False) -> torch.nn.Module:
    """A model with weights through `create()`; a name without weights raises `NoPretrainedWeightsError`
    (saying which weights exist) unless `allow_random_weights`."""
    try:
        model = create(name_or_path, pretrained=True)
    except NoPretrainedWeightsError as error:
        if not allow_random_weights:
            raise
        warnings.warn(f"{str(error).splitlines()[0]} -- drawing the detections of random weights "
                      "(--allow-random-weights)", UserWarning, stacklevel=2)
        model = create(name_or_path, pretrained=False)
    return model.to(device).eval()


def read_image(path: str | Path) -> torch.Tensor:
    """An image file -> (3, H, W) float in [0, 1]; a clear error naming the file if it cannot be read."""
    return load_image(str(path), "predict").as_subclass(torch.Tensor).float() / 255


def _image_extensions() -> set[str]:
    from PIL import Image  # noqa: PLC0415

    return {ext.lower() for ext in Image.registered_extensions()}


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[Path], list[tuple[str, str]]]:
    """Files, folders and globs -> (image files, skipped non-images, [(input, problem)] for inputs that match nothing).

    A file named explicitly is always tried (its extension is not checked); folders and globs keep images only.
    """
    extensions = _image_extensions()
    images: list[Path] = []
    skipped: list[Path] = []
    missing: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_file():
            images.append(path)
            continue
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file())
            what = "folder"
        elif glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(os.path.expanduser(item), recursive=True) if os.path.isfile(p))
            what = "pattern"
        else:
            missing.append((item, "no such file or folder"))
            continue
        kept = [p for p in found if p.suffix.lower() in extensions]
        skipped += [p for p in found if p.suffix.lower() not in extensions]
        if not kept:
            missing.append((item, f"the {what} holds no image files"))
        images += kept
    unique: list[Path] = []
    seen: set[Path] = set()
    for image in images:  # the same file reached twice (a file and its folder) is predicted once
        if image.resolve() not in seen:
            seen.add(image.resolve())
            unique.append(image)
    return unique, skipped, missing


def drawing_names(paths: list[Path]) -> list[Path]:
    """Relative output paths (.png) that never collide: the inputs' folders below their common folder."""
    resolved = [p.resolve() for p in paths]
    try:
        root = Path(os.path.commonpath([p.parent for p in resolved])) if resolved else Path()
    except ValueError:  # different drives (Windows): no common folder
        root = None
    names: list[Path] = []
    used: set[str] = set()
    for path in resolved:
        relative = path.relative_to(root) if root is not None else Path(path.name)
        candidate = relative.with_suffix(".png")
        if str(candidate).lower() in used:  # photo.jpg and photo.png in one folder
            candidate = relative.with_name(relative.name + ".png")
        counter = 1
        while str(candidate).lower() in used:
            candidate = relative.with_name(f"{relative.stem}-{counter}.png")
            counter += 1
        used.add(str(candidate).lower())
        names.append(candidate)
    return names


def check_no_input_overwritten(out: Path, names: list[Path], inputs: list[Path]) -> None:
    """Raise `UserInputError` if a drawing (`out / name`) or `out / detections.json` is one of the input files."""
    inputs_resolved = {path.resolve(): path for path in inputs}
    for target in [out / name for name in names] + [out / "detections.json"]:
        clash = inputs_resolved.get(target.resolve())
        if clash is not None:
            raise UserInputError(
                f"--out {out}: writing {target} would overwrite the input image {clash}; choose another --out folder"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynamic_atss predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--model", required=True,
                        help="a tag with weights (atss_r50.mmdet_coco_1x), hf-hub:org/name or a model folder")
    parser.add_argument("--out", default="predictions", help="output folder")
    parser.add_argument("--threshold", type=float, default=0.3, help="score threshold for drawing and JSON")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="accept a model name without weights (random detections: for testing the pipeline)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="dtype of the network in the optimize_for_inference snapshot")
    parser.add_argument("--plain", action="store_true",
                        help="run the model as loaded, without optimize_for_inference (float32 only)")
    args = parser.parse_args(argv)
    if args.plain and args.dtype != "float32":
        parser.error("--dtype bfloat16 needs the optimize_for_inference snapshot: drop --plain")

    paths, skipped, failures = expand_inputs(args.images)
    if skipped:
        shown = ", ".join(str(p) for p in skipped[:5]) + (f", ... ({len(skipped)} in all)" if len(skipped) > 5 else "")
        print(f"warning: skipped {len(skipped)} file(s) that are not images: {shown}", file=sys.stderr)
    if not paths:
        for item, problem in failures:
            print(f"error: {item}: {problem}", file=sys.stderr)
        print("error: no images to predict on", file=sys.stderr)
        return 2
    out = Path(args.out)
    names = drawing_names(paths)
    check_no_input_overwritten(out, names, paths)

    try:
        model = load_model(args.model, args.device, args.allow_random_weights)
    except NoPretrainedWeightsError as error:
        print(f"error: --model {args.model}: {error}\n(--allow-random-weights draws the detections of random "
              "weights anyway, to test the pipeline)", file=sys.stderr)
        return 2
    if not args.plain:
        model = optimize_for_inference(model, torch.bfloat16 if args.dtype == "bfloat16" else None)
    class_names = model.config.class_names
    out.mkdir(parents=True, exist_ok=True)
    results = []
    failed: list[tuple[str, str]] = [(item, problem) for item, problem in failures]
    for start in range(0, len(paths), args.batch_size):
        batch = []
        for path, name in zip(paths[start : start + args.batch_size], names[start : start + args.batch_size]):
            try:  # one unreadable file does not stop the others; it is reported at the end
                batch.append((path, name, read_image(path)))
            except (OSError, ValueError) as error:
                failed.append((str(path), str(error)))
        if not batch:
            continue
        with torch.no_grad():
            detections = model([image.to(args.device) for _, _, image in batch])
        for (path, name, image), det in zip(batch, detections):
            det = {k: v.cpu() for k, v in det.items()}
            drawing = out / name
            drawing.parent.mkdir(parents=True, exist_ok=True)
            save_png(draw_detections(image, det, class_names, args.threshold), drawing)
            keep = det["scores"] >= args.threshold
            results.append({
                "image": str(path),
                "drawing": str(drawing),
                "detections": [
                    {"box_xyxy": [round(v, 2) for v in b.tolist()], "score": round(float(s), 4), "label": int(l),
                     "class_name": class_names[int(l)] if class_names else None}
                    for b, s, l in zip(det["boxes"][keep], det["scores"][keep], det["labels"][keep])
                ],
            })
    (out / "detections.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {len(results)} image(s) with boxes and {out / 'detections.json'}")
    if failed:
        print(f"error: {len(failed)} input(s) failed:", file=sys.stderr)
        for item, problem in failed:
            print(f"  {item}: {problem}", file=sys.stderr)
        return 1
    return 0
