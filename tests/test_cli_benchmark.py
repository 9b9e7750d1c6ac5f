"""cli/benchmark.py: `dynamic-atss benchmark {coco,speed,assigner}`: options, dispatch, the thin scripts."""

import subprocess
import sys
from pathlib import Path

import pytest

from dynamic_atss.cli.benchmark import main as benchmark_main, parse_size, parse_speed_args

REPO = Path(__file__).resolve().parents[1]


def test_parse_size_and_bad_options():
    assert parse_size("800x1216") == (800, 1216)
    assert parse_size("512") == (512, 512)
    with pytest.raises(Exception, match="HEIGHTxWIDTH"):
        parse_size("big")
    with pytest.raises(SystemExit):
        parse_speed_args(["--iters", "0"])
    with pytest.raises(SystemExit):
        parse_speed_args(["--cls-prior", "1.5"])


def test_cli_entry_points_dispatch(capsys):
    assert benchmark_main([]) == 2  # no benchmark named: the usage, as a mistake
    assert "coco" in capsys.readouterr().out
    assert benchmark_main(["nonsense"]) == 2
    from dynamic_atss.__main__ import main as package_main

    with pytest.raises(SystemExit) as exit_info:  # argparse --help exits 0
        package_main(["benchmark", "coco", "--help"])
    assert exit_info.value.code == 0 and "--split" in capsys.readouterr().out
    # the thin script runs as a file
    result = subprocess.run([sys.executable, "benchmarks/throughput.py", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "+onnx" in result.stdout
