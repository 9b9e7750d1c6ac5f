"""`python -m dynamic_atss predict IMAGE... --model NAME_OR_PATH --out DIR`: PNGs with boxes + JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .data.coco import load_image
from .registry import create
from .visualize import draw_detections, save_png


def load_model(name_or_path: str, device: str = "cpu") -> torch.nn.Module:
    """A registry name (`r50.coco_1x`), `hf-hub:org/name`, `local-dir:/path`, or a saved model folder."""
    if Path(name_or_path).is_dir():
        name_or_path = f"local-dir:{name_or_path}"
    return create(name_or_path).to(device).eval()


def read_image(path: str | Path) -> torch.Tensor:
    """An image file -> (3, H, W) float in [0, 1]; a clear error naming the file if it cannot be read."""
    return load_image(str(path), "predict").as_subclass(torch.Tensor).float() / 255


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynamic_atss predict", description=__doc__)
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", required=True, help="registry name with tag, hf-hub:org/name or a model folder")
    parser.add_argument("--out", default="predictions", help="output folder")
    parser.add_argument("--threshold", type=float, default=0.3, help="score threshold for drawing and JSON")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args(argv)

    model = load_model(args.model, args.device)  # BatchNorm folding and channels_last are the default path
    class_names = model.config.class_names
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    paths = [Path(p) for p in args.images]
    images = [read_image(p) for p in paths]  # fail on a bad file before spending time on the model
    for start in range(0, len(images), args.batch_size):
        chunk = images[start : start + args.batch_size]
        with torch.no_grad():
            detections = model([img.to(args.device) for img in chunk])
        for path, image, det in zip(paths[start:], chunk, detections):
            det = {k: v.cpu() for k, v in det.items()}
            save_png(draw_detections(image, det, class_names, args.threshold), out / f"{path.stem}.png")
            keep = det["scores"] >= args.threshold
            results.append({
                "image": str(path),
                "detections": [
                    {"box_xyxy": [round(v, 2) for v in b.tolist()], "score": round(float(s), 4), "label": int(l),
                     "class_name": class_names[int(l)] if class_names else None}
                    for b, s, l in zip(det["boxes"][keep], det["scores"][keep], det["labels"][keep])
                ],
            })
    (out / "detections.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {len(results)} image(s) with boxes and {out / 'detections.json'}")
    return 0
