"""The EMA of the weights: the warm-up formula on the library's AveragedModel, what the trainer evaluates and
saves with it on, and an exact resume."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dynamic_atss.engine import load_config, train
from dynamic_atss.engine.ema import build_ema, ema_decay, update_ema

from helpers_trainer import NO_VAL_DATA, TINY_RECIPE, write_recipe

EMA_ON = {"enabled": True, "decay": 0.9, "tau": 2.0}


def test_the_decay_ramps_up_as_mmdetection_and_ultralytics_do():
    assert ema_decay(1, 0.9998, 2000) == pytest.approx(0.9998 * (1 - math.exp(-1 / 2000)))
    assert ema_decay(10**6, 0.9998, 2000) == pytest.approx(0.9998)


def test_each_update_moves_parameters_and_buffers_by_the_warmed_up_decay():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = build_ema(model, decay=0.9, tau=2.0)
    expected = None
    for update in range(1, 5):
        with torch.no_grad():
            for tensor in list(model.parameters()) + [model[1].running_mean]:
                tensor.add_(torch.randn_like(tensor))
        model[1].num_batches_tracked += 1
        current = {k: v.clone() for k, v in model.state_dict().items()}
        if expected is None:  # the first update copies the model
            expected = current
        else:
            d = 0.9 * (1 - math.exp(-update / 2.0))
            expected = {k: (d * expected[k] + (1 - d) * current[k]) if current[k].is_floating_point() else current[k]
                        for k in current}
        update_ema(ema, model)
    averaged = ema.module.state_dict()
    for key, value in expected.items():
        assert torch.allclose(averaged[key], value, atol=1e-6), key
    assert int(ema.n_averaged) == 4


def test_with_ema_on_eval_logs_both_the_saved_model_is_the_average_and_best_is_kept(tmp_path):
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"), ema=EMA_ON, eval_every=5,
                          checkpoint_every=0)
    summary = train(load_config(recipe))
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/AP" in r]
    assert [r["step"] for r in evals] == [5, 10] and all("eval_raw/AP" in r for r in evals)
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["metrics"]["weights"] == "ema" and saved["metrics"]["step"] == 10
    assert saved["metrics"]["AP"] == evals[-1]["eval/AP"] == summary["metrics"]["AP"]
    best = max(evals, key=lambda r: r["eval/AP"])  # the first of equal APs stays best
    best_saved = json.loads((tmp_path / "run" / "best" / "config.json").read_text())["metrics"]
    assert summary["best"] == {"step": best["step"], "AP": best["eval/AP"]}
    assert best_saved["checkpoint"] == "best" and best_saved["step"] == best["step"]
    assert best_saved["AP"] == best["eval/AP"]


def test_ema_resume_is_bit_exact(tmp_path):
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "full"), ema=EMA_ON, data=NO_VAL_DATA)
    train(load_config(recipe))
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "checkpoint-00000005",
                    resumed / "checkpoints" / "checkpoint-00000005")
    train(load_config(recipe, [f"output_dir={resumed}"]), resume="latest")
    expected = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    got = load_file(str(resumed / "model" / "model.safetensors"))
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    # ... and the average is not simply the trained weights
    checkpoint = load_file(str(tmp_path / "full" / "checkpoints" / "checkpoint-00000010" / "model.safetensors"))
    assert any(not torch.equal(checkpoint[k], expected[k]) for k in expected if k in checkpoint)


def test_push_best_pushes_the_best_folder(tmp_path, monkeypatch):
    from dynamic_atss.hub import push

    pushed = []
    monkeypatch.setattr(push, "check_push_access", lambda repo: None)
    monkeypatch.setattr(push, "push_model_dir", lambda directory, repo: pushed.append(directory))
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"), eval_every=2, checkpoint_every=0,
                          optim={**TINY_RECIPE["optim"], "max_iters": 4}, push_to_hub="org/tiny", push_best=True)
    summary = train(load_config(recipe))
    assert pushed == [tmp_path / "run" / "best"] and summary["best"]["step"] in (2, 4)
    train(load_config(recipe, ["push_best=false"]), overwrite=True)
    assert pushed[-1] == tmp_path / "run" / "model"
