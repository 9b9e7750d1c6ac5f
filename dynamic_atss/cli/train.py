"""Train Dynamic ATSS: `dynamic-atss train` (several GPUs: `accelerate launch -m dynamic_atss train ...`; from a
source checkout, `accelerate launch train.py ...` is the same command).

    dynamic-atss train --config demo_cpu --optim.max_iters 200                     # one process, CPU
    dynamic-atss train --config my_recipe.yaml --optim.lr 1e-3                     # a recipe file, with overrides
    accelerate launch -m dynamic_atss train --config dynamic_atss_r50_1x           # a packaged recipe, several GPUs
    dynamic-atss train --config dynamic_atss_r50_1x --resume latest                # continue a run

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

from ..errors import UserInputError
from . import CommandParser, run_command

TRAIN_EXTRA = 'pip install "dynamic-atss[train]"'


def build_parser() -> CommandParser:
    from ..engine.config import config_help  # noqa: PLC0415  (no torch: the dataclasses and their help)

    parser = CommandParser(
        "train", description=__doc__, epilog="config fields (--name TYPE, default):\n" + config_help(),
        aliases={"--push-to-hub": "--push_to_hub", "--repo": "--push_to_hub"},
    )
    parser.add_argument("--config", help="a packaged recipe name (see --list-configs) or a YAML file; "
                                         "the dataclass defaults when left out")
    parser.add_argument("--resume", help="'latest' (the newest intact checkpoint of OUTPUT_DIR) or a checkpoint folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace what a previous run left in the output folder (checkpoints, log, model)")
    parser.add_argument("--list_configs", action="store_true", help="list the packaged recipes and exit")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str], argparse.ArgumentParser]:
    """-> (known options, `key=value` overrides, parser)."""
    from ..typed import cli_overrides  # noqa: PLC0415

    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides = cli_overrides(rest, parser.error)  # `--push_to_hub org/name` too: a config field like the others
    return args, overrides, parser


def require_train_extra(command: str = "train") -> None:
    """Raise `UserInputError` saying which `pip install` to run when the `[train]` extra is not installed."""
    import importlib.util  # noqa: PLC0415

    missing = [name for name in ("accelerate", "datasets", "pycocotools") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserInputError(f"`dynamic-atss {command}` needs {', '.join(missing)} (the training extra): "
                             f"run `{TRAIN_EXTRA}`")


def run(argv: list[str]) -> int:
    """0: trained (and pushed); 1: trained and saved, but the push to the Hub failed (the report says how to
    push later); 2: a mistake in the input, found before the output folder was made the run's own; 143 / 130:
    stopped by SIGTERM / SIGINT after a checkpoint (continue with --resume latest)."""
    from ..engine.config import list_recipes, load_config  # noqa: PLC0415

    args, overrides, parser = parse_args(argv)
    if args.list_configs:
        print("\n".join(list_recipes()))
        return 0
    config = load_config(args.config, overrides)  # every key and value checked before anything is built
    require_train_extra()
    from accelerate import PartialState  # noqa: PLC0415  (heavy imports after the config is known good)

    from ..engine.trainer import final_report, train  # noqa: PLC0415

    summary = train(config, resume=args.resume, overwrite=args.overwrite)
    if PartialState().is_main_process:
        print(final_report(summary))
        print(json.dumps({k: v for k, v in summary.items() if k not in ("metrics", "effective")}, indent=2))
    return summary.get("exit_status") or (1 if summary.get("push_error") else 0)  # 143 / 130: stopped by a signal


def main(argv: list[str] | None = None) -> int:
    """`dynamic-atss train ...` under the command-line error rule (see `dynamic_atss.cli`)."""
    return run_command("train", run, sys.argv[1:] if argv is None else argv)

