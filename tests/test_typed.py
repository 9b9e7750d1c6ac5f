"""Typed configuration: one converter for ModelConfig and TrainConfig, CLI and YAML alike."""

from __future__ import annotations

import re

import pytest
import yaml

from dynamic_atss.config import ModelConfig, apply_overrides, family_option_rows
from dynamic_atss.engine import load_config, trainer
from dynamic_atss.engine.config import TrainConfig
from dynamic_atss.cli.train import main as train_main
from dynamic_atss.typed import ConfigError, convert, field_rows, field_types
from helpers_trainer import TINY_RECIPE, write_recipe


@pytest.fixture
def nothing_built(refuse):
    """Fails the test if the trainer gets as far as building data."""
    refuse(trainer, "build_datasets")


def test_values_are_converted_to_the_field_types(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", optim={**TINY_RECIPE["optim"], "lr": "1e-3"})  # how PyYAML reads 1e-3
    assert yaml.safe_load("lr: 1e-3")["lr"] == "1e-3"
    config = load_config(recipe, ["optim.grad_clip=None", "optim.max_iters=1e2", "optim.steps=[60, 80]",
                                  "data.image_size=96,128", "backbone_pretrained=yes", "eval_limit=null",
                                  "model_overrides.head.prior_prob=1e-2", "model_overrides.min_size=[96, 128]"])
    assert config.optim.lr == 0.001 and isinstance(config.optim.lr, float)
    assert config.optim.grad_clip is None and config.optim.max_iters == 100 and config.optim.steps == (60, 80)
    assert config.data.image_size == (96, 128) and config.backbone_pretrained is True and config.eval_limit is None
    assert config.model_overrides["head.prior_prob"] == 0.01 and config.model_overrides["min_size"] == (96, 128)
    # The model config goes through the same converter.
    model = apply_overrides(ModelConfig(), {"loss.focal_alpha": "2.5e-1", "assigner.pred_weight": "up",
                                            "anchors.strides": [8, 16, 32, 64, 128]})
    assert model.head.family_options().focal_alpha == 0.25 and model.assigner.pred_weight == "up" and model.anchors.strides == (8, 16, 32, 64, 128)
    # a family's option in the flat layout of format_version 1 (`loss.focal_gamma`) goes to the head's options
    assert ModelConfig.from_dict({"loss": {"focal_gamma": "2e0"}}).head.family_options().focal_gamma == 2.0


@pytest.mark.parametrize("override, message", [
    ("batch_size=two", r"batch_size: expected int, got 'two'"),
    ("optim.max_iters=1.25e1", r"optim.max_iters: expected int, got '1.25e1'"),
    ("optim.name=adam", r"optim.name: expected 'sgd' \| 'adamw', got 'adam'"),
    ("optim.lrr=0.1", r"unknown override 'optim.lrr': no key 'lrr' in optim \(did you mean 'lr'\?\)"),
    ("optimm.lr=0.1", r"no key 'optimm' in TrainConfig \(did you mean 'optim'\?\)"),
    ("model_overrides.head.chanels=8", r"no key 'chanels' in head \(did you mean 'channels'\?\)"),
    ("model_overrides.head.quality=ious", r"head.quality: expected 'centerness' \| 'iou', got 'ious'"),
    ("data.image_size=[1, 2, 3]", r"data.image_size: expected tuple\[int, int\]"),
    ("mixed_precision=fp32", r"mixed_precision: expected 'no' \| 'fp16' \| 'bf16' \| 'fp8' \| None"),
    ("tracker=wandbb", r"unknown tracker 'wandbb' \(did you mean 'wandb'\?\)"),
    # out-of-range numbers (issue 18, items 5, 13 and 16): refused with the key and its range, no folder claimed
    ("optim.lr=-1", r"optim.lr = -1.0 is out of range: it must be a finite number > 0; set --optim.lr"),
    ("optim.lr=nan", r"optim.lr = nan is out of range: it must be a finite number > 0"),
    ("optim.gamma=-2", r"optim.gamma = -2.0 is out of range: it must be a finite number > 0"),
    ("optim.steps=[8, 4]", r"optim.steps = \(8, 4\) is out of range: it must be iterations >= 1 in increasing order"),
    ("optim.warmup_factor=0", r"optim.warmup_factor = 0.0 is out of range: it must be in \(0, 1\]"),
    ("optim.weight_decay=-1e-4", r"optim.weight_decay = -0.0001 is out of range"),
    ("seed=-1", r"seed = -1 is out of range: it must be in \[0, 2\*\*32\)"),
    ("data.num_workers=-3", r"data.num_workers = -3 is out of range: it must be >= 0"),
    ("data.flip_prob=1.5", r"data.flip_prob = 1.5 is out of range: it must be in \[0, 1\]"),
    ("eval_limit=0", r"eval_limit = 0 is out of range: it must be >= 1, or null"),
])
def test_bad_values_and_keys_fail_before_anything_is_built(tmp_path, nothing_built, capsys, override, message):
    recipe = write_recipe(tmp_path / "r.yaml", output_dir=str(tmp_path / "run"))
    key, value = override.split("=", 1)
    assert train_main(["--config", str(recipe), f"--{key}", value]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_yaml_no_for_a_literal_says_to_quote_it():
    assert yaml.safe_load("mixed_precision: no")["mixed_precision"] is False  # YAML 1.1
    with pytest.raises(ConfigError, match="quote the value"):
        convert(False, field_types(TrainConfig)["mixed_precision"], "mixed_precision")


def test_help_lists_every_field_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    rows = field_rows(TrainConfig) + field_rows(ModelConfig, "model_overrides.") + family_option_rows("model_overrides.")
    for name, _, default, _ in rows:
        if name == "model_overrides":
            continue
        line = next((line for line in text.splitlines() if line.strip().startswith(f"--{name} ")), None)
        assert line is not None, f"--help does not list {name}"
        assert f"default: {default!r}" in line
    assert "--optim.lr FLOAT" in text and "--model_overrides.head.quality 'centerness' | 'iou'" in text


def test_lr_steps_past_max_iters_are_allowed_with_a_warning_naming_them(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml")
    with pytest.warns(UserWarning, match=r"optim.steps \[80\] are at or past optim.max_iters = 50: those learning-rate"):
        config = load_config(recipe, ["optim.max_iters=50", "optim.steps=[20, 80]"])
    assert config.optim.steps == (20, 80)
