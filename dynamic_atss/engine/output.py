"""The output folder of a training run: one run per folder, one process writing at a time.

* A lock file (`filelock`, released by the OS when the process dies) stops a second concurrent run.
* A folder that already holds files is refused unless the run resumes (`--resume`) or replaces the previous
  run (`--overwrite`, which deletes only the previous run's artifacts); the error says whether the folder
  holds this recipe or another one, and what differs.
* Claiming is two steps: `claim_output_dir` locks and checks the folder (changing nothing in it), and
  `start_run` -- called once the config, data and model are known good -- deletes what `--overwrite`
  replaces and writes `train_config.json`. A user's mistake found in between leaves the folder as it was:
  releasing the claim removes the lock file, and the folder itself when the claim created it and it is empty.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from filelock import FileLock, Timeout

from ..errors import UserInputError
from .checkpoint import RESUME_FREE_KEYS, config_differences

LOCK_FILE = ".lock"
CONFIG_FILE = "train_config.json"
# What a run writes into its folder (`--overwrite` deletes these and nothing else).
RUN_ARTIFACTS = ("checkpoints", "model", "best", "plots", "eval", "log.jsonl", CONFIG_FILE, "dynamic_atss")


class OutputDirError(UserInputError, RuntimeError):
    """The output folder is in use, or holds another run; the message says what to do."""


def _previous_config(output_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((output_dir / CONFIG_FILE).read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class OutputClaim:
    """The held lock of a run's output folder; `release()` leaves no trace of a claim that never started."""

    lock: FileLock
    output_dir: Path
    created: bool  # the claim made the folder (a failed start removes it again when it is empty)

    def release(self) -> None:
        self.lock.release()
        # The lock file goes too: a folder of a finished, stopped or failed run holds no `.lock` that reads as busy.
        (self.output_dir / LOCK_FILE).unlink(missing_ok=True)
        if self.created and not any(self.output_dir.iterdir()):
            self.output_dir.rmdir()


def claim_output_dir(output_dir: str | Path, config: dict[str, Any], resume: bool, overwrite: bool) -> OutputClaim:
    """Lock `output_dir` for this run and check it may be written (nothing in it changes); returns the held claim
    (release it at the end). `start_run` makes the run the folder's own."""
    output_dir = Path(output_dir)
    if resume and overwrite:
        raise OutputDirError("--resume and --overwrite contradict each other: choose one")
    created = not output_dir.exists()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(output_dir / LOCK_FILE)
        lock.acquire(timeout=0)
    except Timeout:
        raise OutputDirError(
            f"another training run is writing to {output_dir} (it holds the lock {output_dir / LOCK_FILE}); wait for "
            "it to finish or choose another output_dir"
        ) from None
    except OSError as error:  # a read-only place, a file where the folder should be, ...
        raise OutputDirError(
            f"cannot write to the output folder {output_dir} ({type(error).__name__}: {error}); choose another "
            "output_dir"
        ) from None
    try:
        existing = sorted(p.name for p in output_dir.iterdir() if p.name != LOCK_FILE)
        if existing and not resume and not overwrite:
            previous = _previous_config(output_dir)
            listing = ", ".join(existing[:8]) + (", ..." if len(existing) > 8 else "")
            if previous is None:
                why = f"is not empty ({listing}) and holds no training run's {CONFIG_FILE}"
            else:
                differences = config_differences(previous, config, RESUME_FREE_KEYS)
                why = (f"holds a run of a different configuration ({'; '.join(differences)})" if differences
                       else "holds an earlier run of this configuration")
            raise OutputDirError(
                f"output folder {output_dir} {why}. Continue it with --resume latest, replace it with --overwrite, "
                "or choose another output_dir"
            )
        claim = OutputClaim(lock, output_dir, created)
    except BaseException:
        OutputClaim(lock, output_dir, created).release()
        raise
    return claim


def start_run(output_dir: str | Path, run_record: dict[str, Any], overwrite: bool) -> None:
    """Under the lock of `claim_output_dir`: delete the previous run's artifacts (`overwrite`) and write
    `train_config.json` (`run_record`: the config and the effective settings)."""
    output_dir = Path(output_dir)
    if overwrite:
        for name in RUN_ARTIFACTS:
            target = output_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    (output_dir / CONFIG_FILE).write_text(json.dumps(run_record, indent=2))
