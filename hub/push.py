#!/usr/bin/env python
"""Push a saved model folder to the Hub: `dynamic-atss push` (see dynamic_atss/hub/cli.py)."""

import sys

from dynamic_atss.hub.cli import main

if __name__ == "__main__":
    sys.exit(main())
