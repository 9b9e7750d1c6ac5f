#!/usr/bin/env python
"""`python benchmarks/assigner.py [options]` from a source checkout: the same as `dynamic-atss benchmark assigner` (see
`dynamic-atss benchmark assigner --help`; the measurement is dynamic_atss/benchmark/assigner.py)."""

import sys

from dynamic_atss.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main(command="assigner"))
