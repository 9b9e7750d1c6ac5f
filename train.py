#!/usr/bin/env python
"""`accelerate launch train.py --config <recipe> [--section.key value ...]` from a source checkout: the same
command as `dynamic-atss train` (installed: `accelerate launch -m dynamic_atss train ...`)."""

import sys

from dynamic_atss.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
