"""Running the installed `dynamic-atss` command as a user does (a subprocess, this tree on PYTHONPATH, offline)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND = str(Path(sys.executable).with_name("dynamic-atss"))

def run_installed(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                  executable: list[str] | None = None) -> subprocess.CompletedProcess:
    """`dynamic-atss ARGS` (or `executable ARGS`) with this tree on PYTHONPATH, one thread, the Hub offline."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                   **(env or {})}
    return subprocess.run((executable or [COMMAND]) + list(args), capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=environment)


def one_line_error(result: subprocess.CompletedProcess, command: str, *fragments: str) -> str:
    """Assert exit status 2, no traceback, and one stderr line `dynamic-atss COMMAND: error: ...` holding every
    fragment (warnings may come before it); returns that line."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"dynamic-atss {command}: error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def save_tiny_model(path: Path, **kwargs) -> Path:
    """A tiny random model folder (3 classes) at `path`."""
    import dynamic_atss as da

    model = da.create("r50", num_classes=3, class_names=["a", "b", "c"], backbone="test_resnet", fpn_channels=32,
                      **{"head.channels": 32, "head.num_groups": 8}, **kwargs)
    model.save_pretrained(path)
    return path
