"""`dynamic-atss benchmark {coco,speed,assigner,torchvision} [options]`: the package's measurements.

* ``coco``: COCO box AP of a model on val2017 (the paper's columns, printed and written as JSON) or a
  test-dev2017 submission zip (`dynamic_atss.benchmark.coco`); runs under ``accelerate launch -m dynamic_atss``.
* ``speed``: images/s, latency and peak memory (inference, `forward_raw`, training step) against torchvision's
  FCOS and RetinaNet in the same run (`dynamic_atss.benchmark.throughput`).
* ``assigner``: the combined-IoU assigner, batched vs per image, and its share of a training step
  (`dynamic_atss.benchmark.assigner`).
* ``torchvision``: torchvision FCOS / RetinaNet trained with torchvision's assignment vs the combined-IoU drop-in
  (`dynamic_atss.integrations.torchvision`), 3 seeds each (`dynamic_atss.benchmark.torchvision_assignment`).

The thin scripts ``benchmarks/{coco,throughput,assigner,torchvision_assignment}.py`` of a source checkout run the same commands.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable, Sequence

from ..errors import UserInputError
from . import CommandParser, positive_int, run_command

__all__ = ["SUBCOMMANDS", "main", "parse_coco_args", "parse_speed_args", "parse_assigner_args"]

SUBMISSION_SPLITS = ("test-dev2017", "test2017")  # dynamic_atss.benchmark.coco.SUBMISSION_SPLITS
PEERS = ("fcos", "retinanet")  # dynamic_atss.benchmark.peers.PEERS
MODES = ("inference", "raw", "train")  # dynamic_atss.benchmark.measurement.MODES
TORCHVISION_FAMILIES = ("fcos", "retinanet")  # dynamic_atss.benchmark.torchvision_assignment.FAMILIES
TORCHVISION_ASSIGNMENTS = ("torchvision", "combined", "atss")  # ... .torchvision_assignment.ASSIGNMENTS


def json_object(text: str) -> dict:
    """argparse type: a JSON object (`--model_args '{"backbone": "resnet18"}'`)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"backbone\": \"resnet18\"}'")
    return value


