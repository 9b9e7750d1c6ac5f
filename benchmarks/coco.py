#!/usr/bin/env python
"""COCO box AP (val2017) or a test-dev2017 submission zip for a Dynamic ATSS model.

    python benchmarks/coco.py --model r50.coco_1x --data /data/coco --split val2017
    accelerate launch benchmarks/coco.py --model local-dir:runs/r50 --data /data/coco --split test-dev2017

Same as `python -m dynamic_atss benchmark coco ...`; see `dynamic_atss/benchmark/coco.py`.
"""

import sys

from dynamic_atss.benchmark.coco import main

if __name__ == "__main__":
    sys.exit(main())
