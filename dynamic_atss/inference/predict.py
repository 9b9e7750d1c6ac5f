"""Detection on image files: inputs expanded, drawings named, outputs checked, detections drawn and written.

The command is `dynamic-atss predict` (`dynamic_atss/cli/predict.py`); this module holds what it does:

* `expand_inputs`: files, folders (their images, not recursing) and glob patterns -> image files;
* `drawing_names`: one PNG name per input below the output folder, keeping the inputs' folder structure so two
  inputs with the same file name never collide;
* `check_outputs`: nothing this run writes may replace an input or a file it did not create in this run;
* `predict_files`: batches through the model, draws boxes coloured by class, returns the detections.

Images are read with their EXIF orientation applied (`dynamic_atss.data.transforms.load_image`), so boxes are in the
frame every image viewer shows.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data.transforms import load_image
from ..errors import UserInputError
from ..visualize import draw_detections, save_png

RESULTS_NAME = "detections.json"


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


def check_outputs(out: Path, targets: Sequence[Path], inputs: Sequence[Path], overwrite: bool = False) -> None:
    """Refuse (`UserInputError`) an `out` that is an existing file, a target that is one of the inputs, and, unless
    `overwrite`, a target that exists already (this run did not create it: a user's file, or an earlier run's)."""
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is an existing file, not a folder; give a folder for the drawings and "
                             "the detections")
    inputs_resolved = {path.resolve(): path for path in inputs}
    for target in targets:
        clash = inputs_resolved.get(target.resolve())
        if clash is not None:
            raise UserInputError(
                f"--out {out}: writing {target} would overwrite the input image {clash}; choose another --out folder"
            )
    existing = [target for target in targets if target.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise UserInputError(f"--out {out}: {existing[0]}{more} exists already and this run would replace it; "
                             "choose a new --out folder, or pass --overwrite to replace the files of an earlier run")


def image_ids_from_names(paths: Sequence[Path], annotations: str | None = None) -> list[int]:
    """COCO image ids of `paths`: from an annotation file's `images` (matched by file name) when given, else the
    number a COCO file name is (`000000397133.jpg` -> 397133); `UserInputError` naming a file that has none."""
    if annotations is not None:
        try:
            document = json.loads(Path(annotations).read_text())
            by_name = {Path(image["file_name"]).name: int(image["id"]) for image in document["images"]}
        except FileNotFoundError:
            raise UserInputError(f"--annotations {annotations}: no such file") from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserInputError(f"--annotations {annotations}: not a COCO annotation file with `images` "
                                 f"({type(error).__name__}: {error})") from None
        ids = []
        for path in paths:
            if path.name not in by_name:
                raise UserInputError(f"{path}: no image of that file name in --annotations {annotations}")
            ids.append(by_name[path.name])
        return ids
    ids = []
    for path in paths:
        if not path.stem.isdigit():
            raise UserInputError(f"{path}: --format coco needs an image id; the file name is not a number (as COCO's "
                                 "are): pass --annotations FILE.json to take the ids from its `images`")
        ids.append(int(path.stem))
    return ids


def coco_results(detections: Sequence[dict[str, Any]], image_ids: Sequence[int],
                 label_to_cat_id: Sequence[int] | None) -> list[dict[str, Any]]:
    """COCO results-format rows (`image_id`, `category_id`, `bbox` [x, y, w, h], `score`) of predicted detections
    (`box_xyxy`, `score`, `label` dicts); category ids are `label_to_cat_id[label]`, else `label + 1`."""
    rows = []
    for image_id, found in zip(image_ids, detections):
        for det in found:
            x0, y0, x1, y1 = det["box_xyxy"]
            label = det["label"]
            category = label_to_cat_id[label] if label_to_cat_id else label + 1
            rows.append({"image_id": image_id, "category_id": int(category),
                         "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                         "score": det["score"]})
    return rows


def predict_files(model: torch.nn.Module, paths: Sequence[Path], drawings: Sequence[Path], threshold: float,
                  batch_size: int, device: str, max_detections: int | None = None,
                  progress: Callable[[int], Any] | None = None) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Detect on `paths` in batches, draw each image's boxes to its `drawings` path (PNG) and return
    `(results, failures)`: one dict per image read (`image`, `drawing`, `detections`: score >= `threshold`, best
    first, at most `max_detections`), and `(file, problem)` for files that could not be read (the others go on).
    `progress(n)` is called after each batch with the number of files done."""
    class_names = getattr(getattr(model, "config", None), "class_names", None)
    results: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    for start in range(0, len(paths), batch_size):
        batch = []
        for path, drawing in zip(paths[start : start + batch_size], drawings[start : start + batch_size]):
            try:  # one unreadable file does not stop the others; it is reported at the end
                batch.append((path, drawing, read_image(path)))
            except (OSError, ValueError) as error:
                failed.append((str(path), str(error)))
        if batch:
            with torch.no_grad():
                outputs = model([image.to(device) for _, _, image in batch])
            for (path, drawing, image), det in zip(batch, outputs):
                det = keep_detections({k: v.cpu() for k, v in det.items()}, threshold, max_detections)
                save_png(draw_detections(image, det, class_names, 0.0), drawing)
                results.append({"image": str(path), "drawing": str(drawing), "detections": [
                    {"box_xyxy": [round(v, 2) for v in b.tolist()], "score": round(float(s), 4), "label": int(l),
                     "class_name": class_names[int(l)] if class_names else None}
                    for b, s, l in zip(det["boxes"], det["scores"], det["labels"])
                ]})
        if progress is not None:
            progress(len(paths[start : start + batch_size]))
    return results, failed


def keep_detections(det: dict[str, torch.Tensor], threshold: float, max_detections: int | None
                    ) -> dict[str, torch.Tensor]:
    """One image's detections with score >= `threshold`, best first, the first `max_detections` of them."""
    order = torch.argsort(det["scores"], descending=True)
    order = order[det["scores"][order] >= threshold][:max_detections]
    return {key: value[order] for key, value in det.items()}
