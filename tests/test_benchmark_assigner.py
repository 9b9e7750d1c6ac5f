"""Tests of dynamic_atss.benchmark.assigner."""

from __future__ import annotations

import json

from dynamic_atss.__main__ import main as cli


def test_benchmark_assigner_runs(tmp_path, capsys):
    out = tmp_path / "assigner.json"
    assert cli(["benchmark", "assigner", "--repeats", "1", "--batch", "1", "--num-gt", "3", "--height", "64",
                "--width", "64", "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["assigner"]
    assert any(row["name"].startswith("batched, combined") for row in rows)
