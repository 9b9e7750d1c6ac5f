#!/usr/bin/env python
"""`accelerate launch train.py --config <recipe> [--section.key value ...]`: a thin wrapper around
`python -m dynamic_atss.train` (same options; `python train.py --help` lists every config field)."""

import sys

from dynamic_atss.train import main

if __name__ == "__main__":
    sys.exit(main(prog="train.py"))
