"""Atomic, rotated, verified training checkpoints on top of `accelerator.save_state` / `load_state`.

A checkpoint is written into a hidden temporary folder and renamed into place only when complete, so a
crash during a save never replaces (or deletes) the previous checkpoint. Its `trainer_state.json` records
the step, the run's configuration and the size and SHA-256 of every file, so that resuming can

* refuse a checkpoint of a different configuration, saying which keys differ;
* name the corrupt or truncated file, and with `--resume latest` fall back to the newest readable checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from safetensors.torch import save_file

from ..errors import UserInputError
from ..files import sha256_file

_NAME = re.compile(r"^checkpoint-(\d{8})$")
STATE_FILE = "trainer_state.json"
# Keys that may change between a run and its resumption (bookkeeping, not the training itself).
RESUME_FREE_KEYS = (
    "output_dir", "log_every", "eval_every", "eval_limit", "checkpoint_every", "keep_checkpoints", "push_to_hub",
    "tracker", "max_bad_steps", "mixed_precision", "grad_accum", "batch_size", "optim.max_iters", "data.num_workers",
    "data.check_images", "data.skip_unreadable", "data.num_val", "data.val_images", "data.val_annotations",
    "data.val_split", "data.name",  # data.name only names the data in the model card
    "save_best", "push_best",
)


class CheckpointError(UserInputError, RuntimeError):
    """A checkpoint that cannot be used (corrupt, truncated, or of another configuration); names the file."""


class CheckpointWriteError(UserInputError, OSError):
    """A checkpoint could not be written (a full disk, a quota); the previous checkpoint is kept."""


class ResumeNotFoundError(CheckpointError, FileNotFoundError):
    """`--resume` names no checkpoint: `latest` in a folder without one, or a path that is not a checkpoint."""


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def save_checkpoint(accelerator: Accelerator, directory: str | Path, step: int, keep: int,
                    state: dict[str, Any] | None = None, tensors: dict[str, dict[str, Any]] | None = None) -> Path:
    """Save model, optimizer, RNG states, the step and `state` (the run's config); keep the newest `keep`.
    `tensors`: more state dicts by file name (`ema.safetensors`), written as safetensors by the main process.

    A write that fails (`OSError`: a full disk, a quota) removes its partial `.tmp-checkpoint-*` folder and
    raises `CheckpointWriteError` naming the folder; the checkpoints written before stay as they were."""
    directory = Path(directory)
    final = directory / f"checkpoint-{step:08d}"
    tmp = directory / f".tmp-checkpoint-{step:08d}"
    try:
        _write_checkpoint(accelerator, tmp, final, step, state, tensors or {})
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = list_checkpoints(directory)
        raise CheckpointWriteError(
            f"cannot write checkpoint {final} ({error.strerror or error}); free space in {directory} (or choose "
            f"another output_dir) and continue with --resume latest"
            + (f" (from {kept[-1].name}, kept)" if kept else "")
        ) from error
    if accelerator.is_main_process:
        for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _write_checkpoint(accelerator: Accelerator, tmp: Path, final: Path, step: int, state: dict[str, Any] | None,
                      tensors: dict[str, dict[str, Any]]) -> None:
    """Everything into `tmp`, its file list into `trainer_state.json`, then one rename to `final`."""
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a crash during an earlier save
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name, state_dict in tensors.items():
            save_file({key: value.detach().contiguous().cpu() for key, value in state_dict.items()}, str(tmp / name))
        files = {
            p.relative_to(tmp).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **(state or {}), "files": files}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    """The checkpoint's `trainer_state.json`, after checking every file it lists (size, then SHA-256)."""
    state_path = path / STATE_FILE
    try:
        state = json.loads(state_path.read_text())
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{state_path} is unreadable ({type(e).__name__}: {e})") from None
    for name, meta in state.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing from the checkpoint")
        size = file.stat().st_size
        if size != meta["size"]:
            raise CheckpointError(f"{file} has {size} bytes, {meta['size']} were saved (truncated or overwritten)")
        if sha256_file(file) != meta["sha256"]:
            raise CheckpointError(f"{file} does not match the SHA-256 recorded when it was saved (corrupt)")
    return state


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.01}} -> {"optim.lr": 0.01}; tuples as lists (as they come back from JSON)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.loads(json.dumps(value))
    return flat


def config_differences(saved: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """'key: saved -> current' for each setting that differs between two config dicts. A key that `saved` lacks
    (a run of a release before the key existed) differs only when `current` sets it off its default."""
    from .config import TrainConfig, config_to_dict  # noqa: PLC0415  (the recipe schema; imports nothing of this)

    a, b = flatten(saved), flatten(current)
    defaults = flatten(config_to_dict(TrainConfig()))
    return [f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}"
            for key in sorted(set(a) | set(b))
            if key not in ignore and a.get(key, defaults.get(key, "<unset>")) != b.get(key)]


def check_same_run(path: Path, state: dict[str, Any], config: dict[str, Any], total_batch_size: int) -> None:
    """Raise `CheckpointError` naming the differing keys when checkpoint `path` was trained otherwise."""
    if "config" not in state:
        return  # written before configurations were recorded: nothing to compare
    differences = config_differences(state["config"], config, RESUME_FREE_KEYS)
    saved_batch = state.get("effective", {}).get("total_batch_size", total_batch_size)
    if saved_batch != total_batch_size:
        differences.append(f"total batch size (batch_size x processes x grad_accum): {saved_batch} -> {total_batch_size}")
    if differences:
        raise CheckpointError(
            f"checkpoint {path} belongs to a different configuration ({'; '.join(differences)}); resume with the "
            "recipe it was trained with (its trainer_state.json holds it), or start a new run with --overwrite or "
            "another output_dir"
        )


def resolve_resume(resume: str, directory: str | Path, config: dict[str, Any] | None = None,
                   total_batch_size: int = 0) -> tuple[Path, list[str]]:
    """The checkpoint to resume from and the newer ones skipped (with why).

    `latest` -> the newest checkpoint in `directory` whose files are intact; otherwise a checkpoint folder
    path, which must be intact. With `config`, the checkpoint must have been trained with it.
    """
    if resume == "latest":
        found = list_checkpoints(directory)
        if not found:
            raise ResumeNotFoundError(
                f"--resume latest: no complete checkpoint in {directory}; start without --resume (add --overwrite "
                "to replace what the output folder holds)"
            )
        skipped = []
        for path in reversed(found):
            try:
                state = read_checkpoint_state(path)
            except CheckpointError as e:
                skipped.append(f"{path.name}: {e}")
                continue
            if config is not None:
                check_same_run(path, state, config, total_batch_size)
            return path, skipped
        raise CheckpointError(f"--resume latest: no readable checkpoint in {directory}: " + "; ".join(skipped))
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise ResumeNotFoundError(
            f"--resume {resume}: not a complete checkpoint folder (no {STATE_FILE}); give a checkpoint-NNNNNNNN "
            "folder of a run, or --resume latest"
        )
    state = read_checkpoint_state(path)
    if config is not None:
        check_same_run(path, state, config, total_batch_size)
    return path, []


def load_checkpoint(accelerator: Accelerator, path: Path) -> int:
    """Restore everything `save_checkpoint` saved; returns the step to continue from."""
    try:
        accelerator.load_state(str(path))
    except Exception as e:  # noqa: BLE001  (whatever the loader raises, name the checkpoint)
        raise CheckpointError(f"cannot load checkpoint {path}: {type(e).__name__}: {e}") from e
    return int(json.loads((path / STATE_FILE).read_text())["step"])
