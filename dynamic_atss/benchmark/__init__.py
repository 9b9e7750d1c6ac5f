"""Benchmarks: `dynamic-atss benchmark {coco,speed,assigner} [options]` (or `python -m dynamic_atss benchmark ...`).

* ``coco``: COCO box AP of a model on val2017 (the paper's columns, printed and written as JSON) or a
  test-dev2017 submission zip (`dynamic_atss.benchmark.coco`); runs under ``accelerate launch``.
* ``speed``: images/s, latency and peak memory (inference, `forward_raw`, training step) against torchvision's
  FCOS and RetinaNet in the same run (`dynamic_atss.benchmark.throughput`).
* ``assigner``: the combined-IoU assigner, batched vs per image, and its share of a training step
  (`dynamic_atss.benchmark.assigner`).

The same entry points back the thin scripts ``benchmarks/{coco,throughput,assigner}.py``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

SUBCOMMANDS = {
    "coco": ("dynamic_atss.benchmark.coco", "COCO AP on val2017, or a test-dev2017 submission zip"),
    "speed": ("dynamic_atss.benchmark.throughput", "throughput / latency / memory vs torchvision FCOS and RetinaNet"),
    "assigner": ("dynamic_atss.benchmark.assigner", "the combined-IoU assigner: batched vs per image, share of a step"),
}
ALIASES = {"throughput": "speed"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = ALIASES.get(argv[0], argv[0]) if argv else None
    if command not in SUBCOMMANDS:
        lines = [f"  {name:<9} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
        print(f"usage: dynamic-atss benchmark {{{','.join(SUBCOMMANDS)}}} [options]   (--help after one for its options)\n\n"
              "benchmarks:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown benchmark {argv[0]!r}; choose from {sorted(SUBCOMMANDS)}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(SUBCOMMANDS[command][0])
    return module.main(argv[1:]) or 0
