"""`dynamic-atss export --model NAME_OR_PATH --format onnx --out model.onnx [--with_postprocess]`.

ONNX (dynamic batch and image size; --with_postprocess puts decoding and NMS in the graph) or a torch.export
ExportedProgram of forward_raw (.pt2). See dynamic_atss/inference/export.py for the graphs' inputs and outputs.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ..errors import UserInputError
from . import CommandParser, load_model_arg, run_command

SUFFIXES = {"onnx": ".onnx", "torch-export": ".pt2"}
OPSETS = "18-23"  # dynamic_atss.inference.export.SUPPORTED_OPSETS (not imported here: --help stays fast)


def check_output_file(out: str, file_format: str = "onnx") -> Path:
    """`--out` as a path that can be written: not an existing folder, with the suffix of `file_format`, below a
    folder that exists (or can be made) and is writable; raises `UserInputError` naming the problem otherwise."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise UserInputError(f"--out {out} is an existing folder; give a file name, e.g. {path / ('model' + SUFFIXES[file_format])}")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserInputError(f"--out {out}: cannot write below {ancestor} (not a writable folder); choose another --out")
    suffix = SUFFIXES[file_format]
    if path.suffix.lower() != suffix:
        raise UserInputError(f"--out {out}: --format {file_format} writes a {suffix} file; name it "
                             f"{path.with_suffix(suffix)}" + (" (or use --format onnx)" if path.suffix == ".onnx" else ""))
    return path


def build_parser() -> CommandParser:
    parser = CommandParser("export", description=__doc__, aliases={"--allow_random_weights": "--random_weights"})
    parser.add_argument("--model", required=True,
                        help="registry name with weights (atss_r50.mmdet_coco_1x), hf-hub:org/name, local-dir:/path or "
                             "a saved model folder")
    parser.add_argument("--random_weights", action="store_true",
                        help="accept a model name without weights (for benchmarking the graph)")
    parser.add_argument("--format", choices=tuple(SUFFIXES), default="onnx",
                        help="onnx (needs the [export] extra) or torch-export (a .pt2 ExportedProgram of forward_raw)")
    parser.add_argument("--out", required=True, help="output file: .onnx for onnx, .pt2 for torch-export")
    parser.add_argument("--with_postprocess", action="store_true",
                        help="ONNX: [0, 1] images + sizes in, detections out (decoding and NMS in the graph)")
    parser.add_argument("--opset", type=int, default=19, help=f"ONNX opset, {OPSETS} (DCN models need >= 19)")
    parser.add_argument("--static", action="store_true", help="fixed batch and image size (those of the example)")
    parser.add_argument("--no_check", action="store_true", help="ONNX: skip running the file in ONNX Runtime")
    return parser


def run(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.format == "torch-export" and args.with_postprocess:
        parser.error("--with_postprocess is for --format onnx (torch-export exports forward_raw)")
    import torch  # noqa: PLC0415  (after parsing: --help stays fast)

    from ..inference.export import check_opset, export_onnx, export_program  # noqa: PLC0415

    if args.format == "onnx":
        check_opset(args.opset)
    check_output_file(args.out, args.format)  # both before the model is loaded
    model = load_model_arg(args.model, args.random_weights)
    start = time.perf_counter()
    try:
        if args.format == "onnx":
            path = export_onnx(model, args.out, with_postprocess=args.with_postprocess, opset=args.opset,
                               dynamic=not args.static, check=not args.no_check)
        else:
            path = Path(args.out)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.export.save(export_program(model, dynamic=not args.static), str(path))
    except ImportError as error:
        raise UserInputError(f"--format {args.format}: {error} (pip install \"dynamic-atss[export]\")") from None
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`dynamic-atss export ...` under the command-line error rule (see `dynamic_atss.cli`)."""
    return run_command("export", run, sys.argv[1:] if argv is None else argv)

