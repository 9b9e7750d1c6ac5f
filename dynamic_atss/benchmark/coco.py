"""COCO box AP of a model: val2017 metrics (the paper's columns) or a test-dev2017 submission zip.

    dynamic-atss benchmark coco --model atss_r50.mmdet_coco_1x --data /data/coco --split val2017
    accelerate launch -m dynamic_atss benchmark coco --model local-dir:runs/r50 --data /data/coco --split test-dev2017

COCO folder layout (the official one):

    ROOT/val2017/*.jpg    + ROOT/annotations/instances_val2017.json         (--split val2017)
    ROOT/test2017/*.jpg   + ROOT/annotations/image_info_test-dev2017.json   (--split test-dev2017)
    ROOT/<split>/         + ROOT/annotations/instances_<split>.json         (any other split name)

``--data`` may instead be a Hugging Face dataset (a ``save_to_disk`` folder, Parquet files, or a Hub name when
online), read by `dynamic_atss.data.HFDetection` with ``--split`` as its split.

On an annotated split the script prints AP, AP50, AP75, APs, APm, APl (and COCOeval's summary) and writes
``OUT/metrics_<split>.json`` plus the detections ``OUT/detections_<split>_<name>_results.json``. On test-dev it
writes ``OUT/detections_test-dev2017_<name>_results.json`` and the zip to upload to the evaluation server.
Under ``accelerate launch`` every process evaluates its shard of the images; the evaluator gathers them.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .peers import BenchmarkInputError


class BenchmarkFileNotFoundError(BenchmarkInputError, FileNotFoundError):
    """A file or folder that `--data` / `--split` need is missing: the message names it."""

__all__ = ["COCO_SPLITS", "BenchmarkInputError", "load_model", "resolve_coco_split", "run"]

#: split name -> (image folder, annotation file) inside a COCO root
COCO_SPLITS: dict[str, tuple[str, str]] = {
    "train2017": ("train2017", "instances_train2017.json"),
    "val2017": ("val2017", "instances_val2017.json"),
    "test-dev2017": ("test2017", "image_info_test-dev2017.json"),
    "test2017": ("test2017", "image_info_test2017.json"),
}
SUBMISSION_SPLITS = ("test-dev2017", "test2017")
_HF_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")


# ----------------------------------------------------------------------------------------------- data
def _available_splits(root: Path) -> list[str]:
    found = []
    for path in sorted(glob.glob(str(root / "annotations" / "*.json"))):
        name = os.path.basename(path)
        match = re.fullmatch(r"instances_(.+)\.json", name)
        if match:
            found.append(match.group(1))
        elif name.startswith("image_info_") and name.endswith(".json"):
            found.append(name[len("image_info_"): -len(".json")])
    return found


def resolve_coco_split(root: str | os.PathLike, split: str) -> tuple[str, str]:
    """(image folder, annotation file) of `split` in the COCO folder `root`; errors name what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkFileNotFoundError(f"COCO root folder not found: {root}")
    image_name, ann_name = COCO_SPLITS.get(split, (split, f"instances_{split}.json"))
    image_dir, ann_file = root / image_name, root / "annotations" / ann_name
    missing = [str(p) + ("/" if p is image_dir else "") for p in (image_dir, ann_file) if not p.exists()]
    if missing:
        available = _available_splits(root)
        hint = f"; splits with an annotation file here: {available}" if available else (
            "; there is no annotations/*.json at all: is this a COCO root (ROOT/annotations, ROOT/val2017, ...)?"
        )
        known = "" if split in COCO_SPLITS else f" ('{split}' is not a standard COCO split: {sorted(COCO_SPLITS)})"
        raise BenchmarkFileNotFoundError(
            f"split '{split}' of COCO root {root} needs {image_dir}/ and {ann_file}; missing: "
            f"{', '.join(missing)}{known}{hint}"
        )
    return str(image_dir), str(ann_file)


def detect_data_format(data: str) -> str:
    """'coco' (a folder with annotations/) or 'hf' (a datasets folder, Parquet, or a Hub name)."""
    path = Path(data)
    if path.is_dir():
        if (path / "annotations").is_dir():
            return "coco"
        if any((path / m).is_file() for m in _HF_MARKERS) or glob.glob(str(path / "**" / "*.parquet"), recursive=True):
            return "hf"
        return "coco"  # let the COCO resolver say what is missing
    if path.is_file():
        if path.suffix == ".parquet":
            return "hf"
        raise BenchmarkInputError(f"--data {data} is a file; give a COCO root folder or a Hugging Face dataset")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", data) and not data.startswith((".", "/")):
        return "hf"  # a Hub dataset name
    raise BenchmarkFileNotFoundError(f"--data: no such folder: {data}")


