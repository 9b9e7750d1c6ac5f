#!/usr/bin/env python
"""Train Dynamic ATSS with Hugging Face Accelerate.

    accelerate launch train.py --config configs/dynamic_atss_r50_1x.yaml [--key value ...]
    python train.py --config configs/demo_cpu.yaml --optim.max_iters 100 --resume latest

Any config field can be overridden as `--section.key value` (or `--key=value`); see
dynamic_atss/engine/config.py for the fields and configs/ for the paper's recipes.
"""

from __future__ import annotations

import argparse
import json
import sys

from dynamic_atss.engine import load_config, train


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML recipe in configs/ (defaults to the dataclass defaults)")
    parser.add_argument("--resume", help="'latest' or a checkpoint folder (OUTPUT_DIR/checkpoints/checkpoint-N)")
    parser.add_argument("--push-to-hub", dest="push_to_hub", help="org/name: push the final model to the Hub")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    i = 0
    while i < len(rest):
        item = rest[i]
        if not item.startswith("--"):
            parser.error(f"unexpected argument {item!r}; overrides look like --section.key value")
        if "=" in item:
            overrides.append(item[2:])
            i += 1
        elif i + 1 < len(rest):
            overrides.append(f"{item[2:]}={rest[i + 1]}")
            i += 2
        else:
            parser.error(f"override {item} needs a value")
    if args.push_to_hub:
        overrides.append(f"push_to_hub={args.push_to_hub}")
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    config = load_config(args.config, overrides)
    summary = train(config, resume=args.resume)
    print(json.dumps({k: v for k, v in summary.items() if k != "metrics"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
