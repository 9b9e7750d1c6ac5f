#!/usr/bin/env python
"""Convert an mmdetection checkpoint: `dynamic-atss convert` (see dynamic_atss/convert/cli.py)."""

import sys

from dynamic_atss.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