def evaluation_dataset(data: str, split: str, data_format: str = "auto"):
    """The evaluation dataset of `--data` / `--split` (no transforms: the model resizes), made by the one dataset
    factory (`dynamic_atss.data.build_dataset`), and a description for logs."""
    from ..data import build_dataset  # noqa: PLC0415

    data_format = detect_data_format(data) if data_format == "auto" else data_format
    if data_format == "coco":
        image_dir, ann_file = resolve_coco_split(data, split)
        return build_dataset("coco", image_dir=image_dir, ann_file=ann_file), f"COCO {split} ({ann_file})"
    try:
        return build_dataset("hf", source=data, split=split), f"Hugging Face {data} [{split}]"
    except KeyError as error:  # unknown split of a DatasetDict: KeyError's repr would quote the message
        raise BenchmarkInputError(f"--data {data}: {error.args[0] if error.args else error}") from error


# ----------------------------------------------------------------------------------------------- model
def load_model(spec: str, random_weights: bool = False, num_classes: int | None = None,
               model_args: dict[str, Any] | None = None) -> tuple[nn.Module, str]:
    """A model and a name for file names, through `dynamic_atss.create()`: a tag or model name with weights,
    ``hf-hub:org/name``, ``local-dir:PATH`` or a folder (``config.json`` + ``model.safetensors``); with
    `random_weights`, a registered name built with random weights (`model_args` / `num_classes` configure it)."""
    from ..factory import create  # noqa: PLC0415
    from ..registry import FamilyNotAvailableError, NoPretrainedWeightsError, split_name  # noqa: PLC0415

    if random_weights:
        canonical, _ = split_name(spec)  # raises for unknown names, with the closest ones
        kwargs = dict(model_args or {})
        if num_classes is not None:
            kwargs.setdefault("num_classes", num_classes)
        return create(canonical, pretrained=False, **kwargs), canonical + "-random"
    if model_args:
        raise BenchmarkInputError("--model_args only applies with --random_weights (a trained model has its own config)")
    try:
        model = create(spec, pretrained=True)
    except (NoPretrainedWeightsError, FamilyNotAvailableError) as error:  # say so without a traceback
        raise BenchmarkInputError(f"--model {spec}: {error}") from error
    info = getattr(model, "pretrained_info", None) or {}
    if info.get("tag"):
        return model, info["tag"]
    if info.get("source") == "hf-hub":
        return model, info["repo_id"].split("/")[-1]
    if info.get("source") == "local-dir":
        return model, Path(info["path"]).name
    return model, spec


