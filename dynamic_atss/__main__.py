"""`dynamic-atss COMMAND [options]` (also `python -m dynamic_atss COMMAND ...`): the dispatch to `dynamic_atss/cli/`.

Light on purpose: `dynamic-atss --help`, `--version` and `dynamic-atss COMMAND --help` import no torch. Every
command follows one error rule (`dynamic_atss.cli.run_command`): a mistake in the user's input ends it with
exit status 2 and one line `dynamic-atss COMMAND: error: ...`.
"""

from __future__ import annotations

import difflib
import importlib
import sys

# command -> (module with `main(argv) -> int`, one line of help); imported lazily so `--help` stays fast.
COMMANDS = {
    "train": ("dynamic_atss.cli.train", "train a model from a recipe (`train --config demo_cpu`; `train --help`)"),
    "demo": ("dynamic_atss.cli.demo", "train a small model on the embedded dataset, evaluate it, draw predictions"),
    "predict": ("dynamic_atss.cli.predict", "detect objects in image files and write PNGs + JSON"),
    "benchmark": ("dynamic_atss.cli.benchmark", "COCO AP (`benchmark coco`), throughput (`benchmark speed`), the assigner"),
    "export": ("dynamic_atss.cli.export", "export to ONNX (optionally with NMS) or torch.export"),
    "convert": ("dynamic_atss.cli.convert", "convert an mmdetection checkpoint into a model folder (optionally push it)"),
    "push": ("dynamic_atss.cli.push", "push a saved model folder to the Hugging Face Hub (optionally pin it in the index)"),
    "plot": ("dynamic_atss.cli.plot", "figures of a training run folder: losses, AP, assignment dynamics, PR, confusion"),
}


def usage() -> str:
    lines = [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return ("usage: dynamic-atss COMMAND [options]   (dynamic-atss COMMAND --help for its options)\n\n"
            "commands:\n" + "\n".join(lines) + "\n\noptions:\n  -h, --help  show this message\n  --version   "
            "print the version and exit")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv and argv[0] in ("-V", "--version"):
        from ._version import __version__  # noqa: PLC0415

        print(f"dynamic-atss {__version__}")
        return 0
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    if argv[0] not in COMMANDS:
        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"usage: dynamic-atss COMMAND [options]\ndynamic-atss: error: unknown command {argv[0]!r}{hint} "
              f"(choose from {', '.join(COMMANDS)}; dynamic-atss --help lists them)", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
