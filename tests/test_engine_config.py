"""Tests of dynamic_atss.engine.config."""

import pytest

from dynamic_atss.engine import load_config

from helpers_trainer import ROOT


# ---------------------------------------------------------------------------------------------- configuration
def test_config_base_overrides_and_errors(tmp_path):
    config = load_config(ROOT / "configs" / "dynamic_atss_r101_2x_ms.yaml", ["optim.lr=0.02", "model_overrides.assigner.pred_weight=up"])
    assert config.model == "r101" and config.optim.max_iters == 180_000 and config.optim.steps == (120_000, 160_000)
    assert config.optim.lr == 0.02 and config.optim.warmup_iters == 500  # from the base file
    assert config.model_overrides["min_size"] == (640, 672, 704, 736, 768, 800)
    assert config.model_overrides["assigner.pred_weight"] == "up"
    with pytest.raises(ValueError, match=r"unknown override 'lr'"):
        load_config(None, ["lr=0.1"])
    with pytest.raises(FileNotFoundError, match="neither a file nor a packaged recipe"):
        load_config(tmp_path / "missing.yaml")


def test_packaged_recipes_load_by_name_or_path():
    by_name = load_config("dynamic_atss_r50_1x")
    assert by_name == load_config(ROOT / "configs" / "dynamic_atss_r50_1x.yaml")
    assert load_config("ablations/table1_qfl").model_overrides["assigner.pred_weight"] == 0.0
    with pytest.raises(FileNotFoundError, match="did you mean 'demo_cpu'"):
        load_config("demo_cpuu")
    from dynamic_atss.engine.config import RECIPES_DIR, list_recipes

    assert RECIPES_DIR.parent == ROOT / "dynamic_atss" and "demo_cpu" in list_recipes()
    for name in list_recipes():  # every packaged recipe is valid
        load_config(name)


def test_demo_yaml_matches_the_embedded_default():
    from dynamic_atss.demo import DEMO_CONFIG

    assert load_config(ROOT / "configs" / "demo_cpu.yaml") == DEMO_CONFIG == load_config("demo_cpu")
