"""Atomic, rotated training checkpoints on top of `accelerator.save_state` / `load_state`.

A checkpoint is written into a hidden temporary folder and renamed into place only when complete, so a
crash during a save never replaces (or deletes) the previous checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

_NAME = re.compile(r"^checkpoint-(\d{8})$")
STATE_FILE = "trainer_state.json"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def save_checkpoint(accelerator: Accelerator, directory: str | Path, step: int, keep: int) -> Path:
    """Save model, optimizer, scheduler, RNG states and the step; keep the newest `keep` checkpoints."""
    directory = Path(directory)
    final = directory / f"checkpoint-{step:08d}"
    tmp = directory / f".tmp-checkpoint-{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a crash during an earlier save
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(resume: str, directory: str | Path) -> Path:
    """`latest` -> the newest complete checkpoint in `directory`; otherwise a checkpoint folder path."""
    if resume == "latest":
        found = list_checkpoints(directory)
        if not found:
            raise FileNotFoundError(f"--resume latest: no complete checkpoint in {directory}")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint folder (no {STATE_FILE})")
    return path


def load_checkpoint(accelerator: Accelerator, path: Path) -> int:
    """Restore everything `save_checkpoint` saved; returns the step to continue from."""
    accelerator.load_state(str(path))
    return int(json.loads((path / STATE_FILE).read_text())["step"])
