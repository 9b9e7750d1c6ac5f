"""`dynamic-atss demo`: train a small Dynamic ATSS on the embedded synthetic dataset (CPU, minutes), evaluate COCO
AP on held-out generated images, save the model, draw predictions, plot the losses.

With `--compare`, also trains plain ATSS (anchor IoUs only, everything else equal) and plots both regression
losses, as in the paper's Figure 2. `--head gflv2` does the same for GFLV2 vs GFLV2 + CIoUs (Figure 3), `--head
vfnet` for VFNet (Figure 4). With `--snapshot_ap`, the saved model is also evaluated as the float32 and bfloat16
snapshots of `optimize_for_inference` (the AP change of the fast inference paths). The demo replaces what an
earlier demo left in its output folder.
"""

from __future__ import annotations

import sys

from . import CommandParser, positive_int, run_command

HEADS = ("atss", "gfl", "gflv2", "vfnet")  # the keys of dynamic_atss.demo.HEADS (not imported: --help stays fast)


def build_parser() -> CommandParser:
    parser = CommandParser("demo", description=__doc__,
                           epilog="config overrides: --section.key value (as for train), e.g. --optim.lr 0.001")
    parser.add_argument("--config", help="a YAML recipe instead of the embedded default")
    parser.add_argument("--out", help="output folder (default outputs/demo)")
    parser.add_argument("--iters", type=positive_int, help="training iterations (default 600)")
    parser.add_argument("--compare", action="store_true",
                        help="also train the anchor-IoU baseline (assigner.pred_weight=0) and plot both (Figures 2-4)")
    parser.add_argument("--head", choices=HEADS, default="atss",
                        help="head family of the demo: atss, gfl, gflv2 (Figure 3 with --compare), vfnet (Figure 4)")
    parser.add_argument("--snapshot_ap", action="store_true",
                        help="also evaluate the saved model as optimize_for_inference snapshots (float32, bfloat16)")
    return parser


def run(argv: list[str]) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    from ..typed import cli_overrides  # noqa: PLC0415

    overrides = cli_overrides(rest, parser.error)  # one override syntax with `train`: --section.key value
    from .train import require_train_extra  # noqa: PLC0415

    require_train_extra("demo")
    from ..demo import demo_config, run_demo  # noqa: PLC0415  (imports torch: after parsing)

    config = demo_config(args.config, overrides, args.out, args.iters, args.head)
    run_demo(config, args.head, args.compare, args.snapshot_ap)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`dynamic-atss demo ...` under the command-line error rule (see `dynamic_atss.cli`)."""
    return run_command("demo", run, sys.argv[1:] if argv is None else argv)

