#!/usr/bin/env python
"""`python hub/convert_mmdet.py CHECKPOINT --out DIR` from a source checkout: the same as `dynamic-atss convert`."""

import sys

from dynamic_atss.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
