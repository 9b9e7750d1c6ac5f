"""`dynamic-atss {train,demo,predict,benchmark,export,convert,push,plot}` (also `python -m dynamic_atss ...`).

A mistake in the user's input (`dynamic_atss.errors.UserInputError`) ends any command with one line and exit
status 2, here, for every command alike."""

from __future__ import annotations

import importlib
import sys

from .errors import exits_2_on_user_error

# subcommand -> module whose `main(argv)` runs it; imported lazily so `--help` stays fast.
COMMANDS = {
    "train": ("dynamic_atss.train", "train a model from a recipe (`train --config demo_cpu`; `train --help`)"),
    "demo": ("dynamic_atss.demo", "train a small model on the embedded dataset, evaluate it, draw predictions"),
    "predict": ("dynamic_atss.predict", "detect objects in image files and write PNGs + JSON"),
    "benchmark": ("dynamic_atss.benchmark", "COCO AP (`benchmark coco`), throughput (`benchmark speed`), the assigner"),
    "export": ("dynamic_atss.inference.cli", "export to ONNX (optionally with NMS) or torch.export"),
    "convert": ("dynamic_atss.convert.cli", "convert an mmdetection checkpoint into a model folder (optionally push it)"),
    "push": ("dynamic_atss.hub.cli", "push a saved model folder to the Hugging Face Hub (optionally pin it in the index)"),
    "plot": ("dynamic_atss.cli.plot", "figures of a training run folder: losses, AP, assignment dynamics, PR, confusion"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: dynamic-atss COMMAND [options]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return exits_2_on_user_error(f"python -m dynamic_atss {argv[0]}")(module.main)(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
