"""Train Dynamic ATSS: `python -m dynamic_atss.train`, `dynamic-atss train`, or `accelerate launch train.py`.

    accelerate launch train.py --config dynamic_atss_r50_1x              # a packaged recipe, by name
    python -m dynamic_atss.train --config demo_cpu --optim.max_iters 200  # one process, CPU
    dynamic-atss train --config my_recipe.yaml --optim.lr 1e-3           # a recipe file, with overrides
    dynamic-atss train --config dynamic_atss_r50_1x --resume latest      # continue a run

Every field can be overridden as `--section.key value` (or `--section.key=value`), model fields as
`--model_overrides.head.quality centerness`; values are checked against the field types before anything is
built. `mixed_precision` is taken from Accelerate (`accelerate launch --mixed_precision bf16`, `accelerate
config`) unless the recipe or an override sets it. Gradient accumulation is `--grad_accum N`: `accelerate
launch --gradient_accumulation_steps N` reaches the script only with DeepSpeed (Accelerate's
ACCELERATE_GRADIENT_ACCUMULATION_STEPS), which is honoured when the recipe leaves grad_accum unset and refused
when it differs from the recipe's value. A mistake in the options, the recipe, the data, the resume
checkpoint, the output folder or the Hub repo stops the run with exit status 2 before any training.
"""

from __future__ import annotations

import argparse
import json
import sys

from .engine.config import config_help, list_recipes, load_config
from .errors import exits_2_on_user_error
from .typed import cli_overrides


def build_parser(prog: str = "python -m dynamic_atss.train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        epilog="config fields (--name TYPE, default):\n" + config_help(),
    )
    parser.add_argument("--config", help="a packaged recipe name (see --list-configs) or a YAML file; "
                                         "the dataclass defaults when left out")
    parser.add_argument("--resume", help="'latest' (the newest intact checkpoint of OUTPUT_DIR) or a checkpoint folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace what a previous run left in the output folder (checkpoints, log, model)")
    parser.add_argument("--push-to-hub", dest="push_to_hub", help="org/name: push the final model to the Hub")
    parser.add_argument("--list-configs", action="store_true", help="list the packaged recipes and exit")
    return parser


def parse_args(argv: list[str] | None = None, prog: str = "python -m dynamic_atss.train"
               ) -> tuple[argparse.Namespace, list[str], argparse.ArgumentParser]:
    """-> (known options, `key=value` overrides, parser)."""
    parser = build_parser(prog)
    args, rest = parser.parse_known_args(argv)
    overrides = cli_overrides(rest, parser.error)
    if args.push_to_hub:
        overrides.append(f"push_to_hub={args.push_to_hub}")
    return args, overrides, parser


@exits_2_on_user_error("python -m dynamic_atss.train")
def main(argv: list[str] | None = None, prog: str = "python -m dynamic_atss.train") -> int:
    """0: trained (and pushed); 1: trained and saved, but the push to the Hub failed (the report says how to
    push later); 2: a mistake in the input, found before the output folder was made the run's own; 143 / 130:
    stopped by SIGTERM / SIGINT after a checkpoint (continue with --resume latest)."""
    args, overrides, parser = parse_args(argv, prog)
    if args.list_configs:
        print("\n".join(list_recipes()))
        return 0
    config = load_config(args.config, overrides)  # every key and value checked before anything is built
    from accelerate import PartialState  # noqa: PLC0415  (heavy imports after the config is known good)

    from .engine.trainer import final_report, train  # noqa: PLC0415

    summary = train(config, resume=args.resume, overwrite=args.overwrite)
    if PartialState().is_main_process:
        print(final_report(summary))
        print(json.dumps({k: v for k, v in summary.items() if k not in ("metrics", "effective")}, indent=2))
    return summary.get("exit_status") or (1 if summary.get("push_error") else 0)  # 143 / 130: stopped by a signal


if __name__ == "__main__":
    sys.exit(main())
