"""`python -m dynamic_atss export --model NAME_OR_PATH --format onnx --out model.onnx [--with-postprocess]`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from ..errors import UserInputError
from .export import SUPPORTED_OPSETS, check_opset, export_onnx, export_program


def check_output_file(out: str) -> Path:
    """`--out` as a path that can be written: not an existing folder, below a folder that exists (or can be made)
    and is writable; raises `UserInputError` naming the problem otherwise."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise UserInputError(f"--out {out} is an existing folder; give a file name, e.g. {path / 'model.onnx'}")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserInputError(f"--out {out}: cannot write below {ancestor} (not a writable folder); choose another --out")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dynamic_atss export",
        description="Export a model: ONNX (dynamic batch and image size; --with-postprocess puts decoding and NMS "
                    "in the graph) or a torch.export ExportedProgram of forward_raw (.pt2). See "
                    "dynamic_atss/inference/export.py for the graphs' inputs and outputs.",
    )
    parser.add_argument("--model", required=True,
                        help="registry name with weights (r50.coco_1x), hf-hub:org/name, local-dir:/path or a saved "
                             "model folder")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="accept a model name without weights (for benchmarking the graph)")
    parser.add_argument("--format", choices=("onnx", "torch-export"), default="onnx")
    parser.add_argument("--out", required=True, help="output file (.onnx, or .pt2 for torch-export)")
    parser.add_argument("--with-postprocess", action="store_true",
                        help="ONNX: [0, 1] images + sizes in, detections out (decoding and NMS in the graph)")
    parser.add_argument("--opset", type=int, default=19,
                        help=f"ONNX opset, {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1} (DCN models need >= 19)")
    parser.add_argument("--static", action="store_true", help="fixed batch and image size (those of the example)")
    parser.add_argument("--no-check", action="store_true", help="ONNX: skip running the file in ONNX Runtime")
    args = parser.parse_args(argv)

    from ..predict import NoPretrainedWeightsError, load_model  # noqa: PLC0415  (the one model-loading path)

    if args.format == "torch-export" and args.with_postprocess:
        parser.error("--with-postprocess is for --format onnx (torch-export exports forward_raw)")
    if args.format == "onnx":
        check_opset(args.opset)
    check_output_file(args.out)  # both before the model is loaded
    try:
        model = load_model(args.model, "cpu", args.allow_random_weights)
    except NoPretrainedWeightsError as error:
        print(f"error: --model {args.model}: {error}\n(--allow-random-weights exports random weights)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        if args.format == "onnx":
            path = export_onnx(model, args.out, with_postprocess=args.with_postprocess, opset=args.opset,
                               dynamic=not args.static, check=not args.no_check)
        else:
            path = Path(args.out)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.export.save(export_program(model, dynamic=not args.static), str(path))
    except (NotImplementedError, ImportError) as error:
        print(f"export failed: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s")
    return 0