# ----------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate (or write a submission) as described by `args`; returns metrics / written files (main process)."""
    from accelerate import Accelerator  # noqa: PLC0415
    from tqdm.auto import tqdm  # noqa: PLC0415

    from ..data import collate_fn  # noqa: PLC0415
    from ..evaluation import evaluate_detections, evaluator_for, format_table  # noqa: PLC0415

    submission = args.split in SUBMISSION_SPLITS or args.submission
    accelerator = Accelerator(cpu=args.device == "cpu")
    torch.manual_seed(args.seed)  # --random-weights: the same weights on every process
    dataset, description = evaluation_dataset(args.data, args.split, args.data_format)
    check_image_files(dataset)  # before the model is loaded and any worker starts
    num_images = len(dataset)
    if args.limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(args.limit, num_images)))
    model, name = load_model(args.model, args.random_weights, len(dataset_attr(dataset, "label_to_cat_id")),
                             args.model_args)
    name = args.name or name
    label_to_cat_id = dataset_attr(dataset, "label_to_cat_id")
    class_names = dataset_attr(dataset, "class_names")
    config = getattr(model, "config", None)
    if config is not None and config.num_classes != len(label_to_cat_id):
        raise BenchmarkInputError(
            f"the model predicts {config.num_classes} classes but {description} has {len(label_to_cat_id)} "
            "categories; evaluate on the dataset the model was trained for"
        )
    if config is not None and config.class_names and list(config.class_names) != list(class_names):
        warnings.warn(
            "the model's class names differ from the dataset's categories (in sorted category-id order): "
            f"e.g. {config.class_names[:3]} vs {class_names[:3]}", stacklevel=2,
        )
    if config is not None:
        if args.min_size is not None:
            config.min_size = args.min_size
        if args.max_size is not None:
            config.max_size = args.max_size
    device = accelerator.device
    model = model.to(device).eval()
    if args.onnx:
        if device.type != "cpu":
            raise BenchmarkInputError("--onnx runs the network in ONNX Runtime on CPU; pass --device cpu")
        from ..inference import onnx_runtime  # noqa: PLC0415

        model = onnx_runtime(model)
    amp = args.amp and device.type == "cuda"
    if args.amp and not amp:
        warnings.warn("--amp is CUDA autocast; ignored on CPU", stacklevel=2)

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers, collate_fn=collate_fn,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
    loader = accelerator.prepare(loader)
    if accelerator.is_main_process:
        print(f"{name}: {description}, {len(dataset)} images, batch {args.batch_size} x {accelerator.num_processes} "
              f"process(es) on {device}", file=sys.stderr)
    start = time.perf_counter()
    progress = tqdm(total=len(loader), desc=f"{args.split}", unit="batch", disable=not accelerator.is_main_process
                    or args.no_progress, file=sys.stderr, dynamic_ncols=True)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if amp else contextlib.nullcontext
    evaluator = evaluate_detections(model, loader, evaluator_for(dataset), accelerator, autocast=autocast,
                                    progress=progress)
    progress.close()
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {"model": name, "split": args.split, "data": args.data, "num_images": len(evaluator),
                              "seconds": seconds, "images_per_s": len(evaluator) / max(seconds, 1e-9), "files": []}
    if accelerator.is_main_process:
        out_dir = Path(args.out or os.path.join("outputs", "coco", re.sub(r"[^\w.\-]", "-", name)))
        out_dir.mkdir(parents=True, exist_ok=True)
        if submission:
            zip_path = evaluator.write_test_dev_submission(out_dir, _safe(name))
            json_path = zip_path.with_suffix(".json")
            result["files"] = [str(json_path), str(zip_path)]
            print(f"wrote {json_path}\nwrote {zip_path}  (upload this to the COCO {args.split} evaluation server)")
        else:
            metrics = evaluator.evaluate(per_class=args.per_class)
            result["metrics"] = metrics
            print(f"\n{name} on {args.split} ({len(evaluator)} images, {seconds:.1f} s)\n")
            print(format_table(metrics))
            if args.verbose and evaluator.summary:
                print("\n" + evaluator.summary)
            det_path = evaluator.write_results_json(out_dir / f"detections_{args.split}_{_safe(name)}_results.json")
            metrics_path = out_dir / f"metrics_{args.split}.json"
            result["files"] = [str(metrics_path), str(det_path)]
            metrics_path.write_text(json.dumps({**result, "metrics_percent": {
                k: round(100 * v, 2) for k, v in metrics.items() if isinstance(v, float)}}, indent=2))
            print(f"\nwrote {metrics_path}\nwrote {det_path}")
            if args.plots:  # PR curves, per-class AP, confusion matrix (dynamic_atss.plots)
                from ..plots import evaluation_figures  # noqa: PLC0415

                result["files"] += [str(p) for p in evaluation_figures(
                    evaluator.coco_gt, evaluator.results_array(), out_dir / "plots", image_ids=evaluator.image_ids)]
    accelerator.wait_for_everyone()
    return result


def check_image_files(dataset: Any) -> None:
    """Raise `BenchmarkFileNotFoundError` naming the missing image files of a COCO-folder dataset (its annotation
    file lists them), so a run never starts to fail in a DataLoader worker; other datasets hold their images."""
    coco, image_dir = getattr(dataset, "coco", None), getattr(dataset, "image_dir", None)
    if coco is None or image_dir is None:
        return
    missing = [image["file_name"] for image_id, image in sorted(coco.imgs.items())
               if not os.path.isfile(os.path.join(image_dir, image["file_name"]))]
    if missing:
        shown = ", ".join(missing[:3]) + (f", ... ({len(missing)} in all)" if len(missing) > 3 else "")
        raise BenchmarkFileNotFoundError(
            f"{len(missing)} of the {len(coco.imgs)} images that {dataset.ann_file} lists are not in {image_dir}: "
            f"{shown}; download the split's images into that folder"
        )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.\-]", "-", name)


def dataset_attr(dataset: Any, attr: str, *default: Any) -> Any:
    """An attribute of the dataset, looking through `torch.utils.data.Subset`."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return getattr(dataset, attr, *default)
