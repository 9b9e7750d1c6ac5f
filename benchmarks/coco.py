#!/usr/bin/env python
"""`python benchmarks/coco.py [options]` from a source checkout: the same as `dynamic-atss benchmark coco` (see
`dynamic-atss benchmark coco --help`; the measurement is dynamic_atss/benchmark/coco.py)."""

import sys

from dynamic_atss.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main(command="coco"))
