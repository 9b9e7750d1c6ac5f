"""`dynamic-atss push`: push a saved dynamic-atss model folder to the Hugging Face Hub, and optionally pin it in the model index.

    dynamic-atss push --model out/r50_1x/final --push_to_hub org/dynamic-atss-r50-1x-coco
    dynamic-atss push --model out/r50_1x/final --push_to_hub org/dynamic-atss-r50-1x-coco \\
        --update_index dynamic_atss_r50.coco_1x          # writes hf_hub_id + the new commit sha into the index

`--update_index` edits the model index of a source checkout (`dynamic_atss/model_index.json` below the current
folder, or `--index_file`), for a pull request: never the index of the installed package.

The folder is what `model.save_pretrained(dir, recipe=..., metrics=...)` (and `dynamic-atss train`) writes:
config.json, model.safetensors, README.md, preprocessor_config.json. It is rebuilt (strictly) before anything is
uploaded; one commit holds the four files. The commit sha printed at the end is what `model_index.json` pins as `revision`.
Authentication: `hf auth login`, HF_TOKEN, or --token.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserInputError
from . import CommandParser, run_command

CHECKOUT_INDEX = Path("dynamic_atss") / "model_index.json"  # relative to the current folder: a source checkout


def build_parser() -> CommandParser:
    parser = CommandParser("push", description=__doc__, aliases={"--repo": "--push_to_hub"})
    parser.add_argument("--model", required=True, type=Path, help="folder written by save_pretrained")
    parser.add_argument("--push_to_hub", required=True, metavar="ORG/NAME",
                        help="Hub repo id (created if needed); `--repo` is the old name")
    parser.add_argument("--private", action="store_true", help="create the repo private (ignored if it exists)")
    parser.add_argument("--revision", default=None, help="branch to push to (created if needed; default main)")
    parser.add_argument("--commit_message", default=None, help="the Hub commit's message (default: generated)")
    parser.add_argument("--create_pr", action="store_true", help="open a pull request instead of pushing to the branch")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in token / HF_TOKEN)")
    parser.add_argument("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    parser.add_argument("--keep_card", action="store_true", help="upload README.md as it is, never regenerate it")
    parser.add_argument("--update_index", metavar="MODEL.TAG", default=None,
                        help="pin the pushed commit under this name in the model index of a source checkout")
    parser.add_argument("--index_file", type=Path, default=CHECKOUT_INDEX,
                        help=f"the model index to edit (default: ./{CHECKOUT_INDEX}, run from a dynamic-atss checkout)")
    return parser


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.update_index and not args.index_file.is_file():
        raise UserInputError(f"--update_index: {args.index_file} not found; run from a dynamic-atss source checkout "
                             "or pass --index_file PATH (the installed package's index is never edited)")
    if not args.model.is_dir():
        raise UserInputError(f"--model {args.model}: no such folder; give the folder save_pretrained (or "
                             "`dynamic-atss train`) wrote, holding config.json and model.safetensors")
    from ..hub.push import index_entry, push_model_dir, update_index  # noqa: PLC0415  (--help stays fast)
    from ..hub.serialization import ConfigFormatError, read_config  # noqa: PLC0415

    try:
        _, document = read_config(args.model)
    except (ConfigFormatError, FileNotFoundError) as error:
        raise UserInputError(f"--model {args.model}: {error}") from None
    args.repo = args.push_to_hub
    info = push_model_dir(
        args.model, args.repo, private=args.private or None, revision=args.revision, commit_message=args.commit_message,
        token=args.token, endpoint=args.endpoint, create_pr=args.create_pr,
        regenerate_card=False if args.keep_card else None,
    )
    print(f"pushed {args.model} to {args.repo}: commit {info.oid}")
    print(f"  {info.commit_url}")
    if info.pr_url:
        print(f"  pull request: {info.pr_url}")
    print(f'load it with dynamic_atss.create("hf-hub:{args.repo}@{info.oid}")')
    if args.update_index:
        if args.create_pr:
            print("not updating the index: a pull request is not published yet", file=sys.stderr)
            return 1
        entry = index_entry(args.update_index, args.repo, info.oid, document)
        update_index(entry, args.index_file)
        print(f"pinned {entry['model']}.{entry['tag']} -> {args.repo}@{info.oid} in {args.index_file}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`dynamic-atss push ...` under the command-line error rule (see `dynamic_atss.cli`)."""
    return run_command("push", run, sys.argv[1:] if argv is None else argv)

