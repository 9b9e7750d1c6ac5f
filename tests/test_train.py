import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dynamic_atss.engine import NonFiniteLossError, load_config, train
from dynamic_atss.engine.checkpoint import list_checkpoints, resolve_resume
from dynamic_atss.engine.schedule import lr_factor
from dynamic_atss.engine.config import OptimConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train as train_script  # noqa: E402  (the root train.py)

TINY_RECIPE = {
    "model": "r50",
    "model_overrides": {
        "backbone.name": "test_resnet", "backbone.norm": "bn", "backbone.frozen_stages": -1,
        "fpn_channels": 32, "head.channels": 32, "head.num_groups": 8, "head.num_convs": 2,
        "min_size": 128, "max_size": 128,
    },
    "backbone_pretrained": False,
    "data": {"kind": "synthetic", "num_train": 24, "num_val": 4, "image_size": [128, 128], "num_workers": 0},
    "optim": {"name": "sgd", "lr": 0.01, "base_batch_size": 2, "warmup_iters": 3, "max_iters": 10, "steps": [8]},
    "batch_size": 2,
    "log_every": 1,
    "checkpoint_every": 5,
    "keep_checkpoints": 2,
    "tracker": "none",
}


def write_recipe(path: Path, **changes) -> Path:
    recipe = json.loads(json.dumps(TINY_RECIPE))
    for key, value in changes.items():
        recipe[key] = value
    path.write_text(yaml.safe_dump(recipe))
    return path


def losses_by_step(log: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return {r["step"]: r for r in records if "loss" in r}


def test_ten_steps_write_checkpoints_and_a_hub_model(tmp_path):
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"))
    assert train_script.main(["--config", str(recipe)]) == 0
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["checkpoint-00000005", "checkpoint-00000010"]
    assert (run / "model" / "model.safetensors").is_file() and (run / "model" / "config.json").is_file()
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["model"]["backbone"]["name"] == "test_resnet" and config["model"]["num_classes"] == 6
    log = losses_by_step(run / "log.jsonl")
    assert sorted(log) == list(range(1, 11))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log.values())
    assert "assign/num_pos" in log[1] and "assign/frac_not_atss" in log[1]
    evals = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if "eval/AP" in line]
    assert len(evals) == 1 and 0.0 <= evals[0]["eval/AP"] <= 1.0


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "full"))
    train(load_config(recipe))
    full = losses_by_step(tmp_path / "full" / "log.jsonl")

    # A run "killed" after step 5: its checkpoint-5 and the log up to step 5 survive.
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "checkpoint-00000005", resumed_dir / "checkpoints" / "checkpoint-00000005")
    (resumed_dir / ".tmp-checkpoint-00000010").mkdir()  # a crash during the next save leaves this behind
    train(load_config(recipe, [f"output_dir={resumed_dir}", "data.num_val=0"]), resume="latest")
    resumed = losses_by_step(resumed_dir / "log.jsonl")
    assert sorted(resumed) == [6, 7, 8, 9, 10]
    for step in resumed:
        for key in ("loss", "loss_cls", "loss_box", "loss_quality", "lr"):
            assert resumed[step][key] == pytest.approx(full[step][key], rel=1e-5, abs=1e-6), (step, key)


def test_resume_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_resume("latest", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path), tmp_path)


def test_non_finite_losses_are_skipped_then_stop(tmp_path, monkeypatch):
    from dynamic_atss.detection.heads.atss import ATSSHead

    original = ATSSHead.loss

    def nan_loss(self, *args, **kwargs):
        losses = original(self, *args, **kwargs)
        losses["loss_box"] = losses["loss_box"] * float("nan")
        return losses

    monkeypatch.setattr(ATSSHead, "loss", nan_loss)
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "nan"), max_bad_steps=3)
    with pytest.warns(UserWarning, match="non-finite loss"), pytest.raises(NonFiniteLossError, match="3 consecutive"):
        train(load_config(recipe))


def test_config_base_overrides_and_errors(tmp_path):
    config = load_config(ROOT / "configs" / "dynamic_atss_r101_2x_ms.yaml", ["optim.lr=0.02", "model_overrides.assigner.pred_weight=up"])
    assert config.model == "r101" and config.optim.max_iters == 180_000 and config.optim.steps == (120_000, 160_000)
    assert config.optim.lr == 0.02 and config.optim.warmup_iters == 500  # from the base file
    assert config.model_overrides["min_size"] == [640, 672, 704, 736, 768, 800]
    assert config.model_overrides["assigner.pred_weight"] == "up"
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lr'\]"):
        load_config(None, ["lr=0.1"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_demo_yaml_matches_the_embedded_default():
    from dynamic_atss.demo import DEMO_CONFIG

    assert load_config(ROOT / "configs" / "demo_cpu.yaml") == DEMO_CONFIG


def test_warmup_and_step_schedule():
    config = OptimConfig(warmup_iters=500, warmup_factor=1 / 3, steps=(60_000, 80_000))
    assert lr_factor(0, config) == pytest.approx(1 / 3)
    assert lr_factor(250, config) == pytest.approx(2 / 3)
    assert lr_factor(500, config) == 1.0
    assert lr_factor(60_000, config) == pytest.approx(0.1)
    assert lr_factor(85_000, config) == pytest.approx(0.01)


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None, reason="accelerate CLI missing")
def test_two_process_cpu_run(tmp_path):
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "ddp"))
    recipe_data = yaml.safe_load(recipe.read_text())
    recipe_data["optim"]["max_iters"] = 4
    recipe_data["checkpoint_every"] = 2
    recipe.write_text(yaml.safe_dump(recipe_data))
    accelerate = str(Path(sys.executable).parent / "accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [accelerate, "launch", "--num_processes", "2", "--cpu", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", str(ROOT / "train.py"), "--config", str(recipe)],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = losses_by_step(tmp_path / "ddp" / "log.jsonl")
    assert sorted(log) == [1, 2, 3, 4]
    assert (tmp_path / "ddp" / "checkpoints" / "checkpoint-00000004").is_dir()
    assert (tmp_path / "ddp" / "model" / "model.safetensors").is_file()
