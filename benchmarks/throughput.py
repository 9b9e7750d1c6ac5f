#!/usr/bin/env python
"""Throughput / latency / peak memory of Dynamic ATSS vs torchvision FCOS and RetinaNet, in one run.

    python benchmarks/throughput.py --models r50 r50+opt r50+opt-bf16 --threads 2 --json outputs/speed.json
    python benchmarks/throughput.py --quick            # seconds, tiny model: checks the machinery

Same as `python -m dynamic_atss benchmark speed ...`; see `dynamic_atss/benchmark/throughput.py`.
"""

import sys

from dynamic_atss.benchmark.throughput import main

if __name__ == "__main__":
    sys.exit(main())
