"""What the benchmarks measure (the command is `dynamic-atss benchmark`, in `dynamic_atss/cli/benchmark.py`).

* `coco`: COCO box AP of a model on val2017, or a test-dev2017 submission zip;
* `throughput` (`dynamic-atss benchmark speed`): images/s, latency and peak memory against torchvision's FCOS and
  RetinaNet in one run; its contestants are built in `peers`, measured by `measurement`, reported by `report`;
* `assigner`: the combined-IoU assigner, batched vs per image, and its share of a training step;
* `timing`: a method's wall time inside a call, for the assigner's share of a step.
"""
