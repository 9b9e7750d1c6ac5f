"""cli/predict.py: `dynamic-atss predict` options (numbers in range, devices, outputs never overwritten), its COCO
results and its drawings; run as the installed command where the exit status and the absence of a traceback matter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynamic_atss.__main__ import main as cli
from dynamic_atss.visualize import save_png

ROOT = Path(__file__).resolve().parents[1]
COMMAND = [str(Path(sys.executable).with_name("dynamic-atss"))]


def run_installed(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`dynamic-atss ARGS` as a user runs it (this tree on PYTHONPATH), one thread, offline."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                   **(env or {})}
    return subprocess.run(COMMAND + list(args), capture_output=True, text=True, timeout=300, cwd=cwd, env=environment)


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Assert exit status 2, no traceback, and a last stderr line `dynamic-atss CMD: error: ...` with `fragments`."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("dynamic-atss ") and ": error: " in line, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    return result.stderr


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "img.png"
    save_png((torch.rand(3, 60, 80) * 255).to(torch.uint8), path)
    return path


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--batch_size", "0"], "--batch_size: must be >= 1"),
    (["--batch-size", "0"], "--batch_size: must be >= 1"),  # the kebab-case spelling is the same option
    (["--threshold", "2"], "--threshold: scores are in [0, 1]"),
    (["--threshold", "-1"], "--threshold: scores are in [0, 1]"),
    (["--max_detections", "0"], "--max_detections: must be >= 1"),
])
def test_numbers_out_of_range_are_refused(image, flags, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["predict", str(image), "--model", "r50", *flags])
    assert exit_info.value.code == 2 and fragment in capsys.readouterr().err
