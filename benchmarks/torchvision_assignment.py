#!/usr/bin/env python
"""`python benchmarks/torchvision_assignment.py [options]` from a source checkout: the same as `dynamic-atss benchmark
torchvision` (see its `--help`; the study is dynamic_atss/benchmark/torchvision_assignment.py)."""

import sys

from dynamic_atss.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main(command="torchvision"))
