#!/usr/bin/env python
"""Benchmark of the combined-IoU assigner: `dynamic-atss benchmark assigner` (see dynamic_atss/benchmark/assigner.py).

    python benchmarks/assigner.py [--repeats 7] [--threads 2] [--train-step]
"""

import sys

from dynamic_atss.benchmark.assigner import main

if __name__ == "__main__":
    sys.exit(main())
