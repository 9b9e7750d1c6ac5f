#!/usr/bin/env python
"""torchvision FCOS / RetinaNet: torchvision's assignment vs the combined-IoU drop-in (see
dynamic_atss/integrations/torchvision_benchmark.py).

    python benchmarks/torchvision_assignment.py [--families fcos retinanet] [--seeds 0 1 2] [--iterations N]
"""

import sys

from dynamic_atss.integrations.torchvision_benchmark import main

if __name__ == "__main__":
    sys.exit(main())
