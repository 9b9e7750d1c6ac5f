#!/usr/bin/env python
"""`python hub/push.py --model DIR --push_to_hub ORG/NAME` from a source checkout: the same as `dynamic-atss push`."""

import sys

from dynamic_atss.cli.push import main

if __name__ == "__main__":
    sys.exit(main())
