"""`dynamic-atss push`: push a saved dynamic-atss model folder to the Hugging Face Hub, and optionally pin it in the model index.

    dynamic-atss push --model out/r50_1x/final --repo org/dynamic-atss-r50-1x-coco
    dynamic-atss push --model out/r50_1x/final --repo org/dynamic-atss-r50-1x-coco \\
        --update-index dynamic_atss_r50.coco_1x          # writes hf_hub_id + the new commit sha into the index

`--update-index` edits the model index of a source checkout (`dynamic_atss/model_index.json` below the current
folder, or `--index-file`), for a pull request: never the index of the installed package.

The folder is what `model.save_pretrained(dir, recipe=..., metrics=...)` (and `dynamic-atss train`) writes:
config.json, model.safetensors, README.md, preprocessor_config.json. It is rebuilt (strictly) before anything is
uploaded; one commit holds the four files. The commit sha printed at the end is what `model_index.json` pins as `revision`.
Authentication: `hf auth login`, HF_TOKEN, or --token.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..registry import split_name
from .push import push_model_dir
from .serialization import read_config

CHECKOUT_INDEX = Path("dynamic_atss") / "model_index.json"  # relative to the current folder: a source checkout


def index_entry(model_tag: str, repo_id: str, revision: str, document: dict[str, Any]) -> dict[str, Any]:
    """A `model_index.json` entry for `model.tag` pointing at `repo_id@revision` (recipe/metrics from config.json)."""
    model, _, tag = model_tag.partition(".")
    if not model or not tag:
        raise SystemExit(f"--update-index expects MODEL.TAG, e.g. dynamic_atss_r50.coco_1x; got {model_tag!r}")
    model, _ = split_name(model)  # 'r50' -> 'dynamic_atss_r50'; 'atss_r50' stays (unknown names are an error)
    recipe = document.get("recipe") or {}
    return {
        "model": model, "tag": tag, "hf_hub_id": repo_id, "revision": revision,
        "recipe": recipe.get("name") if isinstance(recipe, dict) else None,
        "metrics": document.get("metrics") or {},
    }


def update_index(entry: dict[str, Any], index_file: Path) -> None:
    """Replace the entry with the same model and tag (or append it), keeping one entry per line."""
    data = json.loads(index_file.read_text())
    weights = data["weights"]
    for position, old in enumerate(weights):
        if old["model"] == entry["model"] and old["tag"] == entry["tag"]:
            merged = {**old, **{k: v for k, v in entry.items() if v not in (None, {})}}
            merged["hf_hub_id"], merged["revision"] = entry["hf_hub_id"], entry["revision"]
            weights[position] = merged
            break
    else:
        weights.append(entry)
    lines = ",\n".join("    " + json.dumps(item) for item in weights)
    index_file.write_text(f'{{\n  "about": {json.dumps(data["about"])},\n  "weights": [\n{lines}\n  ]\n}}\n')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dynamic-atss push", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="folder written by save_pretrained")
    parser.add_argument("--repo", required=True, help="Hub repo id, org/name (created if needed)")
    parser.add_argument("--private", action="store_true", help="create the repo private (ignored if it exists)")
    parser.add_argument("--revision", default=None, help="branch to push to (created if needed); default main")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of pushing to the branch")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in token / HF_TOKEN)")
    parser.add_argument("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    parser.add_argument("--keep-card", action="store_true", help="upload README.md as it is, never regenerate it")
    parser.add_argument("--update-index", metavar="MODEL.TAG", default=None,
                        help="pin the pushed commit under this name in the model index of a source checkout")
    parser.add_argument("--index-file", type=Path, default=CHECKOUT_INDEX,
                        help=f"the model index to edit (default: ./{CHECKOUT_INDEX}, run from a dynamic-atss checkout)")
    args = parser.parse_args(argv)
    if args.update_index and not args.index_file.is_file():
        print(f"error: --update-index: {args.index_file} not found; run from a dynamic-atss source checkout or pass "
              "--index-file PATH (the installed package's index is never edited)", file=sys.stderr)
        return 2

    _, document = read_config(args.model)
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
