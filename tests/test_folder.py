"""Tests of dynamic_atss.hub.folder."""

from __future__ import annotations

import os

import pytest
import torch

import dynamic_atss as da
from dynamic_atss.__main__ import main as cli
from dynamic_atss.visualize import save_png

from helpers_hub import tiny_model


def test_saved_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        tiny_model().save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644, "README.md": 0o644,  # was 0600 for weights
                     "preprocessor_config.json": 0o644}


def test_a_truncated_model_file_names_its_path(tmp_path, saved_tiny_model, capsys):
    """Issue 18, item 18: `SafetensorError: incomplete metadata` without the path became one line naming it."""
    weights = saved_tiny_model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5])
    with pytest.raises(ValueError, match=rf"{weights} cannot be read .*truncated or corrupt"):
        da.create(str(saved_tiny_model))
    image = tmp_path / "a.png"
    save_png((torch.rand(3, 40, 50) * 255).to(torch.uint8), image)
    assert cli(["predict", str(image), "--model", str(saved_tiny_model), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_with_nan_or_inf_are_refused_naming_the_file_and_tensor(saved_tiny_model, bad):
    """Issue 23, item 7: such a folder loaded and then gave NaN boxes (or nothing) without a word."""
    from safetensors.torch import load_file, save_file

    from dynamic_atss.errors import UserInputError

    weights = saved_tiny_model / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["head.bbox_pred.weight"][0, 0, 0, 0] = bad
    save_file(tensors, str(weights))
    with pytest.raises(UserInputError) as caught:
        da.create(saved_tiny_model)
    message = str(caught.value)
    assert "\n" not in message and str(weights) in message and "'head.bbox_pred.weight'" in message
    assert "1 NaN/inf value(s)" in message


def test_large_finite_weights_whose_sum_overflows_still_load(saved_tiny_model):
    from safetensors.torch import load_file, save_file

    weights = saved_tiny_model / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["head.bbox_pred.weight"][0, :2, 0, 0] = 3e38  # finite; their float32 sum is inf
    save_file(tensors, str(weights))
    assert da.create(saved_tiny_model).head.bbox_pred.weight[0, 0, 0, 0] == 3e38