def parse_size(text: str) -> tuple[int, int]:
    """'800x1216' -> (800, 1216) (height x width); '512' -> (512, 512)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX*,]\s*(\d+))?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must look like HEIGHTxWIDTH (e.g. 800x1216), got {text!r}")
    height = int(match.group(1))
    width = int(match.group(2) or height)
    if height < 32 or width < 32:
        raise argparse.ArgumentTypeError(f"size {text!r}: both sides must be >= 32")
    return height, width


# ------------------------------------------------------------------------------------------------------ coco
def coco_parser() -> CommandParser:
    parser = CommandParser("benchmark coco", description="COCO box AP (val2017) or a test-dev2017 submission zip "
                           "for a Dynamic ATSS model (`dynamic_atss/benchmark/coco.py` describes the folder layout).",
                           aliases={"--cpu": "--device=cpu", "--allow_random_weights": "--random_weights"})
    parser.add_argument("--model", required=True,
                        help="registered name with a pretrained tag (atss_r50.mmdet_coco_1x), a model folder / "
                             "local-dir:PATH, or hf-hub:org/name")
    parser.add_argument("--data", required=True, help="COCO root folder, or a Hugging Face dataset")
    parser.add_argument("--split", default="val2017", help="val2017, test-dev2017, or another split name")
    parser.add_argument("--data_format", choices=("auto", "coco", "hf"), default="auto",
                        help="how to read --data (auto: by what the folder holds)")
    parser.add_argument("--submission", action="store_true",
                        help="write a submission zip instead of evaluating (implied by test-dev2017 / test2017)")
    parser.add_argument("--batch_size", type=positive_int, default=2, help="images per process and step")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers per process")
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto",
                        help="auto: what `accelerate launch` gives (a GPU when there is one); cpu: CPU only")
    parser.add_argument("--amp", action="store_true", help="CUDA autocast (float16)")
    parser.add_argument("--onnx", action="store_true",
                        help="run the network in ONNX Runtime (CPU; dynamic_atss.inference.onnx_runtime)")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="evaluate the first N images only (not with test-dev)")
    parser.add_argument("--out", default=None, help="output folder (default outputs/coco/<model name>)")
    parser.add_argument("--name", default=None, help="model name in the output file names (default: the model's)")
    parser.add_argument("--min_size", type=positive_int, default=None,
                        help="override the model's test shorter side (default: the model's)")
    parser.add_argument("--max_size", type=positive_int, default=None,
                        help="override the model's test longer-side cap (default: the model's)")
    parser.add_argument("--random_weights", action="store_true",
                        help="a registered model with random weights (checks the pipeline; AP ~0)")
    parser.add_argument("--model_args", type=json_object, default=None,
                        help='with --random_weights: JSON config overrides, e.g. \'{"backbone": "resnet18"}\'')
    parser.add_argument("--seed", type=int, default=0, help="seed for --random_weights")
    parser.add_argument("--per_class", action="store_true", help="also compute per-class AP (in the JSON)")
    parser.add_argument("--plots", action="store_true",
                        help="also draw PR curves, per-class AP and a confusion matrix into OUT/plots (matplotlib)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print COCOeval's 12-line summary")
    return parser


def parse_coco_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = coco_parser()
    args = parser.parse_args(argv)
    if args.limit is not None and (args.split in SUBMISSION_SPLITS or args.submission):
        parser.error(f"--limit cannot be used for a {args.split} submission: the server needs every image")
    return args


def run_coco(argv: list[str]) -> int:
    args = parse_coco_args(argv)
    from .train import require_train_extra  # noqa: PLC0415

    require_train_extra("benchmark coco")  # accelerate and pycocotools
    from ..benchmark.coco import run  # noqa: PLC0415  (after parsing: --help stays fast)

    run(args)
    return 0


# ----------------------------------------------------------------------------------------------------- speed
def speed_parser() -> CommandParser:
    parser = CommandParser("benchmark speed", description="Images/s, latency and peak memory of Dynamic ATSS vs "
                           "torchvision FCOS / RetinaNet, measured in the same run (`dynamic_atss/benchmark/"
                           "throughput.py` says how).")
    parser.add_argument("--models", nargs="+", default=None,
                        help="our models: registered names (r50, r101_dcn, ...), local-dir:/path or hf-hub:org/name; "
                             "suffixes (inference rows; the training row is the base model's): '+opt' / '+opt-bf16' "
                             "the float32 / bfloat16 snapshot of optimize_for_inference, '+onnx' the network in "
                             "ONNX Runtime (CPU; needs onnxruntime), '+bf16' the default path under bfloat16 "
                             "autocast (default on CPU: r50 r50+opt r50+opt-bf16; on CUDA: r50)")
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS,
                        help="torchvision models measured in the same run (none: --peers with no value, or --no_peers)")
    parser.add_argument("--no_peers", action="store_true", help="measure only our models")
    parser.add_argument("--peer_backbone", default=None, help="ResNet of the peers (default resnet50; --quick: resnet18)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="what to time")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=None,
                        help="inference / raw input sizes HxW (default 800x1216; --quick: 128x128)")
    parser.add_argument("--batch_sizes", nargs="+", type=positive_int, default=None,
                        help="inference / raw batch sizes (default 1)")
    parser.add_argument("--train_sizes", nargs="+", type=parse_size, default=None,
                        help="training-step input sizes (default 512x512; --quick: 128x128)")
    parser.add_argument("--train_batch_sizes", nargs="+", type=positive_int, default=None,
                        help="training batch sizes (default 2)")
    parser.add_argument("--backbone", default=None, help="timm backbone for our models, e.g. resnet18 (default: the model's)")
    parser.add_argument("--model_args", type=json_object, default=None,
                        help='JSON dict of config overrides for our models, e.g. \'{"head.num_convs": 2}\'')
    parser.add_argument("--num_classes", type=positive_int, default=80, help="classes of every model")
    parser.add_argument("--num_boxes", type=positive_int, default=8, help="random ground-truth boxes per image (train)")
    parser.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate of the training step")
    parser.add_argument("--cls_prior", type=float, default=None,
                        help="set every model's classification prior (e.g. 0.5: most anchors pass score_thresh, "
                             "the worst case for post-processing; default: as initialised, 0.01)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")
    parser.add_argument("--amp", action="store_true", help="CUDA autocast (float16) for every model")
    parser.add_argument("--channels_last", action="store_true", help="channels_last memory format for every model")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network of every model")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per model (default 1 on CPU, 5 on CUDA)")
    parser.add_argument("--iters", type=positive_int, default=None,
                        help="timed calls per model (default 5 on CPU, 30 on CUDA)")
    parser.add_argument("--no_memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--quick", action="store_true",
                        help="seconds: tiny model (test_resnet trunk, 32 channels), peers on resnet18, 128x128, 3 iters")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    parser.add_argument("--json", dest="json_path", default=None, help="write the report (JSON) here")
    parser.add_argument("--markdown", dest="markdown_path", default=None, help="write the Markdown table here")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the table")
    return parser


def parse_speed_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, with the defaults that depend on the device and --quick filled in."""
    from . import check_device  # noqa: PLC0415

    parser = speed_parser()
    args = parser.parse_args(argv)
    if args.no_peers:
        args.peers = []
    if args.warmup is not None and args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.cls_prior is not None and not 0 < args.cls_prior < 1:
        parser.error("--cls_prior must be in (0, 1)")
    args.device = check_device(args.device)
    cuda = args.device.startswith("cuda")
    if args.models is None:  # the default path, and on CPU the float32 and bfloat16 snapshots next to it
        args.models = ["r50"] + (["r50+opt", "r50+opt-bf16"] if not cuda and not args.quick else [])
    if args.quick:
        args.sizes = args.sizes or [(128, 128)]
        args.train_sizes = args.train_sizes or [(128, 128)]
        args.peer_backbone = args.peer_backbone or "resnet18"
        args.warmup = 1 if args.warmup is None else args.warmup
        args.iters = 3 if args.iters is None else args.iters
    args.sizes = args.sizes or [(800, 1216)]
    args.train_sizes = args.train_sizes or [(512, 512)]
    args.batch_sizes = args.batch_sizes or [1]
    args.train_batch_sizes = args.train_batch_sizes or [2]
    args.peer_backbone = args.peer_backbone or "resnet50"
    args.warmup = (5 if cuda else 1) if args.warmup is None else args.warmup
    args.iters = (30 if cuda else 5) if args.iters is None else args.iters
    return args


