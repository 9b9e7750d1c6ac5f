"""`dynamic-atss plot RUN_DIR`: the figures of a training run folder, finished, stopped or still running.

    dynamic-atss plot outputs/finetune              # -> outputs/finetune/plots/*.png
    dynamic-atss plot outputs/demo --out figures/   # somewhere else

From `log.jsonl`: training losses and learning rate, AP over iterations, the assignment dynamics; from the final
evaluation (`eval/`, written at the end of `train`): precision-recall curves, per-class AP and a confusion matrix.
Needs matplotlib (`pip install 'dynamic-atss[plot]'`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserInputError
from . import CommandParser, run_command


class RunFolderError(UserInputError, FileNotFoundError):
    """RUN_DIR is not a training run's folder (no log.jsonl)."""


def build_parser() -> CommandParser:
    parser = CommandParser("plot", description=__doc__)
    parser.add_argument("run_dir", help="a training run's output folder (holding log.jsonl)")
    parser.add_argument("--out", help="where the PNGs go (default RUN_DIR/plots)")
    return parser


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    if not (run_dir / "log.jsonl").is_file():
        raise RunFolderError(f"{run_dir} holds no log.jsonl: give the output_dir of a training run")
    from ..plots import plot_run  # noqa: PLC0415  (matplotlib and numpy only when there is something to draw)

    paths = plot_run(run_dir, args.out)
    print("\n".join(str(p) for p in paths) if paths else f"{run_dir}: nothing logged yet, no figure")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`dynamic-atss plot RUN_DIR` under the command-line error rule (see `dynamic_atss.cli`)."""
    return run_command("plot", run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
