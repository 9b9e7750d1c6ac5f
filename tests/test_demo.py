"""Tests of dynamic_atss.demo (the runs, through `dynamic-atss demo`); the options are in test_cli_demo.py."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from dynamic_atss.__main__ import main as cli

from helpers_trainer import TINY_RECIPE


def test_demo_compares_gflv2_with_and_without_combined_ious(tmp_path):
    import yaml
    from dynamic_atss.__main__ import main as cli
    from helpers_trainer import TINY_RECIPE

    recipe = dict(TINY_RECIPE, output_dir=str(tmp_path / "demo"), checkpoint_every=0)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    assert cli(["demo", "--config", str(tmp_path / "tiny.yaml"), "--iters", "3", "--compare", "--head", "gflv2"]) == 0
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert set(summary["AP"]) == {"GFLV2 + CIoUs (combined IoUs)", "GFLV2 (anchor IoUs only)"}
    baseline = json.loads((tmp_path / "demo" / "gflv2_baseline" / "model" / "config.json").read_text())["model"]
    assert baseline["head"]["kind"] == "gfl" and baseline["head"]["options"]["dgqp"] and baseline["assigner"]["pred_weight"] == 0.0
    main = json.loads((Path(summary["model_dir"]) / "config.json").read_text())["model"]
    assert main["head"]["options"]["dgqp"] and main["assigner"]["pred_weight"] == 1.0
    assert (tmp_path / "demo" / "losses.png").is_file()


def test_demo_with_comparison_writes_its_outputs(tmp_path):
    recipe = dict(TINY_RECIPE, output_dir=str(tmp_path / "demo"), checkpoint_every=0)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    assert cli(["demo", "--config", str(tmp_path / "tiny.yaml"), "--iters", "4", "--compare"]) == 0
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert set(summary["AP"]) == {"Dynamic ATSS (combined IoUs)", "ATSS (anchor IoUs only)"}
    assert (tmp_path / "demo" / "predictions.png").is_file()
    assert (tmp_path / "demo" / "losses.png").is_file()  # matplotlib is in the dev set-up (plot extra)
    assert (tmp_path / "demo" / "assignment.png").is_file()  # both runs' assignment dynamics in one figure
    baseline = json.loads((tmp_path / "demo" / "atss_baseline" / "model" / "config.json").read_text())
    assert baseline["model"]["assigner"]["pred_weight"] == 0.0