def run_speed(argv: list[str]) -> int:
    args = parse_speed_args(argv)
    from pathlib import Path  # noqa: PLC0415

    from ..benchmark.throughput import run  # noqa: PLC0415  (after parsing: --help stays fast)

    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    report = run(args, log)
    env = report["environment"]
    print(f"device: {env['device']} ({env.get('gpu') or env['processor']}), threads {env['threads']}, "
          f"torch {env['torch']}; load average {report['noise']['loadavg_start']} -> {report['noise']['loadavg_end']}")
    print(report["markdown"])
    for path_arg, text in ((args.json_path, json.dumps(report, indent=2)), (args.markdown_path, report["markdown"] + "\n")):
        if path_arg:
            path = Path(path_arg)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    return 0


# -------------------------------------------------------------------------------------------------- assigner
def assigner_parser() -> CommandParser:
    parser = CommandParser("benchmark assigner", aliases={"--batch": "--batch_size"},
                           description="The combined-IoU assigner, batched vs per image, and "
                           "its share of a training step (`dynamic_atss/benchmark/assigner.py`).")
    parser.add_argument("--batch_size", type=positive_int, default=8, help="images per assignment")
    parser.add_argument("--num_gt", type=positive_int, default=50, help="ground-truth boxes per image")
    parser.add_argument("--height", type=positive_int, default=800, help="input height (anchors follow from it)")
    parser.add_argument("--width", type=positive_int, default=1216, help="input width")
    parser.add_argument("--repeats", type=positive_int, default=7, help="timed repeats (the median is reported)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch.set_num_threads (default: torch's; 2 with --train_step)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--train_step", action="store_true", help="also time an R-50 training step")
    parser.add_argument("--train_repeats", type=positive_int, default=3, help="timed training steps")
    parser.add_argument("--train_models", default="r50,gflv2_r50",
                        help="comma-separated models whose training step --train_step times (one per head family)")
    return parser


