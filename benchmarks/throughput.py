#!/usr/bin/env python
"""`python benchmarks/throughput.py [options]` from a source checkout: the same as `dynamic-atss benchmark speed` (see
`dynamic-atss benchmark speed --help`; the measurement is dynamic_atss/benchmark/throughput.py)."""

import sys

from dynamic_atss.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main(command="speed"))
