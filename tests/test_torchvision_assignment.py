"""dynamic_atss.benchmark.torchvision_assignment (`dynamic-atss benchmark torchvision`): the torchvision assignment
study (tiny settings here)."""

from __future__ import annotations

import json

import pytest
import torch

from dynamic_atss.benchmark.torchvision_assignment import TinyBackbone, format_results, train_and_evaluate
from dynamic_atss.cli.benchmark import main as benchmark_main


def test_tiny_backbone_gives_three_levels_of_strides_8_16_32():
    features = TinyBackbone(32)(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape) for f in features.values()] == [(1, 32, 8, 12), (1, 32, 4, 6), (1, 32, 2, 3)]


def test_the_study_runs_end_to_end_and_writes_every_run(tmp_path, capsys):
    out = tmp_path / "runs.json"
    assert benchmark_main(command="torchvision", argv=[
        "--families", "fcos", "retinanet", "--assignments", "torchvision", "combined", "--seeds", "0",
        "--iterations", "2", "--train_images", "8", "--val_images", "4", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| fcos | combined |" in table and "| retinanet | torchvision |" in table
    results = json.loads(out.read_text())["results"]
    assert sorted(results) == ["fcos/combined", "fcos/torchvision", "retinanet/combined", "retinanet/torchvision"]
    assert all(len(runs["AP"]) == 1 and 0 <= runs["AP"][0] <= 1 for runs in results.values())


def test_format_results_gives_mean_and_per_seed_ap_in_percent():
    table = format_results({"fcos/atss": {"AP": [0.10, 0.20, 0.30]}}, [0, 1, 2])
    assert table.splitlines()[-1] == "| fcos | atss | 20.0 | 10.0 | 20.0 | 30.0 |"


def test_an_unknown_assignment_is_refused_before_training():
    with pytest.raises(ValueError, match="unknown assignment 'fcos_style'"):
        train_and_evaluate("fcos", "fcos_style", 0, None)


def test_the_command_offers_the_study_s_own_choices():
    """`dynamic-atss benchmark torchvision --help` imports no torch, so the command keeps copies of the choices."""
    from dynamic_atss.benchmark import torchvision_assignment as study
    from dynamic_atss.cli import benchmark as command

    assert command.TORCHVISION_FAMILIES == study.FAMILIES
    assert command.TORCHVISION_ASSIGNMENTS == tuple(study.ASSIGNMENTS)
    defaults = command.torchvision_parser().parse_args([])
    assert (defaults.iterations, defaults.train_images, defaults.val_images) == (
        study.Recipe.iterations, study.Recipe.train_images, study.Recipe.val_images)