def parse_assigner_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from pathlib import Path  # noqa: PLC0415

    from . import check_device  # noqa: PLC0415

    args = assigner_parser().parse_args(argv)
    args.device = check_device(args.device)
    args.json = Path(args.json) if args.json else None
    args.batch = args.batch_size  # the name the measurement reads
    return args


def run_assigner(argv: list[str]) -> int:
    args = parse_assigner_args(argv)
    from ..benchmark.assigner import run  # noqa: PLC0415  (after parsing: --help stays fast)

    return run(args)


# ----------------------------------------------------------------------------------------------- torchvision
def torchvision_parser() -> CommandParser:
    parser = CommandParser("benchmark torchvision", description=(
        "torchvision FCOS / RetinaNet on a tiny backbone, trained on the embedded synthetic dataset with one recipe: "
        "torchvision's own assignment (`torchvision`) vs `use_combined_iou_assignment` (`combined`) vs the drop-in "
        "with pred_weight=0 (`atss`); prints mean and per-seed COCO AP."))
    parser.add_argument("--families", nargs="+", choices=TORCHVISION_FAMILIES, default=list(TORCHVISION_FAMILIES),
                        help="torchvision detectors to train")
    parser.add_argument("--assignments", nargs="+", choices=TORCHVISION_ASSIGNMENTS,
                        default=list(TORCHVISION_ASSIGNMENTS), help="assignment rules to compare")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one run per seed")
    parser.add_argument("--iterations", type=positive_int, default=1500, help="training iterations per run")
    parser.add_argument("--train_images", type=positive_int, default=512, help="synthetic training images")
    parser.add_argument("--val_images", type=positive_int, default=100, help="synthetic held-out images (AP)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch.set_num_threads")
    parser.add_argument("--json", default=None, help="also write every run's metrics here")
    return parser


def run_torchvision(argv: list[str]) -> int:
    args = torchvision_parser().parse_args(argv)
    from ..benchmark.torchvision_assignment import run  # noqa: PLC0415  (after parsing: --help stays fast)

    return run(args)


# ------------------------------------------------------------------------------------------------- dispatch
SUBCOMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "coco": (run_coco, "COCO AP on val2017, or a test-dev2017 submission zip"),
    "speed": (run_speed, "throughput / latency / memory vs torchvision FCOS and RetinaNet"),
    "assigner": (run_assigner, "the combined-IoU assigner: batched vs per image, share of a step"),
    "torchvision": (run_torchvision, "torchvision FCOS / RetinaNet: own assignment vs the combined-IoU drop-in"),
}


def usage() -> str:
    lines = [f"  {name:<9} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return (f"usage: dynamic-atss benchmark {{{','.join(SUBCOMMANDS)}}} [options]   (--help after one for its options)"
            "\n\nbenchmarks:\n" + "\n".join(lines))


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in SUBCOMMANDS:
        close = difflib.get_close_matches(argv[0], SUBCOMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserInputError(f"unknown benchmark {argv[0]!r}{hint} (choose from {', '.join(SUBCOMMANDS)})")
    return SUBCOMMANDS[argv[0]][0](argv[1:])


def main(argv: list[str] | None = None, command: str | None = None) -> int:
    """`dynamic-atss benchmark ...` (or one benchmark, `command`) under the command-line error rule."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if command is not None:
        argv = [command, *argv]
    name = f"benchmark {argv[0]}" if argv and argv[0] in SUBCOMMANDS else "benchmark"
    return run_command(name, run, argv)

